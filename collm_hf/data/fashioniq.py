"""Fashion-IQ from its official files into the `queries` / `gallery` (/ `queries_refined`) schema.

Official layout (github.com/XiaoxiaoGuo/fashion-iq, docs/benchmarks.md):
    <source_dir>/captions/cap.<category>.<split>.json     list of {"candidate": ASIN, "target": ASIN,
                                                           "captions": [str, str]} (test: no "target")
    <source_dir>/image_splits/split.<category>.<split>.json  list of ASINs: that category's gallery
    <images_dir>/<ASIN>.png                                 the images (".jpg" / ".jpeg" also accepted)

Categories: dress, shirt, toptee. Rows: one query per triplet, `query_id` = "<category>-<split>-<index in
the caption file>", `modification_text` = the two captions joined the de-facto way (`text.py`), both kept
in `captions`, `category` set; `target_ids` = [target] (empty for test). Gallery rows carry `category`:
rank within the query's category gallery only. Missing images are never silently dropped.
"""

import os
from pathlib import Path

from ._build import (BuildOptions, DatasetBuildError, base_card, check_image_files, duplicates,
                     expect_list_of_dicts, raise_problems, read_json, settle_missing)
from .refined import refined_rows
from .schema import GALLERY_CONFIG, QUERIES_CONFIG, QUERIES_REFINED_CONFIG, benchmark_features
from .text import join_fashioniq_captions
from .writer import write_dataset

CATEGORIES = ("dress", "shirt", "toptee")
SPLIT_ORDER = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
REFINED_SPLIT = "val"

CITATION = """@inproceedings{wu2021fashioniq,
  title     = {Fashion IQ: A New Dataset Towards Retrieving Images by Natural Language Feedback},
  author    = {Wu, Hui and Gao, Yupeng and Guo, Xiaoxiao and Al-Halah, Ziad and Rennie, Steven and Grauman, Kristen and Feris, Rogerio},
  booktitle = {CVPR},
  year      = {2021}
}"""
REFINED_NOTE = ("The Refined-FashionIQ file layout is not documented; this build accepted a JSON list shaped "
                "like Refined-CIRR's (each entry names a query by id or candidate/target pair, with the new "
                "text and `is_refined`); triplets absent from it were removed.")


def find_source_root(source_dir: str | os.PathLike) -> Path:
    """The folder holding `captions/` and `image_splits/` (`source_dir` itself or its `fashionIQ_dataset/`)."""
    source_dir = Path(source_dir)
    for candidate in (source_dir, source_dir / "fashionIQ_dataset", source_dir / "fashion-iq"):
        if (candidate / "captions").is_dir() and (candidate / "image_splits").is_dir():
            return candidate
    raise DatasetBuildError(f"{source_dir} does not hold Fashion-IQ's captions/ and image_splits/ folders")


def find_splits(root: Path) -> dict[str, list[str]]:
    """{split: [categories with a caption file]}, splits ordered train, val, test, then others."""
    found: dict[str, list[str]] = {}
    for path in sorted((root / "captions").glob("cap.*.*.json")):
        parts = path.name.split(".")
        if len(parts) == 4:
            found.setdefault(parts[2], []).append(parts[1])
    if not found:
        raise DatasetBuildError(f"no captions/cap.<category>.<split>.json files in {root}")
    order = lambda split: (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)  # noqa: E731
    return {split: sorted(found[split], key=_category_order) for split in sorted(found, key=order)}


def _category_order(category: str):
    return (CATEGORIES.index(category) if category in CATEGORIES else len(CATEGORIES), category)


def read_category(root: Path, category: str, split: str) -> tuple[list[dict], list[str]]:
    """Read and check one category of one split: (caption entries, gallery ASINs)."""
    captions_path = root / "captions" / f"cap.{category}.{split}.json"
    gallery_path = root / "image_splits" / f"split.{category}.{split}.json"
    captions = expect_list_of_dicts(read_json(captions_path, "Fashion-IQ captions file"), captions_path,
                                    ["candidate", "captions"], {"candidate": "id"})
    gallery = read_json(gallery_path, "Fashion-IQ image split file")
    if not isinstance(gallery, list) or not all(isinstance(asin, (str, int)) for asin in gallery):
        raise DatasetBuildError(f"{gallery_path}: expected a JSON list of image names (ASINs)")
    gallery = [str(asin) for asin in gallery]
    problems = [f"gallery image {asin} is listed twice in {gallery_path.name}" for asin in duplicates(gallery)]
    in_gallery = set(gallery)
    for index, entry in enumerate(captions):
        texts = entry["captions"]
        if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
            problems.append(f"[{index}] captions must be a non-empty list of strings")
        if entry.get("target") is not None and str(entry["target"]) not in in_gallery:
            problems.append(f"[{index}] target {entry['target']} is not in the {category} gallery ({gallery_path.name})")
    raise_problems(problems, f"Fashion-IQ {category} {split}: annotation errors in {captions_path}")
    return captions, gallery


def build_fashioniq(source_dir: str | os.PathLike, options: BuildOptions,
                    refined: str | os.PathLike | None = None) -> Path:
    """Build Fashion-IQ into `options.output_dir` (configs `queries`, `gallery`, and `queries_refined` if `refined`).

    Args:
        source_dir: the folder with `captions/` and `image_splits/` (official layout, module docstring).
        options: output, images, `no_images`, `allow_missing`, hub upload.
        refined: optional refined val file (JSON list shaped like Refined-CIRR's, see `refined.py`).

    Returns:
        The finished dataset folder.
    """
    root = find_source_root(source_dir)
    found = find_splits(root)
    splits = {split: found[split] for split in (options.splits or found) if split in found}
    missing_splits = [split for split in (options.splits or []) if split not in found]
    if missing_splits:
        raise DatasetBuildError(f"no Fashion-IQ caption files for split(s) {missing_splits} in {root}")
    if refined is not None and REFINED_SPLIT not in splits:
        raise DatasetBuildError(f"--refined needs the Fashion-IQ {REFINED_SPLIT} split, which is not being built")
    data = {(split, category): read_category(root, category, split)
            for split, categories in splits.items() for category in categories}

    names = {asin for captions, gallery in data.values()
             for asin in [*gallery, *(str(e["candidate"]) for e in captions),
                          *(str(e["target"]) for e in captions if e.get("target") is not None)]}
    files = {asin: _image_file(asin, options) for asin in sorted(names)}
    problems = check_image_files(files.values(), options)
    bad = {asin for asin, relative in files.items() if relative in problems}
    settle_missing(problems, options)

    dropped: dict[str, list[str]] = {}
    query_rows: dict[str, list[dict]] = {split: [] for split in splits}
    gallery_rows: dict[str, list[dict]] = {split: [] for split in splits}
    dropped_rows: dict[str, list[dict]] = {split: [] for split in splits}
    for (split, category), (captions, gallery) in data.items():
        lost_gallery = [asin for asin in gallery if asin in bad]
        if lost_gallery:
            dropped[f"gallery images ({category} {split})"] = [files[asin] for asin in lost_gallery]
        gallery_rows[split] += [{"image_id": asin, "image": options.image_value(files[asin]), "category": category}
                                for asin in gallery if asin not in bad]
        lost = []
        for index, entry in enumerate(captions):
            row = _query_row(entry, index, category, split, files, options)
            used = {row["reference_id"], *row["target_ids"]} & bad
            if used:
                lost.append(f"{row['query_id']} (image missing: {', '.join(sorted(used))})")
                dropped_rows[split].append(row)
            else:
                query_rows[split].append(row)
        if lost:
            dropped[f"queries ({category} {split})"] = lost

    configs = {QUERIES_CONFIG: query_rows, GALLERY_CONFIG: gallery_rows}
    extra = []
    if refined is not None:
        kept, summary = refined_rows(query_rows[REFINED_SPLIT], refined, benchmark="fashioniq",
                                     dropped_rows=dropped_rows[REFINED_SPLIT])
        configs[QUERIES_REFINED_CONFIG] = {REFINED_SPLIT: kept}
        extra += [f"`queries_refined` (Refined-FashionIQ, CoLLM §4.2): {summary}", REFINED_NOTE]
    card = base_card(
        options, pretty_name="Fashion-IQ", license="other", license_name="fashion-iq", citation=CITATION,
        license_link="https://github.com/XiaoxiaoGuo/fashion-iq",
        source="https://github.com/XiaoxiaoGuo/fashion-iq",
        description=("Fashion-IQ (dress, shirt, toptee). One query per triplet; `modification_text` joins the two "
                     "captions the de-facto way (`f\"{c0.strip('.?, ').capitalize()} and {c1.strip('.?, ')}\"`), "
                     "both kept in `captions`. Rank within the query's category gallery (`gallery.category`); "
                     "the candidate (reference) is not removed. `target_ids` is empty for test."),
        extra="\n\n".join(extra + ["Images: Amazon product images, `<ASIN>.png`; check their terms before re-hosting."]),
        dropped=dropped or None,
    )
    return write_dataset(options.output_dir, configs, benchmark_features("fashioniq", refined=refined is not None),
                         card, rows_per_shard=options.rows_per_shard, push_to_hub=options.push_to_hub)


def _query_row(entry: dict, index: int, category: str, split: str, files: dict, options: BuildOptions) -> dict:
    candidate = str(entry["candidate"])
    captions = [str(caption) for caption in entry["captions"]]
    return {
        "query_id": f"{category}-{split}-{index}",
        "reference_id": candidate,
        "reference_image": options.image_value(files[candidate]),
        "modification_text": join_fashioniq_captions(captions),
        "target_ids": [str(entry["target"])] if entry.get("target") is not None else [],
        "captions": captions,
        "category": category,
    }


def _image_file(asin: str, options: BuildOptions) -> str:
    """`<asin>.png`, or the first of `.jpg` / `.jpeg` that exists; `<asin>.png` if none does (reported missing)."""
    if options.images_dir is not None:
        for extension in IMAGE_EXTENSIONS:
            if options.has_image(f"{asin}{extension}"):
                return f"{asin}{extension}"
    return f"{asin}{IMAGE_EXTENSIONS[0]}"
