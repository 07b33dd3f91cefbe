"""CIRR (version rc2) from its official files into the `queries` / `gallery` (/ `queries_refined`) schema.

Official layout (github.com/Cuberick-Orion/CIRR, docs/benchmarks.md):
    <source_dir>/captions/cap.rc2.<split>.json       list of {"pairid", "reference", "target_hard",
                                                      "target_soft", "caption", "img_set": {"id", "members",
                                                      "reference_rank", "target_rank"}}; test1 has no targets
    <source_dir>/image_splits/split.rc2.<split>.json {image name: "./dev/dev-244-0-img0.png"}: the split's gallery
    <images_dir>/<relative path>                     the NLVR2 images, as the split files reference them

Rows: `query_id` = str(pairid), `reference_id` = reference name, `target_ids` = [target_hard] (empty for
test1), `subset_ids` = the raw six `img_set.members`. The gallery of a split is the keys of its split file.

Example:
    >>> build_cirr("cirr", BuildOptions(output_dir="out/cirr", images_dir="nlvr2"))  # doctest: +SKIP
"""

import os
from pathlib import Path

from ._build import (BuildOptions, DatasetBuildError, base_card, check_image_files, duplicates,
                     expect_list_of_dicts, normalise_relative, raise_problems, read_json, settle_missing)
from .refined import refined_rows
from .schema import GALLERY_CONFIG, QUERIES_CONFIG, QUERIES_REFINED_CONFIG, benchmark_features
from .writer import write_dataset

VERSION = "rc2"
SPLIT_ORDER = ("train", "val", "test1")
REFINED_SPLIT = "val"

CITATION = """@inproceedings{liu2021cirr,
  title     = {Image Retrieval on Real-life Images with Pre-trained Vision-and-Language Models},
  author    = {Liu, Zheyuan and Rodriguez-Opazo, Cristian and Teney, Damien and Gould, Stephen},
  booktitle = {ICCV},
  year      = {2021}
}"""
LICENSE_NOTE = ("CIRR annotations: MIT (github.com/Cuberick-Orion/CIRR). Images come from NLVR2, whose terms "
                "restrict redistribution: publish with --no-images unless you may re-host them.")


def find_source_root(source_dir: str | os.PathLike) -> Path:
    """The folder holding `captions/` and `image_splits/` (`source_dir` itself, or its `cirr/` subfolder)."""
    source_dir = Path(source_dir)
    for candidate in (source_dir, source_dir / "cirr"):
        if (candidate / "captions").is_dir() and (candidate / "image_splits").is_dir():
            return candidate
    raise DatasetBuildError(f"{source_dir} does not hold CIRR's captions/ and image_splits/ folders")


def find_splits(root: Path) -> list[str]:
    """Splits with a `captions/cap.rc2.<split>.json` file, in the order train, val, test1, then others."""
    found = [path.name[len(f"cap.{VERSION}."):-len(".json")] for path in (root / "captions").glob(f"cap.{VERSION}.*.json")]
    if not found:
        raise DatasetBuildError(f"no captions/cap.{VERSION}.<split>.json files in {root}")
    return sorted(found, key=lambda split: (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split))


def read_split(root: Path, split: str) -> tuple[list[dict], dict[str, str]]:
    """Read and check one split: (caption entries, {image name: relative path as written})."""
    captions_path = root / "captions" / f"cap.{VERSION}.{split}.json"
    gallery_path = root / "image_splits" / f"split.{VERSION}.{split}.json"
    captions = expect_list_of_dicts(read_json(captions_path, "CIRR captions file"), captions_path,
                                    ["pairid", "reference", "caption", "img_set"],
                                    {"pairid": "id", "reference": "id", "caption": "text"})
    gallery = read_json(gallery_path, "CIRR image split file")
    if not isinstance(gallery, dict) or not all(isinstance(value, str) for value in gallery.values()):
        raise DatasetBuildError(f"{gallery_path}: expected an object {{image name: relative path}}")
    gallery = {str(name): path for name, path in gallery.items()}  # raw "./dev/x.png": errors quote the file as written

    problems = [f"pairid {pairid} is repeated" for pairid in duplicates(str(e["pairid"]) for e in captions)]
    for index, entry in enumerate(captions):
        where = f"pairid {entry['pairid']}"
        members = entry["img_set"].get("members") if isinstance(entry["img_set"], dict) else None
        if not isinstance(members, list):
            problems.append(f"{where}: img_set.members is not a list")
            members = []
        names = {"reference": [entry["reference"]], "img_set.members": members}
        if entry.get("target_hard"):
            names["target_hard"] = [entry["target_hard"]]
        for role, values in names.items():
            absent = [str(value) for value in values if str(value) not in gallery]
            if absent:
                problems.append(f"{where}: {role} {absent} not in the gallery ({gallery_path.name})")
    raise_problems(problems, f"CIRR {split}: annotation errors in {captions_path}")
    return captions, gallery


def query_row(entry: dict, gallery: dict[str, str], options: BuildOptions) -> dict:
    """One `queries` row from one official caption entry."""
    reference = str(entry["reference"])
    return {
        "query_id": str(entry["pairid"]),
        "reference_id": reference,
        "reference_image": options.image_value(normalise_relative(gallery[reference])),
        "modification_text": entry["caption"],
        "target_ids": [str(entry["target_hard"])] if entry.get("target_hard") else [],
        "subset_ids": [str(member) for member in entry["img_set"]["members"]],
    }


def build_cirr(source_dir: str | os.PathLike, options: BuildOptions, refined: str | os.PathLike | None = None) -> Path:
    """Build CIRR into `options.output_dir` (configs `queries`, `gallery`, and `queries_refined` if `refined`).

    Args:
        source_dir: the folder with `captions/` and `image_splits/` (official layout, see the module docstring).
        options: output, images, `no_images`, `allow_missing`, hub upload.
        refined: optional Refined-CIRR file (`refined_cirr.val.json`: a list of {"pairid", "caption",
            "is_refined"}); overlaid on `val` by pairid, pairids absent from it (removed triplets) left out.

    Returns:
        The finished dataset folder.
    """
    root = find_source_root(source_dir)
    splits = options.splits or find_splits(root)
    data = {split: read_split(root, split) for split in splits}
    if refined is not None and REFINED_SPLIT not in data:
        raise DatasetBuildError(f"--refined needs the CIRR {REFINED_SPLIT} split, which is not being built")

    relative = [path for _, gallery in data.values() for path in gallery.values()]
    bad = settle_missing(check_image_files(relative, options), options)
    dropped: dict[str, list[str]] = {}
    gallery_rows, query_rows, dropped_rows = {}, {}, {}
    for split, (captions, gallery) in data.items():
        bad_names = {name for name, path in gallery.items() if path in bad}
        if bad_names:
            dropped[f"gallery images ({split})"] = [f"{name} ({gallery[name]})" for name in sorted(bad_names)]
        gallery_rows[split] = [{"image_id": name, "image": options.image_value(normalise_relative(path))}
                               for name, path in gallery.items() if name not in bad_names]
        rows, lost, dropped_rows[split] = [], [], []
        for entry in captions:
            used = {str(entry["reference"]), str(entry.get("target_hard") or ""), *map(str, entry["img_set"]["members"])}
            if used & bad_names:
                lost.append(f"pairid {entry['pairid']} (image missing: {', '.join(sorted(used & bad_names))})")
                dropped_rows[split].append(query_row(entry, gallery, options))
            else:
                rows.append(query_row(entry, gallery, options))
        if lost:
            dropped[f"queries ({split})"] = lost
        query_rows[split] = rows

    configs = {QUERIES_CONFIG: query_rows, GALLERY_CONFIG: gallery_rows}
    extra = []
    if refined is not None:
        kept, summary = refined_rows(query_rows[REFINED_SPLIT], refined, benchmark="cirr",
                                     dropped_rows=dropped_rows[REFINED_SPLIT])
        configs[QUERIES_REFINED_CONFIG] = {REFINED_SPLIT: kept}
        extra.append(f"`queries_refined` (Refined-CIRR, CoLLM §4.2): {summary}")
    card = base_card(
        options, pretty_name="CIRR (rc2)", license="mit", citation=CITATION, source="https://github.com/Cuberick-Orion/CIRR",
        description=("Composed Image Retrieval on Real-life images. `queries.target_ids` = [target_hard] "
                     "(empty for test1, whose labels are closed); `subset_ids` = the raw six img_set.members, "
                     "reference included. The gallery of a split is the keys of its image split file. "
                     "Protocol: remove the reference from the ranking before Recall@K."),
        extra="\n\n".join(extra + [LICENSE_NOTE]), dropped=dropped or None,
    )
    return write_dataset(options.output_dir, configs, benchmark_features("cirr", refined=refined is not None), card,
                         rows_per_shard=options.rows_per_shard, push_to_hub=options.push_to_hub)
