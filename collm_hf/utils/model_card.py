"""Model cards for any trained CoLLM: `huggingface_hub.ModelCard` from the package's Jinja template, with a
`model-index` (eval results) so the hub page shows the metrics.

    metrics {benchmark: {metric: value}} --build_card_data--> ModelCardData (model-index)
                                         --render_model_card--> ModelCard (templates/model_card.md.jinja)

Example:
    >>> card = render_model_card(model.config, {"cirr": {"recall@1": 45.8}}, repo_id="me/collm")  # doctest: +SKIP
    >>> card.save("model/README.md")  # doctest: +SKIP
"""

import os
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .atomic import atomic_write

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md.jinja"
TASK_TYPE = "composed-image-retrieval"
TASK_NAME = "Composed Image Retrieval"
EXAMPLE_TEXT = "make the red circle blue"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def eval_results(metrics: dict, model_name: str, dataset_types: dict | None = None, splits: dict | None = None) -> list:
    """One `EvalResult` per (benchmark, numeric metric) of `metrics` {benchmark: {metric: value}}.

    Args:
        metrics: the model's metrics per benchmark (percentages).
        model_name: unused by the results themselves; kept for the error message.
        dataset_types: {benchmark: hub dataset id} (defaults to the benchmark name).
        splits: {benchmark: split name}.
    """
    results = []
    for benchmark, values in metrics.items():
        if not isinstance(values, dict) or not values:
            raise ValueError(f"metrics[{benchmark!r}] for {model_name} must be a non-empty dict of metric -> value.")
        for metric, value in values.items():
            if not _is_number(value):
                continue
            results.append(EvalResult(
                task_type=TASK_TYPE, task_name=TASK_NAME, dataset_type=(dataset_types or {}).get(benchmark, benchmark),
                dataset_name=benchmark, dataset_split=(splits or {}).get(benchmark), metric_type=metric,
                metric_name=metric, metric_value=round(float(value), 2),
            ))
    return results


def build_card_data(model_name: str, metrics: dict, *, base_model=None, datasets=None, dataset_types=None,
                    splits=None, license: str = "apache-2.0", tags=None) -> ModelCardData:
    """The card's YAML metadata, with the `model-index` built from `metrics`."""
    return ModelCardData(
        model_name=model_name, eval_results=eval_results(metrics, model_name, dataset_types, splits) or None,
        base_model=base_model, datasets=datasets, license=license, library_name="transformers",
        pipeline_tag="feature-extraction", language="en",
        tags=["collm", "composed-image-retrieval", "image-retrieval", "sentence-transformers", *(tags or [])],
    )


def _metrics_table(methods: dict, headline: str | None) -> str:
    """Markdown table: one row per method, one column per metric (headline first)."""
    keys = []
    for values in methods.values():
        keys += [k for k, v in values.items() if _is_number(v) and k not in keys and "/" not in k]
    if headline in keys:
        keys.remove(headline)
        keys.insert(0, headline)
    lines = ["| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for method, values in methods.items():
        cells = [f"{values[k]:.2f}" if _is_number(values.get(k)) else "-" for k in keys]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _describe(config) -> dict:
    if config is None:
        return {"vision": "-", "llm": "-", "adapter": "-", "dim": "D", "instruction": "Find the image that matches the query."}
    vision, text = config.vision_config, config.text_config
    return {
        "vision": f"{config.vision_family} ({vision.model_type}, {getattr(vision, 'num_hidden_layers', '?')} layers, "
                  f"hidden {vision.hidden_size})",
        "llm": f"{text.model_type} ({getattr(text, 'num_hidden_layers', '?')} layers, hidden {text.hidden_size})",
        "adapter": f"{config.adapter_type}, {config.num_visual_tokens} visual token(s)",
        "dim": config.projection_dim,
        "instruction": config.instruction,
    }


def render_model_card(config, metrics: dict, *, model_name: str = "collm", repo_id: str | None = None,
                      description: str = "", headline: dict | None = None, comparison: dict | None = None,
                      training: str = "", base_model=None, datasets=None, dataset_types=None, splits=None,
                      template_path: str | os.PathLike | None = None) -> ModelCard:
    """Render a model card for a trained CoLLM.

    Args:
        config: the model's `CoLLMConfig` (describes the towers), or None.
        metrics: {benchmark: {metric: value}} of this model: the `model-index` and the results tables.
        model_name: the card title and the model-index name.
        repo_id: the hub id used in the usage snippets (default: `model_name`).
        description: a paragraph under the title.
        headline: {benchmark: headline metric}, shown first.
        comparison: {benchmark: {method: {metric: value}}}: tables of this model against baselines.
        training: a paragraph about the training.
        base_model, datasets, dataset_types, splits: metadata (hub ids) for the YAML header.
        template_path: another Jinja template (default: the package's).

    Returns:
        a `huggingface_hub.ModelCard` (`.save(path)`, `.push_to_hub(repo_id)`).
    """
    headline = headline or {}
    tables = {}
    for benchmark, values in metrics.items():
        rows = (comparison or {}).get(benchmark) or {model_name: values}
        tables[benchmark] = _metrics_table(rows, headline.get(benchmark))
    note = ("All rows come from the same final model except `collm_pairs_only` (after pair pre-training only) and "
            "`chance`; each baseline is the best of its variants." if comparison else "")
    data = build_card_data(model_name, metrics, base_model=base_model, datasets=datasets,
                           dataset_types=dataset_types, splits=splits)
    return ModelCard.from_template(
        data, template_path=str(template_path or TEMPLATE_PATH), model_name=model_name, repo_id=repo_id or model_name,
        description=description, results_tables=tables, headline=headline, comparison_note=note, training=training,
        example_text=EXAMPLE_TEXT, **_describe(config),
    )


def write_model_card(model_dir: str | os.PathLike, metrics: dict, **kwargs) -> Path:
    """Render the card of the model saved in `model_dir` (its config.json is read) into `model_dir/README.md`,
    atomically. `kwargs` as `render_model_card`."""
    from ..models.collm.configuration_collm import CoLLMConfig

    model_dir = Path(model_dir)
    config = CoLLMConfig.from_pretrained(model_dir) if (model_dir / "config.json").is_file() else None
    card = render_model_card(config, metrics, **kwargs)
    return atomic_write(model_dir / "README.md", card.save)


__all__ = ["build_card_data", "eval_results", "render_model_card", "write_model_card", "TEMPLATE_PATH"]
