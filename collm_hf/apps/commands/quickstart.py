"""`collm-hf quickstart`: the command line of `collm_hf.apps.quickstart.run.run_quickstart`.

    collm-hf quickstart --output-dir runs/qs --seed 0 [--llm DIR_OR_HUB_ID] [--recipe JSON] [--tiny] [--retrain]

A missing package, a missing `--llm` folder or an unreachable hub id, or a `--recipe` that is not a JSON object
of recipe fields is a user error (`collm_hf.apps.cli`): one line naming it, exit status 2, before any work.
"""

import importlib.util
import json

from ..cli import UsageError, require_model
from ..quickstart.run import DEFAULT_OUTPUT_DIR, run_quickstart

# What the quickstart imports beyond the base install (the `train` and `eval` extras, plus jinja2 for the card).
NEEDED_MODULES = {"datasets": "datasets", "evaluate": "evaluate", "accelerate": "accelerate", "jinja2": "jinja2"}


def add_arguments(parser):
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="where the world, models and results go")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world, the model and the training")
    parser.add_argument("--llm", default=None, help="a pretrained LLM folder or hub id to use instead of the tiny Llama")
    parser.add_argument("--tiny", action="store_true", help="a reduced run (small world, a few steps) for tests")
    parser.add_argument("--retrain", action="store_true", help="train again even if DIR/model matches")
    parser.add_argument("--recipe", default=None, metavar="JSON",
                        help='override recipe fields (QuickstartRecipe), e.g. \'{"pair_steps": 250, "world": {"max_objects": 2}}\'')
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def check_dependencies():
    """Raise one `UsageError` naming every missing package (instead of a deep ImportError mid-run)."""
    missing = [pip for module, pip in NEEDED_MODULES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise UsageError(f"the quickstart needs {', '.join(missing)}: pip install 'collm-hf[quickstart]'")


def recipe_from_args(args):
    """The `QuickstartRecipe` that `--recipe` (a JSON object of fields) makes of the default or tiny one, or None."""
    if not args.recipe:
        return None
    from ..quickstart.training import QuickstartRecipe

    try:
        overrides = json.loads(args.recipe)
    except ValueError as error:
        raise UsageError(f"--recipe is not valid JSON ({error}): {args.recipe!r}") from error
    if not isinstance(overrides, dict):
        raise UsageError(f"--recipe must be a JSON object of recipe fields, got {args.recipe!r}")
    base = QuickstartRecipe.tiny(args.seed) if args.tiny else QuickstartRecipe()
    try:
        return base.with_overrides(overrides)
    except (TypeError, ValueError) as error:
        raise UsageError(f"--recipe: {error}") from error


def run(args) -> int:
    check_dependencies()
    if args.llm is not None:
        require_model(args.llm, "--llm")
    recipe = recipe_from_args(args)
    run_quickstart(args.output_dir, seed=args.seed, llm=args.llm, tiny=args.tiny, retrain=args.retrain,
                   show_progress=not args.no_progress, recipe=recipe)
    return 0


__all__ = ["add_arguments", "check_dependencies", "recipe_from_args", "run"]
