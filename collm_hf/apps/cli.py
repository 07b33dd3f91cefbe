"""The `collm-hf` console command (also `python -m collm_hf`).

Each subcommand lives in its own module under `collm_hf/apps/commands/` and exposes `add_arguments(parser)`
and `run(args)`; `SUBCOMMANDS` maps the command name to that module, imported only when the command runs.

One style for every subcommand: inputs are named options (`--model`, `--dataset`, `--output-dir`, ...), never
positional, spelled with dashes. A user error (a missing path, an unreachable hub id, a folder that is not the
expected dataset, a bad option) ends with one line on stderr, `collm-hf <command>: error: <what, naming the
item>`, and exit status 2; `--debug` shows the traceback instead.
"""

import argparse
import importlib
import sys

EXIT_USAGE = 2

SUBCOMMANDS = {
    # name: (module, one-line help)
    "quickstart": ("collm_hf.apps.quickstart.run",
                   "Train and evaluate a small CoLLM on the synthetic world, end to end (no downloads)."),
    "search": ("collm_hf.apps.commands.search", "Search a gallery with a reference image and/or a modification text."),
    "index": ("collm_hf.apps.commands.index", "Embed a gallery dataset into a saved index for `collm-hf search`."),
    "build-dataset": ("collm_hf.apps.commands.build_dataset",
                      "Build CIRR / Fashion-IQ / CIRCO / MTCIR / pairs into Parquet + card."),
    "train": ("collm_hf.apps.commands.train",
              "Train CoLLM: pair pre-training with on-the-fly synthesis, or triplet fine-tuning."),
    "evaluate": ("collm_hf.apps.commands.evaluate",
                 "Evaluate a model on a CIRR / CIRCO / Fashion-IQ benchmark folder (+ submissions)."),
}


class UsageError(Exception):
    """Bad input from the command line: reported as one line naming the item, exit status 2."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the user gave a bad input" rather than "the program is broken"."""
    from ..models.collm.image_io import ImageReadError

    return (UsageError, FileNotFoundError, NotADirectoryError, ImageReadError)


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option reported like every other user error: one line, exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="collm-hf", description="CoLLM composed image retrieval tools.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return importlib.import_module(args._module).run(args) or 0
    except user_error_types() as error:
        if args.debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"collm-hf {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
