"""Approximate FAISS indexes over a gallery: trained on a sample, saved with FAISS's own writer, reopened as they are.

| kind       | FAISS index                      | reopened                      | note |
|------------|----------------------------------|-------------------------------|------|
| `ivf-flat` | `IndexIVFFlat` (nlist lists)     | memory-mapped (IO_FLAG_MMAP)  | exact scores of the rows it visits |
| `ivf-pq`   | `IndexIVFPQ` (m x nbits codes)   | memory-mapped (IO_FLAG_MMAP)  | ~D/m x smaller; `GalleryIndex.search` re-scores its candidates exactly |
| `hnsw`     | `IndexHNSWFlat` (graph of M)     | read into memory              | no training |

All use inner product (embeddings are L2-normalised, so it is cosine similarity). Training draws `sample_size` rows
uniformly at random (seeded) from the stored embeddings; adding streams every shard through in blocks.
"""

import math

import numpy as np

from ...utils.atomic import atomic_write

APPROXIMATE_KINDS = ("ivf-flat", "ivf-pq", "hnsw")
MEMORY_MAPPED_KINDS = ("ivf-flat", "ivf-pq")
DEFAULT_REFINE = {"ivf-pq": 10}  # candidates re-scored exactly = refine x k


def approximate_file(kind: str) -> str:
    return f"faiss-{kind}.index"


def check_kind(kind: str) -> str:
    if kind not in APPROXIMATE_KINDS:
        raise ValueError(f"approximate must be None or one of {APPROXIMATE_KINDS}, got {kind!r}.")
    return kind


def pq_subquantizers(dim: int) -> int:
    """The largest divisor of `dim` that leaves at least 8 dimensions per sub-quantizer (512 -> 64)."""
    return max([m for m in range(1, dim // 8 + 1) if dim % m == 0] or [1])


def default_params(kind: str, num_images: int, dim: int) -> dict:
    """Parameters of a `kind` index over `num_images` rows of `dim` (each overridable by keyword).

    IVF: nlist = sqrt(N) lists (at least 39 training rows each, FAISS's minimum), trained on 64 rows per list
    (at least 10,000, at most the gallery). IVF-PQ: `pq_subquantizers(dim)` codes of up to 8 bits. HNSW: M = 32.
    """
    check_kind(kind)
    if kind == "hnsw":
        return {"m": 32, "ef_construction": 80}
    nlist = max(1, min(int(round(math.sqrt(num_images))), num_images // 39))
    params = {"nlist": nlist, "sample_size": min(num_images, max(64 * nlist, 10_000)), "seed": 0}
    if kind == "ivf-pq":
        params.update(m=pq_subquantizers(dim), nbits=max(1, min(8, int(math.log2(max(2, params["sample_size"] // 4))))))
    return params


def new_index(kind: str, dim: int, params: dict):
    """An empty (untrained) FAISS index of `kind`."""
    import faiss

    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
        return index
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf-flat":
        index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, params["nlist"], params["m"], params["nbits"], faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.seed = params["seed"]
    index.cp.seed = params["seed"]
    return index  # the FAISS wrapper keeps `quantizer` alive with the index


def sample_positions(num_images: int, size: int, seed: int) -> np.ndarray:
    """`size` distinct row positions, drawn uniformly at random with `seed`, sorted (for sequential reads)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_images, size=min(size, num_images), replace=False))


def build(kind: str, dim: int, sample, blocks, params: dict):
    """Train a `kind` index on `sample` (S, D) and add every block of `blocks` (an iterable of (n, D) float32 arrays)."""
    index = new_index(kind, dim, params)
    if not index.is_trained:
        index.train(np.ascontiguousarray(sample, dtype="float32"))
    for block in blocks:
        index.add(np.ascontiguousarray(block, dtype="float32"))
    return index


def write(index, path) -> None:
    """Write with `faiss.write_index`, atomically."""
    import faiss

    atomic_write(path, lambda tmp: faiss.write_index(index, tmp))


def read(path, kind: str, mmap: bool = True):
    """Reopen a saved index without training; IVF kinds are memory-mapped (their lists stay on disk until read)."""
    import faiss

    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if (mmap and kind in MEMORY_MAPPED_KINDS) else 0
    return faiss.read_index(str(path), flags)


def search(index, kind: str, queries: np.ndarray, fetch: int, nprobe: int, ef_search: int):
    """(Q, fetch) scores and positions (-1 where the index found fewer)."""
    import faiss

    if kind == "hnsw":
        parameters = faiss.SearchParametersHNSW(efSearch=max(ef_search, fetch))
    else:
        parameters = faiss.SearchParametersIVF(nprobe=min(max(1, nprobe), index.nlist))
    return index.search(np.ascontiguousarray(queries, dtype="float32"), fetch, params=parameters)


__all__ = ["APPROXIMATE_KINDS", "DEFAULT_REFINE", "MEMORY_MAPPED_KINDS", "approximate_file", "build", "check_kind",
           "default_params", "new_index", "pq_subquantizers", "read", "sample_positions", "search", "write"]
