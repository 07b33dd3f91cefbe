"""collm_hf.evaluation.benchmarks: query embedding paths, per-protocol ranking, and the Trainer callback."""

import numpy as np
import pytest
import torch
from PIL import Image

from collm_hf.evaluation.cir_metric import cirr_metrics
from collm_hf.evaluation.benchmarks import (
    SHARED_CONCEPT_TEMPLATE,
    add_retrieval_evaluation,
    embed_gallery,
    embed_queries,
    evaluate_benchmark,
    infer_protocol,
    query_texts,
    rank_benchmark,
)


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


def test_infer_protocol_and_query_texts():
    assert infer_protocol(["subset_ids", "category"]) == "cirr"
    assert infer_protocol(["shared_concept"]) == "circo"
    assert infer_protocol(["category"]) == "fashioniq"
    assert infer_protocol(["query_id"]) == "standard"
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
