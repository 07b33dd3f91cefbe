"""Train CoLLM with the stock Trainer: `pairs` (pre-training with on-the-fly triplet synthesis) or `triplets`.

Examples:
    # pre-training on image-caption pairs, LoRA rank 64, HN-NCE, 2 GPUs
    torchrun --nproc_per_node 2 examples/train_collm.py pairs \\
        --vision_name_or_path openai/clip-vit-large-patch14 --llm_name_or_path Salesforce/SFR-Embedding-2_R \\
        --dataset ./pairs_dataset --output_dir runs/pretrain --per_device_train_batch_size 64 --bf16 True

    # fine-tuning a saved CoLLM on MTCIR-style triplets (LoRA rank 16), resuming from the last checkpoint
    python examples/train_collm.py triplets --model runs/pretrain --dataset ./mtcir \\
        --output_dir runs/mtcir --resume_from_checkpoint latest

    # synthesis overhead (share of a training step spent assembling the synthesised queries)
    python examples/train_collm.py --measure-synthesis-overhead --size base --batch-size 64

Every `TrainingArguments` option is accepted (`train_collm.py pairs --help` lists them all), or one JSON file
with all options (`train_collm.py pairs options.json`); `--model` / `--dataset` are short for
`--model_name_or_path` / `--dataset_name_or_path`. `accelerate launch --multi_gpu --num_processes N` works the same
way (without `--multi_gpu` it starts one process on a machine without GPUs; on CPUs add `--use_cpu True`); so does
`collm-hf train ...` (`collm_hf.apps.commands.train`). N processes with per-device batch b train what one process
with batch N x b trains; `--fsdp "full_shard auto_wrap"` or a ZeRO-3 `--deepspeed` config shards the parameters
(docs/training.md). A missing input or a bad option prints one line and exits with status 2;
`train_collm.py --debug pairs ...` shows the traceback.
"""

import sys

from collm_hf.apps.cli import run_script
from collm_hf.apps.commands import train


def main(argv=None) -> int:
    return run_script("train_collm.py", train.add_arguments, train.run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
