"""Embedding a benchmark split: its gallery into a `GalleryIndex` (optionally cached in an index folder), its
queries (reference image + modification text) into (Q, D) query embeddings.

    gallery --embed_gallery / load_or_embed_gallery--> GalleryIndex
    queries --query_texts + embed_queries-------------> (Q, D)

A cached index is reused only for the model that made it and the gallery it holds (the folder's manifest
records both); anything else is an `IndexCacheMismatchError` naming both sides, unless `rebuild=True`.
"""

import os

import torch
from tqdm.auto import tqdm

from ._tables import column, column_names
from .index import GalleryIndex, IndexFolderError, IndexMismatchError, build_index, check_finite, gallery_identity
from .index.building import load_images
from .index.gallery import LEGACY_FILES
from .index.storage import MANIFEST_FILE

DEFAULT_TEXT_TEMPLATE = "{modification_text}"
# CIRCO with its shared concept, phrased as several public CIRCO code bases do ("<concept> but <caption>");
# an explicit choice: the official baseline uses the relative caption only (DEFAULT_TEXT_TEMPLATE).
SHARED_CONCEPT_TEMPLATE = "{shared_concept} but {modification_text}"


class IndexCacheMismatchError(IndexMismatchError):
    """A cached gallery index made by another model, or from another gallery, than the ones being evaluated."""


def query_texts(queries, text_template: str = DEFAULT_TEXT_TEMPLATE) -> list[str]:
    """The text of each query, from `text_template` over its columns (default: the modification text only).

    Example:
        >>> query_texts({"modification_text": [" is red "], "shared_concept": ["a dog"]}, SHARED_CONCEPT_TEMPLATE)
        ['a dog but is red']
    """
    names = column_names(queries)
    fields = [f for f in ("modification_text", "shared_concept", "query_id", "category") if f in names
              and "{" + f + "}" in text_template]
    if "{modification_text}" not in text_template:
        raise ValueError(f"text_template must contain {{modification_text}}, got {text_template!r}.")
    columns = {f: column(queries, f) for f in fields}
    texts = []
    for i in range(len(columns["modification_text"])):
        values = {f: (columns[f][i] or "").strip() for f in fields}
        try:
            texts.append(text_template.format(**values).strip())
        except KeyError as error:
            raise KeyError(f"text_template {text_template!r} uses {error}, which the queries do not have.") from None
    return texts


def embed_gallery(model, processor, gallery, batch_size: int = 64, accelerator=None, show_progress: bool = True,
                  num_workers: int = 0) -> GalleryIndex:
    """Embed a benchmark `gallery` table (`image_id`, `image`) into a `GalleryIndex` (see `GalleryIndex.from_dataset`)."""
    return GalleryIndex.from_dataset(gallery, model=model, processor=processor, batch_size=batch_size,
                                     accelerator=accelerator, show_progress=show_progress, num_workers=num_workers)


def load_or_embed_gallery(model, processor, gallery, cache_dir: str | os.PathLike | None = None, *,
                          batch_size: int = 64, num_workers: int = 0, show_progress: bool = True,
                          rebuild: bool = False, accelerator=None) -> GalleryIndex:
    """The gallery's index: loaded from `cache_dir` when the index there was made by this model (vision weights,
    embedding rule, image processor, dtype) from this gallery (its ids, in order); else embedded (model in eval
    mode) and, with `cache_dir`, saved there (one shard per process of `accelerator`, memory-mapped afterwards).

    Args:
        model, processor: the `CoLLMModel` being evaluated and its processor.
        gallery: the split's `gallery` table (`image_id`, `image`).
        cache_dir: index folder to reuse or write (None: embed in memory).
        batch_size, num_workers, show_progress: embedding options.
        rebuild: replace an index in `cache_dir` made by another model or from another gallery (instead of
            raising `IndexCacheMismatchError`).
        accelerator: embed across its processes.

    Example:
        >>> index = load_or_embed_gallery(model, processor, bench.gallery, "cache/cirr-val")  # doctest: +SKIP
    """
    if cache_dir is not None and any(os.path.isfile(os.path.join(cache_dir, name)) for name in (MANIFEST_FILE, *LEGACY_FILES)):
        ids = [str(i) for i in column(gallery, "image_id")]
        try:
            return GalleryIndex.load(cache_dir, identity=gallery_identity(model, processor), ids=ids)
        except (IndexMismatchError, IndexFolderError) as error:
            if not rebuild:
                raise IndexCacheMismatchError(f"{error} (--index-dir {cache_dir})") from error
    was_training = model.training
    model.eval()
    try:
        if cache_dir is None:
            return embed_gallery(model, processor, gallery, batch_size=batch_size, accelerator=accelerator,
                                 show_progress=show_progress, num_workers=num_workers)
        return build_index(cache_dir, gallery, model, processor, batch_size=batch_size, accelerator=accelerator,
                           show_progress=show_progress, num_workers=num_workers)
    finally:
        model.train(was_training)


@torch.inference_mode()
def embed_queries(model, processor, queries, batch_size: int = 32, text_template: str = DEFAULT_TEXT_TEMPLATE,
                  index: GalleryIndex | None = None, query_encoder=None, show_progress: bool = True) -> torch.Tensor:
    """Embed a benchmark `queries` table (reference image + modification text) with `model.get_query_embeds`.

    Args:
        model, processor: a `CoLLMModel` and its `CoLLMProcessor`.
        queries: a `datasets.Dataset` (or dict of lists) with `reference_id`, `reference_image`,
            `modification_text` (and whatever `text_template` uses).
        batch_size: queries per forward pass.
        text_template: how a query's text is built from its columns (see `SHARED_CONCEPT_TEMPLATE`).
        index: when given, a reference image that is in the gallery reuses its gallery embedding `f(v)`
            (the same vector the model would compute) instead of decoding and encoding the image again. A model
            that feeds the reference as patch tokens (`reference_tokens="patches"`) needs more than f(v): its
            references are always decoded and encoded again (one tower pass per query image, cheap next to the LLM).
        query_encoder: optional fast encoder with `.encode(texts, image_embeds=...)` (e.g.
            `collm_hf.CoLLMQueryEncoder`); used for batches whose reference embeddings are known.
        show_progress: tqdm bar.

    Returns:
        (Q, D) float32 CPU tensor of L2-normalised query embeddings, in table order.
    """
    texts = query_texts(queries, text_template)
    reference_ids = [str(r) for r in column(queries, "reference_id")]
    names = column_names(queries)
    device = next(model.parameters()).device
    reuse_gallery = index is not None and model.config.reference_tokens == "pooled"
    out = []
    for b0 in tqdm(range(0, len(texts), batch_size), desc="Embedding queries", disable=not show_progress):
        b1 = min(len(texts), b0 + batch_size)
        refs = reference_ids[b0:b1]
        if reuse_gallery and all(r in index.position for r in refs):
            image_embeds = index.vectors([index.position[r] for r in refs]).to(device)  # (batch, D_image)
            if query_encoder is not None:
                embeds = query_encoder.encode(texts[b0:b1], image_embeds=image_embeds)
            else:
                inputs = processor.queries(texts[b0:b1], with_image=True)  # the image enters as embeddings
                embeds = model.get_query_embeds(inputs["input_ids"], inputs["attention_mask"], image_embeds=image_embeds)
        else:
            if "reference_image" not in names:
                raise KeyError("The queries have no 'reference_image' column and their references are not in the "
                               "gallery index: attach the images or pass index=.")
            values = queries["reference_image"][b0:b1] if isinstance(queries, dict) else queries[b0:b1]["reference_image"]
            images = load_images(values, refs)
            inputs = processor(images=images, text=texts[b0:b1])
            embeds = model.get_query_embeds(inputs["input_ids"], inputs["attention_mask"],
                                            pixel_values=inputs["pixel_values"].to(device))
        embeds = embeds.float().cpu()  # (batch, D)
        check_finite(embeds, "Query embeddings", [f"query {i}" for i in range(b0, b1)])
        out.append(embeds)
    return torch.cat(out)


__all__ = [
    "DEFAULT_TEXT_TEMPLATE", "IndexCacheMismatchError", "SHARED_CONCEPT_TEMPLATE", "embed_gallery", "embed_queries",
    "load_or_embed_gallery", "query_texts",
]
