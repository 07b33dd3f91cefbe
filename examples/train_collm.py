"""Train CoLLM with the stock Trainer: `pairs` (pre-training with on-the-fly triplet synthesis) or `triplets`.

Examples:
    # pre-training on image-caption pairs, LoRA rank 64, HN-NCE, 2 GPUs
    torchrun --nproc_per_node 2 examples/train_collm.py pairs \\
        --vision_name_or_path openai/clip-vit-large-patch14 --llm_name_or_path Salesforce/SFR-Embedding-2_R \\
        --dataset_name_or_path ./pairs_dataset --output_dir runs/pretrain --per_device_train_batch_size 64 --bf16 True

    # fine-tuning a saved CoLLM on MTCIR-style triplets (LoRA rank 16), resuming from the last checkpoint
    python examples/train_collm.py triplets --model_name_or_path runs/pretrain --dataset_name_or_path ./mtcir \\
        --output_dir runs/mtcir --resume_from_checkpoint latest

    # synthesis overhead (share of a training step spent assembling the synthesised queries)
    python examples/train_collm.py --measure-synthesis-overhead --size base --batch-size 64

Every `TrainingArguments` option is accepted (`--help` lists them all), or one JSON file with all options
(`train_collm.py pairs options.json`). `accelerate launch` works the same way.
"""

import argparse
import json
import logging
import sys

import transformers
from transformers import HfArgumentParser, TrainingArguments

from collm_hf.lora import LoraArguments
from collm_hf.training import (
    STAGES,
    DataArguments,
    LossArguments,
    ModelArguments,
    SynthesisArguments,
    run_training,
    synthesis_overhead_benchmark,
    training_defaults,
)

DATACLASSES = (ModelArguments, DataArguments, SynthesisArguments, LossArguments, LoraArguments, TrainingArguments)


def measure(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Share of a pair pre-training step spent in the in-step synthesis.")
    parser.add_argument("--measure-synthesis-overhead", action="store_true")
    parser.add_argument("--size", choices=["tiny", "base"], default="tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    result = synthesis_overhead_benchmark(args.size, args.batch_size, args.device, args.steps)
    print(json.dumps(result))
    print(f"synthesis overhead: {100 * result['share']:.2f} % of a training step "
          f"({result['size']} model, batch {result['batch_size']}, {result['device']})")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--measure-synthesis-overhead" in argv:
        return measure(argv)
    if not argv or argv[0] not in STAGES:
        print(f"usage: train_collm.py {{{','.join(STAGES)}}} [options]  (--help after the stage lists them)", file=sys.stderr)
        return 2
    stage, rest = argv[0], argv[1:]
    parser = HfArgumentParser(DATACLASSES)
    parser.set_defaults(**training_defaults())
    if len(rest) == 1 and rest[0].endswith(".json"):  # all options in one JSON file
        with open(rest[0]) as handle:
            parsed = parser.parse_dict({**training_defaults(), **json.load(handle)})
    else:
        parsed = parser.parse_args_into_dataclasses(args=rest)
    model_args, data_args, synthesis_args, loss_args, lora_args, training_args = parsed
    # Logging as in the transformers examples: info on the main process, warnings elsewhere.
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logging.getLogger("collm_hf").setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    run_training(stage, model_args, data_args, synthesis_args, loss_args, lora_args, training_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
