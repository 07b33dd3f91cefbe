"""The `collm-hf` console command (also `python -m collm_hf`).

Each subcommand lives in its own module under `collm_hf/apps/commands/` and exposes `add_arguments(parser)`
and `run(args)`; `SUBCOMMANDS` maps the command name to that module, imported only when the command runs.

One style for every subcommand: every input is a named option spelled with dashes (`--model`, `--dataset`,
`--index`, `--image`, `--source-dir`, ...), never positional, and the folder a command writes is `--output-dir`.
A named option says what each path is for, reads the same in every command, and keeps a command line valid
when options are added or reordered. A verb (`train pairs`, `build-dataset cirr`) chooses what to do and is not
an input. `train` keeps `HfArgumentParser` over its option dataclasses and every `TrainingArguments` flag, whose
names users of `Trainer` know (`--output_dir`, `--per_device_train_batch_size`, ...; the dashed spellings work
too), with `--model` / `--dataset` as aliases of `--model_name_or_path` / `--dataset_name_or_path`.

User errors (a missing path, an unreachable hub id, a folder that is not the expected dataset, a bad option) end
as one line on stderr, `collm-hf <command>: error: <what, naming the item>`, with exit status 2;
`collm-hf --debug <command> ...` shows the traceback instead. `user_error_types()` lists the exceptions that mean
bad input; anything else is a bug and keeps its traceback. Commands check their inputs up front
(`require_path`, `require_model`, `require_dataset`) where a library would otherwise fail deep inside.
The scripts in `examples/` and `dataset_scripts/` are fronts on the same code: `run_script` gives them the same
parser, the same `--debug` and the same one-line errors, as `<script>: error: ...`.
"""

import argparse
import importlib
import os
import sys

EXIT_USAGE = 2
DEBUG_HELP = "show the full traceback of an error"

SUBCOMMANDS = {
    # name: (module, one-line help)
    "quickstart": ("collm_hf.apps.commands.quickstart",
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


# ----------------------------------------------------------------------------------------------------------
# Which errors are the user's
# ----------------------------------------------------------------------------------------------------------
class UsageError(Exception):
    """Bad input from the command line: reported as one line naming the item, exit status 2."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the user gave a bad input" rather than "the program is broken".

    A path that is missing, in the way or not readable; a hub that cannot be reached or refuses the request (no
    such repo, gated, not logged in); and the package's own input errors: an unreadable image, a query or gallery
    that cannot be searched, a dataset without the config, split or columns asked for, a saved index made by another
    model or from another gallery (or damaged), raw files that cannot be built into a dataset (missing images
    included), a row that cannot be written, an upload that failed, an unsafe archive, a checkpoint with pickle
    weights only or with missing weights.
    """
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    from ..data import DatasetBuildError, DatasetWriteError
    from ..data.writer import HubPushError
    from ..evaluation.benchmarks import DatasetLayoutError
    from ..evaluation.index import IndexFolderError, IndexMismatchError
    from ..models.collm.image_io import ImageReadError
    from ..models.collm.safe_loading import MissingWeightsError, UnsafeWeightsError
    from ..utils.archives import UnsafeArchiveError
    from .search import SearchInputError

    return (UsageError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
            ConnectionError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, ImageReadError,
            SearchInputError, DatasetLayoutError, IndexMismatchError, IndexFolderError, DatasetBuildError,
            DatasetWriteError, HubPushError, UnsafeArchiveError, UnsafeWeightsError, MissingWeightsError)


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is a user error: one of `user_error_types()`, or raised because of one (transformers
    reports an unreachable hub as an `OSError` raised from the hub's error)."""
    types = user_error_types()
    while error is not None:
        if isinstance(error, types):
            return True
        error = error.__cause__
    return False


def print_user_error(prog: str, error: BaseException) -> int:
    """Print `error` as one line `<prog>: error: <message>` on stderr; return the exit status (2)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    message = lines[0]
    for line in lines[1:]:  # a listing ("N images are missing:\n  a.png: ...\n  b.png: ...") stays readable
        message += (" " if message.endswith(":") else "; ") + line
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


# ----------------------------------------------------------------------------------------------------------
# Checking inputs up front
# ----------------------------------------------------------------------------------------------------------
def require_path(path: str | os.PathLike, option: str, kind: str | None = None) -> None:
    """Raise `UsageError` unless `path` exists (and is a "file" or a "folder", if `kind` says so)."""
    if not os.path.exists(path):
        raise UsageError(f"{option} {path}: no such {kind or 'file or folder'}")
    if kind == "file" and not os.path.isfile(path):
        raise UsageError(f"{option} {path}: is a folder, not a file")
    if kind == "folder" and not os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a file, not a folder")


def require_model(name_or_path: str, option: str) -> None:
    """Raise `UsageError` unless `name_or_path` is a model folder (`config.json`, or a LoRA adapter's
    `adapter_config.json`) or a hub id ("org/name") that can be fetched: cached, or the hub answers for it."""
    from ..evaluation.benchmarks import is_local_path

    if is_local_path(name_or_path):
        require_path(name_or_path, option, "folder")
        if not any(os.path.isfile(os.path.join(name_or_path, f)) for f in ("config.json", "adapter_config.json")):
            raise UsageError(f"{option} {name_or_path}: not a model folder (no config.json)")
        return
    from huggingface_hub import HfApi, is_offline_mode, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if any(isinstance(try_to_load_from_cache(name_or_path, f), str) for f in ("config.json", "adapter_config.json")):
        return
    if is_offline_mode():
        raise UsageError(f"{option} {name_or_path}: no such local folder, and the hub is off (HF_HUB_OFFLINE is "
                         "set) with no cached copy of that repo")
    try:
        HfApi().repo_info(name_or_path, timeout=10)
    except (RepositoryNotFoundError, GatedRepoError) as error:
        raise UsageError(f"{option} {name_or_path}: no such local folder, and the hub has no model repo of that "
                         f"name that you can read ({type(error).__name__})") from error
    except Exception as error:  # no network, proxy, DNS, server error: the hub cannot be reached
        raise UsageError(f"{option} {name_or_path}: no such local folder, and the hub cannot be reached "
                         f"({type(error).__name__}: {error})") from error


def require_dataset(name_or_path: str, option: str, configs: tuple[str, ...] = ()) -> None:
    """Raise `UsageError` unless `name_or_path` is an existing local dataset path, or a hub id; a dataset folder
    with a card (`README.md` with `configs:`, as the package writes) must hold each of `configs`. A hub id is
    left to the loaders, which name it when it cannot be reached."""
    from ..evaluation.benchmarks import available_configs, is_local_path

    if not is_local_path(name_or_path):
        return
    require_path(name_or_path, option)
    if configs and os.path.isfile(os.path.join(name_or_path, "README.md")):
        names = available_configs(name_or_path)
        missing = [c for c in configs if c not in names]
        if missing:
            raise UsageError(f"{option} {name_or_path}: not the expected dataset, it has no config "
                             f"{', '.join(map(repr, missing))} (its configs: {', '.join(names)})")


# ----------------------------------------------------------------------------------------------------------
# Parsers and entry points
# ----------------------------------------------------------------------------------------------------------
class CommandParser(argparse.ArgumentParser):
    """argparse, with a bad option reported like every other user error: one line, exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def run_script(prog: str, add_arguments, run, argv=None, description: str | None = None):
    """The `main(argv)` of a script in examples/ or dataset_scripts/: parse with `add_arguments(parser)` (plus
    `--debug`), call `run(args)` and return its result. A user error prints one line `<prog>: error: ...` and
    raises `SystemExit(2)`, as argparse does for a bad option; with `--debug` it propagates with its traceback."""
    parser = CommandParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except Exception as error:
        if args.debug or not is_user_error(error):
            raise
        raise SystemExit(print_user_error(prog, error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="collm-hf", description="CoLLM composed image retrieval tools.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


def main(argv=None) -> int:
    """Run `collm-hf ...`; return the exit status (0, or 2 after a user error). A bad option raises
    `SystemExit(2)` from argparse."""
    args = build_parser().parse_args(argv)
    try:
        return importlib.import_module(args._module).run(args) or 0
    except Exception as error:
        if args.debug or not is_user_error(error):
            raise
        return print_user_error(f"collm-hf {args.command}", error)


if __name__ == "__main__":
    sys.exit(main())
