"""`collm-hf train {pairs,triplets} [options]` (also examples/train_collm.py): the two training stages.

The options are the model / data / synthesis / loss / LoRA dataclasses of `collm_hf.training` plus every
`TrainingArguments` flag, through `HfArgumentParser` (`collm-hf train pairs --help` lists them), or one JSON file
with all of them (`collm-hf train pairs options.json`); `--model` / `--dataset` are short for
`--model_name_or_path` / `--dataset_name_or_path`. The inputs are checked before anything loads: a missing folder,
an unreachable hub id, a dataset without the stage's config or a bad option is a user error (`collm_hf.apps.cli`).

`collm-hf train --measure-synthesis-overhead` instead prints the synthesis share of a pair training step.
"""

import argparse
import json
import logging
import sys

from ...training.arguments import STAGES
from ..cli import UsageError, require_dataset, require_model, require_path


def option_parser(prog: str | None = None):
    """The `HfArgumentParser` over all training option dataclasses, with this recipe's defaults; a bad option
    raises `UsageError`."""
    from transformers import HfArgumentParser, TrainingArguments

    from ...training.arguments import (
        DataArguments,
        LossArguments,
        ModelArguments,
        SynthesisArguments,
        training_defaults,
    )
    from ...training.lora import LoraArguments

    class OptionParser(HfArgumentParser):  # defined here: transformers is imported only when training
        def error(self, message):
            raise UsageError(message)

    parser = OptionParser(
        (ModelArguments, DataArguments, SynthesisArguments, LossArguments, LoraArguments, TrainingArguments), prog=prog
    )
    parser.set_defaults(**training_defaults())
    return parser


def parse_options(argv: list[str], prog: str | None = None) -> tuple:
    """(model, data, synthesis, loss, lora, training) arguments from flags, or from one `.json` file."""
    from ...training.arguments import training_defaults

    parser = option_parser(prog)
    if len(argv) == 1 and argv[0].endswith(".json"):
        require_path(argv[0], "options file", "file")
        try:
            with open(argv[0], encoding="utf-8") as handle:
                options = json.load(handle)
        except ValueError as error:
            raise UsageError(f"{argv[0]}: not valid JSON ({error})") from error
        try:
            return parser.parse_dict({**training_defaults(), **options})
        except (TypeError, ValueError) as error:  # unknown keys, values the dataclasses refuse
            raise UsageError(f"{argv[0]}: {error}") from error
    try:
        *options, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as error:  # values the dataclasses refuse (`TrainingArguments.__post_init__`)
        raise UsageError(str(error)) from error
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)}")
    return tuple(options)


def check_inputs(stage: str, model_args, data_args, training_args) -> None:
    """Raise `UsageError` naming the first input that is missing, unreachable or not the expected kind."""
    if model_args.model_name_or_path:
        require_model(model_args.model_name_or_path, "--model")
    elif model_args.vision_name_or_path and model_args.llm_name_or_path:
        require_model(model_args.vision_name_or_path, "--vision_name_or_path")
        require_model(model_args.llm_name_or_path, "--llm_name_or_path")
    else:
        raise UsageError("give --model (a saved CoLLM) or both --vision_name_or_path and --llm_name_or_path")
    if not data_args.dataset_name_or_path:
        raise UsageError("give --dataset (a dataset folder or hub id)")
    require_dataset(data_args.dataset_name_or_path, "--dataset", (data_args.dataset_config or stage,))
    if data_args.streaming and training_args.max_steps <= 0:
        raise UsageError("--streaming True needs --max_steps (a stream has no length to count epochs by)")
    if data_args.eval_dataset_name_or_path:
        require_dataset(data_args.eval_dataset_name_or_path, "--eval_dataset_name_or_path", ("queries", "gallery"))
    elif training_args.eval_strategy != "no":
        strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
        raise UsageError(f"--eval_strategy {strategy} needs --eval_dataset_name_or_path (a "
                         "benchmark folder or hub id to evaluate on)")
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() not in ("true", "latest"):
        require_path(resume, "--resume_from_checkpoint", "folder")


def train(stage: str, argv: list[str], prog: str | None = None) -> None:
    """Parse the training options in `argv`, check the inputs and train one stage (`run_training`)."""
    import transformers

    from ...training.trainer import run_training

    model_args, data_args, synthesis_args, loss_args, lora_args, training_args = parse_options(argv, prog)
    check_inputs(stage, model_args, data_args, training_args)
    # Logging as in the transformers examples: info on the main process, warnings elsewhere.
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    log_level = training_args.get_process_log_level()
    logging.getLogger("collm_hf").setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    run_training(stage, model_args, data_args, synthesis_args, loss_args, lora_args, training_args)


def measure(args) -> int:
    """Print the share of a pair training step spent in the in-step synthesis (JSON, then a sentence)."""
    from ...training.synthesis_overhead import synthesis_overhead_benchmark

    result = synthesis_overhead_benchmark(args.size, args.batch_size, args.device, args.steps)
    print(json.dumps(result))
    print(
        f"synthesis overhead: {100 * result['share']:.2f} % of a training step "
        f"({result['size']} model, batch {result['batch_size']}, {result['device']})"
    )
    return 0


def add_arguments(parser: argparse.ArgumentParser):
    """The stage, then its training options (`collm-hf train pairs --help` lists them); or the measurement."""
    parser.add_argument("stage", nargs="?", choices=STAGES, help="training stage")
    parser.add_argument(
        "options", nargs=argparse.REMAINDER, help="training options (`collm-hf train pairs --help` lists them)"
    )
    parser.add_argument(
        "--measure-synthesis-overhead",
        action="store_true",
        help="print the share of a pair training step spent in the in-step synthesis, then exit",
    )
    parser.add_argument(
        "--size", choices=["tiny", "base"], default="tiny", help="random model size for the measurement"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per measured step")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=5, help="timed repetitions")
    parser.set_defaults(train_prog=parser.prog)


def run(args) -> int:
    if args.measure_synthesis_overhead:
        return measure(args)
    if args.stage is None:
        raise UsageError(f"give the stage to train, {' or '.join(STAGES)} (`{args.train_prog} pairs --help` lists "
                         "its options), or --measure-synthesis-overhead")
    train(args.stage, list(args.options), prog=f"{args.train_prog} {args.stage}")
    return 0


__all__ = ["add_arguments", "check_inputs", "measure", "option_parser", "parse_options", "run", "train"]
