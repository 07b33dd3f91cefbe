"""Tiny training inputs: a saved tiny CoLLM, a 4-row triplet dataset, a triplet batch, and trainers built from options."""

import datasets
import numpy as np
from PIL import Image

WORDS = ["red circle", "blue square", "dog on a bench", "yellow stars"]


def write_workspace(root, model, processor):
    """`root/model` (the tiny CoLLM and its processor) and `root/data` (`write_triplet_data`); returns `root`."""
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    write_triplet_data(root / "data")
    return root


def write_triplet_data(folder):
    """A dataset folder with Parquet `triplets` (4 rows) and `images` configs."""
    rng = np.random.default_rng(0)
    ids = [f"img{i}" for i in range(len(WORDS))]
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in ids]
    features = datasets.Features({"image_id": datasets.Value("string"), "image": datasets.Image()})
    tables = {
        "images": datasets.Dataset.from_dict({"image_id": ids, "image": images}, features=features),
        "triplets": datasets.Dataset.from_dict({"id": ids, "reference_id": ids, "target_id": ids[1:] + ids[:1],
                                                "modifications": [[f"make it a {w}"] for w in WORDS[1:] + WORDS[:1]]}),
    }
    for name, table in tables.items():
        (folder / name).mkdir(parents=True)
        table.to_parquet(folder / name / "train.parquet")


def triplet_batch(processor):
    """A 4-triplet batch of `CoLLMTripletCollator` over random images."""
    from collm_hf.training.collators import CoLLMTripletCollator

    rng = np.random.default_rng(0)
    images = {str(i): Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)) for i in range(4)}
    rows = [{"reference_id": str(i), "target_id": str((i + 1) % 4), "modifications": [f"make it red {i}"]} for i in range(4)]
    return CoLLMTripletCollator(processor, images=images)(rows)


def trainer_from_options(workspace, output_dir, *extra):
    """`build_trainer("triplets", ...)` with the options the training command parses from `extra` (2 steps of 4 rows,
    LoRA rank 4 without dropout, no checkpoints)."""
    from collm_hf.apps.commands.train import parse_options
    from collm_hf.training.trainer import build_trainer

    options = parse_options([
        "--model", str(workspace / "model"), "--dataset", str(workspace / "data"), "--output_dir", str(output_dir),
        "--use_cpu", "True", "--max_steps", "2", "--learning_rate", "1e-2", "--per_device_train_batch_size", "4",
        "--lora_rank", "4", "--lora_dropout", "0", "--save_strategy", "no", "--activation_checkpointing", "False",
        "--logging_steps", "1", "--dataloader_num_workers", "0", "--report_to", "none", *extra,
    ])
    return build_trainer("triplets", *options)
