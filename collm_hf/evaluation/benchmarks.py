"""Benchmark folders: the one dataset loader, the one split rule and the one protocol rule.

A benchmark has the configs `queries` (optionally `queries_refined`) and `gallery` (columns as in
`collm_hf.data.schema`), given as a folder written by `collm_hf.data.write_dataset` (Parquet + README
`configs:`), a hub dataset id, or a folder holding one `save_to_disk` `DatasetDict` per config
(`<folder>/queries`, `<folder>/gallery`). `load_splits` reads one config of any dataset that way, and also
single tables (a Parquet file or folder, a `save_to_disk` folder, a `Dataset`): the search app reads its
galleries with it.

Split rule (`pick_split`), everywhere: the split asked for (an error naming the splits there when it is
missing); else the only split; else the first of `val`, `validation`, `test`, `train` that is present; else the
first split. The queries of a split rank over the gallery split of the same name, else over the only gallery
split (CIRCO's `unlabeled2017`, shared by val and test); a gallery with several other splits is ambiguous.

Protocol rule (`infer_protocol`), from the `queries` columns: `subset_ids` -> CIRR; `semantic_aspects` or
`shared_concept` -> CIRCO; `category` or `captions` -> Fashion-IQ; else "standard" (plain recall).

Example:
    >>> bench = load_benchmark("data/cirr", "val")  # doctest: +SKIP
    >>> bench.split, bench.protocol, len(bench.queries), len(bench.gallery)  # doctest: +SKIP
    ('val', 'cirr', 4181, 2297)
"""

import os
from dataclasses import dataclass, replace
from pathlib import Path

from ..data.schema import GALLERY_CONFIG, QUERIES_CONFIG, QUERIES_REFINED_CONFIG
from ._tables import column_names

SPLIT_PREFERENCE = ("val", "validation", "test", "train")  # the default split, when a dataset has several
QUERY_COLUMNS = ("reference_id", "modification_text")  # what makes a `queries` table
GALLERY_COLUMNS = ("image_id", "image")  # what makes a `gallery` table


class DatasetLayoutError(ValueError):
    """A dataset without the config, split or columns asked for; the message names the dataset and what is there."""


def infer_protocol(columns) -> str:
    """The benchmark protocol that the column names of a `queries` table imply.

    Args:
        columns: the column names (e.g. `column_names(queries)`).

    Returns:
        "cirr" (`subset_ids`), "circo" (`semantic_aspects` or `shared_concept`), "fashioniq" (`category` or
        `captions`), else "standard".

    Example:
        >>> infer_protocol(["query_id", "shared_concept"])
        'circo'
    """
    columns = set(columns)
    if "subset_ids" in columns:
        return "cirr"
    if columns & {"semantic_aspects", "shared_concept"}:
        return "circo"
    if columns & {"category", "captions"}:
        return "fashioniq"
    return "standard"


def is_local_path(path) -> bool:
    """Whether `path` names a local file or folder (existing or not) rather than a hub id ("user/name")."""
    path = str(path)
    if os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") != 1:
        return True
    return os.path.isdir(path.split("/")[0])  # "collm-quickstart/model" with collm-quickstart/ here


def _from_hub_or_folder(path: str, read, *args, **kwargs):
    """`read(*args, **kwargs)` of `datasets`, with a hub id that cannot be fetched reported as missing, by name."""
    try:
        return read(*args, **kwargs)
    except ConnectionError as error:  # offline, or the hub is unreachable
        raise FileNotFoundError(f"No dataset at {path!r}: not a local folder, and the hub could not be reached "
                                f"({error}).") from error


def available_configs(path) -> list[str]:
    """Config names of a dataset folder or hub id (its README `configs:` block, or its save_to_disk sub-folders)."""
    import datasets
    from datasets.data_files import EmptyDatasetError

    names = [name for name in (QUERIES_CONFIG, QUERIES_REFINED_CONFIG, GALLERY_CONFIG)
             if os.path.isfile(os.path.join(str(path), name, "dataset_dict.json"))]
    if names:
        return names
    try:
        return list(_from_hub_or_folder(str(path), datasets.get_dataset_config_names, str(path)))
    except EmptyDatasetError:  # a folder without data files: no configs
        return []


def load_splits(source, config: str | None = None) -> dict:
    """All splits of one config of a dataset, read the one way every part of the package reads datasets.

    Args:
        source: a `datasets.DatasetDict`, `Dataset` or dict of lists; a `.parquet` file; a folder of Parquet
            files without a README; a `save_to_disk` folder (`Dataset` or `DatasetDict`); a folder holding a
            `save_to_disk` `DatasetDict` per config; a `write_dataset` folder (Parquet + README `configs:`); or a
            hub dataset id.
        config: the config to read where the dataset names its configs (a dataset with only the default
            config, or a single table, is read as it is).

    Returns:
        {split name: `datasets.Dataset`}. A single table is one split, named by its own `split` or "train"
        (as `datasets` names the split of a bare data file).
    """
    import datasets

    if isinstance(source, datasets.DatasetDict):
        return dict(source)
    if isinstance(source, dict):
        source = datasets.Dataset.from_dict(source)
    if isinstance(source, datasets.Dataset):
        return {str(source.split or "train"): source}
    if not isinstance(source, (str, os.PathLike)):
        raise DatasetLayoutError(f"A dataset must be a datasets.Dataset, a DatasetDict or a path, got "
                                 f"{type(source).__name__}.")
    path, local = str(source), Path(source)
    if local.is_file():
        if local.suffix != ".parquet":
            raise DatasetLayoutError(f"{path}: a dataset file must be Parquet (.parquet).")
        return load_splits(datasets.Dataset.from_parquet(path))
    if local.is_dir():
        if config is not None and (local / config / "dataset_dict.json").is_file():
            return dict(datasets.load_from_disk(str(local / config)))
        if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
            return load_splits(datasets.load_from_disk(path))
        parquet_files = sorted(str(p) for p in local.glob("*.parquet"))
        if parquet_files and not (local / "README.md").is_file():
            return load_splits(datasets.Dataset.from_parquet(parquet_files))
    elif is_local_path(path):
        raise FileNotFoundError(f"No dataset at {path!r}: no such file or folder.")
    configs = available_configs(path)
    if not configs:
        raise DatasetLayoutError(f"{path} holds no dataset: no data files there.")
    if config is None and len(configs) == 1:
        config = configs[0]
    if configs != ["default"] and config not in configs:
        raise DatasetLayoutError(f"{path} has no {config!r} config (configs: {configs})." if config is not None else
                                 f"{path} has several configs {configs}: name the one to read.")
    return dict(_from_hub_or_folder(path, datasets.load_dataset, path, config if config in configs else None))


def pick_split(splits: dict, split: str | None = None, name: str = "the dataset"):
    """One split of `splits` by the package's split rule (see the module docstring).

    Args:
        splits: {split name: table}, e.g. from `load_splits`.
        split: the split asked for, or None for the default.
        name: what to call the dataset in an error message.

    Returns:
        (split name, table).
    """
    if split is not None:
        if split not in splits:
            raise DatasetLayoutError(f"{name} has no split {split!r} (splits: {list(splits)}).")
        return split, splits[split]
    if len(splits) > 1:
        split = next((s for s in SPLIT_PREFERENCE if s in splits), None)
    split = split or next(iter(splits))
    return split, splits[split]


@dataclass
class BenchmarkSplit:
    """One split of a benchmark: its queries and the gallery they rank over.

    Args:
        queries: the `queries` (or `queries_refined`) table of the split.
        gallery: the gallery table (`image_id`, `image`; Fashion-IQ adds `category`).
        split: the queries' split name.
        gallery_split: the gallery's split name (CIRCO: `unlabeled2017`).
        name: the benchmark's name (its folder's name, or the hub id).
        refined: whether `queries` is the `queries_refined` config.
    """

    queries: object
    gallery: object
    split: str
    gallery_split: str
    name: str
    refined: bool = False

    @property
    def protocol(self) -> str:
        """The protocol the queries' columns imply (`infer_protocol`)."""
        return infer_protocol(column_names(self.queries))

    def with_images(self, images_dir) -> "BenchmarkSplit":
        """This split with the image paths of an annotation-only (`--no-images`) build resolved against
        `images_dir` (`collm_hf.data.attach_images`)."""
        from ..data.local_images import attach_images

        return replace(self, queries=attach_images(self.queries, images_dir),
                       gallery=attach_images(self.gallery, images_dir))

    def head(self, max_queries: int | None) -> "BenchmarkSplit":
        """This split with only its first `max_queries` queries (None: all); the gallery stays whole, as the
        protocol needs it."""
        if max_queries is None or max_queries >= len(self.queries):
            return self
        return replace(self, queries=self.queries.select(range(max_queries)))


def _check_columns(table, needed, path: str, config: str) -> None:
    missing = [name for name in needed if name not in column_names(table)]
    if missing:
        raise DatasetLayoutError(f"{path} is not a benchmark: its {config!r} config lacks column(s) {missing} "
                                 f"(columns: {column_names(table)}).")


def load_benchmark(path, split: str | None = None, refined: bool = False,
                   gallery_split: str | None = None) -> BenchmarkSplit:
    """The queries of one split of a benchmark and the gallery they rank over.

    Args:
        path: a benchmark folder or hub id (configs `queries`, `gallery`, optional `queries_refined`).
        split: the queries split (e.g. "val", "test1"); None: the split rule's default.
        refined: read `queries_refined` instead of `queries` (an error if the benchmark has none).
        gallery_split: the gallery split; None: the one of the same name, else the only one.

    Returns:
        a `BenchmarkSplit`.

    Example:
        >>> queries, gallery = load_benchmark("data/circo", "val").queries, load_benchmark("data/circo").gallery  # doctest: +SKIP
    """
    path = str(path)
    if is_local_path(path) and not os.path.isdir(path):
        raise FileNotFoundError(f"No benchmark folder at {path!r}" + (": it is a file." if os.path.exists(path) else "."))
    config = QUERIES_REFINED_CONFIG if refined else QUERIES_CONFIG
    configs = available_configs(path)
    missing = [name for name in (config, GALLERY_CONFIG) if name not in configs]
    if missing:
        raise DatasetLayoutError(f"{path} is not a benchmark{' with refined queries' if refined else ''}: it has no "
                                 f"{' or '.join(map(repr, missing))} config (configs: {configs}).")
    split, queries = pick_split(load_splits(path, config), split, f"{path} (config {config!r})")
    gallery_splits = load_splits(path, GALLERY_CONFIG)
    if gallery_split is None and split in gallery_splits:
        gallery_split = split
    elif gallery_split is None and len(gallery_splits) > 1:
        raise DatasetLayoutError(f"{path} gallery has no split {split!r} and several others {list(gallery_splits)}: "
                                 "which gallery the queries rank over is ambiguous.")
    gallery_split, gallery = pick_split(gallery_splits, gallery_split, f"{path} (config {GALLERY_CONFIG!r})")
    _check_columns(queries, QUERY_COLUMNS, path, config)
    _check_columns(gallery, GALLERY_COLUMNS, path, GALLERY_CONFIG)
    name = os.path.basename(os.path.normpath(path)) if is_local_path(path) else path
    return BenchmarkSplit(queries, gallery, split, gallery_split, name, refined)


__all__ = [
    "BenchmarkSplit", "DatasetLayoutError", "SPLIT_PREFERENCE", "available_configs", "infer_protocol",
    "is_local_path", "load_benchmark", "load_splits", "pick_split",
]
