"""The report of an evaluation, and how the evaluation steps compose (what `collm-hf evaluate` runs).

Each step is one call; a caller keeps the ones it needs:

    from collm_hf.evaluation.benchmarks import load_benchmark
    from collm_hf.evaluation.embedding import load_or_embed_gallery
    from collm_hf.evaluation.report import benchmark_report, format_metrics_table, write_report
    from collm_hf.evaluation.scoring import evaluate_benchmark
    from collm_hf.evaluation.submission import write_submission
    from collm_hf.evaluation.visualization import save_benchmark_grid

    bench = load_benchmark("data/cirr", "val")            # the split's queries + the gallery they rank over
    bench = bench.with_images("nlvr2/images")              # only for an annotation-only (--no-images) build
    bench = bench.head(100)                                # only for a quick check (the gallery stays whole)
    index = load_or_embed_gallery(model, processor, bench.gallery, "cache/cirr-val")  # embedded once, then loaded
    metrics, rankings = evaluate_benchmark(model, processor, bench.queries, bench.gallery, index=index,
                                           return_rankings=True)
    files = write_submission("submissions", rankings, prefix=f"{rankings.protocol}_{bench.split}")  # CIRR/CIRCO test
    files.append(save_benchmark_grid("cirr_val.png", bench.queries, rankings, bench.gallery))
    report = benchmark_report(bench, rankings, metrics, files=files)
    write_report("cirr_val.json", report)                  # atomically
    print(format_metrics_table(metrics, "cirr / val"))
"""

import os

from ..utils.atomic import atomic_write_json
from .embedding import DEFAULT_TEXT_TEMPLATE


def benchmark_report(bench, rankings, metrics: dict, text_template: str = DEFAULT_TEXT_TEMPLATE,
                     files=()) -> dict:
    """What was evaluated and what came out, as a JSON-ready dict.

    Args:
        bench: the `BenchmarkSplit` evaluated.
        rankings: its `BenchmarkRankings` (for the protocol).
        metrics: the metrics dict (empty on closed-label splits).
        text_template: how the query texts were built.
        files: the files written (submissions, picture).

    Returns:
        {"benchmark", "split", "protocol", "refined", "num_queries", "num_gallery", "text_template", "metrics",
        "files"}.
    """
    return {"benchmark": bench.name, "split": bench.split, "protocol": rankings.protocol, "refined": bench.refined,
            "num_queries": len(bench.queries), "num_gallery": len(bench.gallery), "text_template": text_template,
            "metrics": metrics, "files": [str(path) for path in files]}


def write_report(path: str | os.PathLike, report: dict) -> str:
    """Write `report` as JSON to `path`, atomically (a temporary file, then a rename); return the path."""
    atomic_write_json(path, report, indent=2)
    return str(path)


def format_metrics_table(metrics: dict, title: str = "") -> str:
    """A two-column text table of metrics (2 decimals).

    Example:
        >>> print(format_metrics_table({"recall@1": 12.5, "recall@10": 50.0}))
        recall@1    12.50
        recall@10   50.00
    """
    if not metrics:
        return f"{title}: no labels (closed split)" if title else "no labels (closed split)"
    width = max(len(k) for k in metrics)
    lines = [title] if title else []
    lines += [f"{key:<{width}}  {value:6.2f}" for key, value in metrics.items()]
    return "\n".join(lines)


__all__ = ["benchmark_report", "format_metrics_table", "write_report"]
