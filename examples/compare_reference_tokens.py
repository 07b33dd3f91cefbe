"""Paired quickstart runs of the reference as one pooled embedding ("pooled", the paper) against patch tokens
("patches"), seed by seed, one run at a time, interleaved; prints the table docs/patch_tokens.md shows.

    python examples/compare_reference_tokens.py --mode caps --seeds 0 1 2 3 4 --output-dir runs/patches-caps
    python examples/compare_reference_tokens.py --mode budget --seeds 0 1 2 3 4 --output-dir runs/patches-budget
    python examples/compare_reference_tokens.py --mode budget --seeds 0 1 --output-dir runs/patches-4 \\
        --variant 'patches-4={"reference_tokens": "patches", "patch_tokens": 4}' --no-defaults

`--mode caps`: 800 + 2,000 steps and no time budget (the seconds differ); `--mode budget`: the default 10-minute
budget (the steps differ). Results accumulate in OUTPUT_DIR/results.jsonl; a rerun resumes where it stopped, and
with every run recorded it only prints the tables: the headline figures per run, recall@1 per edit category and
map@5 per aspect per run, and seed by seed patches' error ratios and training seconds over pooled's.
"""

import json

from collm_hf.apps.cli import UsageError, run_script
from collm_hf.apps.quickstart.comparison import MODES, breakdown_table, compare_recipes, paired_summary, results_table

DEFAULT_VARIANTS = {"pooled": {}, "patches": {"reference_tokens": "patches"}}


def add_arguments(parser):
    parser.add_argument("--mode", choices=sorted(MODES), default="budget")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--output-dir", required=True, help="the runs' folders and results.jsonl")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help="another variant: a name and its recipe overrides (repeatable)")
    parser.add_argument("--no-defaults", action="store_true", help="run only the --variant variants")


def compare(args):
    variants = {} if args.no_defaults else dict(DEFAULT_VARIANTS)
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        try:
            variants[name] = json.loads(overrides)
        except json.JSONDecodeError as error:
            raise UsageError(f"--variant {spec!r}: the part after '=' must be a JSON object ({error})") from None
    if not variants:
        raise UsageError("no variants to run (--no-defaults without --variant)")
    records = compare_recipes(variants, args.seeds, args.output_dir, args.mode)
    print(results_table(records), breakdown_table(records), sep="\n\n")
    if {"pooled", "patches"} <= {r["variant"] for r in records}:
        print("", paired_summary(records, "pooled", "patches"), sep="\n")
    return records


def main(argv=None):
    return run_script("compare_reference_tokens.py", add_arguments, compare, argv, __doc__)


if __name__ == "__main__":
    main()
