"""MTCIR (CoLLM §4.1) from `mtcir.jsonl` into the `triplets` + `images` schema.

Source (as published at `chuonghm/MT-CIR` and read by third-party loaders, docs/method.md):
    <source_dir>/mtcir.jsonl      one JSON object per line: {"id": str, "image": relative path,
                                  "target_image": relative path, "modifications": [str, ...]}
                                  (optional "direction" and "category" are kept if present)
    <images_dir>/<relative path>  the LLaVA-Pretrain image folder (`<subfolder>/<file>.jpg`; a leading
                                  `images/` in the paths or the folder is resolved either way)

Ids: **`image_id` is the normalised relative path itself** (posix, no leading "./", extension kept), so it
is unique and `images_dir / image_id` finds the file (`local_images.attach_images`). `reference_id` /
`target_id` of a triplet are such image ids; `images` stores each image once, however many pairs use it.
The file is streamed twice (check, then write): memory grows with the number of distinct images' names,
never with image bytes.
"""

import json
import os
from collections.abc import Iterator
from pathlib import Path

from ._build import (MAX_LISTED_PROBLEMS, BuildOptions, DatasetBuildError, base_card, check_image_files,
                     choose_image_root, normalise_relative, raise_problems, settle_missing, utf8_errors,
                     value_problem)
from .schema import IMAGES_CONFIG, TRIPLETS_CONFIG, triplet_features
from .writer import write_dataset

FILE_NAME = "mtcir.jsonl"
SPLIT = "train"

CITATION = """@inproceedings{huynh2025collm,
  title     = {CoLLM: A Large Language Model for Composed Image Retrieval},
  author    = {Huynh, Chuong and Yang, Jinyu and Tawari, Ashish and Shah, Mubarak and Tran, Son and Hamid, Raffay and Chilimbi, Trishul and Shrivastava, Abhinav},
  booktitle = {CVPR},
  year      = {2025}
}"""


def find_source_file(source: str | os.PathLike) -> Path:
    """`source` itself if it is a file, else `<source>/mtcir.jsonl`."""
    source = Path(source)
    path = source if source.is_file() else source / FILE_NAME
    if not path.is_file():
        raise DatasetBuildError(f"MTCIR annotation file not found: {path}")
    return path


def read_triplets(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, raw entry) for each non-empty line; a line that is not JSON raises naming it."""
    with open(path, encoding="utf-8") as handle, utf8_errors(path, "MTCIR annotation file"):
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    raise DatasetBuildError(f"{path}:{number}: not valid JSON ({error})") from error


def _check_entry(entry) -> str | None:
    if not isinstance(entry, dict):
        return f"expected an object, got {type(entry).__name__}"
    missing = [key for key in ("id", "image", "target_image", "modifications") if key not in entry]
    if missing:
        return f"lacks {missing}"
    for key, kind in (("id", "id"), ("image", "text"), ("target_image", "text")):
        problem = value_problem(entry[key], kind)
        if problem:
            return f"{key} {problem}"
    modifications = entry["modifications"]
    if isinstance(modifications, str):
        modifications = [modifications]
    if (not isinstance(modifications, list) or not all(isinstance(m, str) for m in modifications)
            or not any(m.strip() for m in modifications)):
        return "modifications must be a non-empty list of strings"
    return None


def _triplet_row(entry: dict) -> dict:
    modifications = entry["modifications"]
    return {
        "id": str(entry["id"]),
        "reference_id": normalise_relative(entry["image"]),
        "target_id": normalise_relative(entry["target_image"]),
        "modifications": [modifications] if isinstance(modifications, str) else list(modifications),
        "direction": None if entry.get("direction") is None else str(entry["direction"]),
        "category": None if entry.get("category") is None else str(entry["category"]),
    }


def build_mtcir(source: str | os.PathLike, options: BuildOptions) -> Path:
    """Build MTCIR into `options.output_dir` (configs `triplets` and `images`, split `train`).

    Args:
        source: `mtcir.jsonl` or the folder holding it.
        options: output, images (the LLaVA-Pretrain image folder), `no_images`, `allow_missing`, hub upload.

    Returns:
        The finished dataset folder.
    """
    path = find_source_file(source)
    problems, seen_ids, images = [], set(), {}
    count = 0
    for number, entry in read_triplets(path):
        problem = _check_entry(entry)
        if problem is None:
            row = _triplet_row(entry)
            if row["id"] in seen_ids:
                problem = f"id {row['id']!r} is repeated"
            seen_ids.add(row["id"])
            images.setdefault(row["reference_id"], None)
            images.setdefault(row["target_id"], None)
            count += 1
        if problem is not None:
            problems.append(f"line {number}: {problem}")
            if len(problems) > 10 * MAX_LISTED_PROBLEMS:
                break
    raise_problems(problems, f"MTCIR: malformed lines in {path}")
    if not count:
        raise DatasetBuildError(f"{path} holds no triplets")
    del seen_ids

    image_ids = list(images)
    options = choose_image_root(options, image_ids)
    bad = settle_missing(check_image_files(image_ids, options), options)
    lost: list[str] = []

    def triplet_rows():
        for _, entry in read_triplets(path):
            row = _triplet_row(entry)
            used = {row["reference_id"], row["target_id"]} & bad
            if used:
                lost.append(f"{row['id']} (image missing: {', '.join(sorted(used))})")
            else:
                yield row

    image_rows = ({"image_id": image_id, "image": options.image_value(image_id)}
                  for image_id in image_ids if image_id not in bad)
    card = base_card(
        options, pretty_name="MTCIR", license="other", license_name="mtcir", citation=CITATION,
        license_link="https://huggingface.co/datasets/chuonghm/MT-CIR",
        source="https://huggingface.co/datasets/chuonghm/MT-CIR",
        description=("Multi-Text CIR (CoLLM §4.1): image pairs over LLaVA-558k images, several modification texts "
                     "per pair. `triplets` holds the pairs (`reference_id`, `target_id` = image ids, `modifications`); "
                     "`images` stores each image once. `image_id` = the image's path relative to the "
                     "LLaVA-Pretrain image folder (as in mtcir.jsonl, without a leading './')."),
        extra="Images: LLaVA-Pretrain (LAION/CC/SBU; check their terms before re-hosting).",
        dropped={"triplets": lost, "images": sorted(bad)} if bad else None,
    )
    # `lost` fills while the triplets stream; the card is rendered after all rows are written.
    return write_dataset(options.output_dir, {TRIPLETS_CONFIG: {SPLIT: triplet_rows()}, IMAGES_CONFIG: {SPLIT: image_rows}},
                         triplet_features(), card, rows_per_shard=options.rows_per_shard,
                         push_to_hub=options.push_to_hub)
