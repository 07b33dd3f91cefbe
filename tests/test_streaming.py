"""Streamed training data: `--streaming True` trains from a `datasets.IterableDataset` without an Arrow cache,
reads triplet images by id from the images config's Parquet files, shards the stream per process, and resumes
exactly."""

import io
import json
import pickle
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from _scripts import load_script

from collm_hf.training.collators import CoLLMTripletCollator, ImageTable, ParquetImageTable
from collm_hf.training.trainer import load_rows, parquet_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, _tiny_clip_llama):
    """A saved tiny CoLLM and a synthetic MTCIR-style dataset (`triplets` + `images`, the writer's layout)."""
    from collm_hf.data.synthetic_world import WorldConfig, write_world

    root = tmp_path_factory.mktemp("streaming")
    model, processor = _tiny_clip_llama
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    config = WorldConfig(num_pairs=8, num_groups=10, num_cirr_queries=4, num_circo_queries=4, image_size=32)
    write_world(root, config, parts=["mtcir"])
    return root


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """A fresh, empty HF datasets cache folder for this test; closing a shuffled stream does not wait 5 s."""
    cache = tmp_path / "hf_datasets_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", cache / "downloads")
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", cache / "downloads" / "extracted")
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0.05)
    return cache


def _cache_contents(cache: Path) -> tuple[int, list[str]]:
    """(bytes, Arrow files) under the datasets cache."""
    files = [p for p in cache.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), [p.name for p in files if p.suffix == ".arrow"]


def _argv(workspace, output_dir, *extra):
    return ["triplets", "--model", str(workspace / "model"), "--dataset", str(workspace / "mtcir"),
            "--output_dir", str(output_dir), "--streaming", "True", "--shuffle_buffer_size", "8",
            "--per_device_train_batch_size", "4", "--use_cpu", "True", "--use_lora", "False", "--seed", "5",
            "--learning_rate", "1e-3", "--dataloader_num_workers", "0", "--logging_steps", "1", "--report_to", "none",
            "--disable_tqdm", "True", *extra]


def test_parquet_image_table_reads_by_id_lazily(workspace, tmp_path):
    from collm_hf.data import write_dataset
    from collm_hf.data.schema import IMAGES_FEATURES
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(250)]
    rows = [{"image_id": f"id-{i}", "image": image} for i, image in enumerate(images)]
    rng.shuffle(rows)  # ids out of order, over 3 files and several row groups each
    write_dataset(tmp_path / "images", {"images": {"train": rows}}, {"images": IMAGES_FEATURES}, rows_per_shard=120)
    files = parquet_files(str(tmp_path / "images"), "images")
    assert len(files) == 3
    table = ParquetImageTable(files, cache_row_groups=2)
    assert table._groups == {}  # only the ids were read
    expected = ImageTable(load_rows(str(tmp_path / "images"), "images"))
    for image_id in ("id-0", "id-249", "id-117", "id-0", "id-30"):
        got = Image.open(io.BytesIO(table.get([image_id])[0]["bytes"]))
        assert np.array_equal(np.asarray(got), np.asarray(expected.get([image_id])[0]))
        assert len(table._groups) <= 2
    assert "id-5" in table and "id-250" not in table and 5 not in table
    with pytest.raises(KeyError, match="'nope' is not in the images table"):
        table.get(["id-1", "nope"])
    copy = pickle.loads(pickle.dumps(table))  # dataloader workers reopen the files
    assert copy._groups == {} and copy.get(["id-3"]) == table.get(["id-3"])


def test_streamed_batches_equal_the_prepared_ones(workspace, tiny_model_and_processor, datasets_cache):
    """The same triplet rows give the same batch with images read by id from the Parquet files and from the
    prepared images table."""
    _, processor = tiny_model_and_processor
    path = str(workspace / "mtcir")
    rows = list(load_rows(path, "triplets", streaming=True).take(6))
    streamed = CoLLMTripletCollator(processor, images=ParquetImageTable(parquet_files(path, "images")), seed=1)(rows)
    prepared = CoLLMTripletCollator(processor, images=load_rows(path, "images"), seed=1)(rows)
    assert streamed.keys() == prepared.keys()
    for key, value in prepared.items():
        assert torch.equal(streamed[key], value) if isinstance(value, torch.Tensor) else streamed[key] == value, key


def test_streamed_training_writes_no_cache_and_resumes_exactly(workspace, tmp_path, datasets_cache):
    example = load_script(ROOT / "examples" / "train_collm.py")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert example.main(_argv(workspace, full, "--max_steps", "4", "--save_steps", "2")) == 0
    size, arrow = _cache_contents(datasets_cache)
    assert size == 0 and arrow == []  # at most empty lock files: nothing was prepared or downloaded
    state = json.loads((full / "trainer_state.json").read_text())
    logs = [log for log in state["log_history"] if "loss" in log]
    assert len(logs) == 4 and all(0 <= log["in_batch_top1"] <= 1 and log["logit_scale"] > 1 for log in logs)

    assert example.main(_argv(workspace, resumed, "--max_steps", "4", "--save_steps", "2",
                              "--resume_from_checkpoint", str(full / "checkpoint-2"))) == 0
    expected, got = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == got.keys()
    assert all(torch.equal(got[name], expected[name]) for name in expected)
    start = load_file(full / "checkpoint-2" / "model.safetensors")
    assert any(not torch.equal(start[name], expected[name]) for name in expected)  # steps 3-4 trained

    # A prepared (non-streamed) read of the same folder does fill the cache: the check above can see one.
    load_rows(str(workspace / "mtcir"), "triplets")
    assert _cache_contents(datasets_cache)[1]


def test_each_process_reads_its_own_shards(tmp_path, tiny_model_and_processor, datasets_cache):
    """The Trainer's data loader, prepared as on 2 processes: disjoint rows, all rows, each from its own files."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader
    from transformers import TrainingArguments

    from collm_hf.apps.benchmark.streaming import write_mtcir_shaped
    from collm_hf.training.arguments import DataArguments, LossArguments, ModelArguments, SynthesisArguments
    from collm_hf.training.lora import LoraArguments
    from collm_hf.training.trainer import build_trainer

    folder = write_mtcir_shaped(tmp_path / "mtcir", 4000)  # 4 Parquet files of triplets
    model, processor = tiny_model_and_processor
    args = TrainingArguments(str(tmp_path / "run"), max_steps=1, use_cpu=True, report_to=[])
    trainer = build_trainer("triplets", ModelArguments(), DataArguments(dataset_name_or_path=str(folder), streaming=True),
                            SynthesisArguments(), LossArguments(), LoraArguments(use_lora=False), args,
                            model=model, processor=processor)
    config = trainer.accelerator.dataloader_config
    assert config.dispatch_batches is False and config.split_batches is False  # no batches sent from rank 0
    seen = []
    for rank in range(2):
        loader = prepare_data_loader(DataLoader(trainer.train_dataset, batch_size=50, collate_fn=list), num_processes=2,
                                     process_index=rank, put_on_device=False, split_batches=config.split_batches,
                                     dispatch_batches=config.dispatch_batches)
        assert loader.dataset.num_shards == 2  # two of the four files
        seen.append([row["id"] for batch in loader for row in batch])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1], key=int) == [str(i) for i in range(4000)]


def test_streaming_needs_max_steps(workspace, tmp_path, capsys):
    example = load_script(ROOT / "examples" / "train_collm.py")
    with pytest.raises(SystemExit) as exit_info:
        example.main(_argv(workspace, tmp_path / "out"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "--streaming True needs --max_steps" in err and not (tmp_path / "out").exists()
