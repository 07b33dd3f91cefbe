"""Paired quickstart runs: recipe variants compared seed by seed, one run at a time, interleaved.

    for seed in seeds:  for variant in variants:  collm-hf quickstart --output-dir DIR/<variant>-seed<N> --seed N
                                                  --recipe '<the mode's overrides + the variant's>'

Each run is a fresh `collm-hf quickstart` process, so one run's memory or threads never reach the next; the
variants of a seed run back to back (A, B, A, B, ...), so a drift in the machine's speed hits every variant alike.
Every finished run appends one line to DIR/results.jsonl: the two headline scores and error ratios, the steps and
training seconds it ran, pairs-only scores, recall@1 per edit category and map@5 per semantic aspect
(`diagnosis`). A rerun skips the runs already recorded, so an interrupted comparison resumes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

# What each mode adds to every variant's recipe: "caps" runs a fixed number of steps whatever the time (the
# seconds then differ), "budget" the default 10-minute budget (the steps then differ).
MODES = {"caps": {"pair_steps": 800, "triplet_steps": 2000, "time_budget_s": None}, "budget": {}}
HEADLINE = (("synthetic-cirr", "recall@1"), ("synthetic-circo", "map@5"))


def run_record(run_dir: Path, seed: int, variant: str, recipe: dict) -> dict:
    """One finished run's line of results.jsonl (reads DIR/metrics.json and diagnoses the saved model)."""
    from .diagnosis import circo_by_aspect, recall_by_category

    metrics = json.loads((run_dir / "metrics.json").read_text())
    record = {"seed": seed, "variant": variant, "recipe": recipe, "run_dir": str(run_dir),
              "schedule": {k: metrics["schedule"][k] for k in ("pair_steps", "triplet_steps")},
              "training_s": _training_seconds(metrics["timings"]), "cold_run_s": metrics["timings"].get("cold_run_s")}
    for benchmark, key in HEADLINE:
        scores = metrics["benchmarks"][benchmark]
        record[benchmark] = {"collm": scores["collm"][key], "pairs_only": scores["collm_pairs_only"][key],
                             "best_baseline": max(scores[b][key] for b in metrics["baselines"]),
                             "error_ratio": metrics["error_ratio_vs_best_baseline"][benchmark]}
    record["recall@1_by_category"] = {c: round(row["recall@1"], 1) for c, row in recall_by_category(run_dir).items()}
    record["map@5_by_aspect"] = {a: round(row["map@5"], 1) for a, row in circo_by_aspect(run_dir).items()}
    return record


def _training_seconds(timings: dict) -> float | None:
    """Seconds of both training stages (None for a run that reused a trained model and only evaluated)."""
    stages = [timings.get(key) for key in ("pair_training_s", "triplet_training_s")]
    return None if None in stages else round(sum(stages), 1)


def read_results(output_dir: str | os.PathLike) -> list[dict]:
    path = Path(output_dir) / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def compare_recipes(variants: dict, seeds, output_dir: str | os.PathLike, mode: str = "budget",
                    log=print) -> list[dict]:
    """Run the paired comparison; returns every record of DIR/results.jsonl.

    Args:
        variants: {name: recipe overrides}, e.g. `{"pooled": {}, "patches": {"reference_tokens": "patches"}}`.
        seeds: the world / training seeds, each run for every variant.
        output_dir: DIR: the runs' folders and results.jsonl.
        mode: "caps" (800 + 2,000 steps, no time budget) or "budget" (the default 10-minute budget).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = {(r["seed"], r["variant"]) for r in read_results(out)}
    for seed in seeds:
        for variant, overrides in variants.items():
            if (seed, variant) in done:
                continue
            recipe = {**MODES[mode], **overrides}
            run_dir = out / f"{variant}-seed{seed}"
            command = [sys.executable, "-m", "collm_hf", "quickstart", "--output-dir", str(run_dir), "--seed", str(seed),
                       "--recipe", json.dumps(recipe), "--no-progress"]
            log(f"[compare] {variant} seed {seed}: {' '.join(command[1:])}")
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            record = run_record(run_dir, seed, variant, recipe)
            with open(out / "results.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            log(f"[compare] {variant} seed {seed}: error ratios {record['synthetic-cirr']['error_ratio']:.2f} / "
                f"{record['synthetic-circo']['error_ratio']:.2f}, steps {record['schedule']}, training {record['training_s']} s")
    return read_results(out)


def results_table(records: list[dict]) -> str:
    """A markdown table, one row per run: steps, training seconds, headline scores and error ratios, pairs-only
    scores, "remove" recall@1, negation map@5."""
    lines = ["| seed | variant | steps (pair + triplet) | training s | CIRR R@1 (best baseline) | CIRCO mAP@5 (best baseline) "
             "| error ratios | pairs-only R@1 / mAP@5 | remove R@1 | negation mAP@5 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["seed"], r["variant"])):
        cirr, circo = r["synthetic-cirr"], r["synthetic-circo"]
        lines.append(
            f"| {r['seed']} | {r['variant']} | {r['schedule']['pair_steps']} + {r['schedule']['triplet_steps']} "
            f"| {'-' if r['training_s'] is None else round(r['training_s'])} | {cirr['collm']:.1f} ({cirr['best_baseline']:.1f}) "
            f"| {circo['collm']:.1f} ({circo['best_baseline']:.1f}) | {cirr['error_ratio']:.2f} / {circo['error_ratio']:.2f} "
            f"| {cirr['pairs_only']:.1f} / {circo['pairs_only']:.1f} | {r['recall@1_by_category'].get('remove', float('nan')):.1f} "
            f"| {r['map@5_by_aspect'].get('negation', float('nan')):.1f} |")
    return "\n".join(lines)


def breakdown_table(records: list[dict]) -> str:
    """A markdown table, one row per run: recall@1 per edit category (synthetic CIRR) and map@5 per semantic
    aspect (synthetic CIRCO)."""
    categories = sorted({c for r in records for c in r["recall@1_by_category"]})
    aspects = sorted({a for r in records for a in r["map@5_by_aspect"]})
    lines = ["| seed | variant | " + " | ".join(f"R@1 {c}" for c in categories) + " | "
             + " | ".join(f"mAP@5 {a}" for a in aspects) + " |",
             "|---|---|" + "---|" * (len(categories) + len(aspects))]
    for r in sorted(records, key=lambda r: (r["seed"], r["variant"])):
        cells = [r["recall@1_by_category"].get(c) for c in categories] + [r["map@5_by_aspect"].get(a) for a in aspects]
        values = " | ".join("-" if v is None else f"{v:.1f}" for v in cells)
        lines.append(f"| {r['seed']} | {r['variant']} | {values} |")
    return "\n".join(lines)


def _seconds(record: dict) -> float:
    return float("nan") if record["training_s"] is None else record["training_s"]


def paired_summary(records: list[dict], baseline: str = "pooled", candidate: str = "patches",
                   ratio_goal: float = 0.8, remove_goal: float = 80.0) -> str:
    """Seed by seed, the candidate's error ratios over the baseline's (CIRR-style, CIRCO-style), whether both are
    at most `ratio_goal`, the candidate's "remove" recall@1 against `remove_goal`, and its training seconds over
    the baseline's; then the count of seeds and the seconds over all seeds."""
    runs = {(r["seed"], r["variant"]): r for r in records}
    seeds = sorted(seed for seed, variant in runs if variant == candidate and (seed, baseline) in runs)
    lines = [f"| seed | CIRR-style error ratio, {candidate} / {baseline} | CIRCO-style | both <= {ratio_goal} "
             f"| {candidate} remove R@1 (goal >= {remove_goal:g}) | training s, {candidate} / {baseline} |",
             "|---|---|---|---|---|---|"]
    met = 0
    for seed in seeds:
        new, old = runs[(seed, candidate)], runs[(seed, baseline)]
        ratios = [new[b]["error_ratio"] / old[b]["error_ratio"] for b in ("synthetic-cirr", "synthetic-circo")]
        both = all(ratio <= ratio_goal for ratio in ratios)
        met += both
        remove = new["recall@1_by_category"].get("remove", float("nan"))
        lines.append(f"| {seed} | {ratios[0]:.2f} | {ratios[1]:.2f} | {'yes' if both else 'no'} | {remove:.1f} "
                     f"| {_seconds(new) / _seconds(old):.2f} |")
    totals = {v: sum(_seconds(runs[(seed, v)]) for seed in seeds) for v in (candidate, baseline)}
    lines.append(f"\nBoth ratios <= {ratio_goal} on {met} of {len(seeds)} seeds. Training seconds over these seeds: "
                 f"{candidate} {totals[candidate]:.0f}, {baseline} {totals[baseline]:.0f} "
                 f"({totals[candidate] / totals[baseline] if seeds else float('nan'):.2f} x).")
    return "\n".join(lines)


__all__ = ["MODES", "breakdown_table", "compare_recipes", "paired_summary", "read_results", "results_table",
           "run_record"]
