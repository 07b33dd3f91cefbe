"""The README.md dataset card of a built dataset: YAML metadata (configs, features, counts, license) + markdown.

The YAML is produced by the same `datasets` helpers `Dataset.push_to_hub` uses (`MetadataConfigs`,
`DatasetInfosDict`), so the hub viewer and `load_dataset` read it exactly as they read their own.
"""

from datasets import DatasetInfo, Features, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCardData

# Items of a `dropped` list shown in full in the card; the rest are counted.
MAX_LISTED = 200


def render_card(features: dict[str, Features], split_files: dict[str, dict[str, list[str]]],
                split_counts: dict[str, dict[str, int]], card: dict, marker: str) -> str:
    """Return the README.md text for a dataset.

    Args:
        features: {config: Features}.
        split_files: {config: {split: [relative parquet paths]}}.
        split_counts: {config: {split: number of rows}}.
        card: free fields (`pretty_name`, `license`, `license_name`, `license_link`, `citation`, `description`,
            `homepage`, `source`, `extra`, `dropped`, `tags`, `task_categories`). `license: other` needs
            `license_name` (a short lowercase id) and `license_link` (where the terms are), as the hub asks.
        marker: a YAML line that marks the folder as written by this package (so a rebuild may replace it).
    """
    if card.get("license") == "other":
        missing = [field for field in ("license_name", "license_link") if not card.get(field)]
        if missing:
            raise ValueError(f"a dataset card with license 'other' needs {' and '.join(missing)} "
                             "(the hub shows them as the license)")
    data = DatasetCardData(
        pretty_name=card.get("pretty_name"),
        license=card.get("license"),
        license_name=card.get("license_name"),
        license_link=card.get("license_link"),
        tags=card.get("tags"),
        task_categories=card.get("task_categories", ["image-to-image", "text-to-image"]),
    )
    metadata = {}
    for index, (config, splits) in enumerate(split_files.items()):
        entry = {"data_files": [{"split": split, "path": paths} for split, paths in splits.items()]}
        if index == 0 and len(split_files) == 1:
            entry["default"] = True
        metadata[config] = entry
    MetadataConfigs(metadata).to_dataset_card_data(data)
    infos = {}
    for config, config_features in features.items():
        splits = SplitDict()
        for split, count in split_counts[config].items():
            if split in split_files[config]:
                splits.add(SplitInfo(name=split, num_examples=count))
        infos[config] = DatasetInfo(features=config_features, splits=splits, config_name=config)
    DatasetInfosDict(infos).to_dataset_card_data(data)
    yaml = data.to_yaml()
    return f"---\n{yaml}\n{marker}\n---\n\n{_markdown(split_counts, card)}"


def _markdown(split_counts: dict[str, dict[str, int]], card: dict) -> str:
    title = card.get("pretty_name") or "Dataset"
    lines = [f"# {title}", ""]
    if card.get("description"):
        lines += [card["description"].strip(), ""]
    if card.get("source") or card.get("homepage"):
        lines += [f"Source: {card.get('source') or card.get('homepage')}", ""]
    lines += ["Built with `collm_hf.data` (Parquet, images embedded as `{bytes, path}` unless noted).", "",
              "## Configs and counts", "", "| config | split | rows |", "|---|---|---|"]
    for config, splits in split_counts.items():
        for split, count in splits.items():
            lines.append(f"| `{config}` | `{split}` | {count:,} |")
    lines += ["", "```python", "from datasets import load_dataset", "",
              f'ds = load_dataset("<this folder or repo id>", "{next(iter(split_counts), "default")}")', "```", ""]
    if card.get("extra"):
        lines += [card["extra"].strip(), ""]
    dropped = card.get("dropped")
    if dropped:
        lines += ["## Dropped rows", "", "Rows left out by `--allow-missing` (missing or unreadable images):", ""]
        groups = dropped if isinstance(dropped, dict) else {"dropped": dropped}
        for reason, items in groups.items():
            items = list(items)
            lines.append(f"- **{reason}**: {len(items)}")
            lines += [f"  - `{item}`" for item in items[:MAX_LISTED]]
            if len(items) > MAX_LISTED:
                lines.append(f"  - ... and {len(items) - MAX_LISTED} more")
        lines.append("")
    license_line = str(card.get("license") or "See the source's terms.")
    if card.get("license_name"):
        license_line = f"{card['license_name']}: {card.get('license_link', '')}".strip(": ")
    lines += ["## License", "", license_line, ""]
    if card.get("citation"):
        lines += ["## Citation", "", "```bibtex", card["citation"].strip(), "```", ""]
    return "\n".join(lines)
