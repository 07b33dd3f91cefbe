"""All figures of a run, in one process, and their table."""

import time
from dataclasses import asdict

import torch

from .data import builder_memory_benchmark, gallery_pipeline_benchmark
from .harness import BenchmarkSizes
from .index import index_benchmark
from .query import build_benchmark_model, modification_texts, query_benchmark
from .search import search_benchmark
from .streaming import streaming_benchmark
from .training import quickstart_attention_benchmark, synthesis_benchmark


FIGURES = ("query", "search", "synthesis", "pipeline", "builder", "quickstart", "streaming", "index")
TARGETS = {"query_speedup_vs_naive": (">=", 2.0), "query_matmul_utilization": (">=", 0.5),
           "search_time_vs_faiss": ("<=", 1.25), "synthesis_overhead": ("<=", 0.03),
           "gallery_pipeline_efficiency": None, "builder_memory_growth": ("<=", 1.2),
           "quickstart_eager_speedup": None, "streaming_startup_growth": ("<=", 1.2),
           "streaming_memory_growth": ("<=", 1.2), "exact_search_memory_ratio": ("<=", 0.25),
           "ivfpq_recall_at_10": (">=", 0.9), "ivfpq_speedup_vs_exact": (">=", 10.0), "index_reopen_vs_build": None}


def run_benchmarks(sizes: BenchmarkSizes, figures=FIGURES, log=print) -> dict:
    """Run the chosen figures; return {figure keys..., "details": {...}, "sizes": {...}, "machine": {...}}."""
    unknown = set(figures) - set(FIGURES)
    if unknown:
        raise ValueError(f"Unknown figure(s) {sorted(unknown)}; choose from {FIGURES}.")
    started = time.perf_counter()
    details, sizes_used = {}, asdict(sizes)
    needs_model = {"query", "synthesis", "pipeline"} & set(figures)
    if needs_model:
        texts = modification_texts(sizes.num_queries)
        model, processor = build_benchmark_model(sizes, texts)
        log(f"model built ({time.perf_counter() - started:.0f}s)")
    if "query" in figures:
        details.update(query_benchmark(model, processor, texts, sizes.batch_size, sizes.repeats, sizes.matmul_size))
        log(f"query done ({time.perf_counter() - started:.0f}s)")
    if "search" in figures:
        details.update(search_benchmark(sizes.gallery_size, sizes.search_queries, sizes.embed_dim, sizes.top_k, sizes.repeats))
        log(f"search done ({time.perf_counter() - started:.0f}s)")
    if "synthesis" in figures:
        details.update(synthesis_benchmark(model, processor, sizes.synthesis_batch, sizes.synthesis_steps))
        log(f"synthesis done ({time.perf_counter() - started:.0f}s)")
    if "pipeline" in figures:
        details.update(gallery_pipeline_benchmark(model, processor, sizes.pipeline_images, min(32, sizes.pipeline_images),
                                                  sizes.repeats))
        log(f"pipeline done ({time.perf_counter() - started:.0f}s)")
    if "builder" in figures:
        details.update(builder_memory_benchmark(*sizes.builder_images))
        log(f"builder done ({time.perf_counter() - started:.0f}s)")
    if "quickstart" in figures:
        details.update(quickstart_attention_benchmark(sizes.quickstart_groups, sizes.repeats))
        log(f"quickstart done ({time.perf_counter() - started:.0f}s)")
    if "streaming" in figures:
        details.update(streaming_benchmark(*sizes.streaming_rows, repeats=sizes.repeats,
                                           steps=1 if sizes.tiny_models else 3, in_process=sizes.tiny_models))
        log(f"streaming done ({time.perf_counter() - started:.0f}s)")
    if "index" in figures:
        details.update(index_benchmark(sizes.index_images, sizes.search_queries, sizes.embed_dim, sizes.top_k,
                                       sizes.repeats, log=log))
        log(f"index done ({time.perf_counter() - started:.0f}s)")
    result = {key: details.pop(key, None) for key in TARGETS}
    result["details"] = details
    result["sizes"] = sizes_used
    result["machine"] = {"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                         "device": "cpu", "seconds": time.perf_counter() - started}
    return result


def format_table(result: dict) -> str:
    """A plain-text table of the figures, their targets and whether each is met."""
    lines = [f"{'figure':<30} {'value':>8}  {'target':<8} met", "-" * 54]
    for key, target in TARGETS.items():
        value = result.get(key)
        shown = "n/a" if value is None else f"{value:.3f}"
        if target is None or value is None:
            lines.append(f"{key:<30} {shown:>8}  {'-' if target is None else target[0] + str(target[1]):<8} -")
            continue
        met = value >= target[1] if target[0] == ">=" else value <= target[1]
        lines.append(f"{key:<30} {shown:>8}  {target[0] + str(target[1]):<8} {'yes' if met else 'no'}")
    return "\n".join(lines)


__all__ = ["FIGURES", "TARGETS", "format_table", "run_benchmarks"]
