"""Stream rows into a Parquet dataset folder with a dataset card, atomically; optionally push it to the hub.

`write_dataset` is the one path every builder (CIRR, CIRCO, Fashion-IQ, MTCIR, pairs, the synthetic world)
writes through. Rows are consumed one at a time and flushed in small row groups, so memory stays flat
however large the dataset grows. The folder is built beside `output_dir` and renamed into place only
when complete: a crash or Ctrl-C never leaves a half dataset at `output_dir`.

Layout of a finished folder:
    README.md                                    # YAML: configs (data_files per split), dataset_info, license
    <config>/<split>-00000-of-00002.parquet      # image bytes embedded ({"bytes", "path"} structs)

so that `datasets.load_dataset(output_dir, "<config>", split="<split>")` returns the exact `Features`.

Example:
    >>> from collm_hf.data.schema import PAIRS_FEATURES
    >>> rows = [{"image_id": "0", "image": "cat.png", "caption": "a cat"}]
    >>> write_dataset("out/pairs", {"pairs": {"train": rows}}, {"pairs": PAIRS_FEATURES})  # doctest: +SKIP
"""

import io
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features, Image
from datasets.features.features import encode_nested_example
from huggingface_hub import HfApi

from .card import render_card
from .schema import image_columns

# Row groups of ~100 image rows (what `datasets.push_to_hub` uses for images) or this many bytes, whichever
# comes first: the only rows held in memory at any time.
ROW_GROUP_ROWS = 100
ROW_GROUP_BYTES = 64 * 1024 * 1024
BUILD_MARKER = "collm_hf_dataset: true"
# Datasets larger than this are pushed with `HfApi.upload_large_folder`: one commit of many GB is slow to retry
# from scratch and can exceed the hub's limits on a single commit.
LARGE_FOLDER_BYTES = 5 * 2**30


class DatasetWriteError(ValueError):
    """A row cannot be written (wrong columns, wrong types, unreadable image); the message names it."""


class HubPushError(RuntimeError):
    """The dataset was written locally but could not be uploaded; the message names the folder and the repo."""


def write_dataset(
    output_dir: str | os.PathLike,
    configs: Mapping[str, Mapping[str, Iterable[dict]]],
    features: Mapping[str, Features],
    card: dict | None = None,
    *,
    rows_per_shard: int = 1000,
    push_to_hub: str | None = None,
    overwrite: bool = True,
) -> Path:
    """Write `configs` as Parquet shards plus a README.md dataset card, atomically.

    Args:
        output_dir: the finished dataset folder. Built in a hidden temporary folder beside it and renamed
            into place when complete. An existing folder is replaced only if it is empty or a previous
            build of this writer (and `overwrite`), never an unrelated folder.
        configs: {config_name: {split_name: rows}}; rows is any iterable of dicts (a generator is
            streamed, never materialised). Image columns take a PIL image, raw encoded bytes, a file path or an
            archive member (`utils.archives.ArchiveMember`; its bytes are embedded), a `{"bytes", "path"}` dict,
            or None. A dict with `bytes=None`
            keeps only the path (annotation-only builds, see `local_images.attach_images`).
            Columns missing from a row are written as null; unknown columns are an error.
        features: {config_name: datasets.Features} for every config in `configs`.
        card: optional card fields: `pretty_name`, `license`, `citation`, `description`, `homepage`,
            `source`, `extra` (markdown), `dropped` ({reason: [items]} or a list of items), `tags`.
        rows_per_shard: rows per Parquet file.
        push_to_hub: a dataset repo id; the finished folder is uploaded (`push_folder_to_hub`).
        overwrite: replace a previous build at `output_dir`.

    Returns:
        The path of the finished folder.
    """
    output_dir = Path(output_dir).absolute()
    _check_destination(output_dir, overwrite)
    missing = [name for name in configs if name not in features]
    if missing:
        raise DatasetWriteError(f"no features given for config(s) {missing}")
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(output_dir)
    temp_dir = output_dir.parent / f".{output_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temp_dir.mkdir()
    try:
        split_files: dict[str, dict[str, list[str]]] = {}
        split_counts: dict[str, dict[str, int]] = {}
        for config_name, splits in configs.items():
            config_features = Features(features[config_name])
            split_files[config_name], split_counts[config_name] = {}, {}
            for split_name, rows in splits.items():
                files, count = _write_split(temp_dir, config_name, split_name, rows, config_features, rows_per_shard)
                split_counts[config_name][split_name] = count
                if count:  # `datasets` cannot load an empty split: it is listed in the card's table only
                    split_files[config_name][split_name] = files
        split_files = {name: files for name, files in split_files.items() if files}
        readme = render_card({name: Features(features[name]) for name in split_files}, split_files, split_counts,
                             card or {}, BUILD_MARKER)
        (temp_dir / "README.md").write_text(readme, encoding="utf-8")
        _move_into_place(temp_dir, output_dir)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    if push_to_hub:
        try:
            push_folder_to_hub(output_dir, push_to_hub)
        except Exception as error:  # noqa: BLE001 - network, auth, quota: the local build is kept and named
            raise HubPushError(f"the dataset was built at {output_dir}, but uploading it to {push_to_hub!r} failed "
                               f"({type(error).__name__}: {error}); retry with push_folder_to_hub") from error
    return output_dir


def folder_bytes(folder: str | os.PathLike) -> int:
    """Total size of the files under `folder`."""
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def push_folder_to_hub(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None, token=None,
                       api: HfApi | None = None, large_folder_bytes: int = LARGE_FOLDER_BYTES) -> str:
    """Upload a finished dataset folder to the hub as a dataset repo (created if needed); return its URL.

    A folder over `large_folder_bytes` goes through `HfApi.upload_large_folder` (many small resumable commits,
    several workers; rerunning after an interruption skips what was uploaded; its progress is kept in
    `<folder>/.cache/huggingface/`). huggingface_hub releases that no longer have it make `upload_folder` do the
    same (with `hf_xet`, the default: batched commits, resumed by rerunning), so it is used there.

    Args:
        folder: the dataset folder (as `write_dataset` leaves it).
        repo_id: the dataset repo.
        private: the visibility of a repo created here (None: the account's default).
        token: for the `HfApi` made here.
        api: the `HfApi` client to use (default: a new one with `token`).
        large_folder_bytes: the size above which the large-folder upload is used.
    """
    api = api or HfApi(token=token)
    if folder_bytes(folder) > large_folder_bytes and hasattr(api, "upload_large_folder"):
        api.upload_large_folder(repo_id=repo_id, folder_path=str(folder), repo_type="dataset", private=private)
    else:
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset",
                          commit_message="Upload dataset built with collm_hf.data")
    return f"https://huggingface.co/datasets/{repo_id}"


def _write_split(root: Path, config_name: str, split_name: str, rows: Iterable[dict], features: Features,
                 rows_per_shard: int) -> tuple[list[str], int]:
    """Stream one split into `<config>/<split>-XXXXX-of-YYYYY.parquet`; return (relative file names, row count)."""
    _check_name(config_name, "config")
    _check_name(split_name, "split")
    (root / config_name).mkdir(exist_ok=True)
    schema = features.arrow_schema
    images = image_columns(features)
    shard_paths: list[Path] = []
    writer, in_shard, count = None, 0, 0
    buffer, buffer_bytes = [], 0

    def flush():
        nonlocal buffer, buffer_bytes
        if buffer:
            try:
                table = pa.Table.from_pylist(buffer, schema=schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as error:
                raise DatasetWriteError(f"{config_name}/{split_name} rows {count - len(buffer)}..{count - 1}: "
                                        f"do not match the features ({error})") from error
            writer.write_table(table)
        buffer, buffer_bytes = [], 0

    try:
        for row in rows:
            if writer is None or in_shard == rows_per_shard:
                flush()
                if writer is not None:
                    writer.close()
                shard_paths.append(root / config_name / f"{split_name}-{len(shard_paths):05d}.tmp.parquet")
                writer, in_shard = pq.ParquetWriter(shard_paths[-1], schema), 0
            encoded, size = _encode_row(row, features, images, f"{config_name}/{split_name}[{count}]")
            buffer.append(encoded)
            buffer_bytes += size
            in_shard += 1
            count += 1
            if len(buffer) >= ROW_GROUP_ROWS or buffer_bytes >= ROW_GROUP_BYTES:
                flush()
        flush()
    finally:
        if writer is not None:
            writer.close()
    names = []
    for index, path in enumerate(shard_paths):
        final = path.with_name(f"{split_name}-{index:05d}-of-{len(shard_paths):05d}.parquet")
        os.replace(path, final)
        names.append(f"{config_name}/{final.name}")
    return names, count


def _encode_row(row: dict, features: Features, images: list[str], where: str) -> tuple[dict, int]:
    if not isinstance(row, Mapping):
        raise DatasetWriteError(f"{where}: rows must be dicts, got {type(row).__name__}")
    unknown = [key for key in row if key not in features]
    if unknown:
        raise DatasetWriteError(f"{where}: unknown column(s) {unknown}; features are {list(features)}")
    encoded, size = {}, 0
    for name, feature in features.items():
        value = row.get(name)
        if name in images:
            value = _encode_image(value, f"{where}.{name}")
            size += len(value["bytes"]) if value and value["bytes"] else 0
        elif value is not None:
            value = encode_nested_example(feature, value)  # e.g. int ids -> "123" for string columns
        encoded[name] = value
        size += 64
    return encoded, size


def _encode_image(value, where: str) -> dict | None:
    """PIL image / bytes / file path / {"bytes", "path"} dict -> the Image storage struct with bytes embedded."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)) or hasattr(value, "read_bytes"):  # a file, or an archive member
        path = Path(value) if isinstance(value, (str, os.PathLike)) else value
        try:
            return {"bytes": path.read_bytes(), "path": path.name}
        except (OSError, KeyError, ValueError) as error:
            raise DatasetWriteError(f"{where}: cannot read image file {path} ({error})") from error
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value), "path": None}
    if isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
        if data is None and path is None:
            raise DatasetWriteError(f"{where}: an image dict needs 'bytes' or 'path'")
        return {"bytes": data, "path": None if path is None else str(path)}
    try:
        return Image().encode_example(value)  # PIL image or numpy array -> PNG/TIFF or original-format bytes
    except Exception as error:  # noqa: BLE001 - any encoder failure becomes one named error
        raise DatasetWriteError(f"{where}: cannot encode image of type {type(value).__name__} ({error})") from error


def _check_name(name: str, kind: str) -> None:
    allowed = "_.-" if kind == "config" else "_."  # `datasets` split names are \w+(\.\w+)*
    if not name or not all(ch.isalnum() or ch in allowed for ch in name) or name[0] in ".-":
        raise DatasetWriteError(f"{kind} name {name!r} must be letters, digits or one of {list(allowed)}")


def _check_destination(output_dir: Path, overwrite: bool) -> None:
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder")
    if not any(output_dir.iterdir()):
        return
    readme = output_dir / "README.md"
    ours = readme.is_file() and BUILD_MARKER in readme.read_text(encoding="utf-8", errors="replace")
    if not ours:
        raise FileExistsError(f"{output_dir} exists and is not a dataset built by collm_hf; "
                              "choose another --output-dir or remove it")
    if not overwrite:
        raise FileExistsError(f"{output_dir} already holds a dataset; pass overwrite=True to replace it")


def _remove_stale_partials(output_dir: Path) -> None:
    """Delete temporary folders that a killed build (SIGKILL, power loss) left beside `output_dir`."""
    for folder in output_dir.parent.glob(f".{output_dir.name}.partial-*"):
        try:
            pid = int(folder.name.rsplit(".partial-", 1)[1].split("-")[0])
            os.kill(pid, 0)  # raises if no such process: the build that owned the folder is gone
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue


def _move_into_place(temp_dir: Path, output_dir: Path) -> None:
    """Rename the finished folder to `output_dir`; a previous build is swapped out, then deleted."""
    if output_dir.exists() and any(output_dir.iterdir()):
        old = output_dir.parent / f".{output_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(output_dir, old)
        os.replace(temp_dir, output_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if output_dir.exists():
            output_dir.rmdir()
        os.replace(temp_dir, output_dir)


def encode_image_bytes(image, format: str = "PNG") -> bytes:
    """Encode a PIL image to bytes (helper for generators that want to control the format)."""
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()
