"""Evaluate a CoLLM model on a benchmark folder: metrics table, JSON report, optional submission files and picture.

    python examples/evaluate_collm.py MODEL_DIR BENCHMARK_DIR --split val --output-json metrics.json
    python examples/evaluate_collm.py MODEL_DIR cirr_hf --split test1 --submission-dir submissions/
    python examples/evaluate_collm.py MODEL_DIR circo_hf --split val --with-shared-concept
    python examples/evaluate_collm.py MODEL_DIR fashioniq_hf --refined --visualize grid.png

BENCHMARK_DIR is a dataset folder in the collm_hf schema (configs `queries`, `gallery`, optionally
`queries_refined`), as the `dataset_scripts/build_*.py` builders write it. The protocol (CIRR, CIRCO,
Fashion-IQ, plain recall) follows from its columns unless `--protocol` says otherwise. Same as
`collm-hf evaluate ...`; the work is done by `collm_hf.evaluation.benchmarks.evaluate_folder`.
"""

import argparse
import sys

from collm_hf.apps.commands.evaluate import add_arguments, evaluate_from_args


def main(argv=None) -> dict:
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    return evaluate_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
