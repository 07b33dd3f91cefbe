"""Render the model card (README.md with a `model-index`) of any trained CoLLM folder from its metrics.

    python model_card/render_card.py MODEL_DIR --metrics metrics.json [--repo-id org/collm] [--name collm]

`--metrics` takes either the `{benchmark: {metric: value}}` JSON of `examples/evaluate_collm.py`, or the
quickstart's `metrics.json` (`{"benchmarks": {benchmark: {method: {metric: value}}}}`; the `collm` row is the
model's, the other rows become the comparison table). The template is `collm_hf/templates/model_card.md.jinja`
(it ships inside the package so an installed package can render cards); the renderer is
`collm_hf.utils.model_card` (huggingface_hub `ModelCard` / `ModelCardData`).
"""

import argparse
import json
from pathlib import Path

from collm_hf.utils.model_card import write_model_card


def split_metrics(raw: dict, method: str = "collm") -> tuple[dict, dict | None]:
    """(this model's {benchmark: {metric: value}}, the comparison {benchmark: {method: {...}}} or None)."""
    if "benchmarks" in raw:
        comparison = raw["benchmarks"]
        return {name: methods[method] for name, methods in comparison.items() if method in methods}, comparison
    return {name: values for name, values in raw.items() if isinstance(values, dict)}, None


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a folder written by save_pretrained (its config.json is read)")
    parser.add_argument("--metrics", required=True, help="metrics JSON (evaluate_collm.py or quickstart format)")
    parser.add_argument("--repo-id", default=None, help="hub id shown in the usage snippets")
    parser.add_argument("--name", default="collm", help="card title and model-index name")
    parser.add_argument("--description", default="", help="a paragraph under the title")
    args = parser.parse_args(argv)
    metrics, comparison = split_metrics(json.loads(Path(args.metrics).read_text(encoding="utf-8")))
    if not metrics:
        parser.error(f"{args.metrics} holds no {{benchmark: {{metric: value}}}} results")
    path = write_model_card(args.model_dir, metrics, model_name=args.name, repo_id=args.repo_id,
                            description=args.description, comparison=comparison)
    print(path)
    return path


if __name__ == "__main__":
    main()
