"""Composed image retrieval metrics: CIRR, CIRCO, Fashion-IQ and plain recall, exactly as the benchmarks define them.

One self-contained file: the plain functions (used by `collm_hf.evaluation.scoring` and `Trainer` code) and the
`evaluate.Metric` class, so that `evaluate.load("path/to/cir_metric.py")` works offline. It imports nothing
from the `collm_hf` package (evaluate copies the file on its own and parses its imports, one per line).

The protocol rules follow the official code of each benchmark (see docs/benchmarks.md):

- CIRR (https://github.com/Cuberick-Orion/CIRR, CLIP4Cir `src/validate.py`): the **reference image is
  removed** from the ranking (by name) before cutting at K; Recall_subset@K ranks only the query's
  `img_set.members` minus the reference, in the order of that reference-free ranking.
  `cirr_score = (recall@5 + recall_subset@1) / 2`.
- CIRCO (https://github.com/miccunifi/CIRCO `src/evaluation.py`): `AP@K = sum_{i<=K} rel(i) P@i /
  min(|G|, K)`; the reference is **not** removed; duplicate ids are an error; Recall@K on the first
  ground truth (`target_img_id`); per-semantic-aspect mAP@10.
- Fashion-IQ (CLIP4Cir `src/validate.py`): Recall@K per category (candidate **not** removed), then the
  unweighted mean over categories.

Ids may be int or str; they are compared as strings. All returned values are percentages (0-100).
"""

import os

import datasets
import evaluate

PROTOCOLS = ("cirr", "circo", "fashioniq", "standard")
DEFAULT_K_VALUES = {
    "cirr": (1, 5, 10, 50),
    "circo": (5, 10, 25, 50),
    "fashioniq": (10, 50),
    "standard": (1, 5, 10, 50),
}
CIRR_SUBSET_K_VALUES = (1, 2, 3)
CIRCO_ASPECT_K = 10

_CITATION = """\
@inproceedings{liu2021cirr, title={Image Retrieval on Real-life Images with Pre-trained Vision-and-Language Models},
  author={Liu, Zheyuan and Rodriguez-Opazo, Cristian and Teney, Damien and Gould, Stephen}, booktitle={ICCV}, year={2021}}
@inproceedings{baldrati2023searle, title={Zero-Shot Composed Image Retrieval with Textual Inversion},
  author={Baldrati, Alberto and Agnolucci, Lorenzo and Bertini, Marco and Del Bimbo, Alberto}, booktitle={ICCV}, year={2023}}
@inproceedings{wu2021fashioniq, title={Fashion IQ: A New Dataset Towards Retrieving Images by Natural Language Feedback},
  author={Wu, Hui and Gao, Yupeng and Guo, Xiaoxiao and others}, booktitle={CVPR}, year={2021}}
"""

_DESCRIPTION = """\
Composed image retrieval metrics with the exact protocol of each benchmark: CIRR Recall@K (reference removed)
and Recall_subset@K, CIRCO mAP@K (normaliser min(|G|, K), reference kept), Fashion-IQ per-category Recall@K
and their unweighted mean, or plain Recall@K ("standard"). Values are percentages.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: list of rankings, one per query: gallery ids, best first (full rankings or top-N lists;
        missing positions count as misses).
    references: list of ground-truth id lists, one per query (a single id per query is also accepted).
        CIRR: the hard target; CIRCO: `gt_img_ids` with `target_img_id` first; Fashion-IQ: the target.
    protocol: "cirr", "circo", "fashioniq" or "standard" (default).
    reference_ids: CIRR only (required): the reference image id of each query, removed from its ranking.
    subset_ids: CIRR only (optional): the raw six `img_set.members` of each query (reference included).
    categories: Fashion-IQ only (optional): the category of each query.
    semantic_aspects: CIRCO only (optional): the list of semantic aspects of each query.
    (These four per-query inputs may also be passed to `add_batch` / `add`, batch by batch, with the rankings.)
    k_values: the cut-offs of recall@K (map@K for CIRCO); default per protocol.
    subset_k_values: CIRR only: the cut-offs of recall_subset@K (default 1, 2, 3).
Returns:
    dict of percentages: `recall@K`; CIRR adds `recall_subset@K` and `cirr_score`; CIRCO gives `map@K`,
    `recall@K` and `map@10/<aspect>`; Fashion-IQ gives `<category>/recall@K` and the category mean `recall@K`.
Examples:
    >>> metric = evaluate.load("collm_hf/evaluation/cir_metric.py")  # doctest: +SKIP
    >>> metric.compute(predictions=[["a", "b"], ["c", "d"]], references=[["b"], ["c"]], k_values=[1, 2])  # doctest: +SKIP
    {'recall@1': 50.0, 'recall@2': 100.0}
"""


# ----------------------------------------------------------------------------------------------------------------
# Input checking
# ----------------------------------------------------------------------------------------------------------------
def _is_scalar_id(value) -> bool:
    if isinstance(value, str):
        return True
    return hasattr(value, "__index__") and (not hasattr(value, "__len__") or getattr(value, "ndim", None) == 0)


def _as_id(value, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not _is_scalar_id(value):
        raise TypeError(f"{where}: ids must be int or str, got {value!r} ({type(value).__name__}).")
    try:
        return str(int(value.__index__()))
    except TypeError:
        raise TypeError(f"{where}: ids must be int or str, got {value!r} ({type(value).__name__}).") from None


def as_rankings(predictions, name: str = "predictions") -> list[list[str]]:
    """Normalise rankings to lists of string ids; a duplicate id in one ranking is an error."""
    if predictions is None or len(predictions) == 0:
        raise ValueError(f"{name} is empty: need one ranking per query.")
    rankings = []
    for i, ranking in enumerate(predictions):
        if isinstance(ranking, (str, bytes)) or not hasattr(ranking, "__iter__"):
            raise TypeError(f"{name}[{i}] must be a list of gallery ids, got {type(ranking).__name__}.")
        ids = list(ranking)
        if not all(type(x) is str for x in ids):  # fast path for the usual case: already strings
            ids = [_as_id(x, f"{name}[{i}]") for x in ids]
        if len(set(ids)) != len(ids):
            seen, dup = set(), None
            for x in ids:
                if x in seen:
                    dup = x
                    break
                seen.add(x)
            raise ValueError(f"{name}[{i}] contains the id {dup!r} more than once; a ranking must not repeat ids.")
        rankings.append(ids)
    return rankings


def as_targets(references, n: int, name: str = "references") -> list[list[str]]:
    """Normalise ground truths to one non-empty list of distinct string ids per query."""
    if references is None:
        raise ValueError(f"{name} is missing: need the target id(s) of each query.")
    _check_length(references, n, name)
    targets = []
    for i, ref in enumerate(references):
        if ref is None:
            raise ValueError(f"{name}[{i}] is None: every query needs at least one target (closed-label split?).")
        ids = [_as_id(ref, f"{name}[{i}]")] if _is_scalar_id(ref) else [_as_id(x, f"{name}[{i}]") for x in ref]
        if not ids:
            raise ValueError(f"{name}[{i}] is empty: every query needs at least one target (closed-label split?).")
        if len(set(ids)) != len(ids):
            raise ValueError(f"{name}[{i}] repeats a target id: {ids}.")
        targets.append(ids)
    return targets


def _check_length(values, n: int, name: str):
    if values is None or len(values) != n:
        got = "None" if values is None else len(values)
        raise ValueError(f"{name} has {got} entries but there are {n} predictions (one per query).")


def check_k_values(k_values, default) -> list[int]:
    """`k_values` (or `default` when None) as sorted distinct positive ints; anything else raises ValueError."""
    k_values = list(default if k_values is None else k_values)
    if not k_values:
        raise ValueError("k_values is empty.")
    checked = []
    for k in k_values:
        if isinstance(k, bool) or not hasattr(k, "__index__") or hasattr(k, "__len__") or k.__index__() < 1:
            raise ValueError(f"k_values must be positive integers, got {k!r}.")
        checked.append(int(k.__index__()))
    return sorted(set(checked))


def _percent(hits) -> float:
    return 100.0 * float(sum(hits)) / len(hits)


# ----------------------------------------------------------------------------------------------------------------
# Per-query building blocks
# ----------------------------------------------------------------------------------------------------------------
def first_hit_rank(ranking: list[str], targets: list[str]) -> int | None:
    """0-based position of the first target in `ranking`, or None if no target is ranked.

    >>> first_hit_rank(["a", "b", "c"], ["c", "b"])
    1
    """
    wanted = set(targets)
    for position, image_id in enumerate(ranking):
        if image_id in wanted:
            return position
    return None


def remove_reference(ranking: list[str], reference_id: str) -> list[str]:
    """CIRR: the ranking with the reference image removed (by id), order preserved.

    >>> remove_reference(["r", "a", "b"], "r")
    ['a', 'b']
    """
    return [image_id for image_id in ranking if image_id != reference_id]


def subset_ranking(ranking: list[str], reference_id: str, subset_ids: list[str], query: str = "query") -> list[str]:
    """CIRR: the reference-free ranking restricted to `subset_ids` minus the reference, order preserved.

    Every subset member other than the reference must appear in `ranking`.

    >>> subset_ranking(["x", "m3", "r", "m1", "m2"], "r", ["r", "m1", "m2", "m3"])
    ['m3', 'm1', 'm2']
    """
    members = [m for m in subset_ids if m != reference_id]
    if len(set(members)) != len(members):
        raise ValueError(f"{query}: subset_ids repeat a member: {list(subset_ids)}.")
    member_set = set(members)
    restricted = [image_id for image_id in ranking if image_id in member_set and image_id != reference_id]
    if len(restricted) != len(members):
        missing = [m for m in members if m not in set(restricted)]
        raise ValueError(
            f"{query}: the ranking lacks subset member(s) {missing}; CIRR subset recall needs every member of "
            "img_set ranked (pass full rankings, or top-N lists extended with the remaining members)."
        )
    return restricted


def average_precision_at_k(ranking: list[str], ground_truths: list[str], k: int) -> float:
    """CIRCO AP@K = sum_{i<=K} rel(i) * P@i / min(|G|, K), as a fraction (0-1).

    Positions beyond the end of a short ranking are misses.

    >>> round(average_precision_at_k(["g1", "x", "g2"], ["g1", "g2", "g3"], 3), 4)  # (1/1 + 2/3) / 3
    0.5556
    """
    wanted = set(ground_truths)
    hits, total = 0, 0.0
    for position, image_id in enumerate(ranking[:k], start=1):
        if image_id in wanted:
            hits += 1
            total += hits / position
    return total / min(len(ground_truths), k)


# ----------------------------------------------------------------------------------------------------------------
# Protocols
# ----------------------------------------------------------------------------------------------------------------
def recall_at_k(predictions, references, k_values=None) -> dict:
    """Plain Recall@K: % of queries with a target in the top K (no ids removed).

    Args:
        predictions: rankings, one list of gallery ids per query, best first.
        references: target ids per query (a hit is any of them).
        k_values: cut-offs (default 1, 5, 10, 50).

    Returns:
        {"recall@K": percentage}.

    >>> recall_at_k([["a", "b"], ["c", "d"]], [["b"], ["c"]], k_values=[1, 2])
    {'recall@1': 50.0, 'recall@2': 100.0}
    """
    rankings = as_rankings(predictions)
    targets = as_targets(references, len(rankings))
    k_values = check_k_values(k_values, DEFAULT_K_VALUES["standard"])
    ranks = [first_hit_rank(r, t) for r, t in zip(rankings, targets)]
    return {f"recall@{k}": _percent([p is not None and p < k for p in ranks]) for k in k_values}


def cirr_metrics(predictions, references, reference_ids, subset_ids=None, k_values=None,
                 subset_k_values=CIRR_SUBSET_K_VALUES) -> dict:
    """CIRR Recall@K (reference removed), Recall_subset@K and cirr_score.

    Args:
        predictions: rankings over the split gallery, best first (the reference may be in them).
        references: the hard target of each query (`target_hard`), as `[id]` or `id`.
        reference_ids: the reference image id of each query; removed from its ranking before cutting.
        subset_ids: the raw six `img_set.members` of each query (reference included), or None to skip
            the subset metrics.
        k_values: Recall@K cut-offs (default 1, 5, 10, 50).
        subset_k_values: Recall_subset@K cut-offs (default 1, 2, 3).

    Returns:
        {"recall@K", "recall_subset@K", "cirr_score"} as percentages (the last two only with subset_ids).

    >>> cirr_metrics([["r", "t", "a", "b"], ["a", "b", "r2", "t2"]], [["t"], ["t2"]], ["r", "r2"],
    ...              subset_ids=[["r", "t", "b"], ["r2", "t2", "b"]], k_values=[1, 5])
    {'recall@1': 50.0, 'recall@5': 100.0, 'recall_subset@1': 50.0, 'recall_subset@2': 100.0, 'recall_subset@3': 100.0, 'cirr_score': 75.0}
    """
    rankings = as_rankings(predictions)
    n = len(rankings)
    targets = as_targets(references, n)
    k_values = check_k_values(k_values, DEFAULT_K_VALUES["cirr"])
    _check_length(reference_ids, n, "reference_ids")
    refs = []
    for i, ref in enumerate(reference_ids):
        if ref is None or (isinstance(ref, str) and not ref):
            raise ValueError(f"reference_ids[{i}] is missing: CIRR removes each query's reference from its ranking.")
        refs.append(_as_id(ref, f"reference_ids[{i}]"))
    cleaned = [remove_reference(r, ref) for r, ref in zip(rankings, refs)]
    ranks = [first_hit_rank(r, t) for r, t in zip(cleaned, targets)]
    out = {f"recall@{k}": _percent([p is not None and p < k for p in ranks]) for k in k_values}
    if subset_ids is None:
        return out
    _check_length(subset_ids, n, "subset_ids")
    subset_ranks = []
    for i, (ranking, ref, members, t) in enumerate(zip(cleaned, refs, subset_ids, targets)):
        if members is None or isinstance(members, (str, bytes)):
            raise ValueError(f"subset_ids[{i}] must be the list of img_set members, got {members!r}.")
        members = [_as_id(m, f"subset_ids[{i}]") for m in members]
        subset_ranks.append(first_hit_rank(subset_ranking(ranking, ref, members, f"query {i}"), t))
    for k in check_k_values(subset_k_values, CIRR_SUBSET_K_VALUES):
        out[f"recall_subset@{k}"] = _percent([p is not None and p < k for p in subset_ranks])
    recall5 = _percent([p is not None and p < 5 for p in ranks])
    subset1 = _percent([p is not None and p < 1 for p in subset_ranks])
    out["cirr_score"] = (recall5 + subset1) / 2
    return out


def circo_metrics(predictions, references, k_values=None, semantic_aspects=None) -> dict:
    """CIRCO mAP@K (normaliser min(|G|, K), reference kept), Recall@K on the first target, per-aspect mAP@10.

    Args:
        predictions: rankings over the whole gallery (up to 50 ids each is what the server takes).
        references: `gt_img_ids` per query, `target_img_id` first.
        k_values: cut-offs of map@K and recall@K (default 5, 10, 25, 50).
        semantic_aspects: optional list of aspect names per query; adds `map@10/<aspect>` (mean AP@10 over the
            queries that have the aspect).

    Returns:
        {"map@K", "recall@K", "map@10/<aspect>"} as percentages.

    >>> scores = circo_metrics([["g2", "x", "g1"]], [["g1", "g2"]], k_values=[1, 3])  # AP@3 = (1/1 + 2/3) / 2
    >>> {key: round(value, 2) for key, value in scores.items()}
    {'map@1': 100.0, 'map@3': 83.33, 'recall@1': 0.0, 'recall@3': 100.0}
    """
    rankings = as_rankings(predictions)
    n = len(rankings)
    targets = as_targets(references, n)
    k_values = check_k_values(k_values, DEFAULT_K_VALUES["circo"])
    out = {}
    for k in k_values:
        out[f"map@{k}"] = 100.0 * sum(average_precision_at_k(r, g, k) for r, g in zip(rankings, targets)) / n
    first_ranks = [first_hit_rank(r, g[:1]) for r, g in zip(rankings, targets)]
    for k in k_values:
        out[f"recall@{k}"] = _percent([p is not None and p < k for p in first_ranks])
    if semantic_aspects is not None:
        _check_length(semantic_aspects, n, "semantic_aspects")
        per_aspect: dict[str, list[float]] = {}
        for i, (aspects, r, g) in enumerate(zip(semantic_aspects, rankings, targets)):
            if aspects is None or isinstance(aspects, str):
                raise ValueError(f"semantic_aspects[{i}] must be a list of aspect names, got {aspects!r}.")
            ap = average_precision_at_k(r, g, CIRCO_ASPECT_K)
            for aspect in dict.fromkeys(aspects):
                per_aspect.setdefault(str(aspect), []).append(ap)
        for aspect in sorted(per_aspect):
            values = per_aspect[aspect]
            out[f"map@{CIRCO_ASPECT_K}/{aspect}"] = 100.0 * sum(values) / len(values)
    return out


def fashioniq_metrics(predictions, references, categories=None, k_values=None) -> dict:
    """Fashion-IQ Recall@K per category (candidate not removed) and the unweighted mean over categories.

    Args:
        predictions: rankings over the query's category gallery.
        references: the target of each query.
        categories: category per query (e.g. "dress", "shirt", "toptee"); None = one category.
        k_values: cut-offs (default 10, 50).

    Returns:
        {"<category>/recall@K", "recall@K" (unweighted mean over categories)}.

    >>> fashioniq_metrics([["t", "x"], ["x", "t"], ["u", "y"]], [["t"], ["t"], ["u"]],
    ...                   categories=["dress", "dress", "shirt"], k_values=[1])
    {'dress/recall@1': 50.0, 'shirt/recall@1': 100.0, 'recall@1': 75.0}
    """
    rankings = as_rankings(predictions)
    n = len(rankings)
    targets = as_targets(references, n)
    k_values = check_k_values(k_values, DEFAULT_K_VALUES["fashioniq"])
    if categories is None:
        out = recall_at_k(rankings, targets, k_values)
    else:
        _check_length(categories, n, "categories")
        groups: dict[str, list[int]] = {}
        for i, category in enumerate(categories):
            if category is None or (isinstance(category, str) and not category):
                raise ValueError(f"categories[{i}] is missing.")
            groups.setdefault(str(category), []).append(i)
        out = {}
        for category in sorted(groups):
            rows = groups[category]
            per = recall_at_k([rankings[i] for i in rows], [targets[i] for i in rows], k_values)
            out.update({f"{category}/{key}": value for key, value in per.items()})
        for k in k_values:
            out[f"recall@{k}"] = sum(out[f"{c}/recall@{k}"] for c in groups) / len(groups)
    return out


def compute_cir_metrics(predictions, references, protocol: str = "standard", reference_ids=None, subset_ids=None,
                        categories=None, semantic_aspects=None, k_values=None, subset_k_values=None) -> dict:
    """Dispatch to the protocol's metric function.

    Per-query arguments a protocol does not use are ignored (they must still hold one entry per query): e.g.
    `reference_ids` for CIRCO or Fashion-IQ, whose reference / candidate is never removed from the ranking.

    >>> compute_cir_metrics([["a", "b"]], [["b"]], protocol="standard", k_values=[1, 2])
    {'recall@1': 0.0, 'recall@2': 100.0}
    >>> compute_cir_metrics([["r", "g"]], [["g"]], protocol="circo", reference_ids=["r"], k_values=[1])["map@1"]
    0.0
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
    if predictions is not None and hasattr(predictions, "__len__"):
        given = {"reference_ids": reference_ids, "subset_ids": subset_ids, "categories": categories,
                 "semantic_aspects": semantic_aspects}
        for name, values in given.items():
            if values is not None:
                _check_length(values, len(predictions), name)
    if protocol == "cirr":
        if reference_ids is None:
            raise ValueError("protocol 'cirr' needs reference_ids (the reference is removed from each ranking).")
        return cirr_metrics(predictions, references, reference_ids, subset_ids, k_values,
                            subset_k_values or CIRR_SUBSET_K_VALUES)
    if protocol == "circo":
        return circo_metrics(predictions, references, k_values, semantic_aspects)
    if protocol == "fashioniq":
        return fashioniq_metrics(predictions, references, categories, k_values)
    return recall_at_k(predictions, references, k_values)


# ----------------------------------------------------------------------------------------------------------------
# evaluate module
# ----------------------------------------------------------------------------------------------------------------
def _stringify(rows, name: str, scalar_ok: bool):
    """Ids -> strings before evaluate's Arrow encoding (a scalar reference becomes a one-element list)."""
    if rows is None:
        return None
    out = []
    for i, row in enumerate(rows):
        if _is_scalar_id(row) and scalar_ok:
            out.append([_as_id(row, f"{name}[{i}]")])
        elif _is_scalar_id(row) or row is None:
            raise TypeError(f"{name}[{i}] must be a list of ids, got {row!r}.")
        else:
            out.append([_as_id(x, f"{name}[{i}]") for x in row])
    return out


# Per-query inputs besides predictions and references, stored with them batch by batch: name -> one id / label
# per query (False; stored as a one-element list, as Arrow's string type takes no nulls here) or a list (True).
PER_QUERY_INPUTS = {"reference_ids": False, "subset_ids": True, "categories": False, "semantic_aspects": True}


def _per_query_column(values, name: str, n: int) -> list:
    """One stored value per query: strings (lists of strings) as Arrow wants them; None where not given."""
    if values is None:
        return [None] * n
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"{name} must hold one entry per query, got {type(values).__name__}.")
    _check_length(values, n, name)
    out = []
    for i, value in enumerate(values):
        if value is None:
            out.append(None)
        elif PER_QUERY_INPUTS[name]:
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise TypeError(f"{name}[{i}] must be a list, got {value!r}.")
            out.append([str(x) if name == "semantic_aspects" else _as_id(x, f"{name}[{i}]") for x in value])
        else:
            out.append([str(value) if name == "categories" else _as_id(value, f"{name}[{i}]")])
    return out


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CIRMetric(evaluate.Metric):
    """`evaluate` wrapper around `compute_cir_metrics` (ids are stringified before Arrow encoding).

    The per-query inputs (`reference_ids`, `subset_ids`, `categories`, `semantic_aspects`) are stored with the
    rankings, so they can come batch by batch through `add_batch` / `add`, or all at once to `compute`.
    """

    def _info(self):
        strings = datasets.Sequence(datasets.Value("string"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": strings, "references": strings, "reference_ids": strings, "subset_ids": strings,
                "categories": strings, "semantic_aspects": strings,
            }),
            reference_urls=["https://github.com/Cuberick-Orion/CIRR", "https://github.com/miccunifi/CIRCO",
                            "https://github.com/XiaoxiaoGuo/fashion-iq"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of rankings and targets, with their per-query inputs (ids stringified)."""
        predictions = _stringify(predictions, "predictions", False)
        references = _stringify(references, "references", True)
        n = len(predictions) if predictions is not None else len(references or [])
        columns = {name: _per_query_column(kwargs.pop(name, None), name, n) for name in PER_QUERY_INPUTS}
        return super().add_batch(predictions=predictions, references=references, **columns, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one ranking and its target(s), with its per-query inputs (ids stringified)."""
        given = {name: [kwargs.pop(name)] if kwargs.get(name) is not None else None for name in PER_QUERY_INPUTS}
        given = {name: _per_query_column(values, name, 1)[0] for name, values in given.items()}
        prediction = None if prediction is None else _stringify([prediction], "prediction", False)[0]
        reference = None if reference is None else _stringify([reference], "reference", True)[0]
        return super().add(prediction=prediction, reference=reference, **given, **kwargs)

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Compute the metrics (see `compute_cir_metrics`) over what was added plus what is given here.

        Per-query inputs given here without predictions apply to the queries added before, in order.
        """
        if predictions is None and references is None:
            late = {name: kwargs.pop(name) for name in PER_QUERY_INPUTS if kwargs.get(name) is not None}
            return super().compute(given_per_query=late, **kwargs)
        columns = {name: kwargs.pop(name, None) for name in PER_QUERY_INPUTS}  # `add_batch` checks and stores them
        return super().compute(predictions=predictions, references=references, **columns, **kwargs)

    def _compute(self, predictions, references, reference_ids=None, subset_ids=None, categories=None,
                 semantic_aspects=None, protocol="standard", k_values=None, subset_k_values=None,
                 given_per_query=None):
        stored = {"reference_ids": reference_ids, "subset_ids": subset_ids, "categories": categories,
                  "semantic_aspects": semantic_aspects}
        per_query = {}
        for name, values in stored.items():
            values = None if values is None or all(v is None for v in values) else list(values)
            if values is not None and not PER_QUERY_INPUTS[name]:
                values = [None if v is None else v[0] for v in values]
            late = (given_per_query or {}).get(name)
            if late is not None and values is not None:
                raise ValueError(f"{name} were added with the batches and given to compute() too: give them once.")
            per_query[name] = late if late is not None else values
        return compute_cir_metrics(predictions, references, protocol=protocol, k_values=k_values,
                                   subset_k_values=subset_k_values, **per_query)


METRIC_PATH = os.path.abspath(__file__)  # this file, for `evaluate.load`


def load_cir_metric(**kwargs):
    """`evaluate.load` of this metric module (works offline), e.g. for `evaluate`-based pipelines.

    Example:
        >>> metric = load_cir_metric()  # doctest: +SKIP
        >>> metric.compute(predictions=[["a", "b"]], references=[["b"]], protocol="standard", k_values=[1, 2])  # doctest: +SKIP
        {'recall@1': 0.0, 'recall@2': 100.0}
    """
    return evaluate.load(METRIC_PATH, **kwargs)
