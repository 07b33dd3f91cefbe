"""`refine_benchmark`: a benchmark folder in our schema -> the same benchmark plus `queries_refined` and the
judge's `refinement` decisions (CoLLM §4.2; the rules are in `refinement`).

Example:
    >>> model, processor = CoLLMModel.from_pretrained(path), CoLLMProcessor.from_pretrained(path)  # doctest: +SKIP
    >>> judge = CoLLMProxyJudge(model, processor)  # doctest: +SKIP
    >>> summary = refine_benchmark("data/cirr", "val", judge, ImageEmbedder.from_model(model, processor),
    ...                            "data/cirr_refined")  # doctest: +SKIP
"""

import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from datasets import Features, Image, List, Value

from ..data.schema import (
    GALLERY_CONFIG,
    QUERIES_CONFIG,
    QUERIES_REFINED_CONFIG,
    queries_refined_features,
)
from ..data.writer import write_dataset
from ..evaluation.benchmarks import load_benchmark
from .refinement import (
    DEFAULT_MIN_PASSES,
    DEFAULT_NUM_NEGATIVES,
    DEFAULT_TRIALS,
    Decision,
    mine_hard_negatives,
    passes_rule,
    run_trials,
)

REFINEMENT_CONFIG = "refinement"
REFINEMENT_FEATURES = Features({
    "query_id": Value("string"),
    "decision": Value("string"),  # kept / rewritten / removed / unlabeled
    "passes": Value("int32"),  # trials in which the judge found the target (original text)
    "trials": Value("int32"),
    "negative_ids": List(Value("string")),  # the hard negatives, most similar to the target first
    "picks": List(Value("string")),  # the judge's pick per trial (original text)
    "rewritten_text": Value("string"),
    "rewrite_passes": Value("int32"),
})


@dataclass
class RefineOptions:
    """How to refine (the flags of `dataset_scripts/refine_benchmark.py`)."""

    num_negatives: int = DEFAULT_NUM_NEGATIVES  # hard negatives per target (3 in the paper)
    trials: int = DEFAULT_TRIALS  # judge trials, each with its own shuffle (3)
    min_passes: int = DEFAULT_MIN_PASSES  # trials the judge must get right (2 of 3)
    seed: int = 0  # of the shuffles
    chunk_size: int = 256  # queries judged per batch of requests


def refine_benchmark(benchmark, split: str, judge, embedder, output_dir: str | os.PathLike, rewriter=None,
                     options: RefineOptions | None = None, gallery_split: str | None = None,
                     share_gallery_embeds: bool = False, progress: bool = False) -> dict:
    """Judge every labelled query against its hard negatives; write the refined benchmark.

    Args:
        benchmark: a benchmark folder / hub id with `queries` and `gallery` configs (read by
            `collm_hf.evaluation.benchmarks.load_benchmark`).
        split: the queries split (e.g. "val").
        judge: `choose(requests) -> list[int]` (`CoLLMProxyJudge`, `ImageTextToTextJudge`).
        embedder: an `ImageEmbedder` for mining the negatives (target-to-gallery image similarity).
        output_dir: the refined benchmark folder: `queries`, `gallery` (copied), `queries_refined` (kept
            triplets with `is_refined`, `original_text`) and `refinement` (a decision per query).
        rewriter: optional `texts -> list[str | None]` for ambiguous texts (`LLMTextRewriter`).
        options: `RefineOptions`.
        gallery_split: the gallery split (default: the one named `split`, else the only one, as CIRCO's
            "unlabeled2017").
        share_gallery_embeds: hand the mining embeddings to the judge (`cache_embeds`): only right when the
            embedder is the judge's own gallery side (a CoLLM proxy judge).
        progress: tqdm bar.

    Returns:
        {"decisions": {decision: count}, "queries": n, "kept": n, "output_dir": path}.
    """
    from tqdm.auto import tqdm

    options = options or RefineOptions()
    bench = load_benchmark(benchmark, split, gallery_split=gallery_split)
    queries, gallery, gallery_split = bench.queries, bench.gallery, bench.gallery_split
    gallery_ids = [str(i) for i in gallery["image_id"]]
    row_of = {image_id: row for row, image_id in enumerate(gallery_ids)}
    gallery_embeds = embedder.embed((r["image"] for r in gallery.select_columns(["image"])), total=len(gallery),
                                    progress=progress)  # (gallery, dim)
    if share_gallery_embeds and hasattr(judge, "cache_embeds"):
        judge.cache_embeds(gallery_ids, gallery_embeds)
    if getattr(judge, "images", None) is None:
        judge.images = lambda image_id: gallery[row_of[image_id]]["image"]

    labelled = [i for i, targets in enumerate(queries["target_ids"]) if targets]
    missing = [str(queries[i]["query_id"]) for i in labelled if str(queries[i]["target_ids"][0]) not in row_of]
    if missing:
        raise ValueError(f"target images of queries {missing[:20]} are not in the {gallery_split} gallery")
    categories = np.array(gallery["category"]) if "category" in gallery.column_names else None

    decisions: dict[str, Decision] = {}
    for start in tqdm(range(0, len(labelled), options.chunk_size), desc="judging", disable=not progress):
        rows = [queries[i] for i in labelled[start:start + options.chunk_size]]
        excluded = [{row_of[str(t)] for t in r["target_ids"] if str(t) in row_of} |
                    ({row_of[str(r["reference_id"])]} if str(r["reference_id"]) in row_of else set()) for r in rows]
        allowed = None
        if categories is not None and "category" in queries.column_names:
            allowed = [categories == r["category"] for r in rows]
        targets = gallery_embeds[[row_of[str(r["target_ids"][0])] for r in rows]]  # (chunk, dim)
        negative_rows = mine_hard_negatives(targets, gallery_embeds, excluded, allowed, options.num_negatives)
        negatives = [[gallery_ids[j] for j in negs] for negs in negative_rows]
        texts = [r["modification_text"] for r in rows]
        passes, picks = run_trials(judge, rows, negatives, texts, options.seed, options.trials)
        ambiguous = []
        for k, (row, negs, n, p) in enumerate(zip(rows, negatives, passes, picks)):
            good = passes_rule(n, options.trials, options.min_passes)
            decisions[str(row["query_id"])] = Decision(str(row["query_id"]), "kept" if good else "removed", n,
                                                       options.trials, negs, p)
            if not good:
                ambiguous.append(k)
        if rewriter is not None and ambiguous:
            new_texts = rewriter([texts[k] for k in ambiguous])
            retry = [(k, t) for k, t in zip(ambiguous, new_texts) if t]
            if retry:
                new_passes, _ = run_trials(judge, [rows[k] for k, _ in retry], [negatives[k] for k, _ in retry],
                                           [t for _, t in retry], options.seed + 1, options.trials)
                for (k, text), n in zip(retry, new_passes):
                    decision = decisions[str(rows[k]["query_id"])]
                    decision.rewritten_text, decision.rewrite_passes = text, n
                    if passes_rule(n, options.trials, options.min_passes):
                        decision.decision = "rewritten"
    for row in queries.select_columns(["query_id"]):
        decisions.setdefault(str(row["query_id"]), Decision(str(row["query_id"]), "unlabeled"))

    raw_queries = queries.cast_column("reference_image", Image(decode=False))
    raw_gallery = gallery.cast_column("image", Image(decode=False))

    def refined_rows():
        for row in raw_queries:
            decision = decisions[str(row["query_id"])]
            if decision.decision in ("kept", "rewritten"):
                text = decision.rewritten_text if decision.decision == "rewritten" else row["modification_text"]
                yield {**row, "modification_text": text, "is_refined": decision.decision == "rewritten",
                       "original_text": row["modification_text"]}

    order = [str(q) for q in queries["query_id"]]
    # The source's own query columns (whatever extras it has), plus `is_refined` and `original_text`.
    refined_extra = {k: v for k, v in queries_refined_features().items() if k not in queries.features}
    features = {QUERIES_CONFIG: queries.features, GALLERY_CONFIG: gallery.features,
                QUERIES_REFINED_CONFIG: Features({**queries.features, **refined_extra}),
                REFINEMENT_CONFIG: REFINEMENT_FEATURES}
    counts = Counter(d.decision for d in decisions.values())
    card = {"pretty_name": f"{Path(str(benchmark)).name} ({split}, refined)", "extra": _card_text(judge, options, counts)}
    write_dataset(output_dir, {
        QUERIES_CONFIG: {split: raw_queries},
        GALLERY_CONFIG: {gallery_split: raw_gallery},
        QUERIES_REFINED_CONFIG: {split: refined_rows()},
        REFINEMENT_CONFIG: {split: (asdict(decisions[q]) for q in order)},
    }, features, card)
    return {"decisions": dict(counts), "queries": len(queries), "kept": counts["kept"] + counts["rewritten"],
            "output_dir": str(output_dir)}


def _card_text(judge, options: RefineOptions, counts: Counter) -> str:
    info = judge.describe() if hasattr(judge, "describe") else {"judge": type(judge).__name__}
    return "\n".join([
        "## Refinement", "",
        (f"Each labelled triplet was judged against its {options.num_negatives} hardest negatives (gallery images most "
        f"similar to the target), {options.trials} times with shuffled candidates; kept when the judge found the "
        f"target at least {options.min_passes} times (CoLLM §4.2). Judge: `{info}`."), "",
        "| decision | queries |", "|---|---|", *[f"| {k} | {v:,} |" for k, v in sorted(counts.items())], "",
        ("`queries_refined` holds the kept triplets (`is_refined`: the text was rewritten; `original_text`); "
        "`refinement` holds the decision, the negatives and the judge's picks for every query."),
    ])
