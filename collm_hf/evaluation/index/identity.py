"""What made a gallery index and what it holds, so that an index is never used with another model or gallery.

    model + processor --gallery_identity--> GalleryIdentity (vision weights digest, embedding rule, image
                                            processor digest, dtype)
    gallery ids -------ids_digest---------> sha256 of the ids, in order

An index folder records both in its manifest; loading it for a model or a gallery that differs raises
`IndexMismatchError`, naming both sides. The weights digest is computed once per model object and cached on it,
keyed by each weight's storage and version counter: an optimizer step, `load_state_dict` or `.to()` changes the
key, so the digest is recomputed only when the weights can have changed.
"""

import hashlib
import json
from dataclasses import asdict, dataclass, fields

import torch

_CACHE_ATTRIBUTE = "_collm_gallery_weights_digest"
# Image-processor fields that say where its class lives, not how it turns an image into pixels.
_PROCESSOR_BOOKKEEPING = ("auto_map", "processor_class")


class IndexMismatchError(ValueError):
    """A saved gallery index used with another model, image processor or gallery than the ones that made it."""


@dataclass(frozen=True)
class GalleryIdentity:
    """Everything that decides a gallery embedding, as recorded by an index.

    Args:
        weights_sha256: sha256 over the names, dtypes, shapes and bytes of the vision tower's and its
            projection's weights.
        embedding_rule: `collm_hf.models.collm.vision_families.gallery_embedding_rule(config)`, e.g.
            "clip:pooler+projection".
        image_processor_sha256: sha256 of the image processor's settings (None: not recorded).
        dtype: the tower's dtype, e.g. "float32".
        model: where the model came from (its `name_or_path`), for messages only; not compared.

    Example:
        >>> a = GalleryIdentity("1" * 64, "clip:pooler+projection", None, "float32", "runs/a")
        >>> a.differences(GalleryIdentity("2" * 64, "clip:pooler+projection", None, "float32", "runs/b"))
        ['vision weights']
    """

    weights_sha256: str
    embedding_rule: str
    image_processor_sha256: str | None
    dtype: str
    model: str = ""

    _LABELS = {"weights_sha256": "vision weights", "embedding_rule": "gallery embedding rule",
               "image_processor_sha256": "image processor", "dtype": "dtype"}

    def differences(self, other: "GalleryIdentity") -> list[str]:
        """What differs from `other`, in words (empty: the same embeddings)."""
        return [label for name, label in self._LABELS.items() if getattr(self, name) != getattr(other, name)]

    def describe(self) -> str:
        name = f"model {self.model!r}" if self.model else "a model"
        return f"{name} (vision weights {self.weights_sha256[:12]}, {self.embedding_rule}, {self.dtype})"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "GalleryIdentity | None":
        if data is None:
            return None
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def ids_digest(ids) -> str:
    """sha256 of gallery ids in order (as strings, in a JSON list): what an index holds.

    Example:
        >>> ids_digest(["a", "b"]) == ids_digest(["a"] + ["b"]) != ids_digest(["b", "a"])
        True
    """
    return hashlib.sha256(json.dumps([str(i) for i in ids]).encode("utf-8")).hexdigest()


def _unwrap(model):
    model = getattr(model, "module", model)  # DistributedDataParallel
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # peft


def _gallery_weights(model, projection=None) -> dict[str, torch.Tensor]:
    if getattr(model, "vision_tower", None) is not None:  # a CoLLM: its tower and projection
        if projection is not None:
            raise ValueError("projection is for a plain vision tower; a CoLLM brings its own vision_projection.")
        modules = {"vision_tower": model.vision_tower, "vision_projection": getattr(model, "vision_projection", None)}
    elif isinstance(model, torch.nn.Module):  # a plain vision tower (and its retrieval projection, if any)
        modules = {"vision_tower": model, "vision_projection": projection}
    else:
        raise TypeError(f"{type(model).__name__} is neither a CoLLM nor a vision tower (a torch module).")
    weights = {}
    for prefix, module in modules.items():
        if module is not None:
            weights.update({f"{prefix}.{name}": t for name, t in module.state_dict(keep_vars=True).items()})
    if not weights:
        raise ValueError(f"{type(model).__name__} has no vision weights to identify.")
    return weights


def weights_digest(model, refresh: bool = False, projection=None) -> str:
    """sha256 of the weights that make gallery embeddings: a CoLLM's vision tower and its projection, or a plain
    vision tower and `projection` (its retrieval projection, e.g. CLIP's `visual_projection`; None: none). A tower
    and projection hash as the same weights inside a CoLLM do.

    Computed once per model object and cached on it; recomputed only after the weights changed (a tensor's
    storage or version counter differs: an optimizer step, `load_state_dict`, in-place ops under `no_grad`,
    `.to()`). Edits through `tensor.data` bypass version counters: pass `refresh=True` after those.

    Example:
        >>> weights_digest(model) == weights_digest(model.vision_tower, projection=model.vision_projection)  # doctest: +SKIP
        True
    """
    model = _unwrap(model)
    weights = _gallery_weights(model, projection)
    key = tuple((name, t.data_ptr(), t._version, str(t.dtype), tuple(t.shape), str(t.device))
                for name, t in sorted(weights.items()))
    cached = model.__dict__.get(_CACHE_ATTRIBUTE)
    if cached is not None and cached[0] == key and not refresh:
        return cached[1]
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(weights.items()):
            tensor = tensor.detach()
            digest.update(f"{name}:{str(tensor.dtype).removeprefix('torch.')}:{list(tensor.shape)}\n".encode())
            digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    value = digest.hexdigest()
    model.__dict__[_CACHE_ATTRIBUTE] = (key, value)
    return value


def image_processor_digest(processor) -> str | None:
    """sha256 of the image processor's settings (a `CoLLMProcessor` or an image processor); None without one."""
    image_processor = getattr(processor, "image_processor", processor)
    if image_processor is None or not hasattr(image_processor, "to_json_string"):
        return None
    settings = json.loads(image_processor.to_json_string())
    settings = {k: v for k, v in settings.items() if k not in _PROCESSOR_BOOKKEEPING and not k.startswith("_")}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()


def gallery_identity(model, processor=None) -> GalleryIdentity:
    """The `GalleryIdentity` of a CoLLM (and its processor): what its gallery embeddings depend on.

    Example:
        >>> identity = gallery_identity(model, processor)  # doctest: +SKIP
        >>> identity.describe()  # doctest: +SKIP
        "model 'runs/a' (vision weights 3f2a9c0d1e7b, clip:pooler+projection, float32)"
    """
    from ...models.collm.vision_families import gallery_embedding_rule

    base = _unwrap(model)
    dtype = next(iter(_gallery_weights(base).values())).dtype
    return GalleryIdentity(weights_sha256=weights_digest(base), embedding_rule=gallery_embedding_rule(base.config),
                           image_processor_sha256=image_processor_digest(processor),
                           dtype=str(dtype).removeprefix("torch."), model=str(getattr(base, "name_or_path", "") or ""))


def check_identity(recorded: GalleryIdentity | None, expected: GalleryIdentity | None, where: str) -> None:
    """Raise `IndexMismatchError` when the index at `where` was made otherwise than `expected` says.

    `expected=None` checks nothing; an index that records no model (`recorded=None`) cannot be vouched for and
    is refused when a model is expected.
    """
    if expected is None:
        return
    if recorded is None:
        raise IndexMismatchError(f"The gallery index {where} records no model, so it cannot be used with "
                                 f"{expected.describe()}: rebuild it with that model (--rebuild-index, or rebuild=True).")
    differ = recorded.differences(expected)
    if differ:
        raise IndexMismatchError(f"The gallery index {where} was made by {recorded.describe()}, not by "
                                 f"{expected.describe()} ({', '.join(differ)} differ): rebuild it "
                                 "(--rebuild-index, or rebuild=True), or use the model that made it.")


def check_ids(recorded_digest: str, recorded_count: int, ids, where: str) -> None:
    """Raise `IndexMismatchError` when the index at `where` holds another gallery than `ids` (order included)."""
    ids = [str(i) for i in ids]
    digest = ids_digest(ids)
    if digest != recorded_digest:
        raise IndexMismatchError(f"The gallery index {where} was built from another gallery: {recorded_count} images (ids "
                                 f"{recorded_digest[:12]}), not the {len(ids)} images asked for (ids {digest[:12]}); "
                                 "rebuild it (--rebuild-index, or rebuild=True), or use another folder.")


__all__ = ["GalleryIdentity", "IndexMismatchError", "check_identity", "check_ids", "gallery_identity",
           "ids_digest", "image_processor_digest", "weights_digest"]
