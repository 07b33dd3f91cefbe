"""Image-caption pairs for pre-training (CoLLM §3.2) from a folder of images plus a captions file.

Accepted captions files (the shapes of the LLaVA-558k and CC3M caption files):
- `.json`: a JSON list; each entry {"id", "image", "conversations": [{"from": "human", ...},
  {"from": "gpt", "value": caption}]} (LLaVA `blip_laion_cc_sbu_558k.json`: the first "gpt" turn is the
  caption), or {"image", "caption" | "blip_caption" | "text"} (+ optional "id").
- `.jsonl`: one such object per line.
- `.csv` / `.tsv`: with a header naming an image column (image, image_path, filepath, file_name, file,
  path) and a caption column (caption, text, title, blip_caption); or without a header, two columns
  (image path, caption) - the column that looks like an image file is taken as the image.
Image paths are relative to the images folder. `image_id` = the entry's "id" if it has one, else the
normalised relative path. Rows go to config `pairs`, split `train`.
"""

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

from ._build import (BuildOptions, DatasetBuildError, base_card, check_image_files, choose_image_root, duplicates,
                     normalise_relative, raise_problems, settle_missing, utf8_errors, value_problem)
from .schema import PAIRS_CONFIG, PAIRS_FEATURES
from .writer import write_dataset

SPLIT = "train"
CAPTION_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv")
IMAGE_KEYS = ("image", "image_path", "filepath", "file_path", "file_name", "filename", "file", "path")
CAPTION_KEYS = ("caption", "blip_caption", "text", "title")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

csv.field_size_limit(2**24)


def find_captions_file(source: str | os.PathLike) -> Path:
    """`source` if it is a file, else the single captions file (.json/.jsonl/.csv/.tsv) inside the folder."""
    source = Path(source)
    if source.is_file():
        return source
    found = sorted(path for path in source.glob("*") if path.suffix.lower() in CAPTION_SUFFIXES) if source.is_dir() else []
    if len(found) != 1:
        raise DatasetBuildError(f"expected one captions file ({', '.join(CAPTION_SUFFIXES)}) in {source}, "
                                f"found {[path.name for path in found]}")
    return found[0]


def read_pairs(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """Yield (where, {"image_id", "image", "caption"}) with `image` the normalised relative path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            with open(path, encoding="utf-8") as handle, utf8_errors(path, "captions file"):
                entries = json.load(handle)
        except json.JSONDecodeError as error:
            raise DatasetBuildError(f"{path} is not valid JSON ({error})") from error
        if not isinstance(entries, list):
            raise DatasetBuildError(f"{path}: expected a JSON list of entries (the LLaVA-558k shape)")
        for index, entry in enumerate(entries):
            yield f"{path.name}[{index}]", _pair_from_entry(entry, f"{path.name}[{index}]")
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8") as handle, utf8_errors(path, "captions file"):
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise DatasetBuildError(f"{path}:{number}: not valid JSON ({error})") from error
                    yield f"{path.name}:{number}", _pair_from_entry(entry, f"{path.name}:{number}")
    elif suffix in (".csv", ".tsv"):
        yield from _read_table(path, "\t" if suffix == ".tsv" else ",")
    else:
        raise DatasetBuildError(f"{path}: unsupported captions file; expected one of {CAPTION_SUFFIXES}")


def _pair_from_entry(entry, where: str) -> dict:
    if not isinstance(entry, dict):
        raise DatasetBuildError(f"{where}: expected an object, got {type(entry).__name__}")
    image = next((entry[key] for key in IMAGE_KEYS if entry.get(key)), None)
    caption = next((entry[key] for key in CAPTION_KEYS if isinstance(entry.get(key), str)), None)
    if caption is None and isinstance(entry.get("conversations"), list):
        caption = next((turn.get("value") for turn in entry["conversations"]
                        if isinstance(turn, dict) and turn.get("from") in ("gpt", "assistant")), None)
    if not image or not isinstance(caption, str):
        raise DatasetBuildError(f"{where}: needs an image path ({IMAGE_KEYS[0]}) and a caption "
                                f"({', '.join(CAPTION_KEYS)} or a 'gpt' turn in conversations)")
    for key, value, kind in (("image", image, "text"), ("id", entry.get("id"), "id")):
        problem = None if value is None else value_problem(value, kind)
        if problem:
            raise DatasetBuildError(f"{where}: {key} {problem}")
    relative = normalise_relative(image)
    return {"image_id": str(entry["id"]) if entry.get("id") is not None else relative,
            "image": relative, "caption": caption.strip()}


def _read_table(path: Path, delimiter: str) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8", newline="") as handle, utf8_errors(path, "captions file"):
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return
        lowered = [name.strip().lower() for name in header]
        image_col = next((lowered.index(key) for key in IMAGE_KEYS if key in lowered), None)
        caption_col = next((lowered.index(key) for key in CAPTION_KEYS if key in lowered), None)
        id_col = lowered.index("id") if "id" in lowered else None
        first_rows = []
        if image_col is None or caption_col is None:  # no header: (image path, caption), or the other way round
            first_rows, id_col = [header], None
            image_col, caption_col = (1, 0) if _looks_like_image(header[1:2]) and not _looks_like_image(header[:1]) else (0, 1)
        for number, row in enumerate(_chain(first_rows, reader), start=1 if first_rows else 2):
            where = f"{path.name}:{number}"
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) <= max(image_col, caption_col):
                raise DatasetBuildError(f"{where}: expected an image column and a caption column, got {row}")
            relative = normalise_relative(row[image_col].strip())
            image_id = row[id_col].strip() if id_col is not None and row[id_col].strip() else relative
            yield where, {"image_id": image_id, "image": relative, "caption": row[caption_col].strip()}


def _chain(first, rest):
    yield from first
    yield from rest


def _looks_like_image(cells: list[str]) -> bool:
    return bool(cells) and cells[0].strip().lower().endswith(IMAGE_SUFFIXES)


def build_pairs(captions: str | os.PathLike, options: BuildOptions) -> Path:
    """Build image-caption pairs into `options.output_dir` (config `pairs`, split `train`).

    Args:
        captions: the captions file (.json / .jsonl / .csv / .tsv) or a folder holding exactly one.
        options: output, images folder (paths in the captions file are relative to it), `no_images`,
            `allow_missing`, hub upload.

    Returns:
        The finished dataset folder.
    """
    path = find_captions_file(captions)
    image_ids, relative_paths = [], {}
    for _, pair in read_pairs(path):
        image_ids.append(pair["image_id"])
        relative_paths.setdefault(pair["image"], None)
    if not image_ids:
        raise DatasetBuildError(f"{path} holds no pairs")
    raise_problems([f"image_id {image_id!r} is repeated" for image_id in duplicates(image_ids)],
                   f"pairs: duplicated ids in {path}")
    del image_ids
    options = choose_image_root(options, list(relative_paths))
    bad = settle_missing(check_image_files(relative_paths, options), options)
    lost: list[str] = []

    def rows():
        for where, pair in read_pairs(path):
            if pair["image"] in bad:
                lost.append(f"{where} {pair['image']}")
                continue
            yield {**pair, "image": options.image_value(pair["image"])}

    card = base_card(
        options, pretty_name=f"Image-caption pairs ({path.name})", license="unknown",  # the sources' terms vary
        description=("Image-caption pairs for CoLLM pre-training with on-the-fly triplet synthesis (CoLLM §3.2). "
                     f"Built from `{path.name}`."),
        extra="Check the image sources' terms before re-hosting.", dropped={"pairs": lost} if bad else None,
    )
    return write_dataset(options.output_dir, {PAIRS_CONFIG: {SPLIT: rows()}}, {PAIRS_CONFIG: PAIRS_FEATURES}, card,
                         rows_per_shard=options.rows_per_shard, push_to_hub=options.push_to_hub)
