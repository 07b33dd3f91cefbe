"""`collm-hf index` / `collm-hf search` and the `collm_hf.apps.search` glue, on a tiny saved model and gallery."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from collm_hf.apps.cli import main as cli_main


def _image(seed: int, size: int = 40) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A saved tiny model, a 12-image gallery as Parquet, a reference image file and a non-image file."""
    import datasets

    from collm_hf.testing_utils import tiny_model_and_processor

    root = tmp_path_factory.mktemp("search")
    model, processor = tiny_model_and_processor()
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    gallery = datasets.Dataset.from_dict(
        {"image_id": [f"img-{i}" for i in range(12)], "image": [_image(i) for i in range(12)]},
        features=datasets.Features({"image_id": datasets.Value("string"), "image": datasets.Image()}),
    )
    gallery.to_parquet(str(root / "gallery.parquet"))
    _image(100).save(root / "ref.png")
    (root / "notes.png").write_text("this is not an image")
    return {"root": root, "model": str(root / "model"), "gallery": str(root / "gallery.parquet"),
            "ref": str(root / "ref.png"), "bad": str(root / "notes.png"), "tiny": (model, processor)}


@pytest.fixture(scope="module")
def index_dir(assets):
    out = assets["root"] / "index"
    assert cli_main(["index", "--model", assets["model"], "--dataset", assets["gallery"], "--output-dir", str(out),
                     "--device", "cpu", "--batch-size", "5"]) == 0
    return str(out)


def _search_json(capsys, *argv) -> dict:
    assert cli_main(["search", "--device", "cpu", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_index_writes_gallery_files_and_source(index_dir, assets, capsys):
    from collm_hf.evaluation.index import GalleryIndex

    out = assets["root"] / "index-again"
    assert cli_main(["index", "--model", assets["model"], "--dataset", assets["gallery"], "--output-dir", str(out)]) == 0
    captured = capsys.readouterr()
    assert "Embedding gallery" in captured.err and "12/12" in captured.err  # the progress bar
    assert f"Indexed 12 gallery images (24-d) into {out}" in captured.out

    index = GalleryIndex.load(index_dir)
    assert index.ids == [f"img-{i}" for i in range(12)]
    source = json.loads(open(f"{index_dir}/gallery_source.json").read())
    assert source["dataset"] == assets["gallery"] and source["num_images"] == 12


def test_composed_search_matches_direct_model_ranking(index_dir, assets, capsys):
    """The CLI's top-k equals ranking the gallery by `get_query_embeds @ get_image_embeds.T` by hand."""
    out = _search_json(capsys, "--model", assets["model"], "--index", index_dir, "--image", assets["ref"],
                       "--text", "make it green", "-k", "5")
    model, processor = assets["tiny"]
    with torch.no_grad():
        query = model.get_query_embeds(**processor(images=[Image.open(assets["ref"])], text=["make it green"]))
        gallery = model.get_image_embeds(processor(images=[_image(i) for i in range(12)])["pixel_values"])
    scores = (query @ gallery.T)[0]  # (12,)
    expected = [f"img-{i}" for i in scores.argsort(descending=True)[:5].tolist()]
    assert out["query"]["mode"] == "image+text"
    assert [r["image_id"] for r in out["results"]] == expected
    assert [r["rank"] for r in out["results"]] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([r["score"] for r in out["results"]], scores.sort(descending=True).values[:5], atol=1e-4)


def test_text_only_image_only_and_exclusions(index_dir, assets, capsys):
    text_only = _search_json(capsys, "--model", assets["model"], "--index", index_dir, "--text", "a red circle", "-k", "3")
    assert text_only["query"]["mode"] == "text" and len(text_only["results"]) == 3
    image_only = _search_json(capsys, "--model", assets["model"], "--index", index_dir, "--image", assets["ref"])
    assert image_only["query"]["mode"] == "image" and len(image_only["results"]) == 10
    best = image_only["results"][0]["image_id"]
    excluded = _search_json(capsys, "--model", assets["model"], "--index", index_dir, "--image", assets["ref"],
                            "--exclude", best)
    assert best not in [r["image_id"] for r in excluded["results"]]


def test_search_over_a_dataset_directly_and_table_output(index_dir, assets, capsys):
    from_index = _search_json(capsys, "--model", assets["model"], "--index", index_dir, "--text", "add a star", "-k", "4")
    assert cli_main(["search", "--device", "cpu", "--model", assets["model"], "--index", assets["gallery"],
                     "--text", "add a star", "-k", "4"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("text query over 12 gallery images")
    assert [line.split()[-1] for line in table[2:]] == [r["image_id"] for r in from_index["results"]]


@pytest.mark.parametrize("argv, message", [
    (["--image", "{bad}", "--text", "x"], "cannot read image"),
    (["--image", "{root}/missing.png"], "no such file"),
    (["--text", "   "], "nothing to search for"),
    ([], "needs a reference image, a modification text, or both"),
    (["--text", "x", "-k", "0"], "positive integer"),
])
def test_bad_queries_give_one_clear_error(index_dir, assets, capsys, argv, message):
    argv = [a.format(bad=assets["bad"], root=assets["root"]) for a in argv]
    assert cli_main(["search", "--device", "cpu", "--model", assets["model"], "--index", index_dir, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
    if "{bad}" in argv:
        assert "notes.png" in err


def test_missing_model_and_mismatched_index(index_dir, assets, tmp_path, capsys):
    assert cli_main(["search", "--model", str(tmp_path / "nope"), "--index", index_dir, "--text", "x"]) == 2
    assert "No CoLLM model" in capsys.readouterr().err
    from collm_hf.evaluation.index import GalleryIndex

    GalleryIndex(torch.nn.functional.normalize(torch.randn(3, 7), dim=-1), ["a", "b", "c"]).save(str(tmp_path / "i7"))
    assert cli_main(["search", "--device", "cpu", "--model", assets["model"], "--index", str(tmp_path / "i7"),
                     "--text", "x"]) == 2
    assert "records no model" in capsys.readouterr().err


def test_index_made_by_another_model_is_refused_then_rebuilt(index_dir, assets, tmp_path, capsys):
    """Model B searching model A's index: one line naming both, exit 2; --rebuild-index re-embeds its gallery."""
    import shutil

    from collm_hf.testing_utils import tiny_model_and_processor

    other, processor = tiny_model_and_processor(seed=1)
    other.save_pretrained(tmp_path / "model-b")
    processor.save_pretrained(tmp_path / "model-b")
    shutil.copytree(index_dir, tmp_path / "index")
    capsys.readouterr()
    argv = ["search", "--device", "cpu", "--index", str(tmp_path / "index"), "--text", "x", "--json"]
    assert cli_main([*argv, "--model", str(tmp_path / "model-b")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # (after progress bars)
    assert len(err) == 1 and "vision weights differ" in err[0] and "--rebuild-index" in err[0]
    err = err[0]
    assert assets["model"] in err and str(tmp_path / "model-b") in err  # both models named
    assert cli_main([*argv, "--model", str(tmp_path / "model-b"), "--rebuild-index"]) == 0
    capsys.readouterr()
    assert cli_main([*argv, "--model", str(tmp_path / "model-b")]) == 0  # now B's index
    capsys.readouterr()
    assert cli_main([*argv, "--model", assets["model"]]) == 2  # and no longer A's
    assert str(tmp_path / "model-b") in capsys.readouterr().err


def test_load_gallery_formats(assets, tmp_path):
    import datasets

    from collm_hf.apps.search import SearchInputError, load_gallery

    parquet = load_gallery(assets["gallery"])
    parquet.save_to_disk(str(tmp_path / "disk"))
    assert load_gallery(str(tmp_path / "disk"))["image_id"] == parquet["image_id"]
    both = datasets.DatasetDict({"train": parquet.select(range(2)), "test": parquet})
    assert len(load_gallery(both)) == 12 and len(load_gallery(both, split="train")) == 2
    from collm_hf.data import gallery_features, write_dataset

    rows = [{"image_id": i, "image": im} for i, im in zip(parquet["image_id"], parquet["image"])]
    write_dataset(tmp_path / "built", {"gallery": {"val": rows}}, {"gallery": gallery_features()})
    assert load_gallery(str(tmp_path / "built"))["image_id"] == parquet["image_id"]  # config "gallery", its only split
    with pytest.raises(SearchInputError, match="no \\['image_id'\\] column"):
        load_gallery(parquet.rename_column("image_id", "id"))
    with pytest.raises(FileNotFoundError, match="No dataset at .*missing"):
        load_gallery(str(tmp_path / "missing" / "gallery"))
    with pytest.raises(SearchInputError, match=r"has no split 'val' \(splits: \['train', 'test'\]\)"):
        load_gallery(both, split="val")  # the package's one split rule and its error


def test_exclude_reference_leaves_out_the_reference_itself(index_dir, assets, tmp_path, capsys):
    _image(5).save(tmp_path / "img-5.png")  # a gallery image used as the reference
    argv = ["--model", assets["model"], "--index", index_dir, "--image", str(tmp_path / "img-5.png"), "--text", "x",
            "-k", "12"]
    assert "img-5" in [r["image_id"] for r in _search_json(capsys, *argv)["results"]]
    kept = [r["image_id"] for r in _search_json(capsys, *argv, "--exclude-reference")["results"]]
    assert len(kept) == 11 and "img-5" not in kept


def test_index_append_kind_and_refusal_of_another_gallery(assets, tmp_path, capsys):
    """`--kind hnsw` saves a FAISS index that search then uses; another gallery is refused without --append or
    --rebuild-index; --append embeds only the new images, as a second shard, leaving the first untouched."""
    import datasets

    from collm_hf.evaluation.index import GalleryIndex

    datasets.Dataset.from_parquet(assets["gallery"]).select(range(8)).to_parquet(str(tmp_path / "first8.parquet"))
    out = tmp_path / "index"
    base = ["index", "--model", assets["model"], "--output-dir", str(out), "--device", "cpu", "--no-progress"]
    assert cli_main([*base, "--dataset", str(tmp_path / "first8.parquet"), "--kind", "hnsw"]) == 0
    first = next(out.glob("embeddings-*")).read_bytes()
    capsys.readouterr()
    assert cli_main([*base, "--dataset", assets["gallery"]]) == 2
    assert "built from another gallery: 8 images" in capsys.readouterr().err
    assert cli_main([*base, "--dataset", assets["gallery"], "--append"]) == 0
    assert "Indexed 12 gallery images (24-d)" in capsys.readouterr().out
    shards = sorted(out.glob("embeddings-*"))
    assert len(shards) == 2 and shards[0].read_bytes() == first
    index = GalleryIndex.load(out)
    assert len(index) == 12 and index.saved_approximate == ("hnsw",)
    found = _search_json(capsys, "--model", assets["model"], "--index", str(out), "--text", "x", "-k", "12")
    exact = _search_json(capsys, "--model", assets["model"], "--index", str(out), "--text", "x", "-k", "12",
                         "--kind", "exact")
    assert found["search"] == "hnsw" and exact["search"] == "exact"
    assert [r["image_id"] for r in found["results"]] == [r["image_id"] for r in exact["results"]]
