"""`streaming_startup_growth` and `streaming_memory_growth`: training from a streamed dataset starts as fast, and
in as little memory, at 200,000 MTCIR-shaped rows as at 20,000.

For each size a dataset is written with the package's writer in MTCIR's layout (`triplets` config of id,
reference_id, target_id, five modification texts; `images` config of image_id, image; 1,000 rows per Parquet
file; one image per 8 triplets, MTCIR's ratio of 3.4M pairs over ~423K images). Each measurement is a fresh
Python process (`python -m collm_hf.apps.benchmark.streaming DATASET MODEL`) that trains a tiny CoLLM with
`--streaming True` through `collm_hf.training.trainer.build_trainer` for a few steps and reports:

- the seconds from calling `build_trainer` (model, stream, images index, Trainer) to the end of the first training
  step (`first_step_s`);
- the peak anonymous memory of the process (`RssAnon` of /proc/self/status, sampled every 2 ms from a thread):
  memory the process itself allocated, without the Parquet pages the kernel maps and can drop;
- the bytes and Arrow files left in its own `HF_DATASETS_CACHE` (streaming writes none).

The two sizes alternate (small, large, small, large, ...), `repeats` times each, and each figure is the ratio of
the medians, large over small.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .harness import PeakMemory

TRIPLETS_PER_IMAGE = 8  # MTCIR: 3.4M pairs over ~423K LLaVA-558k images
SAMPLE_SECONDS = 0.002


def write_mtcir_shaped(folder, rows: int, seed: int = 0) -> Path:
    """Write an MTCIR-shaped dataset of `rows` triplets (and rows // 8 images, at least 16) to `folder`.

    Images are 32x32 JPEGs from a pool of 16 (what they show does not matter here, only the layout and sizes).
    """
    import io

    import numpy as np
    from PIL import Image

    from ...data import write_dataset
    from ...data.schema import IMAGES_CONFIG, TRIPLETS_CONFIG, triplet_features

    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(16):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
        pool.append(buffer.getvalue())
    num_images = max(16, rows // TRIPLETS_PER_IMAGE)

    def image_rows():
        for i in range(num_images):
            yield {"image_id": f"{i:09d}", "image": pool[i % len(pool)]}

    def triplet_rows():  # MTCIR groups: one reference, several edits of it, in a row
        for i in range(rows):
            reference = (i // TRIPLETS_PER_IMAGE) % num_images
            target = (reference + 1 + (i * 7919) % (num_images - 1)) % num_images
            yield {"id": str(i), "reference_id": f"{reference:09d}", "target_id": f"{target:09d}",
                   "modifications": [f"{verb} the object number {i}" for verb in
                                     ("change", "replace", "recolour", "move", "remove")],
                   "direction": "forward", "category": "change"}

    return write_dataset(folder, {TRIPLETS_CONFIG: {"train": triplet_rows()}, IMAGES_CONFIG: {"train": image_rows()}},
                         triplet_features(), {"pretty_name": f"MTCIR-shaped, {rows} rows"})


def _tree_size(folder) -> tuple[int, int]:
    """(bytes, Arrow files) under `folder`."""
    size, arrow = 0, 0
    for root, _, files in os.walk(folder):
        for name in files:
            size += os.path.getsize(os.path.join(root, name))
            arrow += name.endswith(".arrow")
    return size, arrow


def probe(dataset: str, model: str, steps: int = 3, batch_size: int = 8, shuffle_buffer_size: int = 1000,
          exit_when_done: bool = False) -> dict:
    """Train `steps` streamed steps in this process (see the module docstring); the measurements.

    `exit_when_done`: print them as JSON and end the process right after the last step, without the 5 s that
    closing a shuffled stream waits for Arrow's reader threads (`datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN`).
    """
    memory = PeakMemory(SAMPLE_SECONDS).start()  # stopped when the measurements are read
    # Everything imported before the clock starts: the figure is about the data, not about import times.
    import peft  # noqa: F401 - the Trainer imports it on first use
    from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: F401

    from ...training.arguments import DataArguments, LossArguments, ModelArguments, SynthesisArguments
    from ...training.lora import LoraArguments
    from ...training.trainer import build_trainer

    measured = {}

    def measurements() -> dict:
        memory.stop()
        result = {**measured, "peak_rss_anon_bytes": memory.peak_bytes("RssAnon")}
        if exit_when_done:  # a measuring process, with a datasets cache of its own
            result["datasets_cache_bytes"], result["datasets_cache_arrow_files"] = _tree_size(
                os.environ["HF_DATASETS_CACHE"])
        return result

    class Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            measured.setdefault("first_step_s", time.perf_counter() - started)
            if exit_when_done and state.global_step >= steps:
                print(json.dumps(measurements()), flush=True)
                os._exit(0)

    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(output_dir, max_steps=steps, per_device_train_batch_size=batch_size, use_cpu=True,
                                 save_strategy="no", report_to=[], logging_steps=steps, disable_tqdm=True,
                                 dataloader_num_workers=0, learning_rate=1e-4, lr_scheduler_type="constant")
        started = time.perf_counter()
        trainer = build_trainer("triplets", ModelArguments(model_name_or_path=model),
                                DataArguments(dataset_name_or_path=dataset, streaming=True,
                                              shuffle_buffer_size=shuffle_buffer_size), SynthesisArguments(),
                                LossArguments(), LoraArguments(use_lora=False), args)
        measured["build_s"] = time.perf_counter() - started
        trainer.add_callback(Steps())
        trainer.train()
    return measurements()


def _probe_in_subprocess(dataset, model, steps: int, batch_size: int, shuffle_buffer_size: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "HF_DATASETS_CACHE": cache, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        command = [sys.executable, "-m", __name__, str(dataset), str(model), str(steps), str(batch_size),
                   str(shuffle_buffer_size), str(threads)]
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"streaming probe failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def streaming_benchmark(small: int = 20_000, large: int = 200_000, repeats: int = 3, steps: int = 3,
                        batch_size: int = 8, workdir=None, in_process: bool = False) -> dict:
    """`streaming_startup_growth` and `streaming_memory_growth` (large over small), with each size's medians.

    `in_process`: run each measurement in this process, unshuffled, for a quick check of the code path (the smoke
    preset): no interpreter start-up or imports per run, but the memory figure then holds this process's own
    memory and the datasets cache is not checked."""
    import torch

    from ...testing_utils import tiny_model_and_processor

    with tempfile.TemporaryDirectory(dir=workdir) as folder:
        model, processor = tiny_model_and_processor("clip", "llama")
        model.save_pretrained(f"{folder}/model")
        processor.save_pretrained(f"{folder}/model")
        del model, processor
        written = time.perf_counter()
        datasets = {n: write_mtcir_shaped(f"{folder}/mtcir-{n}", n) for n in (small, large)}
        write_s = time.perf_counter() - written
        runs = {n: [] for n in (small, large)}
        for _ in range(repeats):
            for n in (small, large):
                if in_process:
                    runs[n].append(probe(str(datasets[n]), f"{folder}/model", steps, batch_size, shuffle_buffer_size=0))
                else:
                    runs[n].append(_probe_in_subprocess(datasets[n], f"{folder}/model", steps, batch_size, 1000,
                                                        torch.get_num_threads()))
    median = {n: {key: statistics.median(run[key] for run in runs[n]) for key in runs[n][0]} for n in runs}
    details = {"streaming_rows": [small, large], "streaming_dataset_write_s": write_s}
    for name, n in (("small", small), ("large", large)):
        details[f"streaming_first_step_s_{name}"] = median[n]["first_step_s"]
        details[f"streaming_build_s_{name}"] = median[n]["build_s"]
        details[f"streaming_peak_rss_anon_mib_{name}"] = median[n]["peak_rss_anon_bytes"] / 2**20
    if not in_process:
        details["streaming_datasets_cache_bytes"] = max(run["datasets_cache_bytes"] for n in runs for run in runs[n])
        details["streaming_datasets_cache_arrow_files"] = max(run["datasets_cache_arrow_files"] for n in runs
                                                              for run in runs[n])
    return {"streaming_startup_growth": median[large]["first_step_s"] / median[small]["first_step_s"],
            "streaming_memory_growth": median[large]["peak_rss_anon_bytes"] / median[small]["peak_rss_anon_bytes"],
            **details}


if __name__ == "__main__":
    import torch

    torch.set_num_threads(int(sys.argv[6]))
    print(json.dumps(probe(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
                           exit_when_done=True)))
