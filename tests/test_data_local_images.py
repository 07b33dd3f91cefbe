"""Attaching a local image folder to an annotation-only (`--no-images`) build at load time."""

import numpy as np
import pytest
from datasets import load_dataset
from PIL import Image

from collm_hf.data import MissingImagesError, schema, write_dataset
from collm_hf.data.local_images import attach_images


@pytest.fixture
def annotation_only(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((4 + i, 5, 3), 30 * i, np.uint8)).save(images / "sub" / f"{i}.png")
    rows = [{"image_id": str(i), "image": {"bytes": None, "path": f"sub/{i}.png"}} for i in range(3)]
    out = write_dataset(tmp_path / "ds", {"gallery": {"val": rows}}, {"gallery": schema.GALLERY_FEATURES})
    return out, images


def test_attach_dataset_and_dataset_dict(annotation_only):
    out, images = annotation_only
    gallery = attach_images(load_dataset(str(out), "gallery", split="val"), images)
    assert gallery.features == schema.GALLERY_FEATURES
    assert [image.size for image in gallery["image"]] == [(5, 4), (5, 5), (5, 6)]
    splits = attach_images(load_dataset(str(out), "gallery"), images)
    assert splits["val"][2]["image"].size == (5, 6)


def test_attach_streaming(annotation_only):
    out, images = annotation_only
    streamed = attach_images(load_dataset(str(out), "gallery", split="val", streaming=True), images)
    assert [row["image"].size for row in streamed] == [(5, 4), (5, 5), (5, 6)]


def test_missing_local_files_are_all_named(annotation_only):
    out, images = annotation_only
    (images / "sub" / "0.png").unlink()
    (images / "sub" / "2.png").unlink()
    with pytest.raises(MissingImagesError) as error:
        attach_images(load_dataset(str(out), "gallery", split="val"), images)
    assert "0.png" in str(error.value) and "2.png" in str(error.value)
