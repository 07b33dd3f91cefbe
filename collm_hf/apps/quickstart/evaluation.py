"""The quickstart's evaluation: CoLLM's composed query against the baselines a reader expects.

All baselines come from the same final model, each as strong as that model allows (the best of its variants
on the benchmark, named in `choices`):

- `image_only`: the reference's gallery embedding f(v_ref) (nearest image), or the model's image-only query;
- `text_only`: the model's text-only query of the modification text;
- `sum_fusion`: normalise(w * image part + (1 - w) * text query), image part and w in {0.30, 0.35, ..., 0.90} chosen
  (the best weight is sharply peaked, measured with a throwaway sweep: seed 1's CIRR-style recall@1 is 64.8 at 0.60, 73.2 at 0.65, 72.0 at 0.70 and
  50.8 at 0.80, so a grid of 0.1 steps understated the baseline by a point or more);
- `collm_pairs_only`: the composed query of the model after pair pre-training alone (never saw a triplet);
- `chance`: random query embeddings through the same ranking and metric (mean of 5 draws).

Every method is ranked and scored by `collm_hf.evaluation.scoring.rank_benchmark` and `collm_hf.evaluation.cir_metric`.
"""

import torch
import torch.nn.functional as F

from ...evaluation.embedding import embed_gallery, embed_queries
from ...evaluation.index.building import load_images
from ...evaluation.scoring import rank_benchmark

METHODS = ("collm", "collm_pairs_only", "image_only", "text_only", "sum_fusion", "chance")
BASELINES = ("image_only", "text_only", "sum_fusion")
HEADLINE = {"cirr": "recall@1", "circo": "map@5"}
FUSION_WEIGHTS = tuple(round(0.3 + 0.05 * i, 2) for i in range(13))  # 0.30 ... 0.90


@torch.inference_mode()
def _text_and_image_queries(model, processor, queries, reference_embeds: torch.Tensor, batch_size: int = 256):
    """(text-only query embeddings, image-only query embeddings), each (Q, D). The image-only queries take the
    references' gallery embeddings, or, for a model fed patch tokens, the reference images themselves."""
    texts, patches = list(queries["modification_text"]), model.config.reference_tokens == "patches"
    reference_ids = [str(r) for r in queries["reference_id"]]
    text_out, image_out = [], []
    for b0 in range(0, len(texts), batch_size):
        chunk = texts[b0:b0 + batch_size]
        q = processor.queries(chunk, with_image=False)
        text_out.append(model.get_query_embeds(q["input_ids"], q["attention_mask"]).float().cpu())
        q = processor.queries([None] * len(chunk), with_image=True)
        if patches:
            b1 = b0 + len(chunk)
            images = load_images(queries[b0:b1]["reference_image"], reference_ids[b0:b1])
            image_embeds = model.get_reference_embeds(processor(images=images)["pixel_values"])
        else:
            image_embeds = reference_embeds[b0:b0 + batch_size]
        image_out.append(model.get_query_embeds(q["input_ids"], q["attention_mask"], image_embeds=image_embeds).float().cpu())
    return torch.cat(text_out), torch.cat(image_out)


def baseline_variants(model, processor, queries, index) -> dict:
    """{method: {variant: (Q, D) query embeddings}} for the three baselines, from one model and its gallery index."""
    reference_ids = [str(r) for r in queries["reference_id"]]
    rows = torch.tensor([index.position[r] for r in reference_ids])
    reference = index.embeddings.index_select(0, rows).float().cpu()  # (Q, D) f(v_ref)
    text, image_query = _text_and_image_queries(model, processor, queries, reference)
    fusion = {}
    for name, image_part in (("gallery_embedding", reference), ("image_query", image_query)):
        for w in FUSION_WEIGHTS:
            fusion[f"{name} x {w:.2f} + text_query x {1 - w:.2f}"] = F.normalize(w * image_part + (1 - w) * text, dim=-1)
    return {
        "image_only": {"gallery_embedding": reference, "image_query": image_query},
        "text_only": {"text_query": text},
        "sum_fusion": fusion,
    }


def _score(queries, index, embeds, protocol):
    rankings = rank_benchmark(queries, index, embeds, protocol)
    return rankings.metrics(), rankings


def chance_metrics(queries, index, protocol: str, draws: int = 5, seed: int = 0) -> dict:
    """Metrics of random query embeddings, averaged over `draws` seeded draws."""
    generator, total = torch.Generator().manual_seed(seed), {}
    for _ in range(draws):
        embeds = F.normalize(torch.randn(len(queries), index.dim, generator=generator), dim=-1)
        for key, value in _score(queries, index, embeds, protocol)[0].items():
            total[key] = total.get(key, 0.0) + value / draws
    return total


def evaluate_methods(model, pairs_model, processor, queries, gallery, protocol: str, show_progress: bool = False):
    """Score every method of `METHODS` on one benchmark split.

    Args:
        model: the final model (eval mode); pairs_model: the model after pair pre-training alone (or None).
        processor: their processor. queries / gallery: the benchmark's tables. protocol: "cirr" or "circo".

    Returns:
        (metrics {method: {metric: value}}, choices {method: chosen variant}, rankings {method: BenchmarkRankings}).
    """
    headline = HEADLINE[protocol]
    index = embed_gallery(model, processor, gallery, batch_size=256, show_progress=show_progress)
    metrics, choices, rankings = {}, {}, {}
    composed = embed_queries(model, processor, queries, batch_size=256, index=index, show_progress=show_progress)
    metrics["collm"], rankings["collm"] = _score(queries, index, composed, protocol)
    if pairs_model is not None:
        pairs_index = embed_gallery(pairs_model, processor, gallery, batch_size=256, show_progress=show_progress)
        embeds = embed_queries(pairs_model, processor, queries, batch_size=256, index=pairs_index, show_progress=show_progress)
        metrics["collm_pairs_only"], rankings["collm_pairs_only"] = _score(queries, pairs_index, embeds, protocol)
    for method, variants in baseline_variants(model, processor, queries, index).items():
        best = None
        for variant, embeds in variants.items():
            scored = _score(queries, index, embeds, protocol)
            if best is None or scored[0][headline] > best[1][0][headline]:
                best = (variant, scored)
        choices[method], (metrics[method], rankings[method]) = best[0], best[1]
    metrics["chance"] = chance_metrics(queries, index, protocol)
    return metrics, choices, rankings


def error_ratio(metrics: dict, protocol: str) -> float:
    """CoLLM's error over the best baseline's error on the headline metric (the quickstart shows <= 0.5)."""
    headline = HEADLINE[protocol]
    best = max(metrics[m][headline] for m in BASELINES)
    return (100.0 - metrics["collm"][headline]) / max(1e-9, 100.0 - best)


def results_table(benchmarks: dict) -> str:
    """A text table: one row per method, the headline metrics of each benchmark (plus a second metric)."""
    columns = []
    for name, methods in benchmarks.items():
        protocol = "cirr" if "recall_subset@1" in next(iter(methods.values())) else "circo"
        keys = ("recall@1", "recall@5", "recall_subset@1") if protocol == "cirr" else ("map@5", "map@10")
        columns += [(name, key) for key in keys]
    widths = [max(10, len(f"{n} {k}")) + 2 for n, k in columns]  # a space between columns, whatever the names
    header = f"{'method':<18}" + "".join(f"{f'{n} {k}':>{w}}" for (n, k), w in zip(columns, widths))
    lines = [header, "-" * len(header)]
    for method in METHODS:
        cells = []
        for (name, key), width in zip(columns, widths):
            value = benchmarks[name].get(method, {}).get(key)
            cells.append(f"{'-' if value is None else f'{value:.1f}':>{width}}")
        lines.append(f"{method:<18}" + "".join(cells))
    return "\n".join(lines)


__all__ = ["METHODS", "BASELINES", "HEADLINE", "baseline_variants", "chance_metrics", "evaluate_methods",
           "error_ratio", "results_table"]
