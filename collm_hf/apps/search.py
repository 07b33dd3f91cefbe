"""Search a gallery with one query: a reference image, a modification text, or both -> ranked gallery images.

The glue the search CLI and the web demo share:

    model folder --load_model_and_processor--> (CoLLMModel, CoLLMProcessor)
    gallery dataset / saved index --open_gallery--> (GalleryIndex, images by id)
    (image?, text?) --GallerySearcher.search--> [SearchHit(rank, image_id, score), ...]

A gallery is a `datasets.Dataset` with `image_id` and `image` columns (the project's gallery schema), given as
an object, a Parquet file, a `save_to_disk` folder, a folder written by `collm_hf.data.write_dataset` (config
`gallery`) or a hub id; or an index folder written by `save_index` (`GalleryIndex` files plus
`gallery_source.json`, which says where the images are, so the demo can show them).
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.collm.image_io import ImageReadError, open_image, to_rgb_image
from ..utils.atomic import atomic_write_json
from ..evaluation.benchmarks import DatasetLayoutError, is_local_path, load_splits, pick_split
from ..evaluation.index import EMBEDDINGS_FILE, GalleryIndex, image_embedder

SOURCE_FILE = "gallery_source.json"
DEFAULT_MODEL = os.path.join("collm-quickstart", "model")  # what `collm-hf quickstart` writes by default
QUERY_MODES = ("image+text", "text", "image")
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
    """Whether `path` is a folder written by `GalleryIndex.save` / `save_index`."""
    return isinstance(path, (str, os.PathLike)) and os.path.isfile(os.path.join(path, EMBEDDINGS_FILE))


def save_index(index: GalleryIndex, folder: str | os.PathLike, source: dict | None = None) -> Path:
    """Save `index` with `GalleryIndex.save`, plus `gallery_source.json` (where its images are), atomically.

    Args:
        index: the gallery index.
        folder: output folder (created).
        source: e.g. {"dataset": "/abs/path", "config": "gallery", "split": "test", "model": "/abs/model"}.
    """
    folder = Path(folder)
    index.save(str(folder))
    if source is None:
        (folder / SOURCE_FILE).unlink(missing_ok=True)  # never leave a stale pointer to another gallery
    else:
        atomic_write_json(folder / SOURCE_FILE, dict(source, num_images=len(index)), indent=2)
    return folder


def open_gallery(index_or_dataset, model=None, processor=None, images=None, batch_size: int = 64,
                 show_progress: bool = True, **load_options):
    """A searchable gallery: a saved index (loaded) or a dataset (embedded now with `model`).

    Args:
        index_or_dataset: a `GalleryIndex`, an index folder, or anything `load_gallery` takes.
        model, processor: used to embed a dataset gallery.
        images: the gallery dataset to show images from, when `index_or_dataset` is an index (default: the
            dataset named in the index folder's `gallery_source.json`, if it is still there).
        batch_size, show_progress: embedding options.
        **load_options: `config`, `split` for `load_gallery`.

    Returns:
        (GalleryIndex, dataset or None).
    """
    if isinstance(index_or_dataset, GalleryIndex):
        index = index_or_dataset
    elif is_index_folder(index_or_dataset):
        index = GalleryIndex.load(str(index_or_dataset))
        if images is None:
            images = _source_dataset(Path(index_or_dataset))
    else:
        if model is None or processor is None:
            raise SearchInputError("Embedding a gallery dataset needs the model and processor.")
        gallery = load_gallery(index_or_dataset, **load_options)
        index = GalleryIndex.from_dataset(gallery, model, processor, batch_size=batch_size, show_progress=show_progress)
        return index, gallery
    return index, (None if images is None else load_gallery(images, **load_options))


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
        index: a `GalleryIndex` embedded by the same model's vision side.
        gallery: optional `datasets.Dataset` (`image_id`, `image`) to fetch result images from.

    Example:

    ```python
    >>> searcher = GallerySearcher.from_pretrained("collm-quickstart/model", "gallery.parquet")  # doctest: +SKIP
    >>> searcher.search(image="ref.png", text="make it blue", k=3)  # doctest: +SKIP
    [SearchHit(rank=1, image_id='syn-86272ba6e74c', score=0.81), ...]
    ```
    """

    def __init__(self, model, processor, index: GalleryIndex, gallery=None):
        from ..models.collm.query_encoder import CoLLMQueryEncoder

        self.model, self.processor, self.index, self.gallery = model, processor, index, gallery
        self.encoder = CoLLMQueryEncoder(model, processor)
        self.embed_images = image_embedder(model, processor)
        dim = model.config.projection_dim
        if index.dim != dim:
            raise SearchInputError(f"The gallery index has {index.dim}-d embeddings but the model makes {dim}-d ones: "
                                   "it was built with another model; rebuild it with `collm-hf index`.")
        self._rows = None
        if gallery is not None:
            self._rows = {str(image_id): row for row, image_id in enumerate(gallery["image_id"])}

    @classmethod
    def from_pretrained(cls, model_path, index_or_dataset, images=None, device=None, batch_size: int = 64,
                        show_progress: bool = True, **load_options) -> "GallerySearcher":
        """Load the model from `model_path` and the gallery (index folder or dataset) in one call."""
        model, processor = load_model_and_processor(model_path, device)
        index, gallery = open_gallery(index_or_dataset, model, processor, images=images, batch_size=batch_size,
                                      show_progress=show_progress, **load_options)
        return cls(model, processor, index, gallery)

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
        image_embeds = self.embed_images([image]) if image is not None else None  # (1, D)
        query = self.encoder.encode(texts=[text if mode != "image" else None],
                                    image_embeds=None if image_embeds is None else image_embeds.to(self.encoder.device))
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
        result = self.index.search(query.float().cpu(), k=k, exclude_ids=[excluded])
        scores = result.scores[0].tolist()
        return [SearchHit(rank=r + 1, image_id=image_id, score=float(scores[r]))
                for r, image_id in enumerate(result.ids[0])]

    def duplicates(self, image_embeds: torch.Tensor, max_count: int = 16) -> list[str]:
        """Ids of gallery images whose embedding matches `image_embeds` (1, D) up to `DUPLICATE_COSINE`."""
        found = self.index.search(image_embeds.float().cpu(), k=min(max_count, len(self.index)))
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
    "DEFAULT_MODEL", "GallerySearcher", "QUERY_MODES", "SearchHit", "SearchInputError", "is_index_folder",
    "load_gallery",
    "load_model_and_processor", "open_gallery", "query_mode", "read_query_image", "resolve_device", "save_index",
]
