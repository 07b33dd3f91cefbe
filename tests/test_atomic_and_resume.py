"""Nothing is lost: builds and index writes are atomic, and training resumes to the same weights.

- A dataset build (`dataset_scripts/build_pairs.py`, the real builder and writer) is SIGKILLed in a subprocess
  midway through writing its shards: the previous build at `--output-dir` is untouched, and running the build
  again gives output byte-identical to an uninterrupted build (and removes the killed run's scratch folder).
- `GalleryIndex.save` is SIGKILLed at random moments while overwriting an index: loading the folder gives the
  old index or the new one exactly, never a torn or mixed one; the next save removes the killed run's files.
  (Sharded multi-process builds killed and rerun, and two writers at once: `test_index_scale.py`.)
- Training (`examples/train_collm.py pairs`, CPU, fixed seed, tiny model, LoRA) crashed in step 3 and resumed
  from its last checkpoint ends with exactly the weights of an uninterrupted run.
"""

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _load(relative: str, name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    return env


# Subprocess prelude: register `collm_hf` as a bare namespace so that its submodules import without the package
# `__init__` (which imports transformers): the killed processes start in a second instead of ten.
LIGHT_PACKAGE = f"""
import sys, types
package = types.ModuleType("collm_hf")
package.__path__ = [{str(ROOT / "collm_hf")!r}]
sys.modules["collm_hf"] = package
"""


def _kill_when(process: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """SIGKILL `process` as soon as `ready()` holds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if ready():
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            return True
        time.sleep(0.01)
    process.kill()
    raise AssertionError("the build never reached the point where it should be killed")


# ==============================================================================================================
# Dataset build killed midway
# ==============================================================================================================
@pytest.fixture(scope="module")
def pairs_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs_source")
    rng = np.random.default_rng(0)
    entries = []
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (8, 10, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
        entries.append({"id": f"p{i}", "image": f"{i:03d}.png", "caption": f"a picture number {i}"})
    (root / "captions.json").write_text(json.dumps(entries))
    return root


def _build_argv(source: Path, output: Path) -> list[str]:
    return ["--source-dir", str(source / "captions.json"), "--images-dir", str(source), "--output-dir", str(output),
            "--rows-per-shard", "4", "--check-workers", "1"]


def test_sigkilled_build_leaves_nothing_and_rerun_is_identical(tmp_path, pairs_source):
    build = _load("dataset_scripts/build_pairs.py", "_build_pairs_for_atomic_test")
    reference, output = tmp_path / "reference", tmp_path / "out"
    assert build.main(_build_argv(pairs_source, reference)) == 0
    expected = _digest(reference)
    assert any(name.endswith(".parquet") for name in expected) and "README.md" in expected

    # A previous, different build sits at the output folder (the first 20 rows of the captions).
    partial_source = tmp_path / "previous"
    partial_source.mkdir()
    entries = json.loads((pairs_source / "captions.json").read_text())[:20]
    (partial_source / "captions.json").write_text(json.dumps(entries))
    for entry in entries:
        (partial_source / entry["image"]).write_bytes((pairs_source / entry["image"]).read_bytes())
    assert build.main(_build_argv(partial_source, output)) == 0
    previous = _digest(output)

    # Rebuild with the full captions, slowed down per row, and SIGKILL it once it has written a shard.
    script = LIGHT_PACKAGE + textwrap.dedent(f"""
        import time, sys
        import collm_hf.data.writer as writer
        encode = writer._encode_row
        def slow(*args, **kwargs):
            time.sleep(0.05)
            return encode(*args, **kwargs)
        writer._encode_row = slow
        from collm_hf.apps.commands.build_dataset import build_main
        sys.exit(build_main("pairs", {_build_argv(pairs_source, output)!r}))
    """)
    process = subprocess.Popen([sys.executable, "-c", script], env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)

    def shard_written():
        return any(p.suffix == ".parquet" and p.stat().st_size > 0
                   for d in tmp_path.glob(".out.partial-*") for p in d.rglob("*"))

    assert _kill_when(process, shard_written), process.stderr.read().decode()[-2000:]
    assert _digest(output) == previous  # the previous build is intact, not half replaced

    assert build.main(_build_argv(pairs_source, output)) == 0
    assert _digest(output) == expected  # byte-identical to the uninterrupted build
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert not leftovers, leftovers  # the killed run's scratch folder was cleaned up by the rerun


# ==============================================================================================================
# Index write killed midway
# ==============================================================================================================
def test_sigkilled_index_save_never_leaves_a_torn_index(tmp_path):
    from collm_hf.evaluation.index import GalleryIndex

    folder = tmp_path / "index"
    old = GalleryIndex(torch.nn.functional.normalize(torch.randn(50, 16), dim=-1), [f"old{i}" for i in range(50)])
    old.save(folder)
    new_embeddings = torch.nn.functional.normalize(torch.randn(20000, 16), dim=-1)
    torch.save(new_embeddings, tmp_path / "new.pt")
    script = LIGHT_PACKAGE + textwrap.dedent(f"""
        import torch
        from collm_hf.evaluation.index import GalleryIndex
        embeddings = torch.load({str(tmp_path / 'new.pt')!r})
        index = GalleryIndex(embeddings, [f"new{{i}}" for i in range(len(embeddings))])
        print("READY", flush=True)
        while True:
            index.save({str(folder)!r})
    """)
    outcomes = set()
    for delay in (0.0, 0.02):
        process = subprocess.Popen([sys.executable, "-c", script], env=_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "READY", process.stderr.read()[-2000:]
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        loaded = GalleryIndex.load(folder)
        if loaded.ids[0] == "old0":
            assert torch.equal(loaded.embeddings, old.embeddings)
            outcomes.add("old")
        else:
            assert loaded.ids == [f"new{i}" for i in range(20000)] and torch.equal(loaded.embeddings, new_embeddings)
            outcomes.add("new")
    assert outcomes  # every kill left one of the two allowed states
    old.save(folder)  # an uninterrupted save afterwards leaves only its own files
    assert sorted(p.name for p in folder.iterdir())[-1] == "manifest.json" and len(list(folder.iterdir())) == 3


# ==============================================================================================================
# Training interrupted and resumed
# ==============================================================================================================
WORDS = ["red circle", "blue square", "dog on a bench", "yellow stars", "purple cross", "cyan ring", "green star",
         "two cats"]


@pytest.fixture(scope="module")
def training_workspace(tmp_path_factory, _tiny_clip_llama):
    import datasets

    root = tmp_path_factory.mktemp("resume")
    model, processor = _tiny_clip_llama
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)) for _ in WORDS]
    features = datasets.Features({"image_id": datasets.Value("string"), "image": datasets.Image(),
                                  "caption": datasets.Value("string")})
    table = datasets.Dataset.from_dict({"image_id": [f"img{i}" for i in range(len(WORDS))], "image": images,
                                        "caption": [f"a {w}" for w in WORDS]}, features=features)
    (root / "data" / "pairs").mkdir(parents=True)
    table.to_parquet(root / "data" / "pairs" / "train-00000-of-00001.parquet")
    return root


def _train_argv(workspace: Path, output: Path, *extra) -> list[str]:
    return ["pairs", "--model_name_or_path", str(workspace / "model"), "--dataset_name_or_path", str(workspace / "data"),
            "--output_dir", str(output), "--per_device_train_batch_size", "4", "--max_steps", "4", "--save_steps", "2",
            "--logging_steps", "1", "--use_cpu", "True", "--dataloader_num_workers", "0", "--lora_rank", "4",
            "--seed", "7", "--learning_rate", "1e-3", *extra]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


class _Crash(Exception):
    pass


def test_training_resumed_from_checkpoint_matches_uninterrupted(training_workspace, tmp_path, monkeypatch):
    from transformers import Trainer

    example = _load("examples/train_collm.py", "_train_collm_for_resume_test")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert example.main(_train_argv(training_workspace, straight)) == 0

    # Crash inside step 3 (after checkpoint-2 was written), as a killed job would.
    original_step = Trainer.training_step

    def crashing_step(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise _Crash("simulated crash in step 3")
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", crashing_step)
    with pytest.raises(_Crash):
        example.main(_train_argv(training_workspace, resumed))
    monkeypatch.setattr(Trainer, "training_step", original_step)
    assert (resumed / "checkpoint-2").is_dir() and not (resumed / "model.safetensors").exists()

    assert example.main(_train_argv(training_workspace, resumed, "--resume_from_checkpoint", "latest")) == 0
    state = json.loads((resumed / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    expected, got = _weights(straight), _weights(resumed)
    assert expected.keys() == got.keys()
    start = _weights(training_workspace / "model")
    assert any(not torch.equal(start[k], expected[k]) for k in start)  # it did train
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, different[:10]


def test_atomic_folder_replaces_whole_or_leaves_the_old_folder(tmp_path):
    from collm_hf.utils.atomic import atomic_folder

    target = tmp_path / "model"
    atomic_folder(target, lambda folder: (folder / "weights").write_text("old"))
    assert (target / "weights").read_text() == "old"

    def fails_halfway(folder):
        (folder / "weights").write_text("new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_folder(target, fails_halfway)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no partial folder left beside it
    assert [p.name for p in target.iterdir()] == ["weights"] and (target / "weights").read_text() == "old"
    atomic_folder(target, lambda folder: (folder / "config").write_text("{}"))
    assert [p.name for p in target.iterdir()] == ["config"]  # replaced as a whole, nothing of the old one kept
