"""The retrieval grid PNG: layout, ground-truth marks, inputs it accepts, atomic write, errors."""

import os

import numpy as np
import pytest
from PIL import Image

from collm_hf.evaluation.visualization import GREEN, gallery_lookup, retrieval_grid, save_retrieval_grid


def _image(colour, size=(30, 40)):
    return Image.new("RGB", size, colour)


@pytest.fixture
def gallery():
    colours = [(200, 0, 0), (0, 0, 200), (0, 120, 0), (200, 200, 0), (90, 90, 90)]
    return {f"g{i}": _image(c) for i, c in enumerate(colours)}


def _count_green(image):
    return int((np.asarray(image) == np.array(GREEN)).all(-1).sum())


def test_grid_size_and_ground_truth_frame(gallery):
    grid = retrieval_grid([_image((255, 255, 255)), None], ["make it blue", "a much longer modification text " * 4],
                          [["g0", "g1", "g2"], ["g3", "g4", "g0"]], gallery, targets=[["g1"], ["g2"]], k=3,
                          thumb_size=64, title="tiny")
    assert grid.mode == "RGB"
    cell = 64 + 16
    assert grid.size[0] == cell + 28 + 3 * cell + 8 and grid.size[1] > 2 * 64
    assert _count_green(grid) > 4 * 60  # a thick frame around the one hit in the top-3
    no_targets = retrieval_grid([None, None], ["a", "b"], [["g0", "g1", "g2"], ["g3", "g4", "g0"]], gallery, k=3,
                                thumb_size=64)
    assert _count_green(no_targets) == 0


def test_accepts_paths_arrays_callables_and_missing_images(gallery, tmp_path):
    path = tmp_path / "ref.png"
    _image((10, 200, 10)).save(path)
    array = np.zeros((16, 16, 3), dtype=np.uint8)
    grid = retrieval_grid([str(path), array], ["x", "y"], [["g0", "missing-id"], ["g1"]], gallery.get, k=2)
    assert grid.size[1] > 0


def test_gallery_lookup_over_a_dataset(gallery):
    import datasets

    table = datasets.Dataset.from_dict({"image_id": list(gallery), "image": list(gallery.values())})
    lookup = gallery_lookup(table)
    assert np.asarray(lookup("g2")).tolist() == np.asarray(gallery["g2"]).tolist()
    assert lookup("nope") is None


def test_save_is_atomic_png(gallery, tmp_path):
    out = save_retrieval_grid(str(tmp_path / "pics" / "grid.png"), [None], ["t"], [["g0"]], gallery, targets=[["g0"]], k=1)
    assert Image.open(out).format == "PNG"
    assert os.listdir(tmp_path / "pics") == ["grid.png"]


def test_mismatched_inputs_raise(gallery):
    with pytest.raises(ValueError, match="need one per query"):
        retrieval_grid([None], ["a", "b"], [["g0"]], gallery)
    with pytest.raises(ValueError, match="k >= 1"):
        retrieval_grid([None], ["a"], [["g0"]], gallery, k=0)
