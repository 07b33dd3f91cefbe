"""The files of an index folder: embedding shards, their ids, FAISS indexes and the manifest that names them.

    index/
      manifest.json                                  written last: identity, ids digest, shards, FAISS indexes
      embeddings-00000-<key>.safetensors             (rows, D) float32, one per building process or append
      ids-00000-<key>.json                           the shard's gallery ids, in row order
      faiss-ivf-pq.index                             approximate indexes (FAISS's own writer), if built
      gallery_source.json                            where the images are (written by `collm-hf index`)

A shard's `<key>` is a digest of what it holds (the model identity and its ids), so a new build never
overwrites a file the current manifest names: a reader sees the old index or the new one, never a mix. Every
file is written to a temporary name and renamed; the manifest is replaced last, then files no manifest names
(an older build's, or a killed build's temporaries) are removed. One writer at a time holds `folder_lock`.

Shards are plain safetensors files, written row block by row block through a memory map (a shard never sits
whole in memory) and read back memory-mapped (`open_shard`): the OS pages rows in as search streams over them.
"""

import contextlib
import hashlib
import json
import os
import re
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from ...utils.atomic import atomic_write, atomic_write_json
from .identity import GalleryIdentity, ids_digest

MANIFEST_FILE = "manifest.json"
FORMAT = "collm-gallery-index"
VERSION = 2
_WRITE_ROWS = 65536  # rows copied per block when a shard is written
_OWN_FILES = re.compile(r"^(embeddings-\d{5}-[0-9a-f]+\.safetensors|ids-\d{5}-[0-9a-f]+\.json|faiss-[a-z-]+\.index)$")
_TEMPORARY = re.compile(r"^\.(embeddings-|ids-|faiss-|manifest\.json|gallery_source\.json).*\.tmp$")


class IndexFolderError(ValueError):
    """An index folder whose files are missing, damaged or do not agree with its manifest."""


def shard_key(identity: dict | None, ids_sha256: str) -> str:
    """12 hex digits naming a shard by what it holds (model identity and ids)."""
    spec = json.dumps({"identity": identity, "ids": ids_sha256}, sort_keys=True)
    return hashlib.sha256(spec.encode("utf-8")).hexdigest()[:12]


def shard_files(position: int, key: str) -> tuple[str, str]:
    """The (embeddings, ids) file names of shard number `position`."""
    return f"embeddings-{position:05d}-{key}.safetensors", f"ids-{position:05d}-{key}.json"


def _header_bytes(rows: int, dim: int, metadata: dict) -> bytes:
    """A safetensors header for one (rows, dim) float32 tensor `embeddings`, byte for byte as `save_file` writes it."""
    header = {"__metadata__": dict(sorted(metadata.items())),
              "embeddings": {"dtype": "F32", "shape": [rows, dim], "data_offsets": [0, rows * dim * 4]}}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


class ShardWriter:
    """Fill a (rows, dim) float32 safetensors shard block by block, then move it into place atomically.

    Example:
        >>> with ShardWriter("out/embeddings.safetensors", rows=4, dim=2, metadata={}) as shard:  # doctest: +SKIP
        ...     shard.write(0, torch.ones(4, 2))
    """

    def __init__(self, path: str | os.PathLike, rows: int, dim: int, metadata: dict):
        self.path, self.rows, self.dim = Path(path), rows, dim
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        header = _header_bytes(rows, dim, {k: str(v) for k, v in metadata.items()})
        with os.fdopen(fd, "wb") as handle:
            handle.write(header)
            handle.truncate(len(header) + rows * dim * 4)
        self._data = (np.memmap(self.tmp, dtype="<f4", mode="r+", offset=len(header), shape=(rows, dim))
                      if rows else None)

    def write(self, start: int, block: torch.Tensor) -> None:
        """Rows [start, start + len(block)) of the shard. block: (n, dim)."""
        block = block.detach().to("cpu", torch.float32).numpy()
        if block.ndim != 2 or block.shape[1] != self.dim or start < 0 or start + len(block) > self.rows:
            raise ValueError(f"A ({len(block)}, {block.shape[-1]}) block at row {start} does not fit a "
                             f"({self.rows}, {self.dim}) shard.")
        self._data[start:start + len(block)] = block

    def close(self) -> Path:
        if self._data is not None:
            self._data.flush()
            self._data = None
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._data = None
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        self.close() if kind is None else self.abort()


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """(the safetensors header of a shard, the byte offset of its data); `IndexFolderError` when it is damaged."""
    try:
        with open(path, "rb") as handle:
            length = struct.unpack("<Q", handle.read(8))[0]
            if length > 100 * 2**20:
                raise ValueError("header too large")
            header = json.loads(handle.read(length))
        info = header["embeddings"]
        rows, dim = info["shape"]
        start, end = info["data_offsets"]
        if info["dtype"] != "F32" or end - start != rows * dim * 4:
            raise ValueError("not one float32 matrix")
    except (OSError, ValueError, KeyError, TypeError, struct.error) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise IndexFolderError(f"{path} is not a readable embeddings shard ({error}).") from error
    offset = 8 + length + start
    size = os.path.getsize(path)
    if size != offset + rows * dim * 4:
        raise IndexFolderError(f"{path} is {size} bytes, not the {offset + rows * dim * 4} its header says: "
                               "the file is truncated or damaged.")
    return header, offset


def open_shard(path: str | os.PathLike, mmap: bool = True) -> tuple[torch.Tensor, dict]:
    """A shard's (rows, D) float32 embeddings, memory-mapped copy-on-write (or read into memory), and its metadata."""
    header, offset = read_header(path)
    rows, dim = header["embeddings"]["shape"]
    if rows == 0:
        return torch.empty(0, dim), header.get("__metadata__", {})
    data = np.memmap(path, dtype="<f4", mode="c", offset=offset, shape=(rows, dim))  # writes stay private
    tensor = torch.from_numpy(data) if mmap else torch.from_numpy(np.array(data))
    return tensor, header.get("__metadata__", {})


def file_sha256(path: str | os.PathLike, block: int = 16 * 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_ids(path: str | os.PathLike, ids: list[str]) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(ids, handle)

    atomic_write(path, write)


def read_ids(path: str | os.PathLike) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            ids = json.load(handle)
    except json.JSONDecodeError as error:
        raise IndexFolderError(f"{path} is not valid JSON ({error}): the index folder is damaged.") from error
    if not isinstance(ids, list):
        raise IndexFolderError(f"{path} does not hold a list of ids.")
    return [str(i) for i in ids]


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of an index folder; `FileNotFoundError` when there is none, `IndexFolderError` when damaged."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not a gallery index folder (GalleryIndex.save or "
                                "`collm-hf index` writes one).")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise IndexFolderError(f"{path} is not valid JSON ({error}).") from error
    if manifest.get("format") != FORMAT:
        raise IndexFolderError(f"{path} is not a gallery index manifest.")
    if manifest.get("version") != VERSION:
        raise IndexFolderError(f"{path} has format version {manifest.get('version')}, this package reads version "
                               f"{VERSION}: rebuild the index (--rebuild-index, or rebuild=True).")
    return manifest


def write_manifest(folder: str | os.PathLike, manifest: dict) -> None:
    atomic_write_json(Path(folder) / MANIFEST_FILE, dict(manifest, format=FORMAT, version=VERSION), indent=1,
                      sort_keys=True)


def listed_files(manifest: dict) -> set[str]:
    names = {name for shard in manifest.get("shards", []) for name in (shard["embeddings"], shard["ids"])}
    return names | {entry["file"] for entry in manifest.get("approximate", {}).values()}


def remove_unlisted(folder: str | os.PathLike, manifest: dict) -> None:
    """Delete the index files (and temporaries of killed writers) that `manifest` does not name."""
    keep = listed_files(manifest)
    for entry in os.scandir(folder):
        if entry.is_file() and entry.name not in keep and (_OWN_FILES.match(entry.name) or _TEMPORARY.match(entry.name)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(entry.path)


def _identity_dict(identity: GalleryIdentity | None) -> dict | None:
    return None if identity is None else identity.to_dict()


def write_shard(folder: Path, position: int, embeddings: torch.Tensor, ids: list[str],
                identity: GalleryIdentity | None) -> dict:
    """Write one shard (embeddings + ids) into `folder`; return its manifest entry."""
    digest = ids_digest(ids)
    embeddings_name, ids_name = shard_files(position, shard_key(_identity_dict(identity), digest))
    metadata = {"format": "collm-gallery-index-shard", "num_images": len(ids), "ids_sha256": digest}
    with ShardWriter(folder / embeddings_name, len(ids), embeddings.shape[1], metadata) as writer:
        for start in range(0, len(ids), _WRITE_ROWS):
            writer.write(start, embeddings[start:start + _WRITE_ROWS])
    write_ids(folder / ids_name, ids)
    return shard_entry(folder, embeddings_name, ids_name, ids, digest)


def shard_entry(folder: Path, embeddings_name: str, ids_name: str, ids: list[str], digest: str) -> dict:
    return {"embeddings": embeddings_name, "ids": ids_name, "num_images": len(ids), "ids_sha256": digest,
            "sha256": file_sha256(folder / embeddings_name)}


def new_manifest(identity, ids, dim, shards, approximate_entries=None) -> dict:
    return {"identity": _identity_dict(identity), "num_images": len(ids), "dim": dim, "ids_sha256": ids_digest(ids),
            "shards": shards, "approximate": approximate_entries or {}}


def write_index(folder: str | os.PathLike, blocks, ids: list[str], dim: int,
                identity: GalleryIdentity | None = None) -> dict:
    """Write an index folder from embeddings computed elsewhere, one (n_i, D) block at a time (a single shard,
    never whole in memory), under the folder's lock; returns the manifest. `GalleryIndex.load` opens it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digest = ids_digest(ids)
    embeddings_name, ids_name = shard_files(0, shard_key(_identity_dict(identity), digest))
    metadata = {"format": "collm-gallery-index-shard", "num_images": len(ids), "ids_sha256": digest}
    with folder_lock(folder):
        with ShardWriter(folder / embeddings_name, len(ids), dim, metadata) as writer:
            start = 0
            for block in blocks:
                writer.write(start, torch.as_tensor(block))
                start += len(block)
            if start != len(ids):
                raise ValueError(f"The blocks hold {start} rows for {len(ids)} ids.")
        write_ids(folder / ids_name, ids)
        manifest = new_manifest(identity, ids, dim, [shard_entry(folder, embeddings_name, ids_name, ids, digest)])
        write_manifest(folder, manifest)
        remove_unlisted(folder, manifest)
    return manifest


def folder_lock(folder: str | os.PathLike, timeout: float = -1):
    """An exclusive lock for writing `folder` (a hidden `.<name>.lock` beside it; released if its holder dies)."""
    from filelock import FileLock

    folder = Path(folder).absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder.parent / f".{folder.name}.lock"), timeout=timeout)


__all__ = ["FORMAT", "IndexFolderError", "MANIFEST_FILE", "ShardWriter", "VERSION", "file_sha256", "folder_lock",
           "listed_files", "new_manifest", "open_shard", "read_header", "read_ids", "read_manifest", "remove_unlisted",
           "shard_entry", "shard_files", "shard_key", "write_ids", "write_index", "write_manifest", "write_shard"]
