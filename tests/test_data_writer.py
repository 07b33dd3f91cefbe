"""The streaming, atomic Parquet writer: schema round trip, image inputs, atomicity, memory, hub upload (mocked)."""

import io
import tracemalloc

import numpy as np
import pytest
from datasets import load_dataset
from PIL import Image

from collm_hf.data import schema, writer
from collm_hf.data.writer import DatasetWriteError, push_folder_to_hub, write_dataset


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.full((5, 7, 3), 200, np.uint8)).save(path)
    return path


class FakeHfApi:
    """Stands in for `huggingface_hub.HfApi`: records the calls; `fail_with` makes the upload raise."""

    instances: list = []
    fail_with: Exception | None = None

    def __init__(self, token=None):
        self.token, self.calls = token, []
        FakeHfApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        if self.fail_with is not None:
            raise self.fail_with


@pytest.fixture
def hub(monkeypatch):
    """`writer.HfApi` replaced by `FakeHfApi`; yields the class (its `instances` are the clients made)."""
    monkeypatch.setattr(FakeHfApi, "instances", [])
    monkeypatch.setattr(writer, "HfApi", FakeHfApi)
    return FakeHfApi


def _query(i, image):
    return {"query_id": i, "reference_id": f"r{i}", "reference_image": image, "modification_text": f"t{i}",
            "target_ids": [f"g{i}"], "subset_ids": [f"g{j}" for j in range(6)]}


def test_round_trip_exact_schema_counts_shards_and_image_inputs(tmp_path, png):
    pil = Image.new("RGB", (3, 4), "red")
    raw = io.BytesIO()
    pil.save(raw, format="JPEG")
    rows = [_query(i, [png, str(png), pil, raw.getvalue()][i % 4]) for i in range(25)]
    gallery = [{"image_id": f"g{i}", "image": png} for i in range(6)]
    out = write_dataset(tmp_path / "ds", {"queries": {"val": iter(rows)}, "gallery": {"val": gallery}},
                        schema.benchmark_features("cirr"), {"pretty_name": "Tiny", "license": "mit",
                                                            "citation": "@misc{x}", "dropped": {"missing": ["z.png"]}},
                        rows_per_shard=10)
    assert sorted(p.name for p in (out / "queries").iterdir()) == [f"val-0000{i}-of-00003.parquet" for i in range(3)]
    queries = load_dataset(str(out), "queries", split="val")
    assert queries.features == schema.queries_features("cirr")
    assert queries.num_rows == 25 and queries["query_id"][:3] == ["0", "1", "2"]  # int ids written as strings
    assert [queries[i]["reference_image"].size for i in range(4)] == [(7, 5), (7, 5), (3, 4), (3, 4)]
    assert load_dataset(str(out), "gallery", split="val").features == schema.GALLERY_FEATURES
    card = (out / "README.md").read_text()
    for expected in ("license: mit", "pretty_name: Tiny", "num_examples: 25", "@misc{x}", "z.png", "config_name: gallery"):
        assert expected in card


def test_interrupted_or_failing_build_leaves_nothing(tmp_path, png):
    def rows():
        yield {"image_id": "0", "image": png, "caption": "ok"}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path / "ds", {"pairs": {"train": rows()}}, {"pairs": schema.PAIRS_FEATURES})
    with pytest.raises(DatasetWriteError, match=r"pairs/train\[1\].*unknown column"):
        write_dataset(tmp_path / "ds", {"pairs": {"train": [{"image_id": "0", "image": png, "caption": "a"},
                                                            {"image_id": "1", "image": png, "captoin": "b"}]}},
                      {"pairs": schema.PAIRS_FEATURES})
    with pytest.raises(DatasetWriteError, match="missing.png"):
        write_dataset(tmp_path / "ds", {"pairs": {"train": [{"image_id": "0", "image": tmp_path / "missing.png",
                                                            "caption": "a"}]}}, {"pairs": schema.PAIRS_FEATURES})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_replaces_previous_build_but_never_an_unrelated_folder(tmp_path, png):
    rows = {"pairs": {"train": [{"image_id": "0", "image": png, "caption": "a"}]}}
    out = write_dataset(tmp_path / "ds", rows, {"pairs": schema.PAIRS_FEATURES})
    rows["pairs"]["train"].append({"image_id": "1", "image": png, "caption": "b"})
    write_dataset(out, rows, {"pairs": schema.PAIRS_FEATURES})
    assert load_dataset(str(out), "pairs", split="train").num_rows == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        write_dataset(tmp_path / "mine", rows, {"pairs": schema.PAIRS_FEATURES})
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_memory_stays_flat_while_streaming(tmp_path):
    """100 MB of image bytes streamed from a generator: Python never holds more than a few row groups."""
    blob = np.random.default_rng(0).bytes(100_000)

    def rows():
        for i in range(1000):
            yield {"image_id": str(i), "image": blob[:-1] + bytes([i % 256]), "caption": "c"}

    tracemalloc.start()
    try:
        write_dataset(tmp_path / "big", {"pairs": {"train": rows()}}, {"pairs": schema.PAIRS_FEATURES},
                      rows_per_shard=400)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.1f} MiB for 95 MiB of rows"
    assert len(list((tmp_path / "big" / "pairs").glob("*.parquet"))) == 3


def test_push_to_hub_uploads_the_finished_folder(tmp_path, png, hub):
    out = write_dataset(tmp_path / "ds", {"pairs": {"train": [{"image_id": "0", "image": png, "caption": "a"}]}},
                        {"pairs": schema.PAIRS_FEATURES}, push_to_hub="org/tiny-pairs")
    (api,) = hub.instances
    (create, upload) = api.calls
    assert create == ("create_repo", "org/tiny-pairs", {"repo_type": "dataset", "exist_ok": True, "private": None})
    kwargs = upload[1]
    assert kwargs["folder_path"] == str(out) and kwargs["repo_id"] == "org/tiny-pairs"
    assert kwargs["repo_type"] == "dataset"


def test_push_folder_to_hub_uses_the_client_it_is_given(tmp_path):
    api = FakeHfApi()
    url = push_folder_to_hub(tmp_path, "org/given", private=True, api=api)
    assert url == "https://huggingface.co/datasets/org/given"
    assert [call[0] for call in api.calls] == ["create_repo", "upload_folder"] and api.calls[0][2]["private"] is True


def test_large_folders_are_pushed_with_upload_large_folder(tmp_path):
    class LargeFolderApi(FakeHfApi):
        def upload_large_folder(self, **kwargs):
            self.calls.append(("upload_large_folder", kwargs))

    (tmp_path / "ds" / "pairs").mkdir(parents=True)
    (tmp_path / "ds" / "pairs" / "train-00000-of-00001.parquet").write_bytes(b"x" * 3000)
    (tmp_path / "ds" / "README.md").write_text("card")
    api = LargeFolderApi()
    push_folder_to_hub(tmp_path / "ds", "org/big", private=False, api=api, large_folder_bytes=2048)
    assert api.calls == [("upload_large_folder", {"repo_id": "org/big", "folder_path": str(tmp_path / "ds"),
                                                  "repo_type": "dataset", "private": False})]
    api = LargeFolderApi()
    push_folder_to_hub(tmp_path / "ds", "org/small", api=api)  # 3 KB: far below the default threshold
    assert [call[0] for call in api.calls] == ["create_repo", "upload_folder"]
    assert writer.folder_bytes(tmp_path / "ds") == 3004 and writer.LARGE_FOLDER_BYTES >= 2**30
    api = FakeHfApi()  # a client without upload_large_folder: upload_folder batches and resumes by itself
    push_folder_to_hub(tmp_path / "ds", "org/big", api=api, large_folder_bytes=2048)
    assert [call[0] for call in api.calls] == ["create_repo", "upload_folder"]


def test_build_script_push_to_hub_flag(tmp_path, png, hub):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "dataset_scripts" / "build_pairs.py"
    spec = importlib.util.spec_from_file_location("_build_pairs_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"image": "a.png", "caption": "a"}) + "\n")
    script.main(["--source-dir", str(captions), "--images-dir", str(tmp_path), "--output-dir",
                 str(tmp_path / "out"), "--push-to-hub", "org/pairs"])
    assert hub.instances[0].calls[-1][1]["repo_id"] == "org/pairs"


def test_schema_names_follow_the_contract():
    assert list(schema.queries_features("cirr")) == ["query_id", "reference_id", "reference_image",
                                                     "modification_text", "target_ids", "subset_ids"]
    assert list(schema.queries_features("circo"))[-2:] == ["shared_concept", "semantic_aspects"]
    assert list(schema.queries_features("fashioniq"))[-2:] == ["captions", "category"]
    assert list(schema.queries_refined_features("cirr"))[-2:] == ["is_refined", "original_text"]
    assert list(schema.gallery_features("fashioniq")) == ["image_id", "image", "category"]
    assert list(schema.TRIPLETS_FEATURES) == ["id", "reference_id", "target_id", "modifications", "direction", "category"]
    assert list(schema.IMAGES_FEATURES) == ["image_id", "image"]
    assert list(schema.PAIRS_FEATURES) == ["image_id", "image", "caption"]


def test_benchmark_builder_memory_reports_a_peak(tmp_path):
    from collm_hf.data import benchmark_builder_memory

    peak = benchmark_builder_memory(30, tmp_path, image_size=16)
    assert 10 * 2**20 < peak < 4 * 2**30


def test_push_through_the_cli_subcommand(tmp_path, png, hub):
    import json

    from collm_hf.apps.cli import main as collm_hf_main

    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"image": "a.png", "caption": "a"}) + "\n")
    assert collm_hf_main(["build-dataset", "pairs", "--source-dir", str(captions), "--images-dir", str(tmp_path),
                          "--output-dir", str(tmp_path / "out"), "--push-to-hub", "org/pairs"]) == 0
    assert [call[0] for call in hub.instances[0].calls].count("upload_folder") == 1
    assert load_dataset(str(tmp_path / "out"), "pairs", split="train")["caption"] == ["a"]


def test_stale_partial_folder_of_a_killed_build_is_removed(tmp_path, png):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".ds.partial-{dead.pid}-deadbeef"
    (stale / "pairs").mkdir(parents=True)
    write_dataset(tmp_path / "ds", {"pairs": {"train": [{"image_id": "0", "image": png, "caption": "a"}]}},
                  {"pairs": schema.PAIRS_FEATURES})
    assert not stale.exists() and (tmp_path / "ds" / "README.md").is_file()


def test_failed_upload_keeps_the_local_build_and_says_so(tmp_path, png, hub, monkeypatch):
    from collm_hf.data.writer import HubPushError

    monkeypatch.setattr(hub, "fail_with", OSError("network unreachable"))
    with pytest.raises(HubPushError, match="network unreachable") as error:
        write_dataset(tmp_path / "ds", {"pairs": {"train": [{"image_id": "0", "image": png, "caption": "a"}]}},
                      {"pairs": schema.PAIRS_FEATURES}, push_to_hub="org/x")
    assert str(tmp_path / "ds") in str(error.value)
    assert load_dataset(str(tmp_path / "ds"), "pairs", split="train").num_rows == 1
