"""examples/train_collm.py in two processes (torchrun, and `accelerate launch --multi_gpu`; CPU, gloo), both stages:
after 3 steps the weights equal those of one process with twice the per-device batch.

The same global batch holds the same rows in the same order either way (the Trainer's seeded sampler; rank 0's
rows first, as the loss gathers them), and every random choice of the collators is keyed by (seed, epoch, row),
so both runs synthesise the same triplets; fp32, all dropout 0. 8 rows in global batches of 4: the third step is
in the second epoch (a new shuffle and new draws). The worker is this file: it runs the example's `main` for each
stage, then checks that it ran as one of 2 processes and writes what it saw (`rank<N>.json`).
"""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from _multiprocess import launch_with_retry
from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["red circle", "blue square", "dog on a bench", "yellow stars", "purple cross", "cyan ring", "green star", "two cats"]
STAGES = ("pairs", "triplets")
STEPS = 3
GLOBAL_BATCH = 4


def options(workspace, output_dir, per_device: int) -> list[str]:
    return ["--model", str(Path(workspace) / "model"), "--dataset", str(Path(workspace) / "data"),
            "--output_dir", str(output_dir), "--per_device_train_batch_size", str(per_device),
            "--max_steps", str(STEPS), "--learning_rate", "1e-3", "--save_strategy", "no", "--logging_steps", "1",
            "--use_cpu", "True", "--dataloader_num_workers", "0", "--lora_rank", "4", "--lora_dropout", "0",
            "--seed", "3", "--report_to", "none"]


def train_both_stages(workspace, out_dir, per_device: int) -> None:
    example = load_script(ROOT / "examples" / "train_collm.py")
    for stage in STAGES:
        assert example.main([stage, *options(workspace, Path(out_dir) / stage, per_device)]) == 0


def worker(out_dir: str, workspace: str, world_size: int):
    import torch.distributed as dist
    from accelerate import PartialState

    train_both_stages(workspace, out_dir, GLOBAL_BATCH // world_size)
    seen = {"world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "accelerate_processes": PartialState().num_processes, "rank": PartialState().process_index}
    assert seen["world_size"] == seen["accelerate_processes"] == world_size, seen
    Path(out_dir, f"rank{seen['rank']}.json").write_text(json.dumps(seen))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, _tiny_clip_llama):
    """A saved tiny CoLLM and a dataset folder with `pairs`, `triplets` and `images` Parquet configs (8 rows)."""
    import datasets
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("multiprocess_training")
    model, processor = _tiny_clip_llama
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)) for _ in WORDS]
    ids = [f"img{i}" for i in range(len(WORDS))]
    features = datasets.Features({"image_id": datasets.Value("string"), "image": datasets.Image()})
    tables = {
        "pairs": datasets.Dataset.from_dict(
            {"image_id": ids, "image": images, "caption": [f"a {w}" for w in WORDS]},
            features=datasets.Features({**features, "caption": datasets.Value("string")})),
        "images": datasets.Dataset.from_dict({"image_id": ids, "image": images}, features=features),
        "triplets": datasets.Dataset.from_dict({
            "id": [str(i) for i in range(8)], "reference_id": ids, "target_id": ids[1:] + ids[:1],
            "modifications": [[f"make it a {w}", f"show a {w}", f"add a {w}"] for w in WORDS[1:] + WORDS[:1]]}),
    }
    for name, table in tables.items():
        (root / "data" / name).mkdir(parents=True)
        table.to_parquet(root / "data" / name / "train-00000-of-00001.parquet")
    train_both_stages(root, root / "one_process", GLOBAL_BATCH)
    return root


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {**{f"merged.{k}": v for k, v in load_file(folder / "model.safetensors").items()},
            **{f"adapter.{k}": v for k, v in load_file(folder / "lora_adapter" / "adapter_model.safetensors").items()}}


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_train_the_weights_of_one_process_with_the_whole_batch(workspace, tmp_path, launcher):
    launch_with_retry(__file__, [tmp_path, workspace, 2], nproc=2, launcher=launcher, timeout=300)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [s["rank"] for s in seen] == [0, 1] and all(s["world_size"] == 2 for s in seen)
    for stage in STAGES:
        one, two = weights(workspace / "one_process" / stage), weights(tmp_path / stage)
        assert one.keys() == two.keys()
        worst = max(float((one[k] - two[k]).abs().max()) for k in one)
        assert worst <= 1e-5, f"{stage}: weights differ by up to {worst:.2e}"
        state = json.loads((tmp_path / stage / "trainer_state.json").read_text())
        assert state["global_step"] == STEPS and state["epoch"] > 1  # the last step is in the second epoch
        # The weights moved (a run that trained nothing would pass the comparison trivially).
        lora_b = [k for k in two if k.startswith("adapter.") and "lora_B" in k]
        assert lora_b and max(float(two[k].abs().max()) for k in lora_b) > 1e-3


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    worker(sys.argv[1], sys.argv[2], int(sys.argv[3]))
