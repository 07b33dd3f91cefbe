import json
from pathlib import Path

import yaml
from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def _script():
    return load_script(ROOT / "model_card" / "render_card.py")


def _front_matter(path):
    return yaml.safe_load(path.read_text().split("---")[1])


def test_renders_evaluate_and_quickstart_metrics(tmp_path, tiny_model_and_processor):
    model, _ = tiny_model_and_processor
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "eval.json").write_text(json.dumps({"cirr": {"recall@1": 41.5, "recall@5": 70.0}}))
    card = _script().main([str(tmp_path / "model"), "--metrics", str(tmp_path / "eval.json"), "--repo-id", "me/collm"])
    results = _front_matter(card)["model-index"][0]["results"]
    assert {m["value"] for r in results for m in r["metrics"]} == {41.5, 70.0}
    assert "me/collm" in card.read_text()
    quickstart = {"benchmarks": {"synthetic-cirr": {"collm": {"recall@1": 20.4}, "image_only": {"recall@1": 8.4}}},
                  "timings": {"total_s": 1.0}}
    (tmp_path / "qs.json").write_text(json.dumps(quickstart))
    card = _script().main([str(tmp_path / "model"), "--metrics", str(tmp_path / "qs.json")])
    values = [m["value"] for r in _front_matter(card)["model-index"][0]["results"] for m in r["metrics"]]
    assert values == [20.4] and "image_only" in card.read_text()
