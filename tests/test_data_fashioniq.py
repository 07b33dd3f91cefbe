"""Fashion-IQ builder on a tiny fixture in the official layout (captions/cap.<cat>.<split>.json, image_splits/)."""

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset
from PIL import Image

from collm_hf.data.schema import FASHIONIQ_GALLERY_FEATURES, queries_features, queries_refined_features
from _scripts import load_script


def _load_script(name):
    path = Path(__file__).resolve().parents[1] / "dataset_scripts" / f"{name}.py"
    return load_script(path)


build_script = _load_script("build_fashioniq")


def _image(path, seed, fmt="PNG"):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)).save(path, format=fmt)


@pytest.fixture
def fiq_raw(tmp_path):
    source, images = tmp_path / "fashionIQ_dataset", tmp_path / "images"
    (source / "captions").mkdir(parents=True)
    (source / "image_splits").mkdir()
    images.mkdir()
    galleries = {}
    for c, category in enumerate(("dress", "shirt", "toptee")):
        for split in ("val", "test"):
            asins = [f"B00{c}{split[0]}{i:04d}" for i in range(5)]
            for i, asin in enumerate(asins):
                jpg = category == "shirt" and i == 0  # a .jpg image is accepted too
                _image(images / f"{asin}.{'jpg' if jpg else 'png'}", seed=c * 10 + i, fmt="JPEG" if jpg else "PNG")
            (source / "image_splits" / f"split.{category}.{split}.json").write_text(json.dumps(asins))
            galleries[(category, split)] = asins
            a = asins
            if split == "val":
                captions = [{"candidate": a[0], "target": a[1], "captions": ["Is Blue.", "has SHORT sleeves?"]},
                            {"candidate": a[2], "target": a[3], "captions": ["is shorter", "is red"]}]
            else:
                captions = [{"candidate": a[4], "captions": ["is longer", "has a logo"]}]
            (source / "captions" / f"cap.{category}.{split}.json").write_text(json.dumps(captions))
    return source, images, galleries


def test_build_loads_back_with_exact_schema_and_counts(fiq_raw, tmp_path):
    source, images, galleries = fiq_raw
    out = tmp_path / "out"
    build_script.main(["--source-dir", str(source), "--images-dir", str(images), "--output-dir", str(out)])

    val = load_dataset(str(out), "queries", split="val")
    assert val.features == queries_features("fashioniq")
    assert val.num_rows == 6
    first = val[0]
    assert first["category"] == "dress" and first["reference_id"] == galleries[("dress", "val")][0]
    assert first["modification_text"] == "Is blue and has SHORT sleeves"  # the de-facto join
    assert first["captions"] == ["Is Blue.", "has SHORT sleeves?"]
    assert first["target_ids"] == [galleries[("dress", "val")][1]]
    assert val["category"] == ["dress"] * 2 + ["shirt"] * 2 + ["toptee"] * 2
    assert len(set(val["query_id"])) == 6
    test = load_dataset(str(out), "queries", split="test")
    assert test.num_rows == 3 and test["target_ids"] == [[], [], []]
    gallery = load_dataset(str(out), "gallery", split="val")
    assert gallery.features == FASHIONIQ_GALLERY_FEATURES
    assert gallery.num_rows == 15
    assert gallery.filter(lambda row: row["category"] == "shirt")["image_id"] == galleries[("shirt", "val")]
    shirt_jpg = gallery.filter(lambda row: row["image_id"] == galleries[("shirt", "val")][0])[0]["image"]
    assert shirt_jpg.format == "JPEG"


def test_refined_json_list_overlay(fiq_raw, tmp_path):
    source, images, galleries = fiq_raw
    dress = galleries[("dress", "val")]
    refined = tmp_path / "refined_fashioniq.val.json"
    refined.write_text(json.dumps([
        {"candidate": dress[0], "target": dress[1], "category": "dress", "caption": "is navy blue with short sleeves",
         "is_refined": True},
        {"id": "shirt-val-1", "captions": ["is shorter", "is red"], "is_refined": False},
    ]))
    out = tmp_path / "out"
    build_script.main(["--source-dir", str(source), "--images-dir", str(images), "--output-dir", str(out),
                       "--refined", str(refined)])
    rows = load_dataset(str(out), "queries_refined", split="val")
    assert rows.features == queries_refined_features("fashioniq")
    assert rows["query_id"] == ["dress-val-0", "shirt-val-1"]
    assert rows["modification_text"] == ["is navy blue with short sleeves", "Is shorter and is red"]
    assert rows["original_text"] == ["Is blue and has SHORT sleeves", "Is shorter and is red"]
    assert rows["is_refined"] == [True, False]
    assert "not documented" in (out / "README.md").read_text()


@pytest.mark.parametrize("content", [{"dress-val-0": "x"}, [{"caption": "no id"}], [{"id": "dress-val-0"}]])
def test_refined_other_layouts_fail_clearly(fiq_raw, tmp_path, capsys, content):
    source, images, _ = fiq_raw
    refined = tmp_path / "refined.json"
    refined.write_text(json.dumps(content))
    with pytest.raises(SystemExit) as exit_info:
        build_script.main(["--source-dir", str(source), "--images-dir", str(images), "--output-dir",
                           str(tmp_path / "out"), "--refined", str(refined)])
    assert exit_info.value.code == 2 and "refined file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_images_are_never_silently_dropped(fiq_raw, tmp_path, capsys):
    source, images, galleries = fiq_raw
    missing = [galleries[("toptee", "val")][3], galleries[("dress", "test")][2]]
    for asin in missing:
        (images / f"{asin}.png").unlink()
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        build_script.main(["--source-dir", str(source), "--images-dir", str(images), "--output-dir", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert all(f"{asin}.png" in err for asin in missing)
    assert not out.exists()

    build_script.main(["--source-dir", str(source), "--images-dir", str(images), "--output-dir", str(out),
                       "--allow-missing"])
    assert load_dataset(str(out), "queries", split="val").num_rows == 5  # toptee-val-1 targets the missing image
    assert "toptee-val-1" in (out / "README.md").read_text()


def test_target_outside_category_gallery_is_an_error(fiq_raw, tmp_path):
    from collm_hf.data import BuildOptions, DatasetBuildError
    from collm_hf.data.fashioniq import build_fashioniq

    source, images, _ = fiq_raw
    path = source / "captions" / "cap.dress.val.json"
    entries = json.loads(path.read_text())
    entries[0]["target"] = "B00NOTTHERE"
    path.write_text(json.dumps(entries))
    with pytest.raises(DatasetBuildError, match="B00NOTTHERE"):
        build_fashioniq(source, BuildOptions(output_dir=tmp_path / "out", images_dir=images))
