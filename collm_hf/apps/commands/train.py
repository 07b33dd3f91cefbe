"""Command line of the two training stages: `collm-hf train {pairs,triplets} [options]` and
examples/train_collm.py (same options: model / data / synthesis / loss / LoRA dataclasses of `training.py` and
`lora.py`, plus every `TrainingArguments` flag, through `HfArgumentParser`; or one JSON file with all of them).

`--measure-synthesis-overhead` instead prints the synthesis share of a pair training step.
"""

import argparse
import json
import logging
import sys

from ...training.arguments import STAGES

USAGE = (
    f"usage: train {{{','.join(STAGES)}}} [options] | --measure-synthesis-overhead [--size tiny|base] [--batch-size N]"
)


def option_parser():
    """The `HfArgumentParser` over all training option dataclasses, with this recipe's defaults."""
    from transformers import HfArgumentParser, TrainingArguments

    from ...training.lora import LoraArguments
    from ...training.arguments import DataArguments, LossArguments, ModelArguments, SynthesisArguments, training_defaults

    parser = HfArgumentParser(
        (ModelArguments, DataArguments, SynthesisArguments, LossArguments, LoraArguments, TrainingArguments)
    )
    parser.set_defaults(**training_defaults())
    return parser


def parse_options(argv: list[str]) -> tuple:
    """(model, data, synthesis, loss, lora, training) arguments from flags, or from one `.json` file."""
    from ...training.arguments import training_defaults

    parser = option_parser()
    if len(argv) == 1 and argv[0].endswith(".json"):
        with open(argv[0]) as handle:
            return parser.parse_dict({**training_defaults(), **json.load(handle)})
    return parser.parse_args_into_dataclasses(args=argv)


def _add_measure_arguments(parser: argparse.ArgumentParser):
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


def measure(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Share of a pair pre-training step spent in the in-step synthesis.")
    _add_measure_arguments(parser)
    return _measure(parser.parse_args(argv))


def _measure(args) -> int:
    from ...training.synthesis_overhead import synthesis_overhead_benchmark

    result = synthesis_overhead_benchmark(args.size, args.batch_size, args.device, args.steps)
    print(json.dumps(result))
    print(
        f"synthesis overhead: {100 * result['share']:.2f} % of a training step "
        f"({result['size']} model, batch {result['batch_size']}, {result['device']})"
    )
    return 0


def main(argv=None) -> int:
    """Train one stage (or measure the synthesis overhead); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--measure-synthesis-overhead" in argv:
        return measure(argv)
    if not argv or argv[0] not in STAGES:
        print(USAGE, file=sys.stderr)
        return 2
    if len(argv) > 1 and argv[1] in ("-h", "--help"):
        option_parser().print_help()
        return 0
    import transformers

    from ...training.trainer import run_training

    model_args, data_args, synthesis_args, loss_args, lora_args, training_args = parse_options(argv[1:])
    # Logging as in the transformers examples: info on the main process, warnings elsewhere.
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    log_level = training_args.get_process_log_level()
    logging.getLogger("collm_hf").setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    run_training(argv[0], model_args, data_args, synthesis_args, loss_args, lora_args, training_args)
    return 0


def add_arguments(parser: argparse.ArgumentParser):
    """`collm-hf train`: the stage, then the options of examples/train_collm.py (`collm-hf train pairs --help`)."""
    parser.add_argument("stage", nargs="?", choices=STAGES, help="training stage")
    parser.add_argument(
        "options", nargs=argparse.REMAINDER, help="training options (`collm-hf train pairs --help` lists them)"
    )
    _add_measure_arguments(parser)


def run(args) -> int:
    if args.measure_synthesis_overhead:
        return _measure(args)
    return main(([args.stage] if args.stage else []) + list(args.options))


__all__ = ["main", "option_parser", "parse_options", "add_arguments", "run"]
