"""Evaluation during training from the command line: `--eval_dataset_name_or_path` adds eval_loss and the
benchmark's retrieval metrics to every evaluation, and `--metric_for_best_model cirr_score` keeps the best
checkpoint; training logs carry the logit scale and the in-batch top-1 accuracy."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, _tiny_clip_llama):
    """A saved tiny CoLLM, synthetic MTCIR-style triplets and a CIRR-style benchmark (8 val queries)."""
    from collm_hf.data.synthetic_world import WorldConfig, write_world

    root = tmp_path_factory.mktemp("training_eval")
    model, processor = _tiny_clip_llama
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    config = WorldConfig(num_pairs=8, num_groups=8, num_cirr_queries=8, num_circo_queries=4, image_size=32)
    write_world(root, config, parts=["mtcir", "cirr"])
    return root


def _argv(workspace, output_dir, *extra):
    return ["triplets", "--model", str(workspace / "model"), "--dataset", str(workspace / "mtcir"),
            "--output_dir", str(output_dir), "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
            "--use_cpu", "True", "--use_lora", "False", "--logging_steps", "1", "--report_to", "none",
            "--dataloader_num_workers", "0", "--disable_tqdm", "True", *extra]


def test_retrieval_metrics_pick_the_best_checkpoint(workspace, tmp_path):
    run = tmp_path / "run"
    assert load_script(ROOT / "examples" / "train_collm.py").main(_argv(
        workspace, run, "--max_steps", "3", "--seed", "1", "--learning_rate", "3e-2",
        "--eval_dataset_name_or_path", str(workspace / "cirr"), "--eval_strategy", "steps", "--eval_steps", "1",
        "--save_steps", "1", "--metric_for_best_model", "cirr_score", "--load_best_model_at_end", "True")) == 0
    state = json.loads((run / "trainer_state.json").read_text())
    history = state["log_history"]
    scores = {log["step"]: log["eval_cirr_score"] for log in history if "eval_cirr_score" in log}
    assert sorted(scores) == [1, 2, 3]
    retrieval = next(log for log in history if "eval_cirr_score" in log)
    assert {"eval_recall@1", "eval_recall@5", "eval_recall_subset@1"} <= set(retrieval)
    assert sum("eval_loss" in log for log in history) == 3  # the contrastive loss on the benchmark's triplets
    training = [log for log in history if "loss" in log]
    assert len(training) == 3 and all(0 <= log["in_batch_top1"] <= 1 for log in training)
    assert all(log["logit_scale"] > 1 for log in training)

    best = max(scores, key=lambda step: (scores[step], -step))  # the Trainer keeps the first of equal scores
    assert state["best_model_checkpoint"] == str(run / f"checkpoint-{best}")
    assert state["best_metric"] == scores[best]
    final = load_file(run / "model.safetensors")  # the saved model is the best checkpoint's
    kept = load_file(run / f"checkpoint-{best}" / "model.safetensors")
    assert final.keys() == kept.keys() and all(torch.equal(final[name], kept[name]) for name in kept)
    if best != 3:  # with this seed the best is checkpoint 2: the last one is not what was saved
        last = load_file(run / "checkpoint-3" / "model.safetensors")
        assert any(not torch.equal(final[name], last[name]) for name in last)


def test_eval_benchmark_split_cap_and_loss_batches(workspace, tiny_model_and_processor):
    from collm_hf.evaluation.callback import BenchmarkLossCollator
    from collm_hf.training.arguments import DataArguments
    from collm_hf.training.trainer import load_eval_benchmark

    _, processor = tiny_model_and_processor
    bench = load_eval_benchmark(DataArguments(eval_dataset_name_or_path=str(workspace / "cirr"), eval_split="val",
                                              eval_max_queries=3))
    assert bench.split == "val" and bench.protocol == "cirr" and len(bench.queries) == 3
    queries = [bench.queries[i] for i in range(3)]
    batch = BenchmarkLossCollator(processor, bench.gallery)(queries)
    image_of = dict(zip(bench.gallery["image_id"], bench.gallery["image"]))
    targets = processor(images=[image_of[q["target_ids"][0]] for q in queries])["pixel_values"]
    references = processor(images=[q["reference_image"] for q in queries])["pixel_values"]
    assert torch.equal(batch["target_pixel_values"], targets) and torch.equal(batch["pixel_values"], references)
    assert batch["return_loss"] is True and batch["input_ids"].shape[0] == 3


def test_closed_label_split_is_refused(workspace, tmp_path, capsys):
    from collm_hf.data import write_dataset
    from collm_hf.data.schema import benchmark_features
    from collm_hf.data.synthetic_world import WorldConfig, cirr_rows

    queries, gallery = cirr_rows(WorldConfig(num_cirr_queries=2, image_size=16))
    write_dataset(tmp_path / "closed", {"queries": {"test1": [dict(q, target_ids=[]) for q in queries]},
                                        "gallery": {"test1": gallery}}, benchmark_features("cirr"))
    with pytest.raises(SystemExit) as exit_info:
        load_script(ROOT / "examples" / "train_collm.py").main(_argv(
            workspace, tmp_path / "run", "--max_steps", "1", "--eval_dataset_name_or_path", str(tmp_path / "closed"),
            "--eval_strategy", "steps"))
    err = capsys.readouterr().err.splitlines()[-1]  # after the benchmark's preparation bars: one line
    assert exit_info.value.code == 2 and err.startswith("train_collm.py: error: ")
    assert "split 'test1' has queries without target_ids" in err and not (tmp_path / "run").exists()


def test_eval_strategy_needs_a_benchmark(workspace, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script(ROOT / "examples" / "train_collm.py").main(_argv(
            workspace, tmp_path / "run", "--max_steps", "1", "--eval_strategy", "steps"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--eval_strategy steps needs --eval_dataset_name_or_path" in err
    assert not (tmp_path / "run").exists()
