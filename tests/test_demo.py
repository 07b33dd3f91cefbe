"""The demo's logic without a browser: one search from the UI's inputs, bad uploads, the app's wiring, the launcher."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio", reason="gradio is not installed (pip install collm-hf[demo])")

from collm_hf.apps.demo import build_demo, search_step, synthetic_world_gallery  # noqa: E402
from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def gallery():
    import datasets

    return datasets.Dataset.from_dict(
        {"image_id": [f"g{i}" for i in range(10)], "image": [_image(i) for i in range(10)]},
        features=datasets.Features({"image_id": datasets.Value("string"), "image": datasets.Image()}))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, gallery):
    """A saved tiny model and the gallery as Parquet."""
    from collm_hf.testing_utils import tiny_model_and_processor

    root = tmp_path_factory.mktemp("demo")
    model, processor = tiny_model_and_processor()
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    gallery.to_parquet(str(root / "gallery.parquet"))
    _image(50).save(root / "ref.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature, then garbage
    (root / "notes.txt").write_text("not a picture")
    return root


@pytest.fixture(scope="module")
def demo(saved):
    demo = build_demo(str(saved / "model"), str(saved / "gallery.parquet"), k=4, device="cpu")
    yield demo
    demo.close()


def test_composed_text_and_image_queries(demo, saved):
    searcher = demo.searcher
    for mode, image, text in [("Image + text", str(saved / "ref.png"), "make it red"), ("Text only", None, "a cat"),
                              ("Image only", _image(3), "ignored")]:
        items, status, warning = search_step(searcher, image, text, mode, 4)
        assert warning is None and len(items) == 4
        assert status.startswith(f"**{mode}** query: top 4 of 10")
        assert all(isinstance(img, Image.Image) and caption.startswith(f"#{r + 1} · ")
                   for r, (img, caption) in enumerate(items))
    hits = searcher.search(image=_image(3), k=10, exclude_ids=["g4"])
    assert len(hits) == 9 and "g4" not in [h.image_id for h in hits]
    assert searcher.duplicates(searcher.embed_images([_image(3)])) == ["g3"]  # the reference is in the gallery
    hits = searcher.search(image=_image(3), text="make it red", k=10, exclude_reference=True)
    assert len(hits) == 9 and "g3" not in [h.image_id for h in hits]  # ... and left out, as CIRR does
    items, _, _ = search_step(searcher, _image(3), "make it red", "Image + text", 10, exclude_reference=False)
    assert any(caption.endswith("· g3") for _, caption in items)


@pytest.mark.parametrize("mode, image, text, message", [
    ("Image + text", None, "make it red", "Upload or pick a reference image"),
    ("Image only", None, "", "Upload or pick a reference image"),
    ("Image + text", "REF", "   ", "Type a modification text"),
    ("Text only", None, "", "Type a modification text"),
    ("Image + text", "NOTES", "x", "'notes.txt' is not an image"),
    ("Image + text", "BROKEN", "make it red", "'broken.png' is not an image"),
])
def test_bad_inputs_give_a_message_not_an_exception(demo, saved, mode, image, text, message):
    image = {"REF": str(saved / "ref.png"), "BROKEN": str(saved / "broken.png"), "NOTES": str(saved / "notes.txt")}.get(image, image)
    items, status, warning = search_step(demo.searcher, image, text, mode, 4)
    assert items == [] and message in warning and status.startswith("⚠️")


def test_text_only_ignores_a_bad_upload(demo, saved):
    items, _, warning = search_step(demo.searcher, str(saved / "notes.txt"), "a red square", "Text only", 3)
    assert warning is None and len(items) == 3


def _search_event(demo):
    (event,) = [fn for fn in demo.fns.values() if fn.api_name == "search"]
    return event


def test_uploads_reach_the_handler_undecoded_and_a_non_image_becomes_a_message(demo, saved, tmp_path):
    """The reference input is a plain `gr.Image(type="filepath")`; the search event skips gradio's preprocessing
    (which would decode the upload itself and fail on a non-image), and the handler decodes the file."""
    event = _search_event(demo)
    image = event.inputs[0]
    assert type(image) is gr.Image and image.type == "filepath" and "preprocess" not in vars(image)
    assert event.preprocess is False
    not_image = tmp_path / "upload-0001"
    not_image.write_text("hello")
    upload = {"path": str(not_image), "orig_name": "holiday.png", "meta": {"_type": "gradio.FileData"}}
    items, status = event.fn(upload, "make it red", "Image + text", 4, True)
    assert items == [] and "'holiday.png' is not an image" in status
    good = {"path": str(saved / "ref.png"), "orig_name": "ref.png", "meta": {"_type": "gradio.FileData"}}
    items, status = event.fn(good, "make it red", "Image + text", 4, True)
    assert len(items) == 4 and status.startswith("**Image + text**")


def test_app_layout_and_handler(demo):
    config = demo.get_config_file()
    ids = {c["props"].get("elem_id") for c in config["components"]}
    assert {"reference-image", "modification-text", "query-mode", "search-button", "results", "status"} <= ids
    assert not (ROOT / "collm_hf" / "demo.pyi").exists()  # gradio writes stubs next to component subclasses


def test_index_folder_shows_images_from_its_source(saved, tmp_path):
    """An index written by `collm-hf index` finds its gallery images again; one without images shows ids."""
    from collm_hf.apps.cli import main as cli_main
    from collm_hf.evaluation.index import GalleryIndex

    assert cli_main(["index", "--model", str(saved / "model"), "--dataset", str(saved / "gallery.parquet"),
                     "--output-dir", str(tmp_path / "index"), "--device", "cpu", "--no-progress"]) == 0
    demo = build_demo(str(saved / "model"), str(tmp_path / "index"), device="cpu")
    assert demo.searcher.gallery is not None and demo.searcher.image("g0").size == (40, 40)
    demo.close()
    GalleryIndex.load(str(tmp_path / "index")).save(str(tmp_path / "bare"))
    demo = build_demo(str(saved / "model"), str(tmp_path / "bare"), device="cpu", samples=[])
    items, _, warning = search_step(demo.searcher, None, "a red square", "Text only", 2)
    assert warning is None and len(items) == 2 and items[0][1].startswith("#1")  # placeholder pictures
    demo.close()


def test_synthetic_world_default_gallery():
    dataset, samples = synthetic_world_gallery(tiny=True, num_samples=3)
    assert {"image_id", "image"} <= set(dataset.column_names) and len(dataset) > 50
    assert len(samples) == 3 and all(isinstance(i, Image.Image) and t for i, t in samples)


def _load_app():
    return load_script(ROOT / "examples" / "app.py")


def test_app_main_builds_and_launches(saved, monkeypatch):
    import collm_hf.apps.demo

    launched = {}
    monkeypatch.setattr(collm_hf.apps.demo, "launch", lambda demo, host, port: launched.update(demo=demo, port=port))
    app = _load_app()
    assert app.main(["--model", str(saved / "model"), "--gallery", str(saved / "gallery.parquet"), "--port", "7999",
                     "--device", "cpu"]) == 0
    assert launched["port"] == 7999 and launched["demo"].searcher.size == 10
    launched["demo"].close()


def test_app_refuses_another_models_index_unless_asked_to_rebuild(saved, tmp_path, monkeypatch, capsys):
    """`examples/app.py --rebuild-index` re-embeds an index folder another model made; without it, one line names
    both."""
    import collm_hf.apps.demo
    from collm_hf.apps.cli import main as cli_main
    from collm_hf.testing_utils import tiny_model_and_processor

    other, processor = tiny_model_and_processor(seed=7)
    other.save_pretrained(tmp_path / "other")
    processor.save_pretrained(tmp_path / "other")
    assert cli_main(["index", "--model", str(tmp_path / "other"), "--dataset", str(saved / "gallery.parquet"),
                     "--output-dir", str(tmp_path / "index"), "--device", "cpu", "--no-progress"]) == 0
    launched = {}
    monkeypatch.setattr(collm_hf.apps.demo, "launch", lambda demo, host, port: launched.update(demo=demo))
    command = ["--model", str(saved / "model"), "--gallery", str(tmp_path / "index"), "--device", "cpu"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        _load_app().main(command)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "--rebuild-index" in err.splitlines()[-1] and "vision weights differ" in err.splitlines()[-1]
    assert _load_app().main([*command, "--rebuild-index"]) == 0
    assert launched["demo"].searcher.size == 10
    launched["demo"].close()


def test_app_main_without_a_model_says_how_to_get_one(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _load_app().main(["--model", str(tmp_path / "missing"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "collm-hf quickstart" in err and len(err.splitlines()) == 1


def test_default_gallery_is_the_quickstarts_world(tmp_path):
    """Beside a quickstart-style `DIR/model`, the default gallery and samples come from `DIR/world/cirr`."""
    from collm_hf.testing_utils import tiny_model_and_processor
    from collm_hf.data.synthetic_world import WorldConfig, cirr_scenes, write_world

    model, processor = tiny_model_and_processor()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    world = WorldConfig(seed=3, num_pairs=0, num_groups=0, num_cirr_queries=4, num_circo_queries=0)
    write_world(tmp_path / "world", world, parts=("cirr",))
    demo = build_demo(str(tmp_path / "model"), device="cpu")
    queries, gallery = cirr_scenes(world)  # the same world, unrendered
    assert demo.searcher.index.ids == sorted(gallery)
    assert [text for _, text in demo.samples] == [q["modification_text"] for q in queries[:len(demo.samples)]]
    items, _, warning = search_step(demo.searcher, demo.samples[0][0], demo.samples[0][1], "Image + text", 3)
    assert warning is None and len(items) == 3
    demo.close()


def test_served_api_answers_like_the_page(demo, saved):
    """The Space's API (`/search`, the button's event) over HTTP on localhost, through gradio_client."""
    import socket

    from gradio_client import Client, handle_file

    from collm_hf.apps.demo import launch

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _, url, _ = launch(demo, host="127.0.0.1", port=port, block=False)
    client = Client(url, verbose=False)
    items, status = client.predict(handle_file(str(saved / "ref.png")), "make it red", "Image + text", 3, True,
                                   api_name="/search")
    assert [item["caption"].split(" · ")[0] for item in items] == ["#1", "#2", "#3"] and "top 3 of 10" in status
    items, status = client.predict(None, "", "Image + text", 3, True, api_name="/search")
    assert items == [] and "Upload or pick a reference image" in status
