"""collm_hf.evaluation.benchmarks: the one dataset loader, the split rule, the protocol rule, and clear refusals."""

import datasets
import numpy as np
import pytest
from PIL import Image

from collm_hf.data import gallery_features, queries_features, write_dataset
from collm_hf.evaluation.benchmarks import (
    DatasetLayoutError,
    infer_protocol,
    is_local_path,
    load_benchmark,
    load_splits,
    pick_split,
)


def _image(seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8))


def _gallery_rows(prefix, n):
    return [{"image_id": f"{prefix}{i}", "image": _image(i)} for i in range(n)]


def _query_rows(gallery, n):
    return [{"query_id": str(i), "reference_id": gallery[i]["image_id"], "reference_image": gallery[i]["image"],
             "modification_text": f"change {i}", "target_ids": [gallery[i + 1]["image_id"]]} for i in range(n)]


def _write(folder, queries: dict, gallery: dict, benchmark="generic"):
    write_dataset(folder, {"queries": queries, "gallery": gallery},
                  {"queries": queries_features(benchmark), "gallery": gallery_features(benchmark)})
    return folder


@pytest.mark.parametrize("columns, protocol", [
    (["query_id", "subset_ids", "category"], "cirr"),  # subset_ids decides first
    (["semantic_aspects"], "circo"),
    (["shared_concept"], "circo"),
    (["category"], "fashioniq"),
    (["captions"], "fashioniq"),
    (["query_id", "reference_id", "modification_text", "target_ids"], "standard"),
])
def test_protocol_rule(columns, protocol):
    assert infer_protocol(columns) == protocol


def test_split_rule():
    assert pick_split({"train": 1, "test": 2}) == ("test", 2)
    assert pick_split({"train": 1, "test": 2, "validation": 3, "val": 4}) == ("val", 4)
    assert pick_split({"train": 1, "test": 2, "validation": 3}) == ("validation", 3)
    assert pick_split({"only": 1}) == ("only", 1)
    assert pick_split({"b": 1, "a": 2}) == ("b", 1)  # nothing known: the first
    assert pick_split({"train": 1, "test": 2}, "train") == ("train", 1)
    with pytest.raises(DatasetLayoutError, match=r"data/x has no split 'val' \(splits: \['train', 'test'\]\)"):
        pick_split({"train": 1, "test": 2}, "val", "data/x")


def test_local_paths_and_hub_ids_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not is_local_path("someone/collm-model")  # a hub id
    assert is_local_path("./model") and is_local_path("/abs/model") and is_local_path("runs/qs/model")
    (tmp_path / "runs").mkdir()
    assert is_local_path("runs/model")  # its first folder is here


def test_load_splits_reads_every_form(tmp_path):
    table = datasets.Dataset.from_dict({"image_id": ["a", "b"], "n": [1, 2]})
    table.to_parquet(str(tmp_path / "one.parquet"))
    (tmp_path / "parquet_folder").mkdir()
    table.to_parquet(str(tmp_path / "parquet_folder" / "part-0.parquet"))
    table.save_to_disk(str(tmp_path / "disk_table"))
    datasets.DatasetDict({"val": table}).save_to_disk(str(tmp_path / "disk_dict"))
    for source in (table, table.to_dict(), datasets.DatasetDict({"train": table}), str(tmp_path / "one.parquet"),
                   str(tmp_path / "parquet_folder"), str(tmp_path / "disk_table"), str(tmp_path / "disk_dict")):
        (split, loaded), = load_splits(source, "gallery").items()
        assert loaded["image_id"] == ["a", "b"], source
    assert list(load_splits(str(tmp_path / "disk_dict"))) == ["val"]
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetLayoutError, match="notes.txt: a dataset file must be Parquet"):
        load_splits(str(tmp_path / "notes.txt"))
    with pytest.raises(FileNotFoundError, match="missing"):
        load_splits(str(tmp_path / "missing"))
    with pytest.raises(DatasetLayoutError, match="got int"):
        load_splits(3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="empty holds no dataset"):
        load_splits(str(tmp_path / "empty"), "gallery")


def test_load_splits_of_a_written_folder_names_a_missing_config(tmp_path):
    gallery = _gallery_rows("g", 3)
    folder = _write(tmp_path / "bench", {"val": _query_rows(gallery, 2)}, {"val": gallery})
    assert len(load_splits(folder, "gallery")["val"]) == 3
    with pytest.raises(DatasetLayoutError, match=r"has several configs \['gallery', 'queries'\]: name the one"):
        load_splits(folder)
    with pytest.raises(DatasetLayoutError, match=r"has no 'images' config \(configs: \['gallery', 'queries'\]\)"):
        load_splits(folder, "images")


def test_an_unreachable_hub_id_is_reported_as_missing_by_name(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="nobody/no-such-benchmark"):
        load_benchmark("nobody/no-such-benchmark")


def test_load_benchmark_pairs_each_split_with_its_gallery(tmp_path):
    val, test = _gallery_rows("v", 4), _gallery_rows("t", 5)
    folder = _write(tmp_path / "bench", {"val": _query_rows(val, 3), "test": _query_rows(test, 2)},
                    {"val": val, "test": test})
    bench = load_benchmark(folder)  # default: val
    assert (bench.split, bench.gallery_split, len(bench.queries), len(bench.gallery)) == ("val", "val", 3, 4)
    assert bench.name == "bench" and bench.protocol == "standard" and not bench.refined
    test_split = load_benchmark(folder, "test")
    assert (test_split.gallery_split, len(test_split.gallery)) == ("test", 5)
    assert len(bench.head(1).queries) == 1 and len(bench.head(1).gallery) == 4 and bench.head(None) is bench
    assert load_benchmark(folder, "test", gallery_split="val").gallery_split == "val"


def test_one_gallery_split_is_shared_and_several_others_are_ambiguous(tmp_path):
    gallery = _gallery_rows("c", 4)
    circo = _write(tmp_path / "circo", {"val": _query_rows(gallery, 2), "test": _query_rows(gallery, 1)},
                   {"unlabeled2017": gallery})
    assert load_benchmark(circo, "test").gallery_split == "unlabeled2017"
    other = _write(tmp_path / "other", {"val": _query_rows(gallery, 2)}, {"a": gallery, "b": gallery})
    with pytest.raises(DatasetLayoutError, match="ambiguous"):
        load_benchmark(other)


def test_a_folder_that_is_not_a_benchmark_is_refused_by_name(tmp_path):
    gallery = _gallery_rows("g", 3)
    write_dataset(tmp_path / "triplets", {"images": {"train": gallery}}, {"images": gallery_features()})
    with pytest.raises(DatasetLayoutError, match=r"triplets is not a benchmark: it has no 'queries' or 'gallery' "
                                                 r"config \(configs: \['images'\]\)"):
        load_benchmark(tmp_path / "triplets")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(DatasetLayoutError, match="model is not a benchmark"):
        load_benchmark(tmp_path / "model")
    with pytest.raises(FileNotFoundError, match="No benchmark folder at .*nowhere"):
        load_benchmark(tmp_path / "nowhere")
    (tmp_path / "file.parquet").write_text("x")
    with pytest.raises(FileNotFoundError, match="it is a file"):
        load_benchmark(tmp_path / "file.parquet")
    folder = _write(tmp_path / "bench", {"val": _query_rows(gallery, 2)}, {"val": gallery})
    with pytest.raises(DatasetLayoutError, match="not a benchmark with refined queries.*'queries_refined'"):
        load_benchmark(folder, refined=True)
    with pytest.raises(DatasetLayoutError, match=r"\(config 'queries'\) has no split 'nope' \(splits: \['val'\]\)"):
        load_benchmark(folder, "nope")


def test_a_config_without_the_benchmark_columns_is_refused(tmp_path):
    datasets.DatasetDict({"val": datasets.Dataset.from_dict({"id": ["1"]})}).save_to_disk(str(tmp_path / "b" / "queries"))
    datasets.DatasetDict({"val": datasets.Dataset.from_dict({"image_id": ["1"]})}).save_to_disk(
        str(tmp_path / "b" / "gallery"))
    with pytest.raises(DatasetLayoutError, match=r"'queries' config lacks column\(s\) \['reference_id', "
                                                 r"'modification_text'\]"):
        load_benchmark(tmp_path / "b")
