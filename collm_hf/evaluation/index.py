"""The gallery index: embed a gallery once, save it, and find the top-k images of each query.

    gallery images --model.get_image_embeds--> (N, D) embeddings + N ids --search(queries, k)--> ranked ids

Exact search runs in torch (the gallery in chunks with a running top-k, so memory stays bounded whatever N)
or through FAISS `IndexFlatIP` (same top-k); FAISS IVF / HNSW give approximate search for galleries in the
millions. Embeddings are expected L2-normalised, so inner product = cosine similarity.
"""

import hashlib
import json
import os
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..models.collm.image_io import open_image, to_rgb_image
from ..utils.atomic import atomic_write
from ._tables import column_names

EMBEDDINGS_FILE = "gallery_embeddings.safetensors"
IDS_FILE = "gallery_ids.json"
BACKENDS = ("auto", "torch", "faiss")
APPROXIMATE_KINDS = ("ivf", "hnsw")


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


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


def check_finite(embeddings: torch.Tensor, what: str, ids=None):
    """Raise a ValueError naming the first row holding NaN or inf."""
    bad = ~torch.isfinite(embeddings).all(dim=-1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        name = f"id {ids[row]!r}" if ids is not None else f"row {row}"
        raise ValueError(f"{what} has NaN or infinite values ({int(bad.sum())} rows, first: {name}).")


def _check_ids(ids) -> list[str]:
    ids = [str(i) for i in ids]
    seen = set()
    for image_id in ids:
        if image_id in seen:
            raise ValueError(f"Gallery id {image_id!r} appears more than once; gallery ids must be unique.")
        seen.add(image_id)
    return ids


_atomic_write = atomic_write


def _ids_digest(ids: list[str]) -> str:
    return hashlib.sha256(json.dumps(ids).encode("utf-8")).hexdigest()


def shard_range(n: int, num_shards: int, index: int) -> tuple[int, int]:
    """The [start, end) rows of contiguous shard `index` of `n` rows (as `datasets.Dataset.shard(contiguous=True)`)."""
    div, mod = divmod(n, num_shards)
    start = index * div + min(index, mod)
    return start, start + div + (1 if index < mod else 0)


class GalleryIndex:
    """L2-normalised gallery embeddings with their ids; exact (torch / FAISS) or approximate (FAISS) search.

    Args:
        embeddings: (N, D) float tensor, one row per gallery image (finite values only).
        ids: N unique ids (stored as strings).

    Example:

    ```python
    >>> import torch
    >>> index = GalleryIndex(torch.eye(3), ["a", "b", "c"])
    >>> index.search(torch.tensor([[0.0, 1.0, 0.2]]), k=2, backend="torch").ids
    [['b', 'c']]

    ```
    """

    def __init__(self, embeddings: torch.Tensor, ids):
        if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
            raise ValueError(f"embeddings must be a 2-D tensor (N, D), got {getattr(embeddings, 'shape', embeddings)!r}.")
        ids = _check_ids(ids)
        if len(ids) != embeddings.shape[0]:
            raise ValueError(f"{embeddings.shape[0]} embeddings but {len(ids)} ids.")
        if len(ids) == 0:
            raise ValueError("The gallery is empty.")
        embeddings = embeddings.detach().float().contiguous()
        check_finite(embeddings, "Gallery embeddings", ids)
        self.embeddings = embeddings  # (N, D)
        self.ids = ids
        self.position = {image_id: i for i, image_id in enumerate(ids)}
        self._faiss = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"GalleryIndex(images={len(self)}, dim={self.dim}, device={self.embeddings.device})"

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def to(self, device) -> "GalleryIndex":
        """Move the embeddings (torch search then runs on that device)."""
        self.embeddings = self.embeddings.to(device)
        return self

    def select(self, ids) -> "GalleryIndex":
        """A new index with only `ids`, in the given order (e.g. one Fashion-IQ category's gallery)."""
        ids = [str(i) for i in ids]
        missing = [i for i in ids if i not in self.position]
        if missing:
            raise KeyError(f"{len(missing)} ids are not in the gallery, e.g. {missing[:5]}.")
        rows = torch.tensor([self.position[i] for i in ids], dtype=torch.long, device=self.embeddings.device)
        return GalleryIndex(self.embeddings.index_select(0, rows), ids)

    # ------------------------------------------------------------------------------------------------------
    # Building
    # ------------------------------------------------------------------------------------------------------
    @classmethod
    def from_dataset(cls, dataset, model=None, processor=None, embed_fn=None, batch_size: int = 64,
                     id_column: str = "image_id", image_column: str = "image", accelerator=None,
                     show_progress: bool = True, num_workers: int = 0) -> "GalleryIndex":
        """Embed a gallery in batches (bounded memory), split across processes when `accelerator` has several.

        Args:
            dataset: a `datasets.Dataset` (images decoded one batch at a time), a streaming
                `datasets.IterableDataset` (several processes: split by node), or a dict of lists, with
                `id_column` and `image_column` (PIL images, numpy arrays or file paths).
            model, processor: a `CoLLMModel` and its `CoLLMProcessor` (gallery side: `get_image_embeds`); or
            embed_fn: any function list of PIL images -> (batch, D) tensor.
            batch_size: images per forward pass.
            accelerator: an `accelerate.Accelerator`; each process embeds a contiguous shard, then all gather.
            show_progress: tqdm bar on the main process.
            num_workers: DataLoader worker processes that read and decode images ahead of the model
                (0: decode in this process).

        Returns:
            a `GalleryIndex` with all N images on every process, in dataset order (streaming with several
            processes: in process order).
        """
        if embed_fn is None:
            if model is None or processor is None:
                raise ValueError("from_dataset needs model and processor, or embed_fn.")
            embed_fn = image_embedder(model, processor, device=accelerator.device if accelerator else None)
        if not isinstance(dataset, dict) and not hasattr(dataset, "__len__"):
            return cls._from_stream(dataset, embed_fn, batch_size, id_column, image_column, accelerator, show_progress)
        for column in (id_column, image_column):
            if column not in column_names(dataset):
                raise KeyError(f"The gallery has no {column!r} column (columns: {column_names(dataset)}).")
        ids = _check_ids(dataset[id_column])
        num_shards = accelerator.num_processes if accelerator is not None else 1
        rank = accelerator.process_index if accelerator is not None else 0
        start, end = shard_range(len(ids), num_shards, rank)
        local = _embed_rows(dataset, image_column, ids, start, end, embed_fn, batch_size,
                            show_progress and (accelerator is None or accelerator.is_main_process), num_workers)
        if num_shards > 1:
            local = _gather_shards(local, len(ids), accelerator)
        return cls(local, ids)

    @classmethod
    def _from_stream(cls, dataset, embed_fn, batch_size, id_column, image_column, accelerator, show_progress):
        world = accelerator.num_processes if accelerator is not None else 1
        if world > 1:
            from datasets.distributed import split_dataset_by_node

            dataset = split_dataset_by_node(dataset, rank=accelerator.process_index, world_size=world)
        ids, parts = [], []
        main = accelerator is None or accelerator.is_main_process
        with tqdm(desc="Embedding gallery", unit="img", disable=not (show_progress and main)) as bar:
            for batch in dataset.iter(batch_size=batch_size):
                batch_ids = [str(i) for i in batch[id_column]]
                embeds = embed_fn(_load_images(batch[image_column], batch_ids)).detach().float().cpu()  # (batch, D)
                check_finite(embeds, "Gallery embeddings", batch_ids)
                ids += batch_ids
                parts.append(embeds)
                bar.update(len(batch_ids))
        local = torch.cat(parts) if parts else torch.empty(0, 0)
        if world > 1:
            from accelerate.utils import gather_object

            counts = gather_object([len(ids)])
            ids = gather_object(ids)
            local = _gather_padded(local, counts, accelerator)
        return cls(local, ids)

    # ------------------------------------------------------------------------------------------------------
    # Saving
    # ------------------------------------------------------------------------------------------------------
    def save(self, folder: str):
        """Write `gallery_embeddings.safetensors` and `gallery_ids.json` to `folder`, each atomically."""
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        metadata = {"format": "collm-gallery-index", "num_images": str(len(self)), "ids_sha256": _ids_digest(self.ids)}
        embeddings = self.embeddings.detach().cpu().contiguous()

        def write_ids(path):
            with open(path, "w", encoding="utf-8") as f:
                json.dump(self.ids, f)

        _atomic_write(os.path.join(folder, IDS_FILE), write_ids)
        _atomic_write(os.path.join(folder, EMBEDDINGS_FILE),
                      lambda path: save_file({"embeddings": embeddings}, path, metadata=metadata))

    @classmethod
    def load(cls, folder: str, device="cpu") -> "GalleryIndex":
        """Load an index written by `save`; a mismatched embeddings / ids pair is an error."""
        from safetensors import safe_open

        paths = [os.path.join(folder, name) for name in (EMBEDDINGS_FILE, IDS_FILE)]
        for path in paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} not found: not a gallery index folder (GalleryIndex.save writes it).")
        with safe_open(paths[0], framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            embeddings = f.get_tensor("embeddings")
        with open(paths[1], encoding="utf-8") as f:
            ids = json.load(f)
        digest = metadata.get("ids_sha256")
        if digest is not None and digest != _ids_digest([str(i) for i in ids]):
            raise ValueError(f"{paths[1]} does not match {paths[0]} (ids checksum differs): the folder is inconsistent.")
        return cls(embeddings, ids)

    # ------------------------------------------------------------------------------------------------------
    # Searching
    # ------------------------------------------------------------------------------------------------------
    def search(self, query_embeds: torch.Tensor, k: int = 50, exclude_ids=None, backend: str = "auto",
               approximate: str | None = None, max_block_bytes: int = 256 * 2**20, chunk_size: int | None = None,
               nprobe: int = 16, ef_search: int = 128) -> SearchResult:
        """The top-k gallery images of each query by inner product.

        Args:
            query_embeds: (Q, D) L2-normalised query embeddings.
            k: results per query (at most the gallery size).
            exclude_ids: optional per-query lists of gallery ids never returned for that query.
            backend: "torch" (exact, chunked), "faiss" (FAISS index), or "auto" (torch when the index is on a
                GPU, else FAISS when installed, else torch).
            approximate: None (exact), "ivf" or "hnsw" (FAISS approximate index, built once and cached).
            max_block_bytes: torch backend: largest score block held at once (bounds memory).
            chunk_size: torch backend: gallery rows per block (default: from max_block_bytes).
            nprobe / ef_search: IVF lists probed / HNSW search depth.

        Returns:
            `SearchResult` with (Q, k) scores and indices and the ranked ids per query.
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
        if approximate is not None and approximate not in APPROXIMATE_KINDS:
            raise ValueError(f"approximate must be None or one of {APPROXIMATE_KINDS}, got {approximate!r}.")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        if not isinstance(query_embeds, torch.Tensor) or query_embeds.dim() != 2 or query_embeds.shape[1] != self.dim:
            raise ValueError(f"query_embeds must be (queries, {self.dim}), got {getattr(query_embeds, 'shape', query_embeds)}.")
        query_embeds = query_embeds.detach().float()
        check_finite(query_embeds, "Query embeddings")
        excluded = self._excluded_positions(exclude_ids, query_embeds.shape[0])
        k = min(k, len(self))
        on_gpu = self.embeddings.device.type != "cpu"
        use_faiss = backend == "faiss" or approximate is not None or (backend == "auto" and not on_gpu and faiss_available())
        if use_faiss and not faiss_available():
            raise ImportError("backend='faiss' / approximate search needs FAISS: pip install faiss-cpu (or faiss-gpu), "
                              "or use backend='torch'.")
        if use_faiss:
            scores, indices = self._search_faiss(query_embeds, k, excluded, approximate, nprobe, ef_search)
        else:
            scores, indices = self._search_torch(query_embeds, k, excluded, max_block_bytes, chunk_size)
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

    def _search_torch(self, queries, k, excluded, max_block_bytes, chunk_size):
        gallery = self.embeddings  # (N, D)
        device = gallery.device
        n, q_total = len(self), queries.shape[0]
        query_block = max(1, min(q_total, 4096))
        if chunk_size is None:
            chunk_size = max(k, max_block_bytes // (4 * query_block))
        chunk_size = max(1, min(n, chunk_size))
        rows = [r for r, cols in enumerate(excluded) for _ in cols]
        cols = [c for cols in excluded for c in cols]
        excl_rows = torch.tensor(rows, dtype=torch.long, device=device)
        excl_cols = torch.tensor(cols, dtype=torch.long, device=device)
        all_scores, all_indices = [], []
        for q0 in range(0, q_total, query_block):
            q = queries[q0:q0 + query_block].to(device)  # (b, D)
            in_block = (excl_rows >= q0) & (excl_rows < q0 + q.shape[0])
            block_rows, block_cols = excl_rows[in_block] - q0, excl_cols[in_block]
            best_scores = torch.empty(q.shape[0], 0, device=device)
            best_indices = torch.empty(q.shape[0], 0, dtype=torch.long, device=device)
            for c0 in range(0, n, chunk_size):
                scores = _score_block(q, gallery[c0:c0 + chunk_size])  # (b, chunk)
                in_chunk = (block_cols >= c0) & (block_cols < c0 + scores.shape[1])
                if bool(in_chunk.any()):
                    scores[block_rows[in_chunk], block_cols[in_chunk] - c0] = float("-inf")
                top_scores, top_idx = scores.topk(min(k, scores.shape[1]), dim=1)  # (b, <=k)
                merged_scores = torch.cat([best_scores, top_scores], dim=1)
                merged_indices = torch.cat([best_indices, top_idx + c0], dim=1)
                best_scores, order = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
                best_indices = merged_indices.gather(1, order)
            all_scores.append(best_scores.cpu())
            all_indices.append(best_indices.cpu())
        scores, indices = torch.cat(all_scores), torch.cat(all_indices)  # (Q, k)
        indices[torch.isneginf(scores)] = -1
        return scores, indices

    def faiss_index(self, approximate: str | None = None, nprobe: int = 16, ef_search: int = 128):
        """The FAISS index for this gallery (flat inner product, or IVF / HNSW), built once and cached."""
        import faiss

        key = approximate or "flat"
        if key not in self._faiss:
            data = self.embeddings.detach().cpu().numpy().astype("float32", copy=False)
            if key == "flat":
                index = faiss.IndexFlatIP(self.dim)
            elif key == "ivf":
                nlist = max(1, min(int(4 * len(self) ** 0.5), len(self) // 39 or 1))
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
                index.train(data)
            else:
                index = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
            index.add(data)
            self._faiss[key] = index
        index = self._faiss[key]
        if key == "ivf":
            index.nprobe = nprobe
        elif key == "hnsw":
            index.hnsw.efSearch = max(ef_search, 1)
        return index

    def _search_faiss(self, queries, k, excluded, approximate, nprobe, ef_search):
        index = self.faiss_index(approximate, nprobe, ef_search)
        extra = max((len(e) for e in excluded), default=0)
        fetch = min(len(self), k + extra)
        if approximate == "hnsw":
            index.hnsw.efSearch = max(ef_search, fetch)
        scores, indices = index.search(queries.cpu().numpy().astype("float32", copy=False), fetch)  # (Q, fetch)
        scores, indices = torch.from_numpy(scores), torch.from_numpy(indices).long()
        if extra == 0:  # nothing to exclude: FAISS's own answer (-1 / -inf padded where it found fewer)
            scores[indices < 0] = float("-inf")
            return scores, indices
        out_scores = torch.full((len(excluded), k), float("-inf"))
        out_indices = torch.full((len(excluded), k), -1, dtype=torch.long)
        for row, banned in enumerate(excluded):
            keep = indices[row] >= 0
            if banned:
                keep &= ~torch.isin(indices[row], torch.tensor(banned, dtype=torch.long))
            kept_scores, kept_indices = scores[row][keep][:k], indices[row][keep][:k]
            out_scores[row, : len(kept_scores)] = kept_scores
            out_indices[row, : len(kept_indices)] = kept_indices
        return out_scores, out_indices


def _score_block(queries: torch.Tensor, gallery_chunk: torch.Tensor) -> torch.Tensor:
    return queries @ gallery_chunk.T  # (b, chunk)


def image_embedder(model, processor, device=None):
    """A function list of images -> (batch, D) CPU float tensor, through `model.get_image_embeds`."""
    device = device or next(model.parameters()).device

    @torch.inference_mode()
    def embed(images):
        pixel_values = processor(images=images)["pixel_values"].to(device)
        return model.get_image_embeds(pixel_values).float().cpu()  # (batch, D)

    return embed


def _load_images(values, ids) -> list:
    images = []
    for value, image_id in zip(values, ids):
        if value is None:
            raise ValueError(f"Gallery image {image_id!r} is missing (None); missing images must not be dropped silently.")
        if isinstance(value, (str, os.PathLike)):
            images.append(open_image(value, f"gallery image {image_id!r} ({value})"))
        elif isinstance(value, dict) and (value.get("bytes") or value.get("path")):
            import io

            source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
            images.append(open_image(source, f"gallery image {image_id!r}"))
        else:
            images.append(to_rgb_image(value, f"gallery image {image_id!r}"))
    return images


class _ImageBatches(torch.utils.data.Dataset):
    """Batch `i` = the decoded images of rows [start + i * batch_size, ...) (a DataLoader item, for workers)."""

    def __init__(self, dataset, image_column, ids, start, end, batch_size):
        self.dataset, self.image_column, self.ids = dataset, image_column, ids
        self.start, self.end, self.batch_size = start, end, batch_size

    def __len__(self):
        return -(-(self.end - self.start) // self.batch_size)

    def __getitem__(self, i):
        b0 = self.start + i * self.batch_size
        b1 = min(self.end, b0 + self.batch_size)
        values = (self.dataset[self.image_column][b0:b1] if isinstance(self.dataset, dict)
                  else self.dataset[b0:b1][self.image_column])
        return b0, b1, _load_images(values, self.ids[b0:b1])


def _embed_rows(dataset, image_column, ids, start, end, embed_fn, batch_size, show_progress,
                num_workers: int = 0) -> torch.Tensor:
    reader = _ImageBatches(dataset, image_column, ids, start, end, batch_size)
    batches = (reader[i] for i in range(len(reader)))
    if num_workers > 0:  # decode in worker processes, a few batches ahead; the model runs here
        batches = torch.utils.data.DataLoader(reader, batch_size=None, num_workers=num_workers, prefetch_factor=2)
    out = None
    with tqdm(total=end - start, desc="Embedding gallery", unit="img", disable=not show_progress) as bar:
        for b0, b1, images in batches:
            embeds = embed_fn(images).detach().float().cpu()  # (batch, D)
            check_finite(embeds, "Gallery embeddings", ids[b0:b1])
            if out is None:
                out = torch.empty(end - start, embeds.shape[1])
            out[b0 - start:b1 - start] = embeds
            bar.update(b1 - b0)
    return out if out is not None else torch.empty(0, 0)


def _gather_padded(local: torch.Tensor, counts: list[int], accelerator) -> torch.Tensor:
    """All-gather per-process row blocks of unequal length (`counts[rank]` rows each), in process order."""
    world, longest = accelerator.num_processes, max(counts)
    dim = torch.tensor([local.shape[1] if local.numel() else 0], device=accelerator.device)
    dim = int(accelerator.gather(dim).max())
    padded = torch.zeros(longest, dim, device=accelerator.device)
    if local.numel():
        padded[: local.shape[0]] = local.to(accelerator.device)
    gathered = accelerator.gather(padded).cpu().view(world, longest, dim)  # (world, longest, D)
    return torch.cat([gathered[rank, : counts[rank]] for rank in range(world)])  # (N, D)


def _gather_shards(local: torch.Tensor, n: int, accelerator) -> torch.Tensor:
    """All-gather contiguous shards (`shard_range`) back into dataset order."""
    world = accelerator.num_processes
    counts = [end - start for start, end in (shard_range(n, world, rank) for rank in range(world))]
    return _gather_padded(local, counts, accelerator)


__all__ = ["GalleryIndex", "SearchResult", "image_embedder", "faiss_available", "shard_range", "check_finite"]
