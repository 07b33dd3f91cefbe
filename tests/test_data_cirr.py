"""CIRR builder on a tiny fixture in the official rc2 layout (captions/ + image_splits/ + NLVR2-style images)."""

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset
from PIL import Image

from collm_hf.data.schema import queries_features, queries_refined_features, GALLERY_FEATURES
from _scripts import load_script

def _load_script(name):
    path = Path(__file__).resolve().parents[1] / "dataset_scripts" / f"{name}.py"
    return load_script(path)


build_script = _load_script("build_cirr")


def _png(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(path)


def _entry(pairid, reference, target, members, caption, test=False):
    entry = {"pairid": pairid, "reference": reference, "caption": caption,
             "img_set": {"id": pairid + 100, "members": members, "reference_rank": 0}}
    if not test:
        entry.update(target_hard=target, target_soft={target: 1.0}, img_set={**entry["img_set"], "target_rank": 3})
    return entry


@pytest.fixture
def cirr_raw(tmp_path):
    """Official layout: cap.rc2.{train,val,test1}.json, split.rc2.{...}.json, images under their split folders."""
    source, images = tmp_path / "cirr", tmp_path / "nlvr2"
    (source / "captions").mkdir(parents=True)
    (source / "image_splits").mkdir()
    splits = {}
    for split, prefix, folder in (("val", "dev", "./dev/"), ("test1", "test1", "./test1/"), ("train", "train", "./train/{}/")):
        names = [f"{prefix}-{i}-0-img{i % 2}" for i in range(8)]
        paths = {name: folder.format(i % 3) + name + ".png" for i, name in enumerate(names)}
        for i, rel in enumerate(paths.values()):
            _png(images / rel, seed=i)
        (source / "image_splits" / f"split.rc2.{split}.json").write_text(json.dumps(paths))
        splits[split] = names
    val, test1, train = splits["val"], splits["test1"], splits["train"]
    captions = {
        "val": [_entry(11, val[0], val[1], val[0:6], "make it blue"),
                _entry(12, val[0], val[7], [val[0], val[7], *val[2:6]], "add a dog"),  # shares a reference
                _entry(13, val[3], val[4], val[2:8], "Remove the cat.")],
        "test1": [_entry(21, test1[0], None, test1[0:6], "two of them", test=True),
                  _entry(22, test1[6], None, test1[2:8], "zoom in", test=True)],
        "train": [_entry(31, train[0], train[1], train[0:6], "no people")],
    }
    for split, entries in captions.items():
        (source / "captions" / f"cap.rc2.{split}.json").write_text(json.dumps(entries))
    return source, images, splits


def test_build_loads_back_with_exact_schema_and_counts(cirr_raw, tmp_path):
    source, images, splits = cirr_raw
    out = tmp_path / "out"
    assert build_script.main(["--source-dir", str(source), "--images-dir", str(images), "--output-dir", str(out)]) == 0

    val = load_dataset(str(out), "queries", split="val")
    assert val.features == queries_features("cirr")
    assert val.num_rows == 3
    assert val[0]["query_id"] == "11" and val[0]["reference_id"] == splits["val"][0]
    assert val[0]["target_ids"] == [splits["val"][1]]
    assert val[0]["subset_ids"] == splits["val"][0:6]
    assert val[2]["modification_text"] == "Remove the cat."
    assert val[0]["reference_image"].size == (10, 12)
    test1 = load_dataset(str(out), "queries", split="test1")
    assert test1.num_rows == 2 and test1["target_ids"] == [[], []]
    assert load_dataset(str(out), "queries", split="train").num_rows == 1
    for split in ("val", "test1", "train"):
        gallery = load_dataset(str(out), "gallery", split=split)
        assert gallery.features == GALLERY_FEATURES
        assert sorted(gallery["image_id"]) == sorted(splits[split])
    card = (out / "README.md").read_text()
    assert "config_name: queries" in card and "config_name: gallery" in card and "@inproceedings" in card


def test_refined_overlay_by_pairid_leaves_removed_triplets_out(cirr_raw, tmp_path):
    source, images, splits = cirr_raw
    refined = tmp_path / "refined_cirr.val.json"
    refined.write_text(json.dumps([
        {"pairid": 11, "reference": splits["val"][0], "target_hard": splits["val"][1], "caption": "make it dark blue",
         "is_refined": True},
        {"pairid": 13, "caption": "Remove the cat.", "is_refined": False},
    ]))  # pairid 12 removed by the judge
    out = tmp_path / "out"
    build_script.main(["--source-dir", str(source), "--images-dir", str(images), "--output-dir", str(out),
                       "--refined", str(refined), "--splits", "val"])
    rows = load_dataset(str(out), "queries_refined", split="val")
    assert rows.features == queries_refined_features("cirr")
    assert rows["query_id"] == ["11", "13"]
    assert rows["modification_text"] == ["make it dark blue", "Remove the cat."]
    assert rows["original_text"] == ["make it blue", "Remove the cat."]
    assert rows["is_refined"] == [True, False]
    assert rows[0]["subset_ids"] == splits["val"][0:6]


def test_refined_unknown_pairid_fails_clearly(cirr_raw, tmp_path, capsys):
    source, images, _ = cirr_raw
    refined = tmp_path / "refined.json"
    refined.write_text(json.dumps([{"pairid": 999, "caption": "x", "is_refined": True}]))
    with pytest.raises(SystemExit) as exit_info:
        build_script.main(["--source-dir", str(source), "--images-dir", str(images), "--output-dir",
                           str(tmp_path / "out"), "--refined", str(refined)])
    assert exit_info.value.code == 2
    assert "999" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_images_name_every_file_and_write_nothing(cirr_raw, tmp_path, capsys):
    source, images, splits = cirr_raw
    (images / "dev" / f"{splits['val'][1]}.png").unlink()
    (images / "test1" / f"{splits['test1'][3]}.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        build_script.main(["--source-dir", str(source), "--images-dir", str(images), "--output-dir", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{splits['val'][1]}.png" in err and f"{splits['test1'][3]}.png" in err and len(err.splitlines()) == 1
    assert f"./dev/{splits['val'][1]}.png" in err  # the file as the split file writes it
    assert not out.exists()
    assert {p.name for p in tmp_path.iterdir()} == {"cirr", "nlvr2"}  # no temporary folder left either


def test_allow_missing_drops_rows_and_records_them(cirr_raw, tmp_path):
    source, images, splits = cirr_raw
    (images / "dev" / f"{splits['val'][7]}.png").unlink()  # target of pairid 12, member of 13
    refined = tmp_path / "refined.json"
    refined.write_text(json.dumps([{"pairid": 11, "caption": "bluer", "is_refined": "true"},
                                   {"pairid": 12, "caption": "a dog", "is_refined": False}]))
    out = tmp_path / "out"
    build_script.main(["--source-dir", str(source), "--images-dir", str(images), "--output-dir", str(out),
                       "--allow-missing", "--refined", str(refined)])
    assert load_dataset(str(out), "queries", split="val")["query_id"] == ["11"]
    refined_rows = load_dataset(str(out), "queries_refined", split="val")  # pairid 12 was dropped: skipped
    assert refined_rows["query_id"] == ["11"] and refined_rows["is_refined"] == [True]
    assert splits["val"][7] not in load_dataset(str(out), "gallery", split="val")["image_id"]
    card = (out / "README.md").read_text()
    assert "pairid 12" in card and "pairid 13" in card and splits["val"][7] in card


def test_annotation_errors_are_named(cirr_raw, tmp_path):
    from collm_hf.data import BuildOptions, DatasetBuildError
    from collm_hf.data.cirr import build_cirr

    source, images, splits = cirr_raw
    path = source / "captions" / "cap.rc2.val.json"
    entries = json.loads(path.read_text())
    entries[1]["pairid"] = 11  # duplicate id
    entries[2]["target_hard"] = "dev-not-in-gallery"
    path.write_text(json.dumps(entries))
    with pytest.raises(DatasetBuildError) as error:
        build_cirr(source, BuildOptions(output_dir=tmp_path / "out", images_dir=images))
    assert "pairid 11 is repeated" in str(error.value) and "dev-not-in-gallery" in str(error.value)


def test_no_images_build_then_attach_local_folder(cirr_raw, tmp_path):
    from collm_hf.data.local_images import attach_images

    source, images, splits = cirr_raw
    out = tmp_path / "out"
    build_script.main(["--source-dir", str(source), "--output-dir", str(out), "--no-images", "--splits", "val"])
    val = load_dataset(str(out), "queries", split="val")
    assert val.features == queries_features("cirr")
    raw = val.cast_column("reference_image", val.features["reference_image"].__class__(decode=False))[0]
    assert raw["reference_image"] == {"bytes": None, "path": f"dev/{splits['val'][0]}.png"}
    attached = attach_images(val, images)
    assert attached[0]["reference_image"].size == (10, 12)
    gallery = attach_images(load_dataset(str(out), "gallery", split="val"), images)
    assert gallery[3]["image"].size == (10, 12)
