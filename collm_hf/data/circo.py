"""CIRCO from its official files into the `queries` / `gallery` schema.

Official layout (github.com/miccunifi/CIRCO, docs/benchmarks.md):
    <source_dir>/annotations/val.json, test.json   list of {"id", "reference_img_id", "target_img_id",
                                                    "relative_caption", "shared_concept", "gt_img_ids",
                                                    "semantic_aspects"}; test keeps id, reference_img_id,
                                                    relative_caption, shared_concept
    <image_info>                                    COCO `image_info_unlabeled2017.json`: {"images": [{"id",
                                                    "file_name", ...}]}; default looked up next to the images
                                                    (`<images_dir>/../annotations/image_info_unlabeled2017.json`)
    <images_dir>/<file_name>                        the COCO 2017 unlabeled images (`unlabeled2017/`)

Rows: `query_id` = str(id), `reference_id` = str(reference_img_id), `modification_text` =
relative_caption (the shared concept is its own column: whether to prepend it is the evaluator's choice),
`target_ids` = the gt_img_ids as strings, `target_img_id` first (empty for test). The gallery is one
split, `unlabeled2017`, shared by the val and test queries: every image of the image info file.
"""

import os
from pathlib import Path

from ._build import (BuildOptions, DatasetBuildError, base_card, check_image_files, duplicates,
                     expect_list_of_dicts, normalise_relative, raise_problems, read_json, settle_missing)
from .schema import GALLERY_CONFIG, QUERIES_CONFIG, benchmark_features
from .writer import write_dataset

SPLITS = ("val", "test")
GALLERY_SPLIT = "unlabeled2017"
IMAGE_INFO_NAME = "image_info_unlabeled2017.json"

CITATION = """@inproceedings{baldrati2023zero,
  title     = {Zero-Shot Composed Image Retrieval with Textual Inversion},
  author    = {Baldrati, Alberto and Agnolucci, Lorenzo and Bertini, Marco and Del Bimbo, Alberto},
  booktitle = {ICCV},
  year      = {2023}
}"""


def default_image_info(images_dir: str | os.PathLike | None, source_dir: str | os.PathLike) -> Path:
    """Find `image_info_unlabeled2017.json` beside the images: `<images_dir>/../annotations/`, `<images_dir>/
    annotations/`, `<images_dir>/`, `<images_dir>/..`, then `<source_dir>/annotations/` and `<source_dir>/`."""
    candidates = []
    if images_dir is not None:
        images_dir = Path(images_dir)
        candidates += [images_dir.parent / "annotations", images_dir / "annotations", images_dir, images_dir.parent]
    candidates += [Path(source_dir) / "annotations", Path(source_dir)]
    for folder in candidates:
        if (folder / IMAGE_INFO_NAME).is_file():
            return folder / IMAGE_INFO_NAME
    raise DatasetBuildError(f"COCO image info file {IMAGE_INFO_NAME} not found (looked in "
                            f"{', '.join(str(folder) for folder in candidates)}); pass --image-info PATH")


def read_image_info(path: str | os.PathLike) -> dict[str, str]:
    """{str(image id): file name} from a COCO image info JSON (`images[].id`, `images[].file_name`)."""
    info = read_json(path, "COCO image info file")
    images = info.get("images") if isinstance(info, dict) else None
    if images is None:
        raise DatasetBuildError(f"{path}: expected a COCO image info object with an 'images' list")
    images = expect_list_of_dicts(images, f"{path} images", ["id", "file_name"], {"id": "id", "file_name": "text"})
    repeated = duplicates(str(image["id"]) for image in images)
    raise_problems([f"image id {image_id} is listed twice" for image_id in repeated], f"{path}: duplicated ids")
    return {str(image["id"]): normalise_relative(image["file_name"]) for image in images}


def read_queries(root: Path, split: str, gallery: dict[str, str]) -> list[dict]:
    """Read and check `annotations/<split>.json` against the gallery ids."""
    path = root / "annotations" / f"{split}.json"
    entries = expect_list_of_dicts(read_json(path, "CIRCO annotation file"), path,
                                   ["id", "reference_img_id", "relative_caption", "shared_concept"],
                                   {"id": "id", "reference_img_id": "id", "relative_caption": "text"})
    problems = [f"id {query_id} is repeated" for query_id in duplicates(str(e["id"]) for e in entries)]
    for entry in entries:
        malformed = [key for key in ("gt_img_ids", "semantic_aspects")
                     if entry.get(key) is not None and not isinstance(entry[key], list)]
        if malformed:
            problems.append(f"id {entry['id']}: {malformed} must be lists")
            continue
        for image_id in [entry["reference_img_id"], *_targets(entry)]:
            if str(image_id) not in gallery:
                problems.append(f"id {entry['id']}: image {image_id} is not in the unlabeled2017 image info")
    raise_problems(problems, f"CIRCO {split}: annotation errors in {path}")
    return entries


def _targets(entry: dict) -> list[str]:
    targets = [str(image_id) for image_id in entry.get("gt_img_ids") or []]
    first = entry.get("target_img_id")
    if first is not None and str(first) not in targets:
        targets.insert(0, str(first))
    elif first is not None and targets[0] != str(first):
        targets.remove(str(first))
        targets.insert(0, str(first))
    return targets


def build_circo(source_dir: str | os.PathLike, options: BuildOptions,
                image_info: str | os.PathLike | None = None) -> Path:
    """Build CIRCO into `options.output_dir` (configs `queries` (val, test) and `gallery` (unlabeled2017)).

    Args:
        source_dir: the folder with `annotations/val.json` and `annotations/test.json`.
        options: output, images (the `unlabeled2017` folder, or the folder holding it), `no_images`,
            `allow_missing`, hub upload.
        image_info: COCO `image_info_unlabeled2017.json`; default: looked up beside the images.

    Returns:
        The finished dataset folder.
    """
    root = Path(source_dir)
    if not (root / "annotations").is_dir() and (root / "CIRCO" / "annotations").is_dir():
        root = root / "CIRCO"
    options = options.within(GALLERY_SPLIT)  # the COCO folder (or unlabeled2017.zip) holding unlabeled2017/
    gallery = read_image_info(image_info or default_image_info(options.images_dir, root))
    splits = options.splits or [split for split in SPLITS if (root / "annotations" / f"{split}.json").is_file()]
    if not splits:
        raise DatasetBuildError(f"no CIRCO annotations/val.json or annotations/test.json in {root}")
    entries = {split: read_queries(root, split, gallery) for split in splits}

    bad = settle_missing(check_image_files(gallery.values(), options), options)
    bad_ids = {image_id for image_id, file_name in gallery.items() if file_name in bad}
    dropped: dict[str, list[str]] = {}
    if bad_ids:
        dropped[f"gallery images ({GALLERY_SPLIT})"] = [gallery[image_id] for image_id in sorted(bad_ids)]
    query_rows = {}
    for split, split_entries in entries.items():
        rows, lost = [], []
        for entry in split_entries:
            used = {str(entry["reference_img_id"]), *_targets(entry)} & bad_ids
            if used:
                lost.append(f"id {entry['id']} (image missing: {', '.join(gallery[i] for i in sorted(used))})")
                continue
            rows.append({
                "query_id": str(entry["id"]),
                "reference_id": str(entry["reference_img_id"]),
                "reference_image": options.image_value(gallery[str(entry["reference_img_id"])]),
                "modification_text": entry["relative_caption"],
                "target_ids": _targets(entry),
                "shared_concept": entry["shared_concept"],
                "semantic_aspects": [str(aspect) for aspect in entry.get("semantic_aspects") or []],
            })
        if lost:
            dropped[f"queries ({split})"] = lost
        query_rows[split] = rows

    gallery_rows = ({"image_id": image_id, "image": options.image_value(file_name)}
                    for image_id, file_name in gallery.items() if image_id not in bad_ids)
    card = base_card(
        options, pretty_name="CIRCO", license="other", license_name="circo", citation=CITATION,
        license_link="https://github.com/miccunifi/CIRCO", source="https://github.com/miccunifi/CIRCO",
        description=("Composed Image Retrieval on COmmon Objects in context: several ground truths per query. "
                     "`gallery` is one split, `unlabeled2017` (all of COCO 2017 unlabeled), shared by the val and "
                     "test queries. `target_ids` = gt_img_ids (target_img_id first; empty for test). "
                     "`modification_text` = relative_caption; `shared_concept` is kept apart. "
                     "Protocol: mAP@K with normaliser min(|G|, K); the reference is not removed."),
        extra=("Annotations: CIRCO (see its repository's license). Images: COCO 2017 unlabeled (Flickr terms): "
               "prefer --no-images for a public upload."),
        dropped=dropped or None,
    )
    configs = {QUERIES_CONFIG: query_rows, GALLERY_CONFIG: {GALLERY_SPLIT: gallery_rows}}
    return write_dataset(options.output_dir, configs, benchmark_features("circo"), card,
                         rows_per_shard=options.rows_per_shard, push_to_hub=options.push_to_hub)
