"""`GalleryIndex`: a gallery's L2-normalised embeddings, their ids and what made them; saved, reopened, searched.

    gallery images --model.get_image_embeds--> shards of (n_i, D) embeddings + N ids --search(queries, k)--> ranked ids

An index lives in memory (built from a tensor or a dataset) or in a folder (`save`, `build`, `load`): a folder's
shards are memory-mapped, exact search streams over them, and approximate FAISS indexes saved beside them are
reopened without training. Every saved index records its `GalleryIdentity` and its ids digest; `load` refuses an
index made by another model or holding another gallery than the caller's.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from . import approximate as approx
from .exact import faiss_available, search_faiss, search_torch
from .identity import GalleryIdentity, IndexMismatchError, check_identity, check_ids, ids_digest
from .storage import (IndexFolderError, file_sha256, folder_lock, new_manifest, open_shard, read_ids, read_manifest,
                      remove_unlisted, write_manifest, write_shard)

BACKENDS = ("auto", "torch", "faiss")
LEGACY_FILES = ("gallery_embeddings.safetensors", "gallery_ids.json")  # collm-hf 0.2: no record of the model
_WRITE_ROWS = 65536  # rows per block added to FAISS


@dataclass
class SearchResult:
    """Top-k of each query.

    Args:
        scores: (queries, k) similarities, best first; `-inf` where fewer than k images were left.
        indices: (queries, k) gallery positions; `-1` where fewer than k images were left.
        ids: per query, the gallery ids of the valid positions, best first.
    """

    scores: torch.Tensor
    indices: torch.Tensor
    ids: list[list[str]]


def check_finite(embeddings: torch.Tensor, what: str, ids=None, block_bytes: int = 4 * 2**20):
    """Raise a ValueError naming the first row holding NaN or inf (checked `block_bytes` of rows at a time, so the
    check's temporaries, about twice `block_bytes`, stay small whatever the number of rows)."""
    block_rows = max(1, block_bytes // max(1, 4 * embeddings.shape[-1]))
    first, count = None, 0
    for start in range(0, embeddings.shape[0], block_rows):
        bad = ~torch.isfinite(embeddings[start:start + block_rows]).all(dim=-1)
        if bool(bad.any()):
            first = start + int(bad.nonzero()[0]) if first is None else first
            count += int(bad.sum())
    if first is not None:
        name = f"id {ids[first]!r}" if ids is not None else f"row {first}"
        raise ValueError(f"{what} has NaN or infinite values ({count} rows, first: {name}).")


def check_unique_ids(ids) -> list[str]:
    ids = [str(i) for i in ids]
    seen = set()
    for image_id in ids:
        if image_id in seen:
            raise ValueError(f"Gallery id {image_id!r} appears more than once; gallery ids must be unique.")
        seen.add(image_id)
    return ids


class GalleryIndex:
    """L2-normalised gallery embeddings with their ids; exact (torch / FAISS) or approximate (FAISS) search.

    Args:
        embeddings: (N, D) float tensor, one row per gallery image (finite values only).
        ids: N unique ids (stored as strings).
        identity: what made the embeddings (`gallery_identity(model, processor)`), recorded when saved.

    Example:

    ```python
    >>> import torch
    >>> index = GalleryIndex(torch.eye(3), ["a", "b", "c"])
    >>> index.search(torch.tensor([[0.0, 1.0, 0.2]]), k=2, backend="torch").ids
    [['b', 'c']]

    ```
    """

    def __init__(self, embeddings: torch.Tensor, ids, identity: GalleryIdentity | None = None):
        if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
            raise ValueError(f"embeddings must be a 2-D tensor (N, D), got {getattr(embeddings, 'shape', embeddings)!r}.")
        ids = check_unique_ids(ids)
        if len(ids) != embeddings.shape[0]:
            raise ValueError(f"{embeddings.shape[0]} embeddings but {len(ids)} ids.")
        if len(ids) == 0:
            raise ValueError("The gallery is empty.")
        embeddings = embeddings.detach().float().contiguous()
        check_finite(embeddings, "Gallery embeddings", ids)
        self._setup([embeddings], ids, identity)

    def _setup(self, shards, ids, identity, folder=None, manifest=None):
        self._shards = list(shards)  # each (n_i, D), in memory or memory-mapped
        self.ids = ids
        self.identity = identity
        self.folder = None if folder is None else Path(folder)
        self._manifest = manifest
        self._approximate = {}  # kind -> FAISS index (reopened from the folder, or built in memory)
        self._approximate_params = {}  # kind -> parameters of the ones built here
        self._position = None
        self._joined = None

    @classmethod
    def _from_parts(cls, shards, ids, identity, folder=None, manifest=None) -> "GalleryIndex":
        index = cls.__new__(cls)
        index._setup(shards, ids, identity, folder, manifest)
        return index

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        where = f", folder={str(self.folder)!r}" if self.folder is not None else ""
        return f"GalleryIndex(images={len(self)}, dim={self.dim}, shards={len(self._shards)}{where})"

    @property
    def dim(self) -> int:
        return self._shards[0].shape[1]

    @property
    def position(self) -> dict[str, int]:
        """Gallery id -> row (built on first use)."""
        if self._position is None:
            self._position = {image_id: i for i, image_id in enumerate(self.ids)}
        return self._position

    @property
    def embeddings(self) -> torch.Tensor:
        """All (N, D) embeddings as one tensor: the shard itself when there is one (memory-mapped if loaded so),
        else the shards joined in memory. Prefer `vectors(positions)` and `search`, which never join them."""
        if len(self._shards) == 1:
            return self._shards[0]
        if self._joined is None:
            self._joined = torch.cat(self._shards)
        return self._joined

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def blocks(self) -> list[tuple[int, torch.Tensor]]:
        """[(first row, (n_i, D) shard), ...] in gallery order."""
        out, offset = [], 0
        for shard in self._shards:
            out.append((offset, shard))
            offset += shard.shape[0]
        return out

    def vectors(self, positions, out: torch.Tensor | None = None) -> torch.Tensor:
        """The embeddings of gallery rows `positions` (any order), reading only those rows. Returns (n, D), written
        into `out` when given (a buffer reused across calls saves faulting in fresh memory each time)."""
        positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        device = self._shards[0].device
        if out is None:
            out = torch.empty(len(positions), self.dim, device=device)
        if len(self._shards) == 1:
            return torch.index_select(self._shards[0], 0, positions.to(device), out=out)
        for offset, shard in self.blocks():
            inside = (positions >= offset) & (positions < offset + shard.shape[0])
            if bool(inside.any()):
                out[inside.to(device)] = shard.index_select(0, (positions[inside] - offset).to(device))
        return out

    def to(self, device) -> "GalleryIndex":
        """Move the embeddings (torch search then runs on that device; memory-mapped shards are read in)."""
        self._shards = [shard.to(device) for shard in self._shards]
        self._joined = None
        return self

    def select(self, ids) -> "GalleryIndex":
        """A new in-memory index with only `ids`, in the given order (e.g. one Fashion-IQ category's gallery)."""
        ids = [str(i) for i in ids]
        missing = [i for i in ids if i not in self.position]
        if missing:
            raise KeyError(f"{len(missing)} ids are not in the gallery, e.g. {missing[:5]}.")
        return GalleryIndex(self.vectors([self.position[i] for i in ids]), ids, self.identity)

    # ------------------------------------------------------------------------------------------------------
    # Folders
    # ------------------------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write the index into `folder` (shards, ids, the FAISS indexes built so far, manifest last), holding the
        folder's lock; files of a previous index there are removed once the new manifest is in place. The index
        is then attached to `folder` (`append` and `build_approximate` write there)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with folder_lock(folder):
            shards = [write_shard(folder, position, shard, self.ids[offset:offset + shard.shape[0]], self.identity)
                      for position, (offset, shard) in enumerate(self.blocks())]
            entries = {}
            saved = {kind: entry for kind, entry in (self._manifest or {}).get("approximate", {}).items()}
            for kind in sorted(set(saved) | set(self._approximate)):
                if kind in saved:  # from the folder it was opened from, read whole (a memory-mapped one cannot be copied)
                    faiss_index = approx.read(self.folder / saved[kind]["file"], kind, mmap=False)
                    params = saved[kind]["params"]
                else:
                    faiss_index, params = self._approximate[kind], self._approximate_params.get(kind, {})
                entries[kind] = self._write_approximate(folder, kind, faiss_index, params)
            manifest = new_manifest(self.identity, self.ids, self.dim, shards, entries)
            write_manifest(folder, manifest)
            remove_unlisted(folder, manifest)
        self.folder, self._manifest, self._approximate = folder, manifest, {}  # reopened from `folder` when used
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, identity: GalleryIdentity | None = None, ids=None, mmap: bool = True,
             verify: bool = False, device=None) -> "GalleryIndex":
        """Open an index folder, its shards memory-mapped.

        Args:
            folder: written by `save`, `build` or `collm-hf index`.
            identity: the model the caller will use it with (`gallery_identity(model, processor)`); another one
                raises `IndexMismatchError` naming both.
            ids: the gallery the caller expects (in order); another one raises `IndexMismatchError`.
            mmap: memory-map the shards (False: read them into memory).
            verify: also check every shard's sha256 (reads every byte).
            device: move the embeddings there (e.g. "cuda"); default: stay memory-mapped on the CPU.
        """
        folder = Path(folder)
        if not (folder / "manifest.json").is_file() and all((folder / name).is_file() for name in LEGACY_FILES):
            raise IndexFolderError(f"The gallery index in {folder} was written by collm-hf 0.2 or older, which did "
                                   "not record the model that made it: rebuild it (--rebuild-index, or rebuild=True).")
        manifest = read_manifest(folder)
        recorded = GalleryIdentity.from_dict(manifest.get("identity"))
        where = f"in {folder}"
        check_identity(recorded, identity, where)
        if ids is not None:
            check_ids(manifest["ids_sha256"], manifest["num_images"], ids, where)
        shards, all_ids = [], []
        for entry in manifest["shards"]:
            embeddings_path, ids_path = folder / entry["embeddings"], folder / entry["ids"]
            for path in (embeddings_path, ids_path):
                if not path.is_file():
                    raise FileNotFoundError(f"{path} not found: the index folder is incomplete (its manifest names it).")
            shard_ids = read_ids(ids_path)
            if len(shard_ids) != entry["num_images"] or ids_digest(shard_ids) != entry["ids_sha256"]:
                raise IndexFolderError(f"{ids_path} does not match {folder / 'manifest.json'} (ids checksum differs): "
                                       "the index folder is damaged.")
            tensor, _ = open_shard(embeddings_path, mmap=mmap)
            if tuple(tensor.shape) != (entry["num_images"], manifest["dim"]):
                raise IndexFolderError(f"{embeddings_path} holds {tuple(tensor.shape)} embeddings, its manifest says "
                                       f"({entry['num_images']}, {manifest['dim']}).")
            if verify and file_sha256(embeddings_path) != entry["sha256"]:
                raise IndexFolderError(f"{embeddings_path} does not match its sha256 in the manifest: it is damaged.")
            shards.append(tensor)
            all_ids += shard_ids
        whole = manifest["shards"][0]["ids_sha256"] if len(shards) == 1 else ids_digest(all_ids) if shards else None
        if whole != manifest["ids_sha256"]:
            raise IndexFolderError(f"The shards of {folder} do not add up to its manifest's gallery (ids checksum differs).")
        check_unique_ids(all_ids)
        index = cls._from_parts(shards, all_ids, recorded, folder, manifest)
        return index.to(device) if device is not None else index

    @property
    def saved_approximate(self) -> tuple[str, ...]:
        """The approximate kinds saved in the index's folder (reopened, not retrained, by `search`)."""
        return tuple(sorted((self._manifest or {}).get("approximate", {})))

    def check(self, identity: GalleryIdentity | None = None, ids=None) -> None:
        """Raise `IndexMismatchError` when this index was made by another model than `identity`, or holds another
        gallery than `ids`."""
        check_identity(self.identity, identity, self._where)
        if ids is not None:
            check_ids(ids_digest(self.ids), len(self), ids, self._where)

    @property
    def _where(self) -> str:
        return f"in {self.folder}" if self.folder is not None else "(in memory)"

    def append(self, embeddings: torch.Tensor, ids, identity: GalleryIdentity | None = None) -> "GalleryIndex":
        """Add images as one new shard; the rest is not touched (saved FAISS indexes get the new rows added, without
        retraining). A folder-backed index writes the shard and a new manifest under the folder's lock.

        Args:
            embeddings: (n, D) embeddings of the new images.
            ids: their n ids, none already in the index.
            identity: what made them; must be the index's own (`IndexMismatchError` otherwise).
        """
        new = GalleryIndex(embeddings, ids, identity)
        if new.dim != self.dim:
            raise ValueError(f"The new embeddings are {new.dim}-d, the index's are {self.dim}-d.")
        if (self.identity is None) != (identity is None) or (identity is not None and self.identity.differences(identity)):
            made = self.identity.describe() if self.identity else "no recorded model"
            raise IndexMismatchError(f"The index {self._where} was made by {made}; the new embeddings by "
                                     f"{identity.describe() if identity else 'no recorded model'}: they cannot be mixed.")
        present = [i for i in new.ids if i in self.position]
        if present:
            raise ValueError(f"{len(present)} of the new ids are already in the index, e.g. {present[:3]}.")
        added = new._shards[0]
        if self.folder is None:
            for kind, faiss_index in self._approximate.items():
                faiss_index.add(added.cpu().numpy())
            self._shards.append(added.to(self._shards[0].device))
        else:
            self._append_to_folder(added, new.ids)
        self.ids = self.ids + new.ids
        self._position, self._joined = None, None
        return self

    def _append_to_folder(self, added: torch.Tensor, ids: list[str]) -> None:
        folder = self.folder
        with folder_lock(folder):
            manifest = self._reread_manifest()
            manifest["shards"].append(write_shard(folder, len(manifest["shards"]), added, ids, self.identity))
            for kind, entry in sorted(manifest["approximate"].items()):
                faiss_index = approx.read(folder / entry["file"], kind, mmap=False)
                faiss_index.add(added.numpy())
                manifest["approximate"][kind] = self._write_approximate(folder, kind, faiss_index, entry["params"],
                                                                        ids=self.ids + ids)
            manifest.update(num_images=len(self.ids) + len(ids), ids_sha256=ids_digest(self.ids + ids))
            write_manifest(folder, manifest)
            remove_unlisted(folder, manifest)
        self._shards.append(open_shard(folder / manifest["shards"][-1]["embeddings"])[0])
        self._manifest, self._approximate = manifest, {}

    def _reread_manifest(self) -> dict:
        manifest = read_manifest(self.folder)
        if manifest["ids_sha256"] != self._manifest["ids_sha256"] or manifest["identity"] != self._manifest["identity"]:
            raise IndexFolderError(f"The index in {self.folder} changed since it was opened: open it again.")
        return manifest

    # ------------------------------------------------------------------------------------------------------
    # Approximate indexes
    # ------------------------------------------------------------------------------------------------------
    def build_approximate(self, kind: str, save: bool = True, **params):
        """Train a FAISS `kind` index ("ivf-flat", "ivf-pq", "hnsw") on a sample of the gallery and add every row.

        A folder-backed index (with `save`) writes it there with FAISS's writer and records it in the manifest,
        then reopens it memory-mapped where FAISS allows. Args: `approximate.default_params` (nlist, sample_size,
        seed, m, nbits, ef_construction). Returns the FAISS index.
        """
        approx.check_kind(kind)
        params = {**approx.default_params(kind, len(self), self.dim), **params}
        sample = None
        if kind != "hnsw":
            sample = self.vectors(approx.sample_positions(len(self), params["sample_size"], params["seed"])).cpu().numpy()
        faiss_index = approx.build(kind, self.dim, sample, self._row_blocks(), params)
        self._approximate_params[kind] = params
        if save and self.folder is not None:
            with folder_lock(self.folder):
                manifest = self._reread_manifest()
                manifest["approximate"][kind] = self._write_approximate(self.folder, kind, faiss_index, params)
                write_manifest(self.folder, manifest)
            self._manifest = manifest
            faiss_index = approx.read(self.folder / manifest["approximate"][kind]["file"], kind)
        self._approximate[kind] = faiss_index
        return faiss_index

    def _row_blocks(self):
        for _, shard in self.blocks():
            for start in range(0, shard.shape[0], _WRITE_ROWS):
                yield shard[start:start + _WRITE_ROWS].cpu().numpy()

    def _write_approximate(self, folder: Path, kind: str, faiss_index, params: dict, ids=None) -> dict:
        name = approx.approximate_file(kind)
        approx.write(faiss_index, folder / name)
        ids = self.ids if ids is None else ids
        return {"file": name, "params": params, "num_images": len(ids), "ids_sha256": ids_digest(ids),
                "sha256": file_sha256(folder / name)}

    def approximate_index(self, kind: str):
        """The FAISS `kind` index: the one saved in the folder (reopened once, no training), else built in memory."""
        approx.check_kind(kind)
        if kind not in self._approximate:
            entry = (self._manifest or {}).get("approximate", {}).get(kind)
            if entry is None:
                return self.build_approximate(kind, save=False)
            if entry["ids_sha256"] != self._manifest["ids_sha256"]:
                raise IndexFolderError(f"{self.folder / entry['file']} does not cover the index's gallery: rebuild it.")
            self._approximate[kind] = approx.read(self.folder / entry["file"], kind)
        return self._approximate[kind]

    # ------------------------------------------------------------------------------------------------------
    # Searching
    # ------------------------------------------------------------------------------------------------------
    def search(self, query_embeds: torch.Tensor, k: int = 50, exclude_ids=None, backend: str = "auto",
               approximate: str | None = None, max_block_bytes: int = 64 * 2**20, chunk_size: int | None = None,
               nprobe: int = 16, ef_search: int = 128, refine: int | None = None) -> SearchResult:
        """The top-k gallery images of each query by inner product.

        Args:
            query_embeds: (Q, D) L2-normalised query embeddings.
            k: results per query (at most the gallery size).
            exclude_ids: optional per-query lists of gallery ids never returned for that query.
            backend: exact search: "torch" (chunked matmuls), "faiss" (`faiss.knn` over each shard), or "auto"
                (torch when the index is on a GPU, else FAISS when installed, else torch).
            approximate: None (exact), or "ivf-flat", "ivf-pq", "hnsw": the saved FAISS index of that kind
                (reopened, not retrained), else one built in memory on first use.
            max_block_bytes: torch backend: largest score block held at once (bounds memory).
            chunk_size: torch backend: gallery rows per block (default: from max_block_bytes).
            nprobe / ef_search: IVF lists probed / HNSW search depth.
            refine: approximate search: re-score refine x k candidates exactly against the stored embeddings
                (default: 16 for "ivf-pq", whose own scores are approximate; none for the others).

        Returns:
            `SearchResult` with (Q, k) scores and indices and the ranked ids per query.
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
        if approximate is not None:
            approx.check_kind(approximate)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        if not isinstance(query_embeds, torch.Tensor) or query_embeds.dim() != 2 or query_embeds.shape[1] != self.dim:
            raise ValueError(f"query_embeds must be (queries, {self.dim}), got {getattr(query_embeds, 'shape', query_embeds)}.")
        query_embeds = query_embeds.detach().float()
        check_finite(query_embeds, "Query embeddings")
        excluded = self._excluded_positions(exclude_ids, query_embeds.shape[0])
        k = min(k, len(self))
        on_gpu = self._shards[0].device.type != "cpu"
        use_faiss = backend == "faiss" or approximate is not None or (backend == "auto" and not on_gpu and faiss_available())
        if use_faiss and not faiss_available():
            raise ImportError("backend='faiss' / approximate search needs FAISS: pip install faiss-cpu (or faiss-gpu), "
                              "or use backend='torch'.")
        if approximate is not None:
            scores, indices = self._search_approximate(query_embeds, k, excluded, approximate, nprobe, ef_search, refine)
        elif use_faiss:
            scores, indices = search_faiss(self.blocks(), query_embeds, k, excluded)
        else:
            scores, indices = search_torch(self.blocks(), query_embeds, k, excluded, max_block_bytes, chunk_size)
        ids = [[self.ids[i] for i in row if i >= 0] for row in indices.tolist()]
        return SearchResult(scores=scores, indices=indices, ids=ids)

    def _excluded_positions(self, exclude_ids, num_queries: int) -> list[list[int]]:
        if exclude_ids is None:
            return [[] for _ in range(num_queries)]
        if len(exclude_ids) != num_queries:
            raise ValueError(f"exclude_ids has {len(exclude_ids)} entries for {num_queries} queries.")
        out = []
        for row in exclude_ids:
            if row is None:
                out.append([])
            elif isinstance(row, (str, int)):
                raise TypeError("exclude_ids must hold one list of ids per query (e.g. [[ref_id], ...]).")
            else:
                out.append(sorted({self.position[str(i)] for i in row if str(i) in self.position}))
        return out

    def _search_approximate(self, queries, k, excluded, kind, nprobe, ef_search, refine):
        faiss_index = self.approximate_index(kind)
        refine = approx.DEFAULT_REFINE.get(kind, 1) if refine is None else max(1, refine)
        extra = max((len(e) for e in excluded), default=0)
        fetch = min(len(self), (k + extra) * refine)
        scores, indices = approx.search(faiss_index, kind, queries.cpu().numpy(), fetch, nprobe, ef_search)
        scores, indices = torch.from_numpy(scores), torch.from_numpy(indices).long()  # (Q, fetch)
        if refine > 1:  # exact scores of the candidates, from the stored embeddings, a few queries at a time
            block = max(1, (32 * 2**20) // (4 * fetch * self.dim))  # queries whose candidates fit 32 MB
            buffer = torch.empty(min(block, len(queries)) * fetch, self.dim, device=self._shards[0].device)
            for q0 in range(0, len(queries), block):
                candidates = indices[q0:q0 + block]  # (b, fetch)
                rows = self.vectors(candidates.clamp(min=0), out=buffer[:candidates.numel()])
                rows = rows.cpu().view(*candidates.shape, self.dim)  # (b, fetch, D)
                scores[q0:q0 + block] = torch.bmm(rows, queries[q0:q0 + block].cpu().unsqueeze(2)).squeeze(2)
        scores[indices < 0] = float("-inf")
        for row, banned in enumerate(excluded):
            if banned:
                scores[row, torch.isin(indices[row], torch.tensor(banned, dtype=torch.long))] = float("-inf")
        top, order = scores.topk(min(k, scores.shape[1]), dim=1)
        indices = indices.gather(1, order)
        if top.shape[1] < k:
            pad = k - top.shape[1]
            top = torch.cat([top, torch.full((len(top), pad), float("-inf"))], dim=1)
            indices = torch.cat([indices, torch.full((len(indices), pad), -1, dtype=torch.long)], dim=1)
        indices[torch.isneginf(top)] = -1
        return top, indices

    # ------------------------------------------------------------------------------------------------------
    # Building from images (see `building.py`)
    # ------------------------------------------------------------------------------------------------------
    @classmethod
    def from_dataset(cls, dataset, model=None, processor=None, embed_fn=None, **options) -> "GalleryIndex":
        """Embed a gallery dataset in memory; see `collm_hf.evaluation.index.building.embed_dataset`."""
        from .building import embed_dataset

        return embed_dataset(dataset, model=model, processor=processor, embed_fn=embed_fn, **options)

    @classmethod
    def build(cls, folder, dataset, model=None, processor=None, embed_fn=None, **options) -> "GalleryIndex":
        """Embed a gallery dataset into an index folder, one shard per process; see `building.build_index`."""
        from .building import build_index

        return build_index(folder, dataset, model=model, processor=processor, embed_fn=embed_fn, **options)

    def append_dataset(self, dataset, model=None, processor=None, embed_fn=None, **options) -> list[str]:
        """Embed the images of `dataset` whose ids are not in the index yet and append them as one shard.
        Returns the appended ids; see `building.append_dataset`."""
        from .building import append_dataset

        return append_dataset(self, dataset, model=model, processor=processor, embed_fn=embed_fn, **options)


__all__ = ["BACKENDS", "GalleryIndex", "SearchResult", "check_finite", "check_unique_ids"]
