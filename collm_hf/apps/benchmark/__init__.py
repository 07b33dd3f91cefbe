"""Performance figures of the package, each a ratio measured in one process on the same inputs.

Every timing is the median of `repeats` runs after one warm-up run; the two sides of a ratio are interleaved
(A, B, A, B, ...) so that load from other processes hits both alike. Models have random weights (shapes are what
costs time); nothing is downloaded. `examples/benchmark.py` is the command line; it calls `run_benchmarks`.

Figures (keys of the result):
    query_speedup_vs_naive       queries/s of `CoLLMQueryEncoder` over the plain padded forward
    query_matmul_utilization     FLOP/s the encoder executes over FLOP/s of a large fp32 matmul
    search_time_vs_faiss         exact top-k time, `GalleryIndex.search(backend="torch")` over FAISS IndexFlatIP
    synthesis_overhead           share of a pair pre-training step spent in triplet synthesis
    gallery_pipeline_efficiency  images/s from files (decode + preprocess + encode) over encoder-only images/s
    builder_memory_growth        peak RSS of a dataset build at a large size over a small one
    quickstart_eager_speedup     training-step time of the quickstart's model with sdpa attention over eager
                                 (the choice of `QuickstartRecipe.attn_implementation`)
    streaming_startup_growth     time from `build_trainer` to the end of the first step of streamed training at
                                 200,000 MTCIR-shaped rows over 20,000
    streaming_memory_growth      peak anonymous memory (RssAnon) of the same two streamed runs, large over small
    exact_search_memory_ratio    peak RssAnon that exact search over a saved, memory-mapped index adds, over the
                                 matrix's bytes
    ivfpq_recall_at_10           10-recall@10 of the saved IVF-PQ index (exact re-scoring) against IndexFlatIP in RAM
    ivfpq_speedup_vs_exact       queries/s of that IVF-PQ search over IndexFlatIP's
    index_reopen_vs_build        reopening the saved index with its IVF-PQ index (no training) over building it
"""

from .data import builder_memory_benchmark, gallery_pipeline_benchmark
from .harness import BenchmarkSizes, interleaved_medians, matmul_flops_per_second, peak_memory_above_baseline
from .index import index_benchmark
from .query import build_benchmark_model, encoder_flops, modification_texts, naive_query_embeds, query_benchmark
from .runner import FIGURES, TARGETS, format_table, run_benchmarks
from .search import search_benchmark
from .streaming import streaming_benchmark
from .training import quickstart_attention_benchmark, synthesis_benchmark

__all__ = ["BenchmarkSizes", "FIGURES", "TARGETS", "build_benchmark_model", "builder_memory_benchmark",
           "encoder_flops", "format_table", "gallery_pipeline_benchmark", "index_benchmark", "interleaved_medians",
           "matmul_flops_per_second", "modification_texts", "naive_query_embeds", "peak_memory_above_baseline",
           "query_benchmark", "quickstart_attention_benchmark", "run_benchmarks", "search_benchmark", "streaming_benchmark",
           "synthesis_benchmark"]

