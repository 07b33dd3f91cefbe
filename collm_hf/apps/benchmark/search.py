"""`search_time_vs_faiss`: exact top-k search of `GalleryIndex` against FAISS."""

import time

import torch
import torch.nn.functional as F

from .harness import interleaved_medians, peak_memory_above_baseline


def search_benchmark(gallery_size: int = 200_000, num_queries: int = 1000, dim: int = 512, k: int = 10,
                     repeats: int = 3, seed: int = 0) -> dict:
    """`search_time_vs_faiss`: exact top-k, `GalleryIndex.search(backend="torch")` time over FAISS `IndexFlatIP`
    time (index built before timing), results checked equal, and each path's peak added memory / matrix bytes
    (`GalleryIndex.search(backend="faiss")`, which runs `faiss.knn` over the stored rows without copying them)."""
    from ...evaluation.index import GalleryIndex, faiss_available

    generator = torch.Generator().manual_seed(seed)
    gallery = F.normalize(torch.randn(gallery_size, dim, generator=generator), dim=-1)  # (N, D)
    queries = F.normalize(torch.randn(num_queries, dim, generator=generator), dim=-1)  # (Q, D)
    ids = [str(i) for i in range(gallery_size)]
    matrix_bytes = gallery.numel() * gallery.element_size()
    index = GalleryIndex(gallery, ids)
    out = {"search_matrix_bytes": matrix_bytes}
    torch_memory = peak_memory_above_baseline(lambda: index.search(queries, k=k, backend="torch"))
    out["search_peak_memory_torch"] = None if torch_memory is None else torch_memory / matrix_bytes
    if not faiss_available():
        out.update(search_time_vs_faiss=None, search_note="faiss not installed")
        return out
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    faiss_memory = peak_memory_above_baseline(lambda: GalleryIndex(gallery, ids).search(queries, k=k, backend="faiss"))
    out["search_peak_memory_faiss"] = None if faiss_memory is None else faiss_memory / matrix_bytes
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(gallery.numpy())
    out["faiss_build_s"] = time.perf_counter() - start
    found = {}

    def run(backend):
        found[backend] = index.search(queries, k=k, backend=backend)

    def run_flat():
        found["flat"] = flat.search(queries.numpy(), k)[1]

    seconds = interleaved_medians({"torch": lambda: run("torch"), "faiss": run_flat}, repeats)
    same = (found["torch"].indices == torch.from_numpy(found["flat"])).float().mean().item()
    out.update(search_time_vs_faiss=seconds["torch"] / seconds["faiss"], search_torch_s=seconds["torch"],
               search_faiss_s=seconds["faiss"], search_same_results=same,
               search_auto_backend="faiss")  # GalleryIndex.search(backend="auto") uses FAISS when installed
    return out
