"""Evaluate a CoLLM model on a benchmark folder: metrics table, JSON report, optional submission files and picture.

    python examples/evaluate_collm.py --model MODEL_DIR --dataset BENCHMARK_DIR --split val --output-json metrics.json
    python examples/evaluate_collm.py --model MODEL_DIR --dataset cirr_hf --split test1 --submission-dir submissions/
    python examples/evaluate_collm.py --model MODEL_DIR --dataset circo_hf --split val --with-shared-concept
    python examples/evaluate_collm.py --model MODEL_DIR --dataset fashioniq_hf --refined --visualize grid.png

BENCHMARK_DIR is a dataset folder in the collm_hf schema (configs `queries`, `gallery`, optionally
`queries_refined`), as the `dataset_scripts/build_*.py` builders write it. The protocol (CIRR, CIRCO,
Fashion-IQ, plain recall) follows from its columns unless `--protocol` says otherwise. This is
`collm-hf evaluate` (same options, same one-line errors with exit status 2; `--debug` shows the traceback);
the steps it runs are shown in `collm_hf.evaluation.report`.
"""

import sys

from collm_hf.apps.cli import run_script
from collm_hf.apps.commands.evaluate import add_arguments, evaluate_from_args


def main(argv=None) -> dict:
    """Evaluate; return the report. A user error prints one line and exits with status 2 (`--debug`: traceback)."""
    return run_script("evaluate_collm.py", add_arguments, evaluate_from_args, argv, description=__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
