"""Attach a local image folder to an annotation-only (`--no-images`) build at load time.

Sources such as CIRR (NLVR2 images) and CIRCO (COCO) discourage re-hosting their images, so their builds can
be published with image columns that hold only the relative path (`{"bytes": None, "path": "dev/x.png"}`).
`attach_images` points those paths at the user's own copy, so the columns decode as usual.

Example:
    >>> from datasets import load_dataset
    >>> queries = load_dataset("org/cirr-annotations", "queries", split="val")       # doctest: +SKIP
    >>> queries = attach_images(queries, "/data/nlvr2/images")                         # doctest: +SKIP
    >>> queries[0]["reference_image"]                                                 # doctest: +SKIP
    <PIL.PngImagePlugin.PngImageFile image mode=RGB size=...>
"""

import os
from pathlib import Path

from datasets import Dataset, DatasetDict, Image, IterableDataset, IterableDatasetDict

from ._build import MissingImagesError


def attach_images(dataset, images_dir: str | os.PathLike, columns: list[str] | None = None, check: bool = True):
    """Resolve the relative image paths of an annotation-only dataset against `images_dir`.

    Args:
        dataset: a `Dataset`, `IterableDataset` or a dict of them from a `--no-images` build (rows that
            already embed bytes are left as they are).
        images_dir: the local folder the paths are relative to (the builder's `--images-dir`).
        columns: the image columns to resolve (default: every `Image` column).
        check: raise `MissingImagesError` naming every file not found (not for `IterableDataset`).

    Returns:
        The same kind of dataset with image paths made absolute; `Image()` decoding then opens them.
    """
    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        return type(dataset)({name: attach_images(split, images_dir, columns, check) for name, split in dataset.items()})
    root = Path(images_dir).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"images folder not found: {root}")
    features = dataset.features
    columns = columns or [name for name, feature in (features or {}).items() if isinstance(feature, Image)]
    if not columns:
        return dataset
    undecoded = dataset.cast_column(columns[0], Image(decode=False))
    for column in columns[1:]:
        undecoded = undecoded.cast_column(column, Image(decode=False))

    if check and isinstance(dataset, Dataset):
        missing = {}
        for column in columns:
            for value in undecoded.select_columns([column])[column]:
                if value and value.get("bytes") is None and value.get("path"):
                    path = _local_path(root, value["path"])
                    if not path.is_file():
                        missing[str(path)] = f"missing (column {column})"
        if missing:
            raise MissingImagesError(missing)

    def resolve(batch):
        for column in columns:
            batch[column] = [_resolve(value, root) for value in batch[column]]
        return batch

    if isinstance(dataset, IterableDataset):
        # A mapped IterableDataset is not decoded again by `datasets`: decode here, lazily, row by row.
        def resolve_and_decode(batch):
            batch = resolve(batch)
            for column in columns:
                batch[column] = [None if value is None else Image().decode_example(value) for value in batch[column]]
            return batch

        return undecoded.map(resolve_and_decode, batched=True, features=features)
    resolved = undecoded.map(resolve, batched=True, features=undecoded.features, desc="attaching local images")
    for column in columns:
        resolved = resolved.cast_column(column, Image())
    return resolved


def _local_path(root: Path, relative: str) -> Path:
    """`root / relative`, refusing paths that leave `root` (a published dataset must not point at other files)."""
    parts = str(relative).replace("\\", "/").split("/")
    if parts[0] == "" or ".." in parts or (len(parts[0]) > 1 and parts[0][1] == ":"):
        raise ValueError(f"image path {relative!r} leaves the images folder {root} (absolute or with '..'); refused")
    return root / relative


def _resolve(value, root: Path):
    if not value or value.get("bytes") is not None or not value.get("path"):
        return value
    return {"bytes": None, "path": str(_local_path(root, value["path"]))}
