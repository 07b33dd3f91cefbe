"""examples/train_collm.py end to end on tiny data: 2 steps of each stage, save, AutoModel reload, resume, adapter."""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor
from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["red circle", "blue square", "dog on a bench", "yellow stars", "purple cross", "cyan ring", "green star", "two cats"]


def load_example():
    return load_script(ROOT / "examples" / "train_collm.py")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, _tiny_clip_llama):
    """A saved tiny CoLLM and a dataset folder with `pairs`, `triplets` and `images` Parquet configs."""
    root = tmp_path_factory.mktemp("train_example")
    model, processor = _tiny_clip_llama
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)) for _ in WORDS]
    ids = [f"img{i}" for i in range(len(WORDS))]
    image = datasets.Image()
    tables = {
        "pairs": datasets.Dataset.from_dict({"image_id": ids, "image": images, "caption": [f"a {w}" for w in WORDS]},
                                            features=datasets.Features({"image_id": datasets.Value("string"), "image": image,
                                                                        "caption": datasets.Value("string")})),
        "images": datasets.Dataset.from_dict({"image_id": ids, "image": images},
                                             features=datasets.Features({"image_id": datasets.Value("string"), "image": image})),
        "triplets": datasets.Dataset.from_dict({
            "id": [str(i) for i in range(8)], "reference_id": ids, "target_id": ids[1:] + ids[:1],
            "modifications": [[f"make it a {w}", f"show a {w}"] for w in WORDS[1:] + WORDS[:1]]}),
    }
    for name, table in tables.items():
        (root / "data" / name).mkdir(parents=True)
        table.to_parquet(root / "data" / name / "train-00000-of-00001.parquet")
    return root


def common(workspace, output_dir, *extra):
    return ["--dataset", str(workspace / "data"), "--output_dir", str(output_dir),
            "--per_device_train_batch_size", "4", "--save_steps", "1", "--logging_steps", "1", "--use_cpu", "True",
            "--dataloader_num_workers", "0", "--lora_rank", "4", "--seed", "3", *extra]


def test_pairs_then_triplets_save_reload_resume(workspace):
    example = load_example()
    pairs_dir, triplets_dir = workspace / "pairs_run", workspace / "triplets_run"
    assert example.main(["pairs", "--model", str(workspace / "model"), *common(workspace, pairs_dir, "--max_steps", "2")]) == 0
    assert (pairs_dir / "checkpoint-2").is_dir() and (pairs_dir / "lora_adapter" / "adapter_config.json").exists()
    state = json.loads((pairs_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and all(np.isfinite(log["loss"]) for log in state["log_history"] if "loss" in log)
    # Each training log carries the logit scale and the in-batch top-1 accuracy of the composed queries.
    assert all(0 <= log["in_batch_top1"] <= 1 and log["logit_scale"] > 1 for log in state["log_history"] if "loss" in log)

    # The merged result reloads with AutoModel and differs from the starting model (it trained).
    trained = AutoModel.from_pretrained(pairs_dir).eval()
    start = AutoModel.from_pretrained(workspace / "model").eval()
    config = trained.config
    assert config.contrastive_loss.loss_type == "hn_nce" and config.slerp_alpha == 0.5
    assert not torch.equal(trained.language_model.layers[0].self_attn.q_proj.weight, start.language_model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(trained.adapter.layers[0].weight, start.adapter.layers[0].weight)

    # Resume from the checkpoint for one more step.
    assert example.main(["pairs", "--model_name_or_path", str(workspace / "model"),
                         *common(workspace, pairs_dir, "--max_steps", "3", "--resume_from_checkpoint", str(pairs_dir / "checkpoint-2"))]) == 0
    assert json.loads((pairs_dir / "trainer_state.json").read_text())["global_step"] == 3

    # Fine-tune the pre-trained model on triplets (images resolved through the images config).
    assert example.main(["triplets", "--model_name_or_path", str(pairs_dir), *common(workspace, triplets_dir, "--max_steps", "2")]) == 0
    fine_tuned = AutoModel.from_pretrained(triplets_dir)
    assert json.loads((triplets_dir / "lora_adapter" / "adapter_config.json").read_text())["r"] == 4
    assert fine_tuned.config.contrastive_loss.two_way is True


def test_adapter_folder_restores_the_merged_model(workspace):
    from peft import PeftModel

    from collm_hf.training.lora import load_lora_adapter

    run = workspace / "adapter_run"
    example = load_example()
    assert example.main(["triplets", "--model_name_or_path", str(workspace / "model"), *common(workspace, run, "--max_steps", "1")]) == 0
    merged = AutoModel.from_pretrained(run).eval()
    restored = load_lora_adapter(AutoModel.from_pretrained(workspace / "model"), str(run / "lora_adapter"))
    assert isinstance(restored, PeftModel)
    restored.eval()
    processor = AutoProcessor.from_pretrained(run)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)) for _ in range(2)]
    inputs = processor(images=images, text=["make it red", "add a dog"])
    with torch.no_grad():
        expected = merged.get_query_embeds(**inputs)
        got = restored.get_base_model().get_query_embeds(**inputs)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_json_options_file_through_the_console_command(workspace, tmp_path):
    options = {"model_name_or_path": str(workspace / "model"), "dataset_name_or_path": str(workspace / "data"),
               "output_dir": str(tmp_path / "run"), "max_steps": 1, "per_device_train_batch_size": 4, "use_cpu": True,
               "lora_rank": 4, "loss_type": "info_nce", "save_strategy": "no", "report_to": "none"}
    (tmp_path / "options.json").write_text(json.dumps(options))
    from collm_hf.apps.cli import main as cli_main

    assert cli_main(["train", "triplets", str(tmp_path / "options.json")]) == 0  # `collm-hf train`, the same code
    loss = AutoModel.from_pretrained(tmp_path / "run").config.contrastive_loss
    assert loss.loss_type == "info_nce" and loss.two_way is True  # the flag given; the rest as the model had it


def test_options_the_checkpoint_set_survive_training_without_their_flags(workspace, tmp_path):
    """A model saved with reference negatives, a one-way InfoNCE loss and its own Slerp weight and text length,
    trained a step by the training command without those flags, keeps them all; a flag given replaces only its
    own option."""
    from dataclasses import replace

    model = AutoModel.from_pretrained(workspace / "model")
    processor = AutoProcessor.from_pretrained(workspace / "model")
    model.config.contrastive_loss = replace(model.config.contrastive_loss, loss_type="info_nce", two_way=False,
                                            reference_negatives=True)
    model.config.slerp_alpha = 0.3
    processor.max_text_tokens = 40
    model.save_pretrained(tmp_path / "start")
    processor.save_pretrained(tmp_path / "start")
    example = load_example()
    for stage in ("triplets", "pairs"):
        run = tmp_path / stage
        assert example.main([stage, "--model_name_or_path", str(tmp_path / "start"),
                             *common(workspace, run, "--max_steps", "1", "--save_strategy", "no")]) == 0
        trained = AutoModel.from_pretrained(run)
        assert trained.config.contrastive_loss == model.config.contrastive_loss
        assert trained.config.slerp_alpha == 0.3 and AutoProcessor.from_pretrained(run).max_text_tokens == 40
    run = tmp_path / "flagged"
    assert example.main(["triplets", "--model_name_or_path", str(tmp_path / "start"), "--two_way", "true",
                         *common(workspace, run, "--max_steps", "1", "--save_strategy", "no")]) == 0
    assert AutoModel.from_pretrained(run).config.contrastive_loss == replace(model.config.contrastive_loss, two_way=True)


@pytest.mark.parametrize("argv, message", [
    ([], "give the stage to train"),
    (["pairs", "--max_steps", "1"], "give --model"),
    (["pairs", "--model", "{missing}", "--max_steps", "1"], "--model {missing}: no such folder"),
    (["triplets", "--model", "{model}", "--dataset", "{missing}"], "--dataset {missing}: no such file or folder"),
    (["pairs", "--model", "{model}", "--max_stepz", "1"], "unrecognized arguments: --max_stepz 1"),
])
def test_bad_usage_is_one_line(workspace, tmp_path, capsys, argv, message):
    names = {"missing": str(tmp_path / "missing"), "model": str(workspace / "model")}
    argv = [a.format(**names) for a in argv]
    if len(argv) > 1:
        argv += common(workspace, tmp_path / "out") if "--dataset" not in argv else ["--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        load_example().main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("train_collm.py: error: ") and len(err.splitlines()) == 1
    assert message.format(**names) in err
    assert not (tmp_path / "out").exists()


def test_dataset_without_the_stage_config_is_named(workspace, tmp_path, capsys):
    from collm_hf.data import write_dataset
    from collm_hf.data.schema import PAIRS_FEATURES

    rows = [{"image_id": "0", "image": Image.new("RGB", (8, 8)), "caption": "a red circle"}]
    write_dataset(tmp_path / "pairs", {"pairs": {"train": rows}}, {"pairs": PAIRS_FEATURES})
    with pytest.raises(SystemExit) as exit_info:
        load_example().main(["triplets", "--model", str(workspace / "model"), "--dataset", str(tmp_path / "pairs"),
                             "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "no config 'triplets'" in err and "pairs" in err


def test_measure_synthesis_overhead_command(capsys):
    example = load_example()
    assert example.main(["--measure-synthesis-overhead", "--batch-size", "4", "--steps", "1"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert 0 < result["share"] < 1 and result["batch_size"] == 4
