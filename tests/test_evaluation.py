"""collm_hf.evaluation embedding / scoring / callback / report: query embedding paths, the cached gallery index,
per-protocol ranking, the Trainer callback, and the evaluation steps composed as `collm-hf evaluate` runs them."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from collm_hf.evaluation.callback import add_retrieval_evaluation
from collm_hf.evaluation.cir_metric import cirr_metrics, compute_cir_metrics
from collm_hf.evaluation.embedding import (
    SHARED_CONCEPT_TEMPLATE,
    IndexCacheMismatchError,
    embed_gallery,
    embed_queries,
    load_or_embed_gallery,
    query_texts,
)
from collm_hf.evaluation.scoring import evaluate_benchmark, rank_benchmark


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture
def bench():
    images = _images(12)
    ids = [f"dev-{i}" for i in range(12)]
    gallery = {"image_id": ids, "image": images, "category": ["dress", "shirt", "toptee"] * 4}
    n = 6
    queries = {
        "query_id": [str(i) for i in range(n)], "reference_id": ids[:n], "reference_image": images[:n],
        "modification_text": [f"make it brighter {i}" for i in range(n)], "target_ids": [[ids[i + 3]] for i in range(n)],
        "subset_ids": [[ids[(i + j) % 12] for j in range(6)] for i in range(n)],
    }
    return queries, gallery


def test_query_texts():
    queries = {"modification_text": [" is red "], "shared_concept": ["a dog"]}
    assert query_texts(queries) == ["is red"]
    assert query_texts(queries, SHARED_CONCEPT_TEMPLATE) == ["a dog but is red"]
    with pytest.raises(ValueError, match="modification_text"):
        query_texts(queries, "{shared_concept}")


def test_query_embeds_reuse_gallery_embeddings_exactly(tiny_model_and_processor, bench):
    model, processor = tiny_model_and_processor
    queries, gallery = bench
    index = embed_gallery(model, processor, gallery, batch_size=5, show_progress=False)
    from_pixels = embed_queries(model, processor, queries, batch_size=4, show_progress=False)
    from_index = embed_queries(model, processor, queries, batch_size=4, index=index, show_progress=False)
    assert from_pixels.shape == (6, model.config.projection_dim)
    assert torch.allclose(from_pixels, from_index, atol=1e-5)
    encoder_module = pytest.importorskip("collm_hf.models.collm.query_encoder")
    encoder = encoder_module.CoLLMQueryEncoder(model, processor)
    fast = embed_queries(model, processor, queries, batch_size=4, index=index, query_encoder=encoder, show_progress=False)
    assert torch.allclose(fast, from_pixels, atol=1e-4)


def test_cirr_top_n_rankings_give_the_full_ranking_metrics(tiny_model_and_processor, bench):
    model, processor = tiny_model_and_processor
    queries, gallery = bench
    index = embed_gallery(model, processor, gallery, show_progress=False)
    embeds = embed_queries(model, processor, queries, index=index, show_progress=False)
    short = rank_benchmark(queries, index, embeds, "cirr", top_k=6)  # top-6 + the remaining subset members
    assert any(len(r) > 6 for r in short.rankings)
    full = index.search(embeds, k=12, backend="torch").ids
    ks = [1, 5]  # cirr_score needs recall@5: top-6 holds it even after the reference is removed
    expected = cirr_metrics(full, short.targets, short.reference_ids, short.subset_ids, k_values=ks)
    assert short.metrics(k_values=ks) == expected
    for ranking, members, ref in zip(short.rankings, short.subset_ids, short.reference_ids):
        assert set(members) - {ref} <= set(ranking)


def test_cirr_metrics_of_a_multi_shard_index_equal_the_single_shard_ones(tiny_model_and_processor, bench, monkeypatch):
    """The subset members a short ranking lacks are scored from their own rows (`vectors`), shard by shard: the
    shards are never joined into one matrix, and the metrics equal those of the same gallery in one shard."""
    from collm_hf.evaluation.index import GalleryIndex

    model, processor = tiny_model_and_processor
    queries, gallery = bench
    single = embed_gallery(model, processor, gallery, show_progress=False)
    embeds = embed_queries(model, processor, queries, index=single, show_progress=False)
    rows, ids = single.vectors(range(len(single))), single.ids
    sharded = GalleryIndex(rows[:5], ids[:5]).append(rows[5:9], ids[5:9]).append(rows[9:], ids[9:])
    assert sharded.num_shards == 3
    expected = rank_benchmark(queries, single, embeds, "cirr", top_k=3, backend="torch")

    def joined(index):
        raise AssertionError("the shards were joined into one matrix")

    monkeypatch.setattr(GalleryIndex, "embeddings", property(joined))
    got = rank_benchmark(queries, sharded, embeds, "cirr", top_k=3, backend="torch")
    assert any(len(r) > 3 for r in got.rankings)  # subset members were added from their rows
    assert got.rankings == expected.rankings
    assert got.metrics([1, 2]) == expected.metrics([1, 2]) and "recall_subset@1" in got.metrics([1, 2])


def test_recall_at_100_over_a_gallery_of_200_equals_the_hand_count():
    from collm_hf.evaluation.index import GalleryIndex

    generator = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(200, 16, generator=generator), dim=-1)
    ids = [f"g{i}" for i in range(200)]
    embeds = torch.nn.functional.normalize(torch.randn(60, 16, generator=generator), dim=-1)
    target_rows = torch.randint(0, 200, (60,), generator=generator).tolist()
    reference_rows = [(t + 7) % 200 for t in target_rows]
    queries = {"query_id": [str(q) for q in range(60)], "reference_id": [ids[r] for r in reference_rows],
               "target_ids": [[ids[t]] for t in target_rows]}
    scores = embeds @ gallery.T  # (60, 200)
    index = GalleryIndex(gallery, ids)
    for protocol in ("standard", "cirr"):
        hits = 0  # by hand: the target is in the top 100 when fewer than 100 images (CIRR: but the reference) beat it
        for q, (t, r) in enumerate(zip(target_rows, reference_rows)):
            better = scores[q] > scores[q, t]
            if protocol == "cirr":
                better[r] = False
            hits += int(better.sum()) < 100
        rankings = rank_benchmark(queries, index, embeds, protocol, k_values=[1, 100])
        assert rankings.metrics([1, 100])["recall@100"] == pytest.approx(100.0 * hits / 60)
        assert rankings.metrics([1, 100])["recall@100"] > rankings.metrics([1, 50])["recall@50"]
        with pytest.raises(ValueError, match="too few for @100"):  # ranked for the default cut-offs only
            rank_benchmark(queries, index, embeds, protocol).metrics([100])


def test_fashioniq_without_gallery_categories_is_an_error(tiny_model_and_processor, bench):
    model, processor = tiny_model_and_processor
    queries, gallery = bench
    queries = {k: v for k, v in queries.items() if k != "subset_ids"}
    queries["category"] = gallery["category"][:6]
    index = embed_gallery(model, processor, gallery, show_progress=False)
    embeds = embed_queries(model, processor, queries, index=index, show_progress=False)
    with pytest.raises(ValueError, match="within its category's gallery"):
        rank_benchmark(queries, index, embeds, "fashioniq")
    with pytest.raises(ValueError, match="within its category's gallery"):
        evaluate_benchmark(model, processor, queries, None, "fashioniq", index=index, show_progress=False)


def test_fashioniq_ranks_only_within_the_query_category(tiny_model_and_processor, bench):
    model, processor = tiny_model_and_processor
    queries, gallery = bench
    queries = {k: v for k, v in queries.items() if k != "subset_ids"}
    queries["category"] = gallery["category"][:6]
    metrics, rankings = evaluate_benchmark(model, processor, queries, gallery, show_progress=False,
                                           return_rankings=True)
    category_of = dict(zip(gallery["image_id"], gallery["category"]))
    assert rankings.protocol == "fashioniq"
    for ranking, category in zip(rankings.rankings, rankings.categories):
        assert len(ranking) == 4 and {category_of[i] for i in ranking} == {category}
    assert {"dress/recall@10", "shirt/recall@50", "recall@10", "fashioniq_score"} <= set(metrics)
    queries["target_ids"][0] = ["dev-1"]  # a shirt as the target of a dress query: never retrievable
    with pytest.raises(ValueError, match="query 0: target 'dev-1' is 'shirt'"):
        evaluate_benchmark(model, processor, queries, gallery, show_progress=False)


def test_closed_labels_give_no_metrics_and_mixed_labels_raise(tiny_model_and_processor, bench):
    model, processor = tiny_model_and_processor
    queries, gallery = bench
    queries["target_ids"] = [[] for _ in range(6)]
    assert evaluate_benchmark(model, processor, queries, gallery, "cirr", show_progress=False) == {}
    queries["target_ids"][0] = ["dev-1"]
    with pytest.raises(ValueError, match="either labelled or closed"):
        evaluate_benchmark(model, processor, queries, gallery, "cirr", show_progress=False)


def test_trainer_reports_retrieval_metrics_for_model_selection(tiny_model_and_processor, bench, tmp_path):
    from transformers import Trainer, TrainingArguments

    model, processor = tiny_model_and_processor
    queries, gallery = bench
    images = gallery["image"]
    train = [{"reference": images[i], "text": f"make it brighter {i}", "target": images[i + 3]} for i in range(6)]

    def collate(rows):
        batch = processor(images=[r["reference"] for r in rows], text=[r["text"] for r in rows])
        batch["target_pixel_values"] = processor(images=[r["target"] for r in rows])["pixel_values"]
        return {**batch, "return_loss": True}

    args = TrainingArguments(str(tmp_path), max_steps=2, per_device_train_batch_size=3, per_device_eval_batch_size=3,
                             eval_strategy="steps", eval_steps=1, save_strategy="no", logging_steps=1, report_to=[],
                             use_cpu=True, remove_unused_columns=False, metric_for_best_model="cirr_score",
                             greater_is_better=True, learning_rate=1e-3)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=train, data_collator=collate)
    add_retrieval_evaluation(trainer, queries, gallery, processor, "cirr", batch_size=4)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "eval_cirr_score" in entry]
    assert len(logged) == 2 and {"eval_recall@1", "eval_recall_subset@1"} <= set(logged[0])
    assert trainer.state.best_metric == max(entry["eval_cirr_score"] for entry in logged)
    metrics = trainer.evaluate()
    assert "eval_recall@5" in metrics and "eval_loss" in metrics


def test_gallery_index_cache_is_loaded_when_it_matches(tiny_model_and_processor, bench, tmp_path):
    model, processor = tiny_model_and_processor
    _, gallery = bench
    model.train()
    built = load_or_embed_gallery(model, processor, gallery, tmp_path / "index", batch_size=5, show_progress=False)
    assert model.training  # eval mode only for the call
    model.get_image_embeds = None  # loaded, not embedded again: the image tower is not called
    loaded = load_or_embed_gallery(model, processor, gallery, tmp_path / "index")
    assert loaded.ids == built.ids and torch.equal(loaded.embeddings, built.embeddings)
    other = {"image_id": [f"x{i}" for i in range(12)], "image": gallery["image"]}
    with pytest.raises(IndexCacheMismatchError, match="built from another gallery"):
        load_or_embed_gallery(model, processor, other, tmp_path / "index")


def test_composed_steps_match_a_full_ranking_oracle(tiny_model_and_processor, bench, tmp_path):
    """load -> cached index -> evaluate -> submission, picture, report, against metrics computed directly."""
    import json

    from collm_hf.data import gallery_features, queries_features, write_dataset
    from collm_hf.evaluation.benchmarks import load_benchmark
    from collm_hf.evaluation.report import benchmark_report, write_report
    from collm_hf.evaluation.submission import write_submission
    from collm_hf.evaluation.visualization import save_benchmark_grid

    model, processor = tiny_model_and_processor
    queries, gallery = bench
    query_rows = [{name: values[i] for name, values in queries.items()} for i in range(6)]
    gallery_rows = [{"image_id": i, "image": im} for i, im in zip(gallery["image_id"], gallery["image"])]
    write_dataset(tmp_path / "cirr", {"queries": {"val": query_rows}, "gallery": {"val": gallery_rows}},
                  {"queries": queries_features("cirr"), "gallery": gallery_features()})

    bench_split = load_benchmark(tmp_path / "cirr").head(5)
    assert (bench_split.split, bench_split.protocol, len(bench_split.queries)) == ("val", "cirr", 5)
    index = load_or_embed_gallery(model, processor, bench_split.gallery, tmp_path / "index", show_progress=False)
    metrics, rankings = evaluate_benchmark(model, processor, bench_split.queries, bench_split.gallery, index=index,
                                           show_progress=False, return_rankings=True)

    # Oracle: query embeddings from the pixels (no index reuse), the whole gallery ranked.
    oracle_queries = {name: values[:5] for name, values in queries.items()}
    embeds = embed_queries(model, processor, oracle_queries, show_progress=False)
    full = index.search(embeds, k=len(index), backend="torch").ids
    expected = compute_cir_metrics(full, oracle_queries["target_ids"], protocol="cirr",
                                   reference_ids=oracle_queries["reference_id"], subset_ids=oracle_queries["subset_ids"])
    assert metrics.keys() == expected.keys()
    assert all(abs(metrics[k] - expected[k]) < 1e-9 for k in expected)

    files = write_submission(str(tmp_path / "sub"), rankings, prefix="cirr_val")
    files.append(save_benchmark_grid(str(tmp_path / "grid.png"), bench_split.queries, rankings, bench_split.gallery))
    report = benchmark_report(bench_split, rankings, metrics, files=files)
    write_report(tmp_path / "report.json", report)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert report["benchmark"] == "cirr" and report["num_queries"] == 5 and report["num_gallery"] == 12
    assert all(Path(f).is_file() for f in report["files"]) and len(report["files"]) == 3
