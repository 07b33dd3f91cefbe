"""The quickstart: the whole system on one machine, nothing to download, and proof that it composes.

    synthetic world --> stage 1: pair pre-training (on-the-fly synthesis) --> save DIR/model_pairs_only
                    --> stage 2: triplet fine-tuning --> save DIR/model (safetensors) --> AutoModel reload
                    --> CIRR-style and CIRCO-style benchmarks: CoLLM vs image-only, text-only, sum fusion,
                        pairs-only and chance --> table, DIR/metrics.json, DIR/retrievals.png, DIR/model/README.md

A second run with the same options finds DIR/model (its `quickstart.json` records seed, recipe and LLM) and
only evaluates. The command line (`collm-hf quickstart --output-dir runs/qs --seed 0`) is
`collm_hf.apps.commands.quickstart`.
"""

import json
import os
import shutil
import time
from pathlib import Path

from ...utils.atomic import atomic_folder, atomic_write, atomic_write_text

DEFAULT_OUTPUT_DIR = "collm-quickstart"
STATE_FILE = "quickstart.json"
BENCHMARKS = {"synthetic-cirr": "cirr", "synthetic-circo": "circo"}
# Seconds of a cold run's time budget kept for what follows training: saving, reloading, both benchmarks, the
# picture and the card (8-15 s measured; the rest is margin for a slower machine).
EVALUATION_RESERVE_S = 30
# A stage still running this many seconds before the budget's end stops there, after the step under way (a step
# that overran its stage's seconds by far): what evaluation needs, with a little margin.
HARD_STOP_BEFORE_END_S = 20


def _write_json(path: Path, data: dict):
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _save_atomically(model, processor, folder: Path, state: dict | None = None):
    """save_pretrained into a temporary folder, then rename it into place (never half a model at `folder`)."""

    def write(tmp):
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        if state is not None:
            _write_json(tmp / STATE_FILE, state)

    atomic_folder(folder, write)


def _ensure_world(root: Path, world, parts) -> dict:
    """The world's dataset folders under `root`, written once per world config (cached by its settings)."""
    from dataclasses import asdict

    from ...data.synthetic_world import write_world

    stamp_path, stamp = root / "world.json", asdict(world)
    missing = [p for p in parts if not (root / p / "README.md").is_file()]
    if _read_json(stamp_path) != stamp:
        missing = list(parts)
        shutil.rmtree(root, ignore_errors=True)
    if missing:
        write_world(root, world, parts=missing, workers=min(2, os.cpu_count() or 1))
        _write_json(stamp_path, stamp)
    return {p: root / p for p in parts}


def _load(folder: Path, config: str, split: str):
    from datasets import load_dataset

    return load_dataset(str(folder), config, split=split)


def _train(out: Path, recipe, seed: int, llm, show_progress: bool, timings: dict, started: float):
    """Stages 1 and 2 within what is left of `recipe.time_budget_s` since `started` (`quickstart_schedule`: stage 1
    gets `recipe.pair_time_share` of the seconds left for training, stage 2 the rest); saves DIR/model_pairs_only
    and DIR/model. Returns (model, processor, schedule)."""
    from .schedule import Schedule
    from .training import (TripletGroups, build_model_and_processor, pair_collator, seed_everything,
                                      set_vision_trainable, train_stage, triplet_collator)

    start = time.perf_counter()
    world = _ensure_world(out / "world", recipe.world, ("pairs", "mtcir", "cirr", "circo"))
    timings["world_s"] = round(time.perf_counter() - start, 1)

    seed_everything(seed)
    model, processor = build_model_and_processor(recipe, llm, seed)
    scratch = out / ".trainer"
    pairs = _load(world["pairs"], "pairs", "train")
    triplets = TripletGroups(_load(world["mtcir"], "triplets", "train"))
    images_table = _load(world["mtcir"], "images", "train")
    images = dict(zip(images_table["image_id"], images_table["image"]))
    pair_collate = pair_collator(processor, seed, recipe.pair_crop_min_area)
    triplet_collate = triplet_collator(processor, images, seed, recipe.mask_shared_texts)

    timed = recipe.time_budget_s is not None and llm is None  # with --llm the recipe's steps run, whatever they take
    end_of_training = started + recipe.time_budget_s - EVALUATION_RESERVE_S if timed else None
    deadline = started + recipe.time_budget_s - HARD_STOP_BEFORE_END_S if timed else None

    def seconds_left(share: float = 1.0) -> float | None:
        return None if not timed else max(1.0, end_of_training - time.perf_counter()) * share

    def stage_text(steps: int, seconds: float | None) -> str:
        return f"{steps} steps" + (f" or {seconds:.0f} s, whichever ends first" if seconds is not None else "")

    start = time.perf_counter()
    pair_seconds = seconds_left(recipe.pair_time_share)
    print(f"[quickstart] stage 1: pair pre-training with on-the-fly synthesis ({stage_text(recipe.pair_steps, pair_seconds)})")
    pair_steps = train_stage(model, pairs, pair_collate, str(scratch), recipe.pair_steps, recipe.pair_batch_size,
                             recipe, seed, show_progress, deadline, pair_seconds)
    _save_atomically(model, processor, out / "model_pairs_only")
    timings["pair_training_s"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    model.train()
    set_vision_trainable(model, not recipe.freeze_vision_in_triplet_stage)
    triplet_seconds = seconds_left()
    print(f"[quickstart] stage 2: triplet fine-tuning ({stage_text(recipe.triplet_steps, triplet_seconds)})")
    triplet_steps = train_stage(model, triplets, triplet_collate, str(scratch), recipe.triplet_steps,
                                recipe.groups_per_batch, recipe, seed, show_progress, deadline, triplet_seconds)
    set_vision_trainable(model, True)
    timings["triplet_training_s"] = round(time.perf_counter() - start, 1)
    shutil.rmtree(scratch, ignore_errors=True)
    stopped = deadline is not None and time.perf_counter() > deadline
    if stopped:
        print("[quickstart] the machine slowed down: a stage ran into the time budget's hard deadline and stopped "
              "before its learning rate reached zero")
    print(f"[quickstart] trained {pair_steps} + {triplet_steps} steps")
    return model, processor, Schedule(pair_steps, triplet_steps, pair_seconds, triplet_seconds, stopped)


def run_quickstart(output_dir: str = DEFAULT_OUTPUT_DIR, seed: int = 0, llm: str | None = None, tiny: bool = False,
                   retrain: bool = False, show_progress: bool = True, recipe=None) -> dict:
    """Run the quickstart; returns the metrics.json content.

    Args:
        output_dir: DIR for the world, DIR/model, DIR/model_pairs_only, DIR/metrics.json, DIR/retrievals.png.
        seed: seeds the world, the initialisation and the training.
        llm: a pretrained LLM folder or id instead of the tiny Llama trained from scratch.
        tiny: a reduced run (small world, a few steps): the plumbing, not the learning.
        retrain: ignore a cached DIR/model.
        show_progress: progress bars.
        recipe: a `QuickstartRecipe` overriding the default (or tiny) one; its world seed is set to `seed`.
    """
    import torch
    from transformers import AutoModel, AutoProcessor

    from ...utils.model_card import write_model_card
    from .evaluation import BASELINES, HEADLINE, error_ratio, evaluate_methods, results_table
    from .training import QuickstartRecipe

    t0 = time.perf_counter()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from dataclasses import replace

    if recipe is None:
        recipe = QuickstartRecipe.tiny(seed) if tiny else QuickstartRecipe()
    recipe = replace(recipe, world=replace(recipe.world, seed=seed))
    key = {"seed": seed, "llm": llm, "tiny": tiny, "recipe": recipe.to_dict()}
    state = _read_json(out / "model" / STATE_FILE)
    cached = (not retrain and state is not None and state.get("key") == key
              and (out / "model_pairs_only" / "config.json").is_file())
    timings = {}
    if cached:
        print(f"[quickstart] reusing the trained model in {out / 'model'} (same seed and recipe)")
        timings["cold_run_s"] = state.get("timings", {}).get("total_s")
    else:
        model, processor, schedule = _train(out, recipe, seed, llm, show_progress, timings, t0)
        state = {"key": key, "timings": timings, "schedule": schedule.to_dict()}
        _save_atomically(model, processor, out / "model", state)
        del model

    # Reload exactly what was saved, as a user would.
    start = time.perf_counter()
    model = AutoModel.from_pretrained(out / "model", dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(out / "model")
    pairs_model = AutoModel.from_pretrained(out / "model_pairs_only", dtype=torch.float32).eval()
    world = _ensure_world(out / "world", recipe.world, ("cirr", "circo")) if cached else \
        {p: out / "world" / p for p in ("cirr", "circo")}
    from ...data.synthetic_world import CIRCO_GALLERY_SPLIT, CIRCO_QUERY_SPLIT, CIRR_SPLIT
    from ...evaluation.benchmarks import load_benchmark

    splits = {"cirr": (CIRR_SPLIT, CIRR_SPLIT), "circo": (CIRCO_QUERY_SPLIT, CIRCO_GALLERY_SPLIT)}
    results, choices, ratios, grids = {}, {}, {}, []
    for name, protocol in BENCHMARKS.items():
        query_split, gallery_split = splits[protocol]
        bench = load_benchmark(world[protocol], query_split, gallery_split=gallery_split)
        queries, gallery = bench.queries, bench.gallery
        print(f"[quickstart] evaluating on {name}: {len(queries)} queries, {len(gallery)} gallery images")
        metrics, chosen, rankings = evaluate_methods(model, pairs_model, processor, queries, gallery, protocol,
                                                     show_progress)
        results[name] = {m: {k: round(float(v), 2) for k, v in metrics[m].items()} for m in metrics}
        choices[name], ratios[name] = chosen, round(error_ratio(metrics, protocol), 3)
        grids.append((queries, rankings["collm"], gallery))
    timings["evaluation_s"] = round(time.perf_counter() - start, 1)

    picture = out / "retrievals.png"
    _save_grids(picture, grids)
    headline = {name: HEADLINE[p] for name, p in BENCHMARKS.items()}
    write_model_card(out / "model", {n: results[n]["collm"] for n in results}, headline=headline,
                     comparison=results, model_name=f"collm-quickstart-seed{seed}",
                     description=_card_description(seed, recipe, llm, state.get("schedule")))
    timings["total_s"] = round(time.perf_counter() - t0, 1)
    timings["cold_run_s" if not cached else "warm_run_s"] = timings["total_s"]
    if not cached:  # remember the cold run's time for the warm runs' reports
        state["timings"] = timings
        _write_json(out / "model" / STATE_FILE, state)
    report = {
        "benchmarks": results,
        "timings": timings,
        "headline": headline,
        "error_ratio_vs_best_baseline": ratios,  # CoLLM error / best baseline error on the headline metric
        "baseline_variants": choices,
        "baselines": list(BASELINES),
        "schedule": state.get("schedule"),  # the steps the stages ran (`quickstart_schedule`)
        "seed": seed, "cached_model": cached, "llm": llm, "tiny": tiny,
    }
    _write_json(out / "metrics.json", report)
    print(results_table(results))
    for name, ratio in ratios.items():
        print(f"[quickstart] {name}: CoLLM error is {ratio:.2f} x the best baseline's error on {headline[name]}")
    print(f"[quickstart] done in {timings['total_s']:.0f} s: {out / 'metrics.json'}, {picture}, {out / 'model' / 'README.md'}")
    return report


def _save_grids(path: Path, grids: list):
    """One PNG: the CIRR-style queries' top-5, then the CIRCO-style ones (ground truths framed green)."""
    from PIL import Image

    from ...evaluation.visualization import benchmark_grid

    parts = [benchmark_grid(queries, rankings, gallery, num_queries=4, k=5, thumb_size=96).convert("RGB")
             for queries, rankings, gallery in grids]
    canvas = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts)), (255, 255, 255))
    y = 0
    for part in parts:
        canvas.paste(part, (0, y))
        y += part.height
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))


def _card_description(seed: int, recipe, llm, schedule: dict | None = None) -> str:
    steps = schedule or {"pair_steps": recipe.pair_steps, "triplet_steps": recipe.triplet_steps}
    llm_text = f"the LLM `{llm}`" if llm else f"a {recipe.text_layers}-layer Llama (hidden {recipe.hidden_size}) with a BPE tokenizer trained on the world's vocabulary"
    return (
        f"A small CoLLM trained by `collm-hf quickstart --seed {seed}` on the package's synthetic world of coloured "
        f"shapes: a CLIP vision tower trained from scratch ({recipe.vision_layers} layers, hidden {recipe.vision_hidden_size}, "
        f"{recipe.world.image_size} px images) and {llm_text}. Stage 1: {steps['pair_steps']} steps of pair "
        f"pre-training with on-the-fly triplet synthesis; stage 2: {steps['triplet_steps']} steps of triplet "
        "fine-tuning on MTCIR-style groups. It is a demonstration that the model learns to compose an image with "
        "a text, not a model for real photos."
    )


__all__ = ["run_quickstart"]
