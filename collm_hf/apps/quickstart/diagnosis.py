"""Where a quickstart model's wrong first results come from: per query of the synthetic CIRR-style benchmark, whether
the first result (reference excluded, as CIRR's protocol) is the target, one of the query's six similar images or
another gallery image, and how much of the target it shares; recall@1 per edit category; the CIRCO-style
benchmark's map@5 per semantic aspect with and without the reference. `examples/diagnose_quickstart.py` prints it.
The world settings come from DIR/model/quickstart.json, so the scenes are exactly those the run evaluated on.
"""

import collections
import functools
import json
from pathlib import Path

import torch
from transformers import AutoModel, AutoProcessor

from ...data.synthetic_world import CIRCO_GALLERY_SPLIT, CIRCO_QUERY_SPLIT, CIRR_SPLIT, WorldConfig, cirr_scenes
from ...evaluation.benchmarks import load_benchmark
from ...evaluation.embedding import embed_gallery, embed_queries


@functools.lru_cache(maxsize=1)
def load_model(run_dir: Path):
    """The run's final model (eval mode) and processor, loaded once per run folder."""
    model = AutoModel.from_pretrained(run_dir / "model", dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(run_dir / "model")


def benchmark_scores(run_dir: Path, benchmark: str, query_split: str, gallery_split: str):
    """(queries, gallery ids, index, scores (queries, gallery)) of the final model on one of the run's benchmarks."""
    model, processor = load_model(run_dir)
    bench = load_benchmark(run_dir / "world" / benchmark, query_split, gallery_split=gallery_split)
    queries, gallery = bench.queries, bench.gallery
    index = embed_gallery(model, processor, gallery, batch_size=256, show_progress=False)
    scores = embed_queries(model, processor, queries, batch_size=256, index=index, show_progress=False) @ index.embeddings.float().T
    return queries, [str(i) for i in index.ids], index, scores


def first_results(run_dir: Path):
    """Yield (query row, its scenes, the first result's image id, the gallery's scenes) for every CIRR-style query."""
    state = json.loads((run_dir / "model" / "quickstart.json").read_text())
    world = WorldConfig(**state["key"]["recipe"]["world"])
    queries, ids, index, scores = benchmark_scores(run_dir, "cirr", CIRR_SPLIT, CIRR_SPLIT)
    scenes, scene_gallery = cirr_scenes(world)
    for row, (query, scene) in enumerate(zip(queries, scenes)):
        if scene["reference"].image_id != query["reference_id"]:
            raise ValueError(f"query {query['query_id']}: the rebuilt world differs from {run_dir / 'world'}")
        scores[row, index.position[query["reference_id"]]] = float("-inf")
        yield query, scene, ids[int(scores[row].argmax())], scene_gallery


def diagnose(run_dir: Path, results=None) -> dict:
    """{kind of first result: count}: correct, or wrong and where it comes from."""
    counts = collections.Counter()
    for query, scene, first, scene_gallery in first_results(run_dir) if results is None else results:
        if first == query["target_ids"][0]:
            counts["correct"] += 1
            continue
        where = "subset" if first in query["subset_ids"] else "other"
        found, target = scene_gallery[first], scene["target"]
        shared = len(set(found.objects) & set(target.objects))
        same_background = found.background == target.background
        counts[f"wrong: {where} image, shares {shared} of the target's {len(target.objects)} objects"
               f"{', same background' if same_background else ''}"] += 1
    return dict(counts.most_common())


def recall_by_category(run_dir: Path, results=None) -> dict:
    """{edit category of the query: {"queries": n, "recall@1": percent}}, sorted by category."""
    hits, totals = collections.Counter(), collections.Counter()
    for query, scene, first, _ in first_results(run_dir) if results is None else results:
        totals[scene["category"]] += 1
        hits[scene["category"]] += first == query["target_ids"][0]
    return {c: {"queries": totals[c], "recall@1": 100.0 * hits[c] / totals[c]} for c in sorted(totals)}


def circo_by_aspect(run_dir: Path, k: int = 5) -> dict:
    """The CIRCO-style benchmark per semantic aspect: {aspect: {"queries", "map@k", "map@k without the reference",
    "reference in top k"}} (percentages). CIRCO's protocol keeps the reference in the ranking; the second column
    takes it out, so the gap is what a query that stays near its reference costs."""
    from ...evaluation.cir_metric import average_precision_at_k, remove_reference

    queries, ids, _, scores = benchmark_scores(run_dir, "circo", CIRCO_QUERY_SPLIT, CIRCO_GALLERY_SPLIT)
    rows = collections.defaultdict(lambda: collections.Counter())
    for query, row in zip(queries, scores):
        ranking = [ids[i] for i in row.topk(k + 1).indices.tolist()]  # one spare for the reference taken out
        for aspect in dict.fromkeys(query["semantic_aspects"]):
            counts = rows[aspect]
            counts["queries"] += 1
            counts["ap"] += average_precision_at_k(ranking, query["target_ids"], k)
            counts["ap_without"] += average_precision_at_k(remove_reference(ranking, query["reference_id"]),
                                                           query["target_ids"], k)
            counts["reference"] += query["reference_id"] in ranking[:k]
    return {aspect: {"queries": c["queries"], f"map@{k}": 100.0 * c["ap"] / c["queries"],
                     f"map@{k} without the reference": 100.0 * c["ap_without"] / c["queries"],
                     f"reference in top {k}": 100.0 * c["reference"] / c["queries"]} for aspect, c in sorted(rows.items())}


def failures(category: str, results) -> list[dict]:
    """The wrong first results of one edit category, as captions: reference, text, target, first result."""
    from ...data.synthetic_scenes import caption

    return [{"reference": caption(scene["reference"]), "text": query["modification_text"],
             "target": caption(scene["target"]), "first": caption(gallery[first])}
            for query, scene, first, gallery in results
            if scene["category"] == category and first != query["target_ids"][0]]


__all__ = ["benchmark_scores", "circo_by_aspect", "diagnose", "failures", "first_results", "load_model",
           "recall_by_category"]
