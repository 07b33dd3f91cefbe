"""The `collm-hf` console command (also `python -m collm_hf`).

Each subcommand lives in its own module and exposes `add_arguments(parser)` and `run(args)`;
`SUBCOMMANDS` maps the command name to that module, imported only when the command runs.
"""

import argparse
import importlib
import sys

SUBCOMMANDS = {
    # name: (module, one-line help)
    "quickstart": ("collm_hf.apps.quickstart.run", "Train and evaluate a small CoLLM on the synthetic world, end to end (no downloads)."),
    "search": ("collm_hf.apps.commands.search", "Search a gallery with a reference image and/or a modification text."),
    "index": ("collm_hf.apps.commands.index", "Embed a gallery dataset into a saved index for `collm-hf search`."),
    "build-dataset": ("collm_hf.apps.commands.build_dataset", "Build CIRR / Fashion-IQ / CIRCO / MTCIR / pairs into Parquet + card."),
    "train": ("collm_hf.apps.commands.train", "Train CoLLM: pair pre-training with on-the-fly synthesis, or triplet fine-tuning."),
    "evaluate": ("collm_hf.apps.commands.evaluate", "Evaluate a model on a CIRR / CIRCO / Fashion-IQ benchmark folder (+ submissions)."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="collm-hf", description="CoLLM composed image retrieval tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return importlib.import_module(args._module).run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
