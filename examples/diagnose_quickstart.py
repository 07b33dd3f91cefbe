"""Where the quickstart model's wrong first results come from, on the synthetic CIRR-style benchmark.

    python examples/diagnose_quickstart.py --run-dir collm-quickstart

For every query whose first result (reference excluded, as CIRR's protocol) is not the target, it says whether
that image is one of the query's six similar images (`subset_ids`) or another gallery image, and how many of the
target's objects and its background that image shares; then recall@1 per edit category of the query (colour,
move, remove, ...), and the CIRCO-style benchmark's map@5 per semantic aspect with and without the reference in
the ranking; `--show remove` also prints the failed "remove" queries as captions (reference, text, target,
first result). Reads the world settings from DIR/model/quickstart.json,
so it rebuilds exactly the scenes the run evaluated on.
"""

from pathlib import Path

from collm_hf.apps.cli import require_path, run_script
from collm_hf.apps.quickstart.diagnosis import circo_by_aspect, diagnose, failures, first_results, recall_by_category


def add_arguments(parser):
    parser.add_argument("--run-dir", type=Path, required=True, help="the quickstart's --output-dir")
    parser.add_argument("--show", metavar="CATEGORY", help="print the failed queries of this edit category")


def report(args):
    require_path(args.run_dir / "model" / "quickstart.json", "--run-dir", "file")
    results = list(first_results(args.run_dir))
    for kind, count in diagnose(args.run_dir, results).items():
        print(f"{count:5d}  {kind}")
    print("\nrecall@1 by edit category:")
    for category, row in recall_by_category(args.run_dir, results).items():
        print(f"{row['recall@1']:6.1f}  {category} ({row['queries']} queries)")
    print("\nCIRCO-style map@5 by semantic aspect (reference kept, as CIRCO's protocol; reference left out; how often"
          " the reference is among the first five):")
    for aspect, row in circo_by_aspect(args.run_dir).items():
        print(f"{row['map@5']:6.1f} {row['map@5 without the reference']:6.1f} {row['reference in top 5']:5.0f} %  "
              f"{aspect} ({row['queries']} queries)")
    if args.show:
        print(f"\nfailed {args.show!r} queries:")
        for failure in failures(args.show, results):
            print("\n".join(f"  {k:<9} {v}" for k, v in failure.items()) + "\n")


def main(argv=None):
    return run_script("diagnose_quickstart.py", add_arguments, report, argv, __doc__)


if __name__ == "__main__":
    main()
