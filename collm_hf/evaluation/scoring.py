"""Scoring a benchmark split: rank each query over its benchmark gallery, then apply the protocol's metric.

    (Q, D) query embeddings + GalleryIndex --rank_benchmark--> BenchmarkRankings --.metrics()--> {"recall@1": ...}

Each benchmark is ranked over its own gallery as its protocol says: CIRR over the split gallery (the metric
removes the reference), CIRCO over the whole unlabeled set (nothing removed), Fashion-IQ over the query's
category gallery (nothing removed). `evaluate_benchmark` embeds, ranks and scores in one call.
"""

from dataclasses import dataclass

import torch

from ._tables import column, column_names
from .benchmarks import infer_protocol
from .cir_metric import DEFAULT_K_VALUES, check_k_values, compute_cir_metrics
from .embedding import DEFAULT_TEXT_TEMPLATE, embed_gallery, embed_queries
from .index import GalleryIndex

SUBMISSION_TOP_K = 50  # what the CIRR and CIRCO test servers take


def ranking_depth(protocol: str, k_values=None) -> int:
    """Gallery ids kept per query so that every cut-off asked is exact: the largest K (at least the test servers'
    50, for submissions), +1 for CIRR, whose metric removes the reference from the ranking first.

    >>> ranking_depth("standard", [1, 100]), ranking_depth("cirr", [1, 100]), ranking_depth("circo")
    (100, 101, 50)
    """
    largest = check_k_values(k_values, DEFAULT_K_VALUES[protocol])[-1]
    return max(SUBMISSION_TOP_K, largest) + (1 if protocol == "cirr" else 0)


@dataclass
class BenchmarkRankings:
    """What ranking a benchmark split produced, with what the metric and the exporters need.

    Args:
        protocol: "cirr", "circo", "fashioniq" or "standard".
        query_ids: one id per query.
        rankings: per query, gallery ids best first (top `fetch` of its gallery; CIRR adds the remaining
            subset members, in score order, so that subset recall is exact).
        targets: per query, the ground-truth ids (empty lists on closed-label splits).
        reference_ids, subset_ids, categories, semantic_aspects: per query, where the protocol has them.
        depth: how many ids of each query's gallery were ranked (`ranking_depth`), or None when every ranking
            covers its whole gallery; a cut-off beyond it is refused rather than under-counted.
    """

    protocol: str
    query_ids: list[str]
    rankings: list[list[str]]
    targets: list[list[str]]
    reference_ids: list[str]
    subset_ids: list[list[str]] | None = None
    categories: list[str] | None = None
    semantic_aspects: list[list[str]] | None = None
    depth: int | None = None

    @property
    def has_labels(self) -> bool:
        return all(len(t) > 0 for t in self.targets)

    def metrics(self, k_values=None) -> dict:
        """The protocol's metrics over these rankings (percentages)."""
        if not self.has_labels:
            raise ValueError("Some queries have no target_ids (closed-label split): export a submission instead.")
        if self.depth is not None:
            asked = check_k_values(k_values, DEFAULT_K_VALUES[self.protocol])
            exact = self.depth - (1 if self.protocol == "cirr" else 0)  # CIRR's reference may take one place
            if asked[-1] > exact:
                raise ValueError(f"The rankings hold the top {self.depth} gallery ids per query, too few for "
                                 f"@{asked[-1]}: rank with rank_benchmark(..., k_values={asked}).")
        extra = {
            "cirr": {"reference_ids": self.reference_ids, "subset_ids": self.subset_ids},
            "circo": {"semantic_aspects": self.semantic_aspects},
            "fashioniq": {"categories": self.categories},
            "standard": {},
        }[self.protocol]
        return compute_cir_metrics(self.rankings, self.targets, protocol=self.protocol, k_values=k_values, **extra)


def _with_subset_members(ranking, members, reference_id, index: GalleryIndex, query_embed, query_name):
    """Append the subset members missing from a top-N ranking, ordered by their scores (ties: member order)."""
    ranked = set(ranking)
    missing = [m for m in members if m != reference_id and m not in ranked]
    if not missing:
        return ranking
    absent = [m for m in missing if m not in index.position]
    if absent:
        raise ValueError(f"{query_name}: subset member(s) {absent} are not in the gallery.")
    members = index.vectors([index.position[m] for m in missing])  # (missing, D): only these rows are read
    member_scores = (members @ query_embed.to(members.device, members.dtype)).tolist()
    order = sorted(range(len(missing)), key=lambda j: -member_scores[j])
    return ranking + [missing[j] for j in order]


def rank_benchmark(queries, index: GalleryIndex, query_embeds: torch.Tensor, protocol: str | None = None,
                   gallery_categories: list[str] | None = None, top_k: int | None = None,
                   backend: str = "auto", k_values=None) -> BenchmarkRankings:
    """Rank each query over its benchmark gallery.

    Args:
        queries: the `queries` table (only its id / target / protocol columns are read).
        index: the embedded gallery of the split.
        query_embeds: (Q, D) from `embed_queries`.
        protocol: None infers it from the columns (`infer_protocol`).
        gallery_categories: Fashion-IQ (required): the category of each gallery image (index order); each query
            is ranked within its own category's gallery.
        top_k: ids kept per query (default: `ranking_depth(protocol, k_values)`).
        backend: search backend ("auto", "torch", "faiss").
        k_values: the metric cut-offs the rankings will be scored at (default: the protocol's).

    Returns:
        `BenchmarkRankings`.
    """
    names = column_names(queries)
    protocol = protocol or infer_protocol(names)
    n = len(query_embeds)
    query_ids = [str(q) for q in column(queries, "query_id", [str(i) for i in range(n)])]
    reference_ids = [str(r) for r in column(queries, "reference_id")]
    targets = [[str(t) for t in (ts or [])] for ts in column(queries, "target_ids", [[] for _ in range(n)])]
    if len(query_ids) != n:
        raise ValueError(f"{len(query_ids)} queries but {n} query embeddings.")
    absent = [(q, t) for q, ts in zip(query_ids, targets) for t in ts if t not in index.position]
    if absent:  # it could never be retrieved: a silent zero recall for that query
        raise ValueError(f"{len(absent)} target id(s) are not in the gallery, e.g. query {absent[0][0]}: target "
                         f"{absent[0][1]!r} (wrong gallery split, or a gallery built with --allow-missing?).")
    fetch = top_k or ranking_depth(protocol, k_values)
    result = BenchmarkRankings(protocol, query_ids, [None] * n, targets, reference_ids)
    groups = {None: list(range(n))}
    if protocol == "fashioniq":
        result.categories = [str(c) for c in column(queries, "category")]
        if gallery_categories is None:  # ranked over every category, a query would compete with other garments
            raise ValueError("Fashion-IQ ranks each query within its category's gallery: pass the gallery's "
                             "categories (gallery_categories, or a gallery table with its `category` column).")
        if len(gallery_categories) != len(index):
            raise ValueError(f"{len(gallery_categories)} gallery categories for {len(index)} gallery images.")
        category_of = dict(zip(index.ids, (str(c) for c in gallery_categories)))
        wrong = [(query_ids[i], t) for i, c in enumerate(result.categories) for t in targets[i]
                 if category_of[t] != c]
        if wrong:  # ranked within its own category, such a target could never be found
            raise ValueError(f"{len(wrong)} target(s) are not in their query's category gallery, e.g. query "
                             f"{wrong[0][0]}: target {wrong[0][1]!r} is {category_of[wrong[0][1]]!r}.")
        groups = {}
        for i, category in enumerate(result.categories):
            groups.setdefault(category, []).append(i)
    cut = False
    for category, rows in groups.items():
        sub_index = index
        if category is not None:
            members = [image_id for image_id, c in zip(index.ids, gallery_categories) if str(c) == category]
            if not members:
                raise ValueError(f"No gallery image has category {category!r}; its queries cannot be ranked.")
            sub_index = index.select(members)
        cut = cut or fetch < len(sub_index)
        found = sub_index.search(query_embeds[rows], k=min(fetch, len(sub_index)), backend=backend)
        for row, ids in zip(rows, found.ids):
            result.rankings[row] = ids
    result.depth = fetch if cut else None
    if protocol == "cirr" and "subset_ids" in names:  # without it: recall@K only (no subset metrics)
        result.subset_ids = [[str(m) for m in members] for members in column(queries, "subset_ids")]
        for i in range(n):
            result.rankings[i] = _with_subset_members(result.rankings[i], result.subset_ids[i],
                                                      reference_ids[i], index, query_embeds[i], f"query {query_ids[i]}")
    if protocol == "circo":
        result.semantic_aspects = [list(a or []) for a in column(queries, "semantic_aspects", [[] for _ in range(n)])]
    return result


def evaluate_benchmark(model, processor, queries, gallery, protocol: str | None = None, *, batch_size: int = 32,
                       text_template: str = DEFAULT_TEXT_TEMPLATE, k_values=None, index: GalleryIndex | None = None,
                       accelerator=None, backend: str = "auto", show_progress: bool = True,
                       return_rankings: bool = False, num_workers: int = 0):
    """Embed a benchmark split, rank the right gallery, and compute the protocol's metrics.

    Args:
        model, processor: a `CoLLMModel` (eval mode is set for the call) and its `CoLLMProcessor`.
        queries: the split's `queries` (or `queries_refined`) table.
        gallery: the split's `gallery` table (`image_id`, `image`, Fashion-IQ: `category`); ignored if `index`.
        protocol: "cirr", "circo", "fashioniq", "standard", or None to infer it from the columns.
        batch_size: queries (and gallery images) per forward pass.
        text_template: query text from the columns; CIRCO default is the relative caption only.
        k_values: metric cut-offs (default per protocol).
        index: a prebuilt `GalleryIndex` of `gallery` (skips embedding it).
        accelerator: split gallery embedding across processes.
        backend: search backend.
        return_rankings: also return the `BenchmarkRankings` (for submissions and pictures).
        num_workers: image-decoding worker processes for the gallery.

    Returns:
        the metrics dict (percentages; empty on closed-label splits; Fashion-IQ adds `fashioniq_score` =
        (recall@10 + recall@50) / 2, the papers' "Avg", for `metric_for_best_model`), or (metrics, rankings).

    Example:
        >>> metrics = evaluate_benchmark(model, processor, queries, gallery, "cirr")  # doctest: +SKIP
        >>> metrics["cirr_score"]  # doctest: +SKIP
    """
    was_training = model.training
    model.eval()
    try:
        if index is None:
            index = embed_gallery(model, processor, gallery, batch_size=batch_size, accelerator=accelerator,
                                  show_progress=show_progress, num_workers=num_workers)
        query_embeds = embed_queries(model, processor, queries, batch_size=batch_size, text_template=text_template,
                                     index=index, show_progress=show_progress)
    finally:
        model.train(was_training)
    gallery_categories = None
    if gallery is not None and "category" in column_names(gallery):
        categories = {str(i): c for i, c in zip(gallery["image_id"], gallery["category"])}
        gallery_categories = [categories[i] for i in index.ids]
    rankings = rank_benchmark(queries, index, query_embeds, protocol, gallery_categories, backend=backend,
                              k_values=k_values)
    metrics = rankings.metrics(k_values) if rankings.has_labels else {}
    if rankings.protocol == "fashioniq" and {"recall@10", "recall@50"} <= set(metrics):
        metrics["fashioniq_score"] = (metrics["recall@10"] + metrics["recall@50"]) / 2  # the papers' "Avg"
    if not rankings.has_labels and any(rankings.targets):
        raise ValueError("Some queries have target_ids and some do not: a split is either labelled or closed.")
    return (metrics, rankings) if return_rankings else metrics


__all__ = ["BenchmarkRankings", "SUBMISSION_TOP_K", "evaluate_benchmark", "rank_benchmark", "ranking_depth"]
