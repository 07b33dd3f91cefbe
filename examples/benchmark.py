"""Benchmark the package against plain transformers, FAISS and the machine's own matmul rate.

    python examples/benchmark.py --quick --json benchmark.json     # under 3 minutes on 2 CPU cores
    python examples/benchmark.py --json benchmark.json             # the full sizes (slower)
    python examples/benchmark.py --smoke                           # tiny shapes, seconds (tests)

Prints a table of the figures and their targets and writes them, with the sizes used, as JSON
(see `collm_hf.apps.benchmark`).
"""

import json
import os
import sys
from dataclasses import replace

from collm_hf.apps.cli import run_script


def add_arguments(parser):
    from collm_hf.apps.benchmark import FIGURES

    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (under 3 minutes)")
    preset.add_argument("--smoke", action="store_true", help="tiny shapes, for tests")
    parser.add_argument("--json", metavar="PATH", help="write the figures here as JSON")
    parser.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES), help="figures to measure")
    parser.add_argument("--repeats", type=int, help="timed repeats per figure (median)")
    parser.add_argument("--num-queries", type=int, help="queries for the query figures")
    parser.add_argument("--llm-layers", type=int, help="layers of the SmolLM2-shaped LLM (30 = SmolLM2-135M)")
    parser.add_argument("--gallery-size", type=int, help="gallery rows for the search figure")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")


def benchmark(args) -> dict:
    import torch

    from collm_hf.apps.benchmark import BenchmarkSizes, format_table, run_benchmarks

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = BenchmarkSizes.smoke() if args.smoke else BenchmarkSizes.quick() if args.quick else BenchmarkSizes.full()
    overrides = {"repeats": args.repeats, "num_queries": args.num_queries, "llm_layers": args.llm_layers,
                 "gallery_size": args.gallery_size}
    sizes = replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    result = run_benchmarks(sizes, args.only, log=lambda message: print(message, file=sys.stderr))
    result["sizes"]["preset"] = "smoke" if args.smoke else "quick" if args.quick else "full"
    print(format_table(result))
    if args.json:
        temp = f"{args.json}.partial"
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
        os.replace(temp, args.json)
    return result


def main(argv=None) -> dict:
    """The figures and the sizes used (what `--json` writes)."""
    return run_script("benchmark.py", add_arguments, benchmark, argv, __doc__)


if __name__ == "__main__":
    main()
