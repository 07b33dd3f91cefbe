"""Gallery index figures: build, reopen and search each index kind over a saved gallery of synthetic embeddings.

Vectors: L2-normalised draws from a 32-d latent Gaussian mixture (500 centres ~ N(0, I), spread 0.5 around each)
mapped linearly to D dimensions plus Gaussian noise of 0.05 per dimension; the queries are fresh draws from the same
mixture, so none of them is in the gallery. Memory is read from /proc/self/status by a thread every millisecond:
`RssAnon` (heap: what a search allocates) and `RssFile` (pages of memory-mapped files, which the OS can drop).

Figures (keys of the result):
    exact_search_memory_ratio   peak RssAnon that exact search (the default backend, 1,000 queries) over the saved,
                                memory-mapped index adds, over the matrix's bytes; RssFile beside it in the details
    ivfpq_recall_at_10          10-recall@10 of the saved IVF-PQ index (its candidates re-scored exactly from the
                                stored embeddings) against exact search with FAISS `IndexFlatIP` in RAM, at the
                                fastest of `REFINE_POINTS` (candidates re-scored = refine x k) whose recall is >= 0.9
    ivfpq_speedup_vs_exact      queries/s of that IVF-PQ search over `IndexFlatIP`'s
    index_reopen_vs_build       seconds to reopen the saved index with its IVF-PQ index (no training) over the
                                seconds its IVF-PQ build took
Details: per kind (flat, ivf-flat, ivf-pq, hnsw) build seconds and peak RssAnon / RssFile, reopen seconds, recall@10,
queries/s, and whether the reopened index answers exactly as the freshly built one.
"""

import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .harness import PeakMemory

LATENT_DIM, CENTRES, SPREAD, NOISE = 32, 500, 0.5, 0.05
_BLOCK = 16384  # gallery rows generated and written at a time
REFINE_POINTS = (4, 8, 16, 32)  # IVF-PQ candidates re-scored exactly, x k (16: the default of `search`)


class Mixture:
    """The benchmark's vectors: `sample(n, rng)` -> (n, dim) float32, L2-normalised."""

    def __init__(self, dim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.centres = rng.standard_normal((CENTRES, LATENT_DIM)).astype(np.float32)
        self.mixing = (rng.standard_normal((LATENT_DIM, dim)) / np.sqrt(LATENT_DIM)).astype(np.float32)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        latent = self.centres[rng.integers(CENTRES, size=n)] + SPREAD * rng.standard_normal((n, LATENT_DIM), np.float32)
        vectors = latent @ self.mixing + NOISE * rng.standard_normal((n, self.dim), np.float32)  # (n, dim)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def blocks(self, n: int, seed: int):
        for block, start in enumerate(range(0, n, _BLOCK)):
            yield self.sample(min(_BLOCK, n - start), np.random.default_rng([seed, block]))


def measure(function) -> tuple[float, int, int, object]:
    """(seconds, peak RssAnon added, peak RssFile added, result) of one call."""
    with PeakMemory() as memory:
        start = time.perf_counter()
        result = function()
        seconds = time.perf_counter() - start
    return seconds, memory.added("RssAnon"), memory.added("RssFile"), result


def evict(folder) -> None:
    """Drop the folder's files from the page cache (written back first), so the next read starts cold."""
    if not hasattr(os, "posix_fadvise"):  # not Linux: the first search may then start warm
        return
    for path in Path(folder).iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def recall_at_k(found, truth) -> float:
    """Mean over queries of |found top-k ∩ true top-k| / k (the 10-recall@10 of ANN benchmarks)."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def index_benchmark(num_images: int = 1_000_000, num_queries: int = 1000, dim: int = 512, k: int = 10,
                    repeats: int = 3, seed: int = 0, kinds=("ivf-flat", "ivf-pq", "hnsw"), folder=None,
                    log=lambda message: None) -> dict:
    """Build a flat index of `num_images` synthetic vectors in `folder` (default: a temporary one), then each
    approximate kind; time, measure and compare them (see the module docstring). Returns the figures and details."""
    import faiss

    from ...evaluation.index import GalleryIndex, approximate, write_index

    faiss.omp_set_num_threads(torch.get_num_threads())
    scratch = tempfile.TemporaryDirectory(prefix="collm-index-benchmark-") if folder is None else None
    folder = Path(scratch.name if scratch else folder) / "index"
    try:
        mixture = Mixture(dim, seed)
        ids = [f"v{i:08d}" for i in range(num_images)]
        queries = mixture.sample(num_queries, np.random.default_rng([seed, 1 << 30]))  # (Q, D), held out
        matrix_bytes = num_images * dim * 4
        out = {"index_gallery_size": num_images, "index_queries": num_queries, "index_matrix_bytes": matrix_bytes}
        builds = {}
        seconds, anon, file, _ = measure(lambda: write_index(folder, mixture.blocks(num_images, seed), ids, dim))
        builds["flat"] = {"build_s": seconds, "build_peak_anon_bytes": anon, "build_peak_file_bytes": file}
        log(f"index: flat written ({seconds:.1f}s)")

        query_tensor = torch.from_numpy(queries)
        for backend in ("auto", "torch"):  # exact search over the memory-mapped shards, from a cold page cache
            evict(folder)  # (only pages no mapping holds can be dropped: each backend opens the index anew)
            index = GalleryIndex.load(folder)
            seconds, anon, file, exact = measure(lambda: index.search(query_tensor, k=k, backend=backend))
            out[f"exact_search_{backend}_s"] = seconds
            out[f"exact_search_{backend}_anon_ratio"] = anon / matrix_bytes
            out[f"exact_search_{backend}_file_ratio"] = file / matrix_bytes
            del index
            gc.collect()
        out["exact_search_memory_ratio"] = out["exact_search_auto_anon_ratio"]
        index = GalleryIndex.load(folder)

        reference = faiss.IndexFlatIP(dim)  # exact search in RAM: the ground truth and the speed to beat
        for _, shard in index.blocks():
            reference.add(shard.numpy())
        exact_s = statistics.median(_timed(lambda: reference.search(queries, k), repeats))
        truth = reference.search(queries, k)[1]
        reference.reset()  # its copy of the matrix is freed
        builds["flat"].update(queries_per_s=num_queries / exact_s, recall_at_10=1.0)
        out["exact_indexflatip_s"] = exact_s
        out["exact_search_same_as_indexflatip"] = recall_at_k(exact.indices.tolist(), truth.tolist())
        log(f"index: exact search done ({exact_s:.2f}s per {num_queries} queries in RAM)")

        for kind in kinds:
            seconds, anon, file, _ = measure(lambda: index.build_approximate(kind))
            entry = builds[kind] = {"build_s": seconds, "build_peak_anon_bytes": anon, "build_peak_file_bytes": file}
            found, curve = {}, {}
            # IVF-PQ: the recall / speed curve over how many candidates are re-scored exactly (refine x k)
            for refine in REFINE_POINTS if kind == "ivf-pq" else (None,):
                times = _timed(lambda: found.update(
                    {refine: index.search(query_tensor, k=k, approximate=kind, refine=refine)}), repeats)
                curve[refine] = {"queries_per_s": num_queries / statistics.median(times),
                                 "recall_at_10": recall_at_k(found[refine].indices.tolist(), truth.tolist())}
            default = approximate.DEFAULT_REFINE.get(kind)
            entry.update(curve[default])  # the default search
            if kind == "ivf-pq":
                entry["refine"] = curve
            start = time.perf_counter()
            reopened = GalleryIndex.load(folder)
            reopened.approximate_index(kind)  # FAISS's reader: no training
            entry["reopen_s"] = time.perf_counter() - start
            again = reopened.search(query_tensor, k=k, approximate=kind)
            entry["reopen_same_results"] = again.ids == found[default].ids
            entry["file_bytes"] = (folder / f"faiss-{kind}.index").stat().st_size
            log(f"index: {kind} built in {seconds:.1f}s, recall@10 {entry['recall_at_10']:.3f}, "
                f"{entry['queries_per_s']:.0f} queries/s")
        out["index_kinds"] = builds
        if "ivf-pq" in builds:  # the fastest point of the curve with recall >= 0.9 (else the most accurate)
            pq = builds["ivf-pq"]
            curve = sorted(pq["refine"].items(), key=lambda item: -item[1]["queries_per_s"])
            refine, point = next(((r, p) for r, p in curve if p["recall_at_10"] >= 0.9),
                                 max(curve, key=lambda item: item[1]["recall_at_10"]))
            out.update(ivfpq_recall_at_10=point["recall_at_10"], ivfpq_refine=refine,
                       ivfpq_speedup_vs_exact=point["queries_per_s"] * exact_s / num_queries,
                       index_reopen_vs_build=pq["reopen_s"] / pq["build_s"])
        return out
    finally:
        if scratch is not None:
            scratch.cleanup()


def _timed(function, repeats: int) -> list[float]:
    function()  # warm-up (first reads of memory-mapped files)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


__all__ = ["Mixture", "evict", "index_benchmark", "measure", "recall_at_k"]
