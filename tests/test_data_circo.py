"""CIRCO builder on a tiny fixture in the official layout (annotations/{val,test}.json + COCO unlabeled2017)."""

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset
from PIL import Image

from collm_hf.data.schema import GALLERY_FEATURES, queries_features
from _scripts import load_script


def _load_script(name):
    path = Path(__file__).resolve().parents[1] / "dataset_scripts" / f"{name}.py"
    return load_script(path)


build_script = _load_script("build_circo")
IDS = [9, 25, 30, 34, 36, 42, 49, 61, 64, 71]


@pytest.fixture
def circo_raw(tmp_path):
    """CIRCO/annotations/*.json and CIRCO/COCO2017_unlabeled/{annotations/image_info_unlabeled2017.json, unlabeled2017/}."""
    root = tmp_path / "CIRCO"
    coco = root / "COCO2017_unlabeled"
    (root / "annotations").mkdir(parents=True)
    (coco / "annotations").mkdir(parents=True)
    (coco / "unlabeled2017").mkdir()
    images = []
    for i, image_id in enumerate(IDS):
        name = f"{image_id:012d}.jpg"
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (8, 11, 3), dtype=np.uint8)).save(coco / "unlabeled2017" / name)
        images.append({"license": 1, "file_name": name, "coco_url": "", "height": 8, "width": 11, "id": image_id})
    (coco / "annotations" / "image_info_unlabeled2017.json").write_text(json.dumps({"info": {}, "images": images}))
    val = [
        {"id": 0, "reference_img_id": 9, "target_img_id": 30, "relative_caption": "has two dogs",
         "shared_concept": "a dog", "gt_img_ids": [30, 42, 61], "semantic_aspects": ["cardinality", "addition"]},
        {"id": 1, "reference_img_id": 25, "target_img_id": 34, "relative_caption": "is at night",
         "shared_concept": "a street", "gt_img_ids": [34], "semantic_aspects": ["background"]},
    ]
    test = [{"id": 0, "reference_img_id": 36, "relative_caption": "is red", "shared_concept": "a bus"},
            {"id": 1, "reference_img_id": 49, "relative_caption": "without people", "shared_concept": "a beach"},
            {"id": 2, "reference_img_id": 36, "relative_caption": "is blue", "shared_concept": "a bus"}]
    (root / "annotations" / "val.json").write_text(json.dumps(val))
    (root / "annotations" / "test.json").write_text(json.dumps(test))
    return root, coco / "unlabeled2017"


def test_build_loads_back_with_exact_schema_and_counts(circo_raw, tmp_path):
    root, images = circo_raw
    out = tmp_path / "out"
    build_script.main(["--source-dir", str(root), "--images-dir", str(images), "--output-dir", str(out)])
    val = load_dataset(str(out), "queries", split="val")
    assert val.features == queries_features("circo")
    assert val.num_rows == 2
    assert val[0]["query_id"] == "0" and val[0]["reference_id"] == "9"
    assert val[0]["target_ids"] == ["30", "42", "61"]
    assert val[0]["shared_concept"] == "a dog" and val[0]["semantic_aspects"] == ["cardinality", "addition"]
    assert val[0]["modification_text"] == "has two dogs"
    assert val[0]["reference_image"].size == (11, 8)
    test = load_dataset(str(out), "queries", split="test")
    assert test.num_rows == 3 and test["target_ids"] == [[], [], []] and test["semantic_aspects"] == [[], [], []]
    gallery = load_dataset(str(out), "gallery", split="unlabeled2017")  # one gallery split for val and test
    assert gallery.features == GALLERY_FEATURES
    assert gallery["image_id"] == [str(image_id) for image_id in IDS]


def test_explicit_image_info_and_no_images(circo_raw, tmp_path):
    root, images = circo_raw
    info = tmp_path / "info.json"
    info.write_bytes((images.parent / "annotations" / "image_info_unlabeled2017.json").read_bytes())
    out = tmp_path / "out"
    build_script.main(["--source-dir", str(root), "--image-info", str(info), "--no-images", "--output-dir", str(out)])
    gallery = load_dataset(str(out), "gallery", split="unlabeled2017")
    assert gallery.num_rows == len(IDS)
    from collm_hf.data.local_images import attach_images
    assert attach_images(gallery, images)[0]["image"].size == (11, 8)


def test_reference_not_in_image_info_is_an_error(circo_raw, tmp_path, capsys):
    root, images = circo_raw
    entries = json.loads((root / "annotations" / "val.json").read_text())
    entries[1]["gt_img_ids"] = [34, 123456]
    (root / "annotations" / "val.json").write_text(json.dumps(entries))
    with pytest.raises(SystemExit) as exit_info:
        build_script.main(["--source-dir", str(root), "--images-dir", str(images), "--output-dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and "123456" in capsys.readouterr().err


def test_missing_gallery_images_named_and_nothing_written(circo_raw, tmp_path, capsys):
    root, images = circo_raw
    for image_id in (42, 71):
        (images / f"{image_id:012d}.jpg").unlink()
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        build_script.main(["--source-dir", str(root), "--images-dir", str(images), "--output-dir", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "000000000042.jpg" in err and "000000000071.jpg" in err and len(err.splitlines()) == 1
    assert not out.exists()
    build_script.main(["--source-dir", str(root), "--images-dir", str(images), "--output-dir", str(out),
                       "--allow-missing"])
    assert load_dataset(str(out), "queries", split="val")["query_id"] == ["1"]  # query 0 has ground truth 42
    assert load_dataset(str(out), "gallery", split="unlabeled2017").num_rows == len(IDS) - 2
