"""examples/evaluate_collm.py end to end on a tiny saved model and tiny CIRR / CIRCO / Fashion-IQ folders."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from _scripts import load_script

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "evaluate_collm.py")


def load_example():
    return load_script(EXAMPLE)


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 30, 3), dtype=np.uint8))


def write_parquet_folder(root, tables: dict) -> str:
    """`{config: {split: Dataset}}` -> Parquet files + README `configs:` block, as the dataset builders write."""
    lines = ["---", "configs:"]
    for config, splits in tables.items():
        lines += [f"- config_name: {config}", "  data_files:"]
        for split, table in splits.items():
            os.makedirs(os.path.join(root, config), exist_ok=True)
            table.to_parquet(os.path.join(root, config, f"{split}-00000-of-00001.parquet"))
            lines += [f"  - split: {split}", f"    path: {config}/{split}-*.parquet"]
    lines += ["---", "", "tiny test benchmark"]
    with open(os.path.join(root, "README.md"), "w") as f:
        f.write("\n".join(lines))
    return str(root)


def _gallery(prefix: str, n: int, categories=None):
    import datasets

    data = {"image_id": [f"{prefix}{i}" for i in range(n)], "image": [_image(hash(prefix) % 1000 + i) for i in range(n)]}
    if categories:
        data["category"] = [categories[i % len(categories)] for i in range(n)]
    return datasets.Dataset.from_dict(data).cast_column("image", datasets.Image())


def _queries(gallery, n: int, extra, labelled: bool = True):
    import datasets

    ids = gallery["image_id"]
    rows = {"query_id": [str(i) for i in range(n)], "reference_id": [ids[i] for i in range(n)],
            "reference_image": [gallery[i]["image"] for i in range(n)],
            "modification_text": [f"make it blue and add {i} dogs" for i in range(n)],
            "target_ids": [[ids[(i + 3) % len(ids)]] if labelled else [] for i in range(n)]}
    for name, make in extra.items():
        rows[name] = [make(i, ids) for i in range(n)]
    return datasets.Dataset.from_dict(rows).cast_column("reference_image", datasets.Image())


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from collm_hf.testing_utils import tiny_model_and_processor

    path = tmp_path_factory.mktemp("model")
    model, processor = tiny_model_and_processor()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def cirr_folder(tmp_path_factory):
    gallery = _gallery("dev-", 14)
    test_gallery = _gallery("test1-", 12)
    members = lambda i, ids: [ids[(i + j) % len(ids)] for j in range(6)]  # noqa: E731  reference first
    refined = _queries(gallery, 5, {"subset_ids": members, "is_refined": lambda i, ids: i % 2 == 0,
                                    "original_text": lambda i, ids: "old text"})
    return write_parquet_folder(tmp_path_factory.mktemp("cirr"), {
        "queries": {"val": _queries(gallery, 6, {"subset_ids": members}),
                    "test1": _queries(test_gallery, 4, {"subset_ids": members}, labelled=False)},
        "queries_refined": {"val": refined},
        "gallery": {"val": gallery, "test1": test_gallery},
    })


def test_cirr_val_metrics_json_picture_and_index_cache(saved_model, cirr_folder, tmp_path):
    example = load_example()
    out = tmp_path / "report.json"
    argv = ["--model", saved_model, "--dataset", cirr_folder, "--split", "val", "--output-json", str(out), "--num-workers", "1", "--visualize",
            str(tmp_path / "grid.png"), "--index-dir", str(tmp_path / "index"), "--no-progress", "--batch-size", "4"]
    report = example.main(argv)
    assert report["protocol"] == "cirr" and report["num_queries"] == 6 and report["num_gallery"] == 14
    assert {"recall@1", "recall@50", "recall_subset@1", "cirr_score"} <= set(report["metrics"])
    assert json.loads(out.read_text())["metrics"] == report["metrics"]
    assert Image.open(tmp_path / "grid.png").size[0] > 200
    assert os.path.isfile(tmp_path / "index" / "manifest.json")
    again = example.main(argv)  # second run loads the cached index: same numbers
    assert again["metrics"] == report["metrics"]


def test_console_command(saved_model, cirr_folder, capsys):
    from collm_hf.apps.cli import main as cli_main

    assert cli_main(["evaluate", "--model", saved_model, "--dataset", cirr_folder, "--max-queries", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "cirr_score" in out and "2 queries, 14 gallery images" in out


def test_cirr_refined_queries(saved_model, cirr_folder):
    report = load_example().main(["--model", saved_model, "--dataset", cirr_folder, "--refined", "--no-progress"])
    assert report["refined"] and report["num_queries"] == 5 and "cirr_score" in report["metrics"]


def test_cirr_test_split_writes_submissions(saved_model, cirr_folder, tmp_path):
    report = load_example().main(["--model", saved_model, "--dataset", cirr_folder, "--split", "test1", "--submission-dir",
                                  str(tmp_path), "--no-progress"])
    assert report["metrics"] == {}
    recall = json.loads((tmp_path / "cirr_test1_recall.json").read_text())
    subset = json.loads((tmp_path / "cirr_test1_recall_subset.json").read_text())
    assert recall["version"] == "rc2" and recall["metric"] == "recall" and subset["metric"] == "recall_subset"
    for qid in map(str, range(4)):
        assert len(recall[qid]) == 11 and f"test1-{qid}" not in recall[qid]  # the reference is removed
        assert len(subset[qid]) == 3 and f"test1-{qid}" not in subset[qid]


def test_circo_unlabeled_gallery_and_shared_concept_option(saved_model, tmp_path):
    gallery = _gallery("", 16)
    extra = {"shared_concept": lambda i, ids: "a dog", "semantic_aspects": lambda i, ids: ["addition"]}
    queries = _queries(gallery, 5, extra)
    queries = queries.map(lambda row: {"target_ids": row["target_ids"] + [str((int(row["query_id"]) + 5) % 16)]})
    folder = write_parquet_folder(tmp_path / "circo", {"queries": {"val": queries, "test": _queries(gallery, 3, extra, False)},
                                                       "gallery": {"unlabeled2017": gallery}})
    example = load_example()
    plain = example.main(["--model", saved_model, "--dataset", folder, "--no-progress"])
    assert plain["protocol"] == "circo" and plain["text_template"] == "{modification_text}"
    assert {"map@5", "map@50", "recall@5", "map@10/addition"} <= set(plain["metrics"])
    concept = example.main(["--model", saved_model, "--dataset", folder, "--with-shared-concept", "--no-progress"])
    assert "shared_concept" in concept["text_template"]
    test = example.main(["--model", saved_model, "--dataset", folder, "--split", "test", "--submission-dir", str(tmp_path), "--no-progress"])
    submission = json.loads((tmp_path / "circo_test.json").read_text())
    assert test["metrics"] == {} and sorted(submission) == ["0", "1", "2"] and len(submission["0"]) == 16
    assert all(isinstance(x, int) for x in submission["0"])


def test_fashioniq_ranks_within_category_gallery(saved_model, tmp_path):
    import datasets

    gallery = _gallery("B0", 18, categories=["dress", "shirt", "toptee"])
    ids, cats = gallery["image_id"], gallery["category"]
    rows = {"query_id": [], "reference_id": [], "reference_image": [], "modification_text": [], "target_ids": [],
            "captions": [], "category": []}
    for i in range(9):
        same = [j for j in range(18) if cats[j] == cats[i] and j != i]
        rows["query_id"].append(str(i)), rows["reference_id"].append(ids[i])
        rows["reference_image"].append(gallery[i]["image"]), rows["modification_text"].append("is darker and longer")
        rows["target_ids"].append([ids[same[0]]]), rows["captions"].append(["is darker", "longer"])
        rows["category"].append(cats[i])
    queries = datasets.Dataset.from_dict(rows).cast_column("reference_image", datasets.Image())
    folder = write_parquet_folder(tmp_path / "fiq", {"queries": {"val": queries}, "gallery": {"val": gallery}})
    report = load_example().main(["--model", saved_model, "--dataset", folder, "--no-progress"])
    metrics = report["metrics"]
    # 6 images per category gallery: every target is in the top 10 of its own category's ranking.
    for cat in ("dress", "shirt", "toptee"):
        assert metrics[f"{cat}/recall@10"] == 100.0
    assert metrics["recall@10"] == 100.0 and "fashioniq_score" in metrics


def test_save_to_disk_folder_and_clear_errors(saved_model, tmp_path):
    import datasets

    gallery = _gallery("g", 8)
    datasets.DatasetDict({"val": _queries(gallery, 3, {})}).save_to_disk(str(tmp_path / "bench" / "queries"))
    datasets.DatasetDict({"val": gallery}).save_to_disk(str(tmp_path / "bench" / "gallery"))
    example = load_example()
    report = example.main(["--model", saved_model, "--dataset", str(tmp_path / "bench"), "--no-progress"])
    assert report["protocol"] == "standard" and set(report["metrics"]) == {"recall@1", "recall@5", "recall@10", "recall@50"}


def _one_line_error(main, argv, capsys) -> str:
    """Run `main(argv)`, expecting a user error: exit status 2 and exactly one line on stderr; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("case, expected", [
    ("missing dataset", "No benchmark folder at .*missing"),
    ("unreachable hub id", "nobody/no-such-benchmark.*hub could not be reached"),
    ("not a benchmark", "model.* is not a benchmark: it has no 'queries' or 'gallery' config"),
    ("missing split", r"bench.*\(config 'queries'\) has no split 'nope' \(splits: \['val'\]\)"),
    ("no refined queries", "bench is not a benchmark with refined queries.*'queries_refined'"),
    ("missing model", "No CoLLM model at .*nomodel"),
    ("exclusive options", "--text-template and --with-shared-concept are exclusive"),
    ("no submission format", "--submission-dir: standard has no test-server format"),
])
def test_user_errors_are_one_line_with_exit_status_2(saved_model, tmp_path, capsys, monkeypatch, case, expected):
    import datasets

    gallery = _gallery("g", 4)
    datasets.DatasetDict({"val": _queries(gallery, 2, {})}).save_to_disk(str(tmp_path / "bench" / "queries"))
    datasets.DatasetDict({"val": gallery}).save_to_disk(str(tmp_path / "bench" / "gallery"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bench, model = str(tmp_path / "bench"), saved_model
    argv = {
        "missing dataset": ["--dataset", str(tmp_path / "missing")],
        "unreachable hub id": ["--dataset", "nobody/no-such-benchmark"],
        "not a benchmark": ["--dataset", saved_model],
        "missing split": ["--dataset", bench, "--split", "nope"],
        "no refined queries": ["--dataset", bench, "--refined"],
        "missing model": ["--dataset", bench, "--model", str(tmp_path / "nomodel")],
        "exclusive options": ["--dataset", bench, "--text-template", "{modification_text}!", "--with-shared-concept"],
        "no submission format": ["--dataset", bench, "--submission-dir", str(tmp_path / "sub")],
    }[case]
    if "--model" not in argv:
        argv = ["--model", model] + argv
    line = _one_line_error(load_example().main, argv + ["--no-progress"], capsys)
    assert line.startswith("evaluate_collm.py: error: ")
    assert __import__("re").search(expected, line), line
    with pytest.raises(Exception):  # --debug: the exception itself, with its traceback
        load_example().main(["--debug"] + argv + ["--no-progress"])


def test_console_command_with_a_missing_dataset_prints_one_line(saved_model, tmp_path, capsys):
    from collm_hf.apps.cli import main as cli_main

    missing = str(tmp_path / "no_such_benchmark")
    assert cli_main(["evaluate", "--model", saved_model, "--dataset", missing, "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"collm-hf evaluate: error: No benchmark folder at {missing!r}."]
    with pytest.raises(SystemExit) as exit_:  # positional inputs are gone: every input is a named option
        cli_main(["evaluate", saved_model, missing])
    assert exit_.value.code == 2 and "--model" in capsys.readouterr().err


def test_annotation_only_build_with_images_dir(saved_model, tmp_path, monkeypatch):
    import datasets

    images_dir = tmp_path / "images"
    images_dir.mkdir()
    names = [f"dev/{i}.png" for i in range(8)]
    (images_dir / "dev").mkdir()
    for i, name in enumerate(names):
        _image(i).save(images_dir / name)
    gallery = datasets.Dataset.from_dict({"image_id": [f"g{i}" for i in range(8)], "image": names})
    gallery = gallery.cast_column("image", datasets.Image())
    queries = datasets.Dataset.from_dict({
        "query_id": ["0", "1"], "reference_id": ["g0", "g1"], "reference_image": names[:2],
        "modification_text": ["make it red", "add a cat"], "target_ids": [["g2"], ["g3"]]}).cast_column(
        "reference_image", datasets.Image())
    monkeypatch.chdir(images_dir)  # to_parquet sizes the files; it stores only their relative paths
    folder = write_parquet_folder(tmp_path / "bench", {"queries": {"val": queries}, "gallery": {"val": gallery}})
    monkeypatch.chdir(tmp_path)
    example = load_example()
    with pytest.raises(BaseException):  # the paths alone do not resolve
        example.main(["--model", saved_model, "--dataset", folder, "--no-progress"])
    report = example.main(["--model", saved_model, "--dataset", folder, "--images-dir", str(images_dir), "--no-progress"])
    assert report["num_gallery"] == 8 and "recall@1" in report["metrics"]
    (images_dir / "dev" / "1.png").unlink()
    with pytest.raises(Exception, match="1.png"):
        example.main(["--debug", "--model", saved_model, "--dataset", folder, "--images-dir", str(images_dir),
                      "--no-progress"])


def test_on_the_datasets_writer_output(saved_model, tmp_path):
    """The seam with the datasets issue: folders written by `collm_hf.data.write_dataset` (synthetic world)."""
    world = pytest.importorskip("collm_hf.data.synthetic_world")
    written = world.write_world(tmp_path / "world", world.WorldConfig.tiny(), parts=("cirr", "circo"))
    example = load_example()
    cirr = example.main(["--model", saved_model, "--dataset", str(written["cirr"]), "--max-queries", "12", "--no-progress"])
    assert cirr["protocol"] == "cirr" and 0.0 <= cirr["metrics"]["cirr_score"] <= 100.0
    circo = example.main(["--model", saved_model, "--dataset", str(written["circo"]), "--max-queries", "12", "--no-progress"])
    assert circo["protocol"] == "circo" and "map@5" in circo["metrics"]
