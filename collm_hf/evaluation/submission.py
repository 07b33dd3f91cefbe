"""Test-server submission files for CIRR and CIRCO (closed test labels), written atomically.

- CIRR (https://cirr.cecs.anu.edu.au/test_process/): two JSON files,
  `{"version": "rc2", "metric": "recall", "<pairid>": [top-50 names], ...}` with the reference removed
  before taking the top 50, and `{"version": "rc2", "metric": "recall_subset", "<pairid>": [top-3 names]}`
  ranked within `img_set.members` minus the reference. Max 5 MB each.
- CIRCO (https://circo.micc.unifi.it/): `{"<id>": [top-50 image ids], ...}` for all queries; nothing removed.

The ranking rules are the metric's own (`cir_metric.remove_reference`, `cir_metric.subset_ranking`), so a
submission and a validation score can never disagree on the protocol.
"""

import os
import warnings

from .cir_metric import as_rankings, remove_reference, subset_ranking
from ..utils.atomic import atomic_write_json

CIRR_VERSION = "rc2"
TOP_K = 50
CIRR_SUBSET_TOP_K = 3
MAX_SUBMISSION_BYTES = 5 * 2**20


def _check_query_ids(query_ids, n: int) -> list[str]:
    query_ids = [str(q) for q in query_ids]
    if len(query_ids) != n:
        raise ValueError(f"{len(query_ids)} query ids for {n} rankings.")
    seen = set()
    for q in query_ids:
        if q in seen:
            raise ValueError(f"Query id {q!r} appears more than once.")
        if q in ("version", "metric"):
            raise ValueError(f"Query id {q!r} collides with a CIRR submission key.")
        seen.add(q)
    return query_ids


def cirr_submissions(query_ids, rankings, reference_ids, subset_ids, top_k: int = TOP_K,
                     subset_top_k: int = CIRR_SUBSET_TOP_K) -> tuple[dict, dict]:
    """The two CIRR test-server dicts.

    Args:
        query_ids: `pairid` of each query.
        rankings: per query, gallery names best first (the reference may be in them; it is removed).
        reference_ids: the reference name of each query.
        subset_ids: the raw six `img_set.members` of each query.
        top_k / subset_top_k: 50 and 3 on the server.

    Returns:
        (recall_dict, recall_subset_dict).

    >>> recall, subset = cirr_submissions([7], [["r", "a", "m1", "m2"]], ["r"], [["r", "m2", "m1"]], top_k=2)
    >>> recall
    {'version': 'rc2', 'metric': 'recall', '7': ['a', 'm1']}
    >>> subset
    {'version': 'rc2', 'metric': 'recall_subset', '7': ['m1', 'm2']}
    """
    rankings = as_rankings(rankings)
    query_ids = _check_query_ids(query_ids, len(rankings))
    if len(reference_ids) != len(rankings) or subset_ids is None or len(subset_ids) != len(rankings):
        raise ValueError("cirr_submissions needs one reference id and one subset list per query.")
    recall = {"version": CIRR_VERSION, "metric": "recall"}
    subset = {"version": CIRR_VERSION, "metric": "recall_subset"}
    for qid, ranking, ref, members in zip(query_ids, rankings, reference_ids, subset_ids):
        if ref is None:
            raise ValueError(f"pairid {qid}: missing reference id.")
        ref = str(ref)
        cleaned = remove_reference(ranking, ref)
        recall[qid] = cleaned[:top_k]
        subset[qid] = subset_ranking(cleaned, ref, [str(m) for m in members], f"pairid {qid}")[:subset_top_k]
    return recall, subset


def circo_submission(query_ids, rankings, top_k: int = TOP_K, int_ids: bool = True) -> dict:
    """The CIRCO test-server dict `{"<id>": [top-50 image ids]}` (reference not removed).

    Args:
        query_ids: CIRCO query `id` of each query.
        rankings: per query, gallery image ids best first.
        top_k: 50 on the server.
        int_ids: write numeric image ids as JSON integers (COCO ids, as the official examples).

    >>> circo_submission(["0"], [["12", "7", "9"]], top_k=2)
    {'0': [12, 7]}
    """
    rankings = as_rankings(rankings)
    query_ids = _check_query_ids(query_ids, len(rankings))
    out = {}
    for qid, ranking in zip(query_ids, rankings):
        top = ranking[:top_k]
        out[qid] = [int(x) if int_ids and x.isdigit() else x for x in top]
    return out


def _check_size(path: str):
    size = os.path.getsize(path)
    if size > MAX_SUBMISSION_BYTES:
        warnings.warn(f"{path} is {size / 2**20:.1f} MB; the test server accepts at most 5 MB.")


def write_cirr_submission(output_dir: str, query_ids, rankings, reference_ids, subset_ids,
                          prefix: str = "cirr_test") -> tuple[str, str]:
    """Write `<prefix>_recall.json` and `<prefix>_recall_subset.json` to `output_dir`; return their paths."""
    recall, subset = cirr_submissions(query_ids, rankings, reference_ids, subset_ids)
    paths = (os.path.join(output_dir, f"{prefix}_recall.json"), os.path.join(output_dir, f"{prefix}_recall_subset.json"))
    for path, obj in zip(paths, (recall, subset)):
        atomic_write_json(path, obj)
        _check_size(path)
    return paths


def write_circo_submission(output_dir: str, query_ids, rankings, prefix: str = "circo_test") -> str:
    """Write `<prefix>.json` (CIRCO top-50 per query id) to `output_dir`; return its path."""
    path = os.path.join(output_dir, f"{prefix}.json")
    atomic_write_json(path, circo_submission(query_ids, rankings))
    _check_size(path)
    return path


def write_submission(output_dir: str, rankings, prefix: str | None = None) -> list[str]:
    """Write the submission file(s) for a `collm_hf.evaluation.scoring.BenchmarkRankings` of CIRR or CIRCO."""
    if rankings.protocol == "cirr":
        return list(write_cirr_submission(output_dir, rankings.query_ids, rankings.rankings, rankings.reference_ids,
                                          rankings.subset_ids, prefix or "cirr_test"))
    if rankings.protocol == "circo":
        return [write_circo_submission(output_dir, rankings.query_ids, rankings.rankings, prefix or "circo_test")]
    raise ValueError(f"No test server submission format for protocol {rankings.protocol!r} (only cirr and circo).")


__all__ = ["cirr_submissions", "circo_submission", "write_cirr_submission", "write_circo_submission",
           "write_submission"]
