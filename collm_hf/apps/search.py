"""Search a gallery with one query: a reference image, a modification text, or both -> ranked gallery images.

The glue the search CLI and the web demo share:

    model folder --load_model_and_processor--> (CoLLMModel, CoLLMProcessor)
    gallery dataset / saved index --open_gallery--> (GalleryIndex, images by id)
    (image?, text?) --GallerySearcher.search--> [SearchHit(rank, image_id, score), ...]

A gallery is a `datasets.Dataset` with `image_id` and `image` columns (the project's gallery schema), given as
an object, a Parquet file, a `save_to_disk` folder, a folder written by `collm_hf.data.write_dataset` (config
`gallery`) or a hub id; or an index folder written by `build_gallery_index` / `collm-hf index` (`GalleryIndex`
files plus `gallery_source.json`, which says where the images are, so the demo can show them, and so that the
index can be rebuilt). An index folder is opened memory-mapped, with the approximate FAISS index saved in it
(reopened, not retrained), and only for the model that made it: another one is an `IndexMismatchError` naming
both, unless the caller asks to rebuild it from its gallery.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.collm.image_io import ImageReadError, open_image, to_rgb_image
from ..utils.atomic import atomic_write_json
from ..evaluation.benchmarks import DatasetLayoutError, is_local_path, load_splits, pick_split
from ..evaluation.index import (APPROXIMATE_KINDS, MANIFEST_FILE, GalleryIndex, IndexFolderError, IndexMismatchError,
                                gallery_identity, image_embedder)
from ..evaluation.index.gallery import LEGACY_FILES

SOURCE_FILE = "gallery_source.json"
DEFAULT_MODEL = os.path.join("collm-quickstart", "model")  # what `collm-hf quickstart` writes by default
QUERY_MODES = ("image+text", "text", "image")
INDEX_KINDS = ("flat", *APPROXIMATE_KINDS)  # flat: exact search over the stored embeddings
DUPLICATE_COSINE = 0.9999  # a gallery image this close to the reference is the reference (re-encoded at most)


class SearchInputError(ValueError):
    """A query or a gallery that cannot be searched; the message says what is wrong and how to fix it."""


@dataclass
class SearchHit:
    """One result: 1-based rank, the gallery id and the cosine similarity to the query."""

    rank: int
    image_id: str
    score: float


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None` / "auto" -> CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model_and_processor(model_path: str | os.PathLike, device=None):
    """Load a saved CoLLM (`save_pretrained` folder or hub id) and its processor, in eval mode.

    Args:
        model_path: a folder holding `config.json`, the weights and the processor files, or a hub id.
        device: "cpu", "cuda", ... or None / "auto".

    Returns:
        (model, processor).
    """
    from transformers import AutoModel, AutoProcessor

    from .. import CoLLMProcessor  # noqa: F401  (registers the Auto classes)

    model_path = str(model_path)
    hint = (" Run `collm-hf quickstart --output-dir collm-quickstart` to train the default model, or pass --model "
            "with a folder written by save_pretrained (or a hub id).")
    local = is_local_path(model_path) or model_path == DEFAULT_MODEL
    if local and not os.path.isfile(os.path.join(model_path, "config.json")):
        raise FileNotFoundError(f"No CoLLM model at {model_path!r} (no config.json there).{hint}")
    try:
        model = AutoModel.from_pretrained(model_path, dtype=torch.float32)
    except OSError as error:  # a hub id that cannot be fetched (offline, private, misspelt)
        raise FileNotFoundError(f"No CoLLM model at {model_path!r}: not a local folder, and loading it from the hub "
                                f"failed ({error}).{hint}") from error
    model = model.to(resolve_device(device)).eval()
    processor = AutoProcessor.from_pretrained(model_path)
    return model, processor


def load_gallery(source, config: str = "gallery", split: str | None = None, id_column: str = "image_id",
                 image_column: str = "image"):
    """Load a gallery dataset (`image_id`, `image`) from an object, a file, a folder or a hub id.

    Args:
        source: anything `collm_hf.evaluation.benchmarks.load_splits` reads: a `datasets.Dataset` /
            `DatasetDict` / dict of lists, a `.parquet` file, a folder of Parquet files, a `save_to_disk`
            folder, a `write_dataset` folder (its `config` config), or a hub dataset id.
        config: the dataset config to read from a `write_dataset` folder or hub repo (if it has configs).
        split: which split; None: the package's split rule (the only split, else val, validation, test, train).
        id_column, image_column: column names.

    Returns:
        a `datasets.Dataset` with both columns, images decoded on access.
    """
    try:
        _, source = pick_split(load_splits(source, config), split, f"The gallery {_describe(source)}")
    except DatasetLayoutError as error:
        raise SearchInputError(str(error)) from error
    missing = [c for c in (id_column, image_column) if c not in source.column_names]
    if missing:
        raise SearchInputError(f"The gallery has no {missing} column(s); its columns are {source.column_names}.")
    if len(source) == 0:
        raise SearchInputError("The gallery is empty.")
    return source


def _describe(source) -> str:
    return repr(str(source)) if isinstance(source, (str, os.PathLike)) else f"({type(source).__name__})"


def is_index_folder(path) -> bool:
    """Whether `path` is a gallery index folder (written by `GalleryIndex.save`, `build_gallery_index`, or an
    older version of the package, which `GalleryIndex.load` then asks to rebuild)."""
    return isinstance(path, (str, os.PathLike)) and (os.path.isfile(os.path.join(path, MANIFEST_FILE)) or all(
        os.path.isfile(os.path.join(path, name)) for name in LEGACY_FILES))


def _write_source(folder: Path, source: dict | None, num_images: int) -> None:
    if source is None:
        (folder / SOURCE_FILE).unlink(missing_ok=True)  # never leave a stale pointer to another gallery
    else:
        atomic_write_json(folder / SOURCE_FILE, dict(source, num_images=num_images), indent=2)


def save_index(index: GalleryIndex, folder: str | os.PathLike, source: dict | None = None) -> Path:
    """Save `index` with `GalleryIndex.save`, plus `gallery_source.json` (where its images are), atomically.

    Args:
        index: the gallery index.
        folder: output folder (created).
        source: e.g. {"dataset": "/abs/path", "config": "gallery", "split": "test", "model": "/abs/model"}.
    """
    folder = Path(folder)
    index.save(str(folder))
    _write_source(folder, source, len(index))
    return folder


def build_gallery_index(model, processor, gallery, folder: str | os.PathLike, kind: str = "flat",
                        source: dict | None = None, batch_size: int = 64, show_progress: bool = True,
                        rebuild: bool = False, append: bool = False, accelerator=None) -> GalleryIndex:
    """Embed `gallery` into the index folder `folder` (what `collm-hf index` runs).

    Args:
        model, processor: the CoLLM whose vision side embeds the gallery.
        gallery: a gallery dataset (`image_id`, `image`).
        folder: the index folder. An index already there is kept when it is this model's and holds this gallery
            (nothing is embedded again); one made by another model or from another gallery raises
            `IndexMismatchError` unless `rebuild` (or, for a gallery that grew, `append`).
        kind: "flat" (exact search only) or an approximate kind also saved ("ivf-flat", "ivf-pq", "hnsw").
        source: where the gallery's images are (`gallery_source.json`), to show them and to rebuild the index.
        append: add the gallery's images that the index lacks as one new shard; the rest is not embedded again.
        accelerator: build with one shard per process.

    Returns:
        the saved index (memory-mapped).
    """
    if kind not in INDEX_KINDS:
        raise SearchInputError(f"The index kind must be one of {INDEX_KINDS}, got {kind!r}.")
    folder = Path(folder)
    approximate = [] if kind == "flat" else [kind]
    ids = [str(i) for i in gallery["image_id"]]
    identity = gallery_identity(model, processor)
    index = None
    if is_index_folder(folder) and not rebuild:
        try:
            index = GalleryIndex.load(folder, identity=identity, ids=None if append else ids)
        except IndexFolderError as error:
            raise IndexMismatchError(f"{error} Pass --rebuild-index to replace it.") from error
        if append:
            index.append_dataset(gallery, model, processor, batch_size=batch_size, show_progress=show_progress)
        for missing in set(approximate) - set(index.saved_approximate):
            index.build_approximate(missing)
    if index is None:
        index = GalleryIndex.build(folder, gallery, model, processor, batch_size=batch_size, show_progress=show_progress,
                                   accelerator=accelerator, approximate=approximate)
    if accelerator is None or accelerator.is_main_process:
        _write_source(folder, source, len(index))
    return index


def open_gallery(index_or_dataset, model=None, processor=None, images=None, batch_size: int = 64,
                 show_progress: bool = True, rebuild: bool = False, **load_options):
    """A searchable gallery: a saved index (loaded) or a dataset (embedded now with `model`).

    Args:
        index_or_dataset: a `GalleryIndex`, an index folder, or anything `load_gallery` takes.
        model, processor: used to embed a dataset gallery, and to check that an index folder was made by them.
        images: the gallery dataset to show images from, when `index_or_dataset` is an index (default: the
            dataset named in the index folder's `gallery_source.json`, if it is still there).
        batch_size, show_progress: embedding options.
        rebuild: an index folder made by another model is rebuilt with `model` from the gallery named in its
            `gallery_source.json` (instead of raising `IndexMismatchError`).
        **load_options: `config`, `split` for `load_gallery`.

    Returns:
        (GalleryIndex, dataset or None).
    """
    if isinstance(index_or_dataset, GalleryIndex):
        index = index_or_dataset
    elif is_index_folder(index_or_dataset):
        folder = Path(index_or_dataset)
        identity = None if model is None else gallery_identity(model, processor)
        try:
            index = GalleryIndex.load(folder, identity=identity)
        except (IndexMismatchError, IndexFolderError) as error:
            if not rebuild:
                raise
            index = _rebuild(folder, model, processor, batch_size, show_progress, error)
        if images is None:
            images = _source_dataset(folder)
    else:
        if model is None or processor is None:
            raise SearchInputError("Embedding a gallery dataset needs the model and processor.")
        gallery = load_gallery(index_or_dataset, **load_options)
        index = GalleryIndex.from_dataset(gallery, model, processor, batch_size=batch_size, show_progress=show_progress)
        return index, gallery
    return index, (None if images is None else load_gallery(images, **load_options))


def _rebuild(folder: Path, model, processor, batch_size, show_progress, error) -> GalleryIndex:
    """Re-embed the gallery an index folder was built from (its `gallery_source.json`) with `model`."""
    path = folder / SOURCE_FILE
    source = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    gallery = _source_dataset(folder)
    if gallery is None or model is None:
        raise IndexMismatchError(f"{error} It cannot be rebuilt here: {path} does not name a gallery dataset that "
                                 "is still there; run `collm-hf index --rebuild-index` with the gallery.") from error
    try:
        kinds = read_manifest_kinds(folder)
    except (OSError, ValueError):
        kinds = []
    index = build_gallery_index(model, processor, gallery, folder, kind=kinds[0] if kinds else "flat",
                                source=dict(source, model=str(getattr(model, "name_or_path", "") or "")),
                                batch_size=batch_size, show_progress=show_progress, rebuild=True)
    for kind in kinds[1:]:
        index.build_approximate(kind)
    return index


def read_manifest_kinds(folder) -> list[str]:
    """The approximate kinds saved in an index folder's manifest."""
    path = Path(folder) / MANIFEST_FILE
    return sorted(json.loads(path.read_text(encoding="utf-8")).get("approximate", {})) if path.is_file() else []


def _source_dataset(folder: Path):
    """The gallery dataset named in `folder/gallery_source.json`, or None when it is not there any more."""
    path = folder / SOURCE_FILE
    if not path.is_file():
        return None
    source = json.loads(path.read_text(encoding="utf-8"))
    dataset = source.get("dataset")
    if not dataset or (os.path.isabs(dataset) and not os.path.exists(dataset)):
        return None
    try:
        return load_gallery(dataset, config=source.get("config") or "gallery", split=source.get("split"))
    except (OSError, ValueError):
        return None  # the index still searches; results are then shown by id


# ----------------------------------------------------------------------------------------------------------
# Searching
# ----------------------------------------------------------------------------------------------------------
def read_query_image(image, name: str = "reference image"):
    """A PIL RGB image from a path, PIL image or array; `ImageReadError` naming it if it cannot be read."""
    if image is None:
        return None
    if isinstance(image, (str, os.PathLike)):
        return open_image(image, f"{name} {os.path.basename(str(image))!r}")
    return to_rgb_image(image, name)


def query_mode(has_image: bool, has_text: bool) -> str:
    """"image+text", "text" or "image"; a `SearchInputError` when the query has neither."""
    if has_image and has_text:
        return "image+text"
    if has_text:
        return "text"
    if has_image:
        return "image"
    raise SearchInputError("A query needs a reference image, a modification text, or both.")


class GallerySearcher:
    """Embed one query with a CoLLM and rank a gallery index for it.

    Args:
        model: a `CoLLMModel` (eval mode).
        processor: its `CoLLMProcessor`.
        index: a `GalleryIndex` embedded by the same model's vision side (an index that records another model
            raises `IndexMismatchError`).
        gallery: optional `datasets.Dataset` (`image_id`, `image`) to fetch result images from.
        approximate: "auto" (the approximate index saved with `index`, if any, else exact search), None (exact),
            or a kind ("ivf-flat", "ivf-pq", "hnsw").

    Example:

    ```python
    >>> searcher = GallerySearcher.from_pretrained("collm-quickstart/model", "gallery.parquet")  # doctest: +SKIP
    >>> searcher.search(image="ref.png", text="make it blue", k=3)  # doctest: +SKIP
    [SearchHit(rank=1, image_id='syn-86272ba6e74c', score=0.81), ...]
    ```
    """

    def __init__(self, model, processor, index: GalleryIndex, gallery=None, approximate: str | None = "auto"):
        from ..models.collm.query_encoder import CoLLMQueryEncoder

        self.model, self.processor, self.index, self.gallery = model, processor, index, gallery
        self.encoder = CoLLMQueryEncoder(model, processor)
        self.embed_images = image_embedder(model, processor)
        dim = model.config.projection_dim
        if index.dim != dim:
            raise SearchInputError(f"The gallery index has {index.dim}-d embeddings but the model makes {dim}-d ones: "
                                   "it was built with another model; rebuild it with `collm-hf index`.")
        if index.identity is not None:
            index.check(gallery_identity(model, processor))
        if approximate == "auto":
            approximate = index.saved_approximate[0] if index.saved_approximate else None
        elif approximate is not None and approximate not in APPROXIMATE_KINDS:
            raise SearchInputError(f"approximate must be 'auto', None or one of {APPROXIMATE_KINDS}, got {approximate!r}.")
        self.approximate = approximate
        self._rows = None
        if gallery is not None:
            self._rows = {str(image_id): row for row, image_id in enumerate(gallery["image_id"])}

    @classmethod
    def from_pretrained(cls, model_path, index_or_dataset, images=None, device=None, batch_size: int = 64,
                        show_progress: bool = True, rebuild: bool = False, approximate: str | None = "auto",
                        **load_options) -> "GallerySearcher":
        """Load the model from `model_path` and the gallery (index folder or dataset) in one call."""
        model, processor = load_model_and_processor(model_path, device)
        index, gallery = open_gallery(index_or_dataset, model, processor, images=images, batch_size=batch_size,
                                      show_progress=show_progress, rebuild=rebuild, **load_options)
        return cls(model, processor, index, gallery, approximate=approximate)

    @property
    def size(self) -> int:
        return len(self.index)

    @torch.inference_mode()
    def encode_query(self, image=None, text: str | None = None, return_image_embeds: bool = False):
        """The (1, D) L2-normalised embedding of one composed, text-only or image-only query.

        With `return_image_embeds`, also the reference's own (1, D) gallery-space embedding (None without one).
        """
        text = text.strip() if isinstance(text, str) else text
        image = read_query_image(image)
        mode = query_mode(image is not None, bool(text))
        image_embeds = reference = None
        if image is not None:  # one tower pass: the gallery embedding, and the patch features if the LLM takes them
            pixels = self.processor(images=[image])["pixel_values"].to(self.encoder.device)
            encoded = self.model.encode_images(pixels, with_patches=self.model.config.reference_tokens == "patches")
            image_embeds, reference = encoded[0].float().cpu(), encoded[-1]  # (1, D); what the adapter takes
        query = self.encoder.encode(texts=[text if mode != "image" else None], image_embeds=reference)
        return (query, image_embeds) if return_image_embeds else query  # (1, D)

    def search(self, image=None, text: str | None = None, k: int = 10, exclude_ids=None,
               exclude_reference: bool = False) -> list[SearchHit]:
        """The top-k gallery images for one query.

        Args:
            image: the reference image (path, PIL image or array), or None for a text-only query.
            text: the modification text, or None / "" for an image-only query.
            k: how many results.
            exclude_ids: gallery ids never returned.
            exclude_reference: also leave out gallery images identical to the reference (embedding cosine
                >= `DUPLICATE_COSINE`), as the CIRR protocol removes the reference from its ranking.

        Returns:
            up to k `SearchHit`s, best first.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise SearchInputError(f"k must be a positive integer, got {k!r}.")
        if isinstance(exclude_ids, (str, bytes, int)):  # "abc" would silently exclude "a", "b" and "c"
            raise SearchInputError(f"exclude_ids must be a list of gallery ids, got {exclude_ids!r}.")
        query, image_embeds = self.encode_query(image, text, return_image_embeds=True)
        excluded = list(exclude_ids or [])
        if exclude_reference and image_embeds is not None:
            excluded += self.duplicates(image_embeds)
        result = self.index.search(query.float().cpu(), k=k, exclude_ids=[excluded], approximate=self.approximate)
        scores = result.scores[0].tolist()
        return [SearchHit(rank=r + 1, image_id=image_id, score=float(scores[r]))
                for r, image_id in enumerate(result.ids[0])]

    def duplicates(self, image_embeds: torch.Tensor, max_count: int = 16) -> list[str]:
        """Ids of gallery images whose embedding matches `image_embeds` (1, D) up to `DUPLICATE_COSINE`."""
        found = self.index.search(image_embeds.float().cpu(), k=min(max_count, len(self.index)),
                                  approximate=self.approximate)
        return [i for i, score in zip(found.ids[0], found.scores[0].tolist()) if score >= DUPLICATE_COSINE]

    def image(self, image_id: str):
        """The gallery image `image_id` as a PIL image, or None when the gallery images are not available."""
        if self._rows is None or str(image_id) not in self._rows:
            return None
        value = self.gallery[self._rows[str(image_id)]]["image"]
        try:
            return read_query_image(value, f"gallery image {image_id!r}")
        except ImageReadError:
            return None


__all__ = [
    "DEFAULT_MODEL", "GallerySearcher", "INDEX_KINDS", "QUERY_MODES", "SearchHit", "SearchInputError",
    "build_gallery_index", "is_index_folder", "load_gallery", "load_model_and_processor", "open_gallery", "query_mode",
    "read_manifest_kinds", "read_query_image", "resolve_device", "save_index",
]
