"""MTCIR and pre-training pairs builders on tiny fixtures in their published shapes."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset
from PIL import Image

from collm_hf.data.schema import IMAGES_FEATURES, PAIRS_FEATURES, TRIPLETS_FEATURES
from _scripts import load_script


def _load_script(name):
    path = Path(__file__).resolve().parents[1] / "dataset_scripts" / f"{name}.py"
    return load_script(path)


build_mtcir = _load_script("build_mtcir")
build_pairs = _load_script("build_pairs")


@pytest.fixture
def llava_images(tmp_path):
    """LLaVA-Pretrain/images/<subfolder>/<file>.jpg; returns (images folder, relative paths)."""
    root = tmp_path / "LLaVA-Pretrain" / "images"
    relative = []
    for i in range(6):
        rel = f"{i // 3:05d}/{i:09d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (10, 6, 3), dtype=np.uint8)).save(root / rel)
        relative.append(rel)
    return root, relative


def _write_mtcir(path, rel):
    lines = [
        {"id": "0", "image": rel[0], "target_image": rel[1], "modifications": ["add a hat", "make it red"]},
        {"id": "1", "image": rel[1], "target_image": rel[0], "modifications": ["remove the hat"]},
        {"id": "2", "image": "./" + rel[2], "target_image": rel[3], "modifications": ["two cats", "one more cat", "x"]},
        {"id": "3", "image": rel[4], "target_image": rel[0], "modifications": ["at night"]},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def test_mtcir_triplets_and_images_stored_once(llava_images, tmp_path):
    images, rel = llava_images
    source = tmp_path / "mt-cir"
    source.mkdir()
    _write_mtcir(source / "mtcir.jsonl", rel)
    out = tmp_path / "out"
    assert build_mtcir.main(["--source-dir", str(source), "--images-dir", str(images), "--output-dir", str(out),
                             "--rows-per-shard", "2"]) == 0
    triplets = load_dataset(str(out), "triplets", split="train")
    assert triplets.features == TRIPLETS_FEATURES
    assert triplets.num_rows == 4
    assert triplets[0] == {"id": "0", "reference_id": rel[0], "target_id": rel[1],
                           "modifications": ["add a hat", "make it red"], "direction": None, "category": None}
    assert triplets[2]["reference_id"] == rel[2]  # "./" prefix normalised: image_id = relative path
    stored = load_dataset(str(out), "images", split="train")
    assert stored.features == IMAGES_FEATURES
    assert sorted(stored["image_id"]) == sorted({rel[0], rel[1], rel[2], rel[3], rel[4]})  # each image once
    assert stored[0]["image"].size == (6, 10)
    assert len(list((out / "triplets").glob("*.parquet"))) == 2


def test_mtcir_parent_folder_and_missing_image(llava_images, tmp_path, capsys):
    images, rel = llava_images
    mtcir = tmp_path / "mtcir.jsonl"
    _write_mtcir(mtcir, rel)
    (images / rel[3]).unlink()
    (images / rel[4]).write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:  # the LLaVA-Pretrain folder itself is accepted as --images-dir
        build_mtcir.main(["--source-dir", str(mtcir), "--images-dir", str(images.parent), "--output-dir", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert rel[3] in err and rel[4] in err and "2 referenced image(s)" in err and len(err.splitlines()) == 1
    assert not out.exists()
    build_mtcir.main(["--source-dir", str(mtcir), "--images-dir", str(images.parent), "--output-dir", str(out),
                      "--allow-missing"])
    assert load_dataset(str(out), "triplets", split="train")["id"] == ["0", "1"]
    assert "2 (image missing" in (out / "README.md").read_text()


def test_mtcir_malformed_lines_named(tmp_path, llava_images):
    images, rel = llava_images
    mtcir = tmp_path / "mtcir.jsonl"
    mtcir.write_text(json.dumps({"id": "0", "image": rel[0], "target_image": rel[1], "modifications": ["a"]}) + "\n"
                     + json.dumps({"id": "0", "image": rel[0], "target_image": rel[1], "modifications": ["b"]}) + "\n"
                     + json.dumps({"id": "2", "image": rel[0]}) + "\n")
    from collm_hf.data import BuildOptions, DatasetBuildError
    from collm_hf.data.mtcir import build_mtcir as build

    with pytest.raises(DatasetBuildError) as error:
        build(mtcir, BuildOptions(output_dir=tmp_path / "out", images_dir=images))
    assert "line 2: id '0' is repeated" in str(error.value) and "line 3: lacks" in str(error.value)


def test_pairs_from_llava_558k_json(llava_images, tmp_path):
    images, rel = llava_images
    captions = tmp_path / "blip_laion_cc_sbu_558k.json"
    captions.write_text(json.dumps([
        {"id": f"{i:09d}", "image": rel[i], "conversations": [
            {"from": "human", "value": "<image>\nWrite a terse but informative summary of the picture."},
            {"from": "gpt", "value": f"a photo number {i}"}]}
        for i in range(5)
    ]))
    out = tmp_path / "out"
    build_pairs.main(["--source-dir", str(captions), "--images-dir", str(images), "--output-dir", str(out)])
    pairs = load_dataset(str(out), "pairs", split="train")
    assert pairs.features == PAIRS_FEATURES
    assert pairs["image_id"] == [f"{i:09d}" for i in range(5)]
    assert pairs["caption"] == [f"a photo number {i}" for i in range(5)]
    assert pairs[4]["image"].size == (6, 10)
    assert load_dataset(str(out), split="train").num_rows == 5  # the single config is the default


@pytest.mark.parametrize("layout", ["csv_header", "tsv_no_header", "cc3m_caption_first", "jsonl"])
def test_pairs_from_cc3m_like_tables(llava_images, tmp_path, layout):
    images, rel = llava_images
    rows = [(rel[i], f"caption, with comma {i}") for i in range(4)]
    if layout == "jsonl":
        path = tmp_path / "captions.jsonl"
        path.write_text("".join(json.dumps({"image": r, "caption": c}) + "\n" for r, c in rows))
    else:
        path = tmp_path / ("captions.csv" if layout == "csv_header" else "captions.tsv")
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle, delimiter="," if layout == "csv_header" else "\t")
            if layout == "csv_header":
                writer.writerow(["image", "caption"])
            writer.writerows([(c, r) for r, c in rows] if layout == "cc3m_caption_first" else rows)
    out = tmp_path / "out"
    build_pairs.main(["--source-dir", str(path), "--images-dir", str(images), "--output-dir", str(out)])
    pairs = load_dataset(str(out), "pairs", split="train")
    assert pairs["image_id"] == [r for r, _ in rows]
    assert pairs["caption"] == [c for _, c in rows]


def test_pairs_missing_images_named(llava_images, tmp_path, capsys):
    images, rel = llava_images
    path = tmp_path / "captions.jsonl"
    path.write_text("".join(json.dumps({"image": r, "caption": "c"}) + "\n" for r in [*rel, "00009/nope.jpg"]))
    (images / rel[1]).unlink()
    with pytest.raises(SystemExit) as exit_info:
        build_pairs.main(["--source-dir", str(path), "--images-dir", str(images), "--output-dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "00009/nope.jpg" in err and rel[1] in err
    assert not (tmp_path / "o").exists()
