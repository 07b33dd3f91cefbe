"""`collm-hf quickstart --tiny` end to end: the files it writes, their shapes, and the cached second run."""

import json

import pytest
from PIL import Image

from collm_hf.apps.quickstart.evaluation import BASELINES, METHODS, error_ratio, results_table

BENCHMARKS = {"synthetic-cirr": "recall@1", "synthetic-circo": "map@5"}


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory):
    from collm_hf.apps.cli import main

    out = tmp_path_factory.mktemp("quickstart")
    assert main(["quickstart", "--tiny", "--output-dir", str(out), "--seed", "3", "--no-progress"]) == 0
    return out


def test_metrics_json_shape(quickstart_dir):
    report = json.loads((quickstart_dir / "metrics.json").read_text())
    assert set(report["benchmarks"]) == set(BENCHMARKS)
    for name, headline in BENCHMARKS.items():
        methods = report["benchmarks"][name]
        assert set(methods) == set(METHODS)
        for method, metrics in methods.items():
            assert 0.0 <= metrics[headline] <= 100.0, (name, method)
        if name == "synthetic-cirr":
            assert {"recall@1", "recall@5", "recall@10", "recall@50", "recall_subset@1"} <= set(methods["collm"])
        else:
            assert {"map@5", "map@10", "map@25", "map@50"} <= set(methods["collm"])
        assert set(report["baseline_variants"][name]) == set(BASELINES)
    timings = report["timings"]
    assert {"world_s", "pair_training_s", "triplet_training_s", "evaluation_s", "total_s", "cold_run_s"} <= set(timings)
    assert report["cached_model"] is False and report["seed"] == 3
    schedule = report["schedule"]  # the tiny recipe's steps fit in its budget's seconds: every step runs
    assert (schedule["pair_steps"], schedule["triplet_steps"], schedule["stopped_at_deadline"]) == (4, 4, False)
    assert 0 < schedule["pair_available_s"] < schedule["triplet_available_s"]


def test_model_folder_reloads_and_has_a_card(quickstart_dir):
    import torch
    from transformers import AutoModel, AutoProcessor

    model_dir = quickstart_dir / "model"
    assert (model_dir / "model.safetensors").is_file() and not list(model_dir.glob("*.bin"))
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    image = Image.new("RGB", (48, 48), (128, 128, 128))
    with torch.no_grad():
        query = model.get_query_embeds(**processor(images=[image], text=["add a small red circle at the top"]))
    assert query.shape == (1, model.config.projection_dim)
    assert model.config.freeze_vision_tower is False
    card = (model_dir / "README.md").read_text()
    assert "model-index" in card and "synthetic-cirr" in card and "encode_query" in card
    assert (quickstart_dir / "model_pairs_only" / "model.safetensors").is_file()


def test_diagnosis_accounts_for_every_query(quickstart_dir, capsys):
    from collm_hf.apps.quickstart import diagnosis as script

    counts = script.diagnose(quickstart_dir)
    report = json.loads((quickstart_dir / "metrics.json").read_text())
    queries = 40  # WorldConfig.tiny: num_cirr_queries
    assert sum(counts.values()) == queries
    assert counts.get("correct", 0) == round(report["benchmarks"]["synthetic-cirr"]["collm"]["recall@1"] * queries / 100)
    assert all(k == "correct" or k.startswith(("wrong: subset image", "wrong: other image")) for k in counts)
    by_category = script.recall_by_category(quickstart_dir)
    assert sum(row["queries"] for row in by_category.values()) == queries
    hits = sum(row["queries"] * row["recall@1"] / 100 for row in by_category.values())
    assert round(hits) == counts.get("correct", 0)
    by_aspect = script.circo_by_aspect(quickstart_dir)  # each synthetic CIRCO query has one aspect
    circo_queries = 30  # WorldConfig.tiny: num_circo_queries
    assert sum(row["queries"] for row in by_aspect.values()) == circo_queries
    overall = sum(row["queries"] * row["map@5"] for row in by_aspect.values()) / circo_queries
    assert overall == pytest.approx(report["benchmarks"]["synthetic-circo"]["collm"]["map@5"], abs=0.06)
    assert all(row["map@5 without the reference"] >= row["map@5"] - 1e-9 for row in by_aspect.values())
    from _scripts import load_script

    load_script("examples/diagnose_quickstart.py").main(["--run-dir", str(quickstart_dir)])
    printed = capsys.readouterr().out
    assert all(f"{count:5d}  {kind}" in printed for kind, count in counts.items())
    assert all(f"{category} ({row['queries']} queries)" in printed for category, row in by_category.items())
    results = list(script.first_results(quickstart_dir))
    for category, row in by_category.items():
        failed = script.failures(category, results)
        assert len(failed) == row["queries"] - round(row["queries"] * row["recall@1"] / 100)
        assert all(set(f) == {"reference", "text", "target", "first"} and f["first"] != f["target"] for f in failed)


def test_retrievals_picture(quickstart_dir):
    with Image.open(quickstart_dir / "retrievals.png") as picture:
        assert picture.width > 300 and picture.height > 300


def test_second_run_reuses_the_model(quickstart_dir):
    from collm_hf.apps.quickstart.run import run_quickstart

    weights = (quickstart_dir / "model" / "model.safetensors").stat().st_mtime_ns
    report = run_quickstart(str(quickstart_dir), seed=3, tiny=True, show_progress=False)
    assert report["cached_model"] is True
    assert (quickstart_dir / "model" / "model.safetensors").stat().st_mtime_ns == weights
    assert {"warm_run_s", "cold_run_s"} <= set(report["timings"])
    first = json.loads((quickstart_dir / "metrics.json").read_text())
    assert first["benchmarks"]["synthetic-cirr"]["collm"] == report["benchmarks"]["synthetic-cirr"]["collm"]


def test_error_ratio_and_table():
    metrics = {"collm": {"recall@1": 90.0}, "image_only": {"recall@1": 20.0}, "text_only": {"recall@1": 10.0},
               "sum_fusion": {"recall@1": 60.0}}
    assert error_ratio(metrics, "cirr") == pytest.approx(10.0 / 40.0)
    table = results_table({"synthetic-circo": {m: {"map@5": 1.0, "map@10": 2.0} for m in METHODS}})
    assert all(method in table for method in METHODS) and "map@5" in table
    cirr = {m: {"recall@1": 1.0, "recall@5": 2.0, "recall_subset@1": 3.0} for m in METHODS}
    header = results_table({"synthetic-cirr": cirr, "synthetic-circo": {m: {"map@5": 1.0, "map@10": 2.0} for m in METHODS}}).splitlines()[0]
    assert "  synthetic-cirr recall@5  synthetic-cirr recall_subset@1  synthetic-circo map@5" in header  # never run together


def test_cli_help_lists_quickstart(capsys):
    from collm_hf.apps.cli import main

    with pytest.raises(SystemExit):
        main(["quickstart", "--help"])
    assert "--output-dir" in capsys.readouterr().out


def test_recipe_overrides_and_their_errors(tmp_path, capsys):
    from collm_hf.apps.cli import main
    from collm_hf.apps.quickstart.training import QuickstartRecipe

    recipe = QuickstartRecipe().with_overrides({"pair_steps": 250, "world": {"max_objects": 2}})
    assert (recipe.pair_steps, recipe.world.max_objects, recipe.triplet_steps) == (250, 2, QuickstartRecipe().triplet_steps)
    with pytest.raises(ValueError, match=r"pair_step'.*world\.colours"):
        QuickstartRecipe().with_overrides({"pair_step": 1, "world": {"colours": 3}})
    out = str(tmp_path / "qs")
    for bad, message in (("{not json", "not valid JSON"), ("[1]", "JSON object"), ('{"hidden": 8}', "hidden")):
        assert main(["quickstart", "--tiny", "--output-dir", out, "--recipe", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("collm-hf quickstart: error: --recipe") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "qs" / "model").exists()


def test_pair_augmentation_follows_the_recipe(tiny_model_and_processor):
    import torch

    from collm_hf.apps.quickstart.training import pair_collator

    _, processor = tiny_model_and_processor
    collator = pair_collator(processor, 0, crop_min_area=0.5)
    assert collator.augmentation.crop_scale == (0.5, 1.0) and collator.augmentation.flip_probability == 0.0
    pixels = torch.rand(4, 3, 32, 32)
    assert not torch.equal(collator.augmentation(pixels, torch.Generator().manual_seed(0)), pixels)


def test_quickstart_tower_starts_with_position_embeddings_at_the_recipe_scale():
    import torch

    from collm_hf.apps.quickstart.training import QuickstartRecipe, build_model_and_processor, init_position_embeddings

    recipe = QuickstartRecipe.tiny().with_overrides({"vision_position_std": 0.5})
    model, _ = build_model_and_processor(recipe)
    (table,) = [m for n, m in model.vision_tower.named_modules() if n.endswith("position_embedding")]
    assert 0.4 < float(table.weight.std()) < 0.6 and model.config.adapter_type == recipe.adapter_type
    plain, _ = build_model_and_processor(recipe.with_overrides({"vision_position_std": None}))
    (table,) = [m for n, m in plain.vision_tower.named_modules() if n.endswith("position_embedding")]
    assert float(table.weight.std()) < 0.05  # the family's own initialisation (CLIP: 0.02)
    with pytest.raises(ValueError, match="Linear has no `position_embedding`"):
        init_position_embeddings(torch.nn.Linear(2, 2), 0.5)


def test_quickstart_config_states_the_loss_it_trains():
    """Two-way InfoNCE at a fixed temperature of 1/100, with reference negatives and shared-text masking: spelled
    out in the model config (not left to the library default, HN-NCE) and in the stage-2 collator."""
    import math

    from collm_hf.apps.quickstart.training import QuickstartRecipe, build_model_and_processor, triplet_collator
    from collm_hf.models.collm.losses import ContrastiveLossConfig

    model, processor = build_model_and_processor(QuickstartRecipe.tiny())
    loss = ContrastiveLossConfig(loss_type="info_nce", two_way=True, reference_negatives=True)
    assert model.config.contrastive_loss == loss and model.config.to_dict()["contrastive_loss"] == loss.to_dict()
    assert not model.config.learnable_logit_scale and not model.logit_scale.requires_grad
    assert math.exp(float(model.logit_scale)) == pytest.approx(100.0)
    assert triplet_collator(processor, {}, 0).triplet_collator.mask_shared_texts


def test_a_stage_past_its_deadline_stops_after_the_step_under_way(tmp_path):
    import time

    from collm_hf.data.synthetic_world import WorldConfig, image_rows, triplet_rows
    from collm_hf.apps.quickstart.training import (QuickstartRecipe, TripletGroups, build_model_and_processor,
                                              train_stage, triplet_collator)

    recipe = QuickstartRecipe.tiny()
    model, processor = build_model_and_processor(recipe)
    world = WorldConfig.tiny()
    images = {row["image_id"]: row["image"] for row in image_rows(world)}
    groups = TripletGroups(list(triplet_rows(world)))
    collate = triplet_collator(processor, images, 0)
    args = (collate, str(tmp_path), 5, 2, recipe, 0, False)
    assert train_stage(model, groups, *args, deadline=time.perf_counter() - 1.0) == 1  # already past: one step
    assert train_stage(model, groups, *args, deadline=time.perf_counter() + 3600.0) == 5
    assert train_stage(model, groups, *args) == 5
    # Given seconds, a stage stops when they are used up, or at its steps if those come first.
    assert train_stage(model, groups, *args, seconds=1e-3) == 1
    assert train_stage(model, groups, *args, seconds=3600.0) == 5


def test_paired_comparison_runs_each_seed_and_variant_once_and_resumes(quickstart_dir, tmp_path, monkeypatch):
    import shutil
    import subprocess

    from collm_hf.apps.quickstart import comparison

    launched = []

    def fake_run(command, check, stdout):  # each run's folder becomes a copy of the module's tiny run
        launched.append(command)
        shutil.copytree(quickstart_dir, command[command.index("--output-dir") + 1])

    monkeypatch.setattr(subprocess, "run", fake_run)
    variants = {"pooled": {}, "patches": {"reference_tokens": "patches"}}
    records = comparison.compare_recipes(variants, [3, 4], tmp_path, mode="caps", log=lambda _: None)
    order = [(c[c.index("--seed") + 1], json.loads(c[c.index("--recipe") + 1])) for c in launched]
    assert [seed for seed, _ in order] == ["3", "3", "4", "4"]  # interleaved: every variant of a seed, then the next
    assert order[1][1] == {**comparison.MODES["caps"], "reference_tokens": "patches"}
    schedule = json.loads((quickstart_dir / "metrics.json").read_text())["schedule"]
    assert len(records) == 4 and records[0]["schedule"] == {k: schedule[k] for k in ("pair_steps", "triplet_steps")}
    assert {"remove", "colour"} & set(records[0]["recall@1_by_category"]) and records[0]["map@5_by_aspect"]
    assert comparison.compare_recipes(variants, [3, 4], tmp_path, mode="caps", log=lambda _: None) == records
    assert len(launched) == 4  # resumed: nothing ran twice
    table = comparison.results_table(records)
    assert table.count("\n") == 5 and "| 3 | patches |" in table
    breakdown = comparison.breakdown_table(records).splitlines()
    assert len(breakdown) == 6 and "R@1 remove" in breakdown[0] and "mAP@5 negation" in breakdown[0]
    # set seconds: the fixture's run may have reused a trained model, and then has no training seconds
    timed = [{**r, "training_s": 12.0 if r["variant"] == "patches" else 10.0} for r in records]
    summary = comparison.paired_summary(timed).splitlines()
    assert [line.split(" | ")[0] for line in summary[2:4]] == ["| 3", "| 4"]
    remove = records[0]["recall@1_by_category"]["remove"]
    assert summary[2].endswith(f"| 1.00 | 1.00 | no | {remove:.1f} | 1.20 |")  # one run copied for both variants
    assert summary[-1] == ("Both ratios <= 0.8 on 0 of 2 seeds. Training seconds over these seeds: patches 24, "
                           "pooled 20 (1.20 x).")
