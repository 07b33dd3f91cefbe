"""Approximate FAISS indexes over a gallery: trained on a sample, saved with FAISS's own writer, reopened as they are.

| kind       | FAISS index          | reopened                                                      |
|------------|----------------------|---------------------------------------------------------------|
| `ivf-flat` | `IndexIVFFlat`       | lists memory-mapped (IO_FLAG_MMAP)                            |
| `ivf-pq`   | `IndexIVFPQFastScan` | codes read into memory (D/8 bytes per image)                  |
| `hnsw`     | `IndexHNSWFlat`      | vectors memory-mapped (IO_FLAG_MMAP_IFC), graph read into memory |

All use inner product (embeddings are L2-normalised, so it is cosine similarity). IVF-Flat scores the rows it visits
exactly; `GalleryIndex.search` re-scores IVF-PQ's candidates exactly from the stored embeddings (`DEFAULT_REFINE`).
Training (IVF kinds; HNSW needs none) draws `sample_size` rows uniformly at random (seeded) from the stored
embeddings; adding streams every shard through in blocks. IVF-PQ uses FAISS's fast-scan layout (4-bit codes scanned
with SIMD lookups): at 512-d, 128 codes = 64 bytes per image, as PQ64x8, but scanned several times faster and
trained in seconds; FAISS has no memory-mapped reader for that layout, so its codes (64 MB per million images) are
read into memory.
"""

import math

import numpy as np

from ...utils.atomic import atomic_write

APPROXIMATE_KINDS = ("ivf-flat", "ivf-pq", "hnsw")
_READ_FLAGS = {"ivf-flat": "IO_FLAG_MMAP", "hnsw": "IO_FLAG_MMAP_IFC"}  # what FAISS can memory-map of each kind
DEFAULT_REFINE = {"ivf-pq": 16}  # candidates re-scored exactly = refine x k


def approximate_file(kind: str) -> str:
    return f"faiss-{kind}.index"


def check_kind(kind: str) -> str:
    if kind not in APPROXIMATE_KINDS:
        raise ValueError(f"approximate must be None or one of {APPROXIMATE_KINDS}, got {kind!r}.")
    return kind


def pq_subquantizers(dim: int) -> int:
    """The largest even divisor of `dim` that leaves at least 4 dimensions per 4-bit sub-quantizer (512 -> 128)."""
    return max([m for m in range(2, dim // 4 + 1, 2) if dim % m == 0] or [2 if dim % 2 == 0 else 1])


def default_params(kind: str, num_images: int, dim: int) -> dict:
    """Parameters of a `kind` index over `num_images` rows of `dim` (each overridable by keyword).

    IVF: nlist = sqrt(N) lists (at least 39 training rows each, FAISS's minimum), trained on 64 rows per list
    (at least 10,000, at most the gallery). IVF-PQ: `pq_subquantizers(dim)` 4-bit codes. HNSW: M = 32.
    """
    check_kind(kind)
    if kind == "hnsw":
        return {"m": 32, "ef_construction": 80}
    nlist = max(1, min(int(round(math.sqrt(num_images))), num_images // 39))
    params = {"nlist": nlist, "sample_size": min(num_images, max(64 * nlist, 10_000)), "seed": 0}
    if kind == "ivf-pq":
        params["m"] = pq_subquantizers(dim)
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
        index = faiss.IndexIVFPQFastScan(quantizer, dim, params["nlist"], params["m"], 4, faiss.METRIC_INNER_PRODUCT)
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
    """Reopen a saved index without training, memory-mapped where FAISS can (IVF-Flat's lists, HNSW's vectors)."""
    import faiss

    flags = getattr(faiss, _READ_FLAGS[kind]) | faiss.IO_FLAG_READ_ONLY if (mmap and kind in _READ_FLAGS) else 0
    return faiss.read_index(str(path), flags)


def search(index, kind: str, queries: np.ndarray, fetch: int, nprobe: int, ef_search: int):
    """(Q, fetch) scores and positions (-1 where the index found fewer)."""
    import faiss

    if kind == "hnsw":
        parameters = faiss.SearchParametersHNSW(efSearch=max(ef_search, fetch))
    else:
        parameters = faiss.SearchParametersIVF(nprobe=min(max(1, nprobe), index.nlist))
    return index.search(np.ascontiguousarray(queries, dtype="float32"), fetch, params=parameters)


__all__ = ["APPROXIMATE_KINDS", "DEFAULT_REFINE", "approximate_file", "build", "check_kind",
           "default_params", "new_index", "pq_subquantizers", "read", "sample_positions", "search", "write"]
