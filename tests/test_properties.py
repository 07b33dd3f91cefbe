"""Property-based tests (hypothesis) of the metric, the gallery search and Slerp.

Metric (`collm_hf.evaluation.cir_metric`): every value lies in [0, 100]; recall@K is non-decreasing in K; results do not
depend on the order of the queries nor on the names of the ids (any bijection); recall and AP agree with
naive oracles written differently. Search: permuting the gallery rows of a ties-free similarity matrix gives
the same rankings (hence the same metric); K larger than the gallery returns the whole gallery.
Slerp (`collm_hf.models.collm.synthesis.slerp`): the result stays on the unit sphere, alpha=0/1 give the endpoints, the
angle from the start is alpha times the angle between the endpoints, and slerp(a, b, t) = slerp(b, a, 1 - t).
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from collm_hf.evaluation.cir_metric import circo_metrics, cirr_metrics, recall_at_k
from collm_hf.models.collm.synthesis import slerp

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def ranked_queries(draw, max_gallery: int = 12, max_queries: int = 6):
    """(rankings, targets, gallery): full rankings (permutations of the gallery) and non-empty target sets."""
    gallery = [f"g{i}" for i in range(draw(st.integers(2, max_gallery)))]
    n = draw(st.integers(1, max_queries))
    rankings, targets = [], []
    for _ in range(n):
        rankings.append(draw(st.permutations(gallery)))
        targets.append(draw(st.lists(st.sampled_from(gallery), min_size=1, max_size=3, unique=True)))
    return rankings, targets, gallery


K_VALUES = st.lists(st.integers(1, 15), min_size=1, max_size=5, unique=True)


def _oracle_recall(rankings, targets, k):
    hits = 0
    for ranking, wanted in zip(rankings, targets):
        positions = [ranking.index(t) for t in wanted if t in ranking]
        hits += bool(positions) and min(positions) < k
    return 100.0 * hits / len(rankings)


def _oracle_ap(ranking, wanted, k):
    relevant = np.array([x in wanted for x in ranking[:k]], dtype=float)
    if relevant.sum() == 0:
        return 0.0
    precision = np.cumsum(relevant) / np.arange(1, len(relevant) + 1)
    return float((precision * relevant).sum() / min(len(wanted), k))


@SETTINGS
@given(ranked_queries(), K_VALUES)
def test_recall_bounds_monotonic_and_oracle(data, k_values):
    rankings, targets, _ = data
    scores = recall_at_k(rankings, targets, k_values=k_values)
    ordered = sorted(k_values)
    values = [scores[f"recall@{k}"] for k in ordered]
    assert all(0.0 <= v <= 100.0 for v in values)
    assert values == sorted(values)  # monotonic in K
    for k in ordered:
        assert scores[f"recall@{k}"] == pytest.approx(_oracle_recall(rankings, targets, k))


@SETTINGS
@given(ranked_queries(), K_VALUES, st.randoms(use_true_random=False))
def test_metrics_invariant_to_query_order_and_id_names(data, k_values, rng):
    rankings, targets, gallery = data
    reference = recall_at_k(rankings, targets, k_values=k_values)
    circo = circo_metrics(rankings, targets, k_values=k_values)
    order = list(range(len(rankings)))
    rng.shuffle(order)
    renamed = dict(zip(gallery, rng.sample([f"id-{i}" for i in range(1000)], len(gallery))))
    shuffled_rankings = [[renamed[x] for x in rankings[i]] for i in order]
    shuffled_targets = [[renamed[x] for x in targets[i]] for i in order]
    assert recall_at_k(shuffled_rankings, shuffled_targets, k_values=k_values) == pytest.approx(reference)
    assert circo_metrics(shuffled_rankings, shuffled_targets, k_values=k_values) == pytest.approx(circo)


@SETTINGS
@given(ranked_queries(), K_VALUES)
def test_circo_map_bounds_and_oracle(data, k_values):
    rankings, targets, _ = data
    scores = circo_metrics(rankings, targets, k_values=k_values)
    for k in k_values:
        assert 0.0 <= scores[f"map@{k}"] <= 100.0 + 1e-9
        oracle = 100.0 * np.mean([_oracle_ap(r, t, k) for r, t in zip(rankings, targets)])
        assert scores[f"map@{k}"] == pytest.approx(oracle)
    recalls = [scores[f"recall@{k}"] for k in sorted(k_values)]
    assert recalls == sorted(recalls)


@SETTINGS
@given(ranked_queries(max_gallery=10), K_VALUES)
def test_cirr_bounds_and_monotonic(data, k_values):
    rankings, targets, _ = data
    # CIRR: one hard target, a reference that is not the target, a subset holding both.
    references = [next(g for g in r if g != t[0]) for r, t in zip(rankings, targets)]
    hard = [[t[0]] for t in targets]
    subsets = [sorted({ref, t[0], *r[:3]}) for ref, t, r in zip(references, targets, rankings)]
    scores = cirr_metrics(rankings, hard, references, subset_ids=subsets, k_values=k_values)
    assert all(0.0 <= v <= 100.0 for v in scores.values())
    recalls = [scores[f"recall@{k}"] for k in sorted(k_values)]
    subset = [scores[f"recall_subset@{k}"] for k in (1, 2, 3)]
    assert recalls == sorted(recalls) and subset == sorted(subset)
    cleaned = [[x for x in r if x != ref] for r, ref in zip(rankings, references)]  # the reference is removed
    for k in k_values:
        assert scores[f"recall@{k}"] == pytest.approx(_oracle_recall(cleaned, hard, k))


@SETTINGS
@given(st.integers(2, 20), st.integers(1, 5), st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_search_is_invariant_to_gallery_order(n, q, k, seed):
    from collm_hf.evaluation.index import GalleryIndex

    generator = torch.Generator().manual_seed(seed)
    gallery = torch.nn.functional.normalize(torch.randn(n, 8, generator=generator), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(q, 8, generator=generator), dim=-1)
    scores = queries @ gallery.t()
    sorted_scores = scores.sort(dim=-1).values
    assume(bool((sorted_scores[:, 1:] - sorted_scores[:, :-1] > 1e-5).all()))  # ties-free
    ids = [f"img{i}" for i in range(n)]
    permutation = torch.randperm(n, generator=generator)
    base = GalleryIndex(gallery, ids).search(queries, k=k, backend="torch")
    permuted = GalleryIndex(gallery[permutation], [ids[i] for i in permutation]).search(queries, k=k, backend="torch")
    assert base.ids == permuted.ids
    assert all(len(row) == min(k, n) for row in base.ids)  # K larger than the gallery: the whole gallery
    expected = [[ids[i] for i in row] for row in scores.argsort(dim=-1, descending=True)[:, :k].tolist()]
    assert base.ids == expected


# --------------------------------------------------------------------------------------------------------------
# Slerp
# --------------------------------------------------------------------------------------------------------------
finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def vector_pairs(draw):
    dim = draw(st.integers(2, 16))
    a = torch.tensor(draw(st.lists(finite, min_size=dim, max_size=dim)), dtype=torch.float64)
    assume(float(a.norm()) > 1e-3)
    kind = draw(st.sampled_from(["random", "same", "opposite", "near"]))
    if kind == "random":
        b = torch.tensor(draw(st.lists(finite, min_size=dim, max_size=dim)), dtype=torch.float64)
        assume(float(b.norm()) > 1e-3)
    elif kind == "same":
        b = a * draw(st.floats(0.1, 10))
    elif kind == "opposite":
        b = -a * draw(st.floats(0.1, 10))
    else:
        b = a + 1e-7 * torch.ones_like(a)
    return a, b


@SETTINGS
@given(vector_pairs(), st.floats(0.0, 1.0))
def test_slerp_stays_on_the_unit_sphere(pair, alpha):
    a, b = pair
    out = slerp(a.unsqueeze(0), b.unsqueeze(0), alpha)
    assert torch.isfinite(out).all()
    assert float(out.norm()) == pytest.approx(1.0, abs=1e-9)
    out32 = slerp(a.float().unsqueeze(0), b.float().unsqueeze(0), alpha)
    assert float(out32.norm()) == pytest.approx(1.0, abs=1e-5)


@SETTINGS
@given(vector_pairs())
def test_slerp_endpoints_are_exact(pair):
    a, b = pair
    na, nb = a / a.norm(), b / b.norm()
    assert torch.allclose(slerp(a, b, 0.0), na, atol=1e-12)
    assert torch.allclose(slerp(a, b, 1.0), nb, atol=1e-7)


@SETTINGS
@given(vector_pairs(), st.floats(0.0, 1.0))
def test_slerp_follows_the_great_circle(pair, alpha):
    a, b = pair
    na, nb = a / a.norm(), b / b.norm()
    theta = math.atan2(float(torch.linalg.vector_norm(nb - (na @ nb) * na)), float(na @ nb))
    assume(theta < math.pi - 1e-3)  # opposite vectors: any great circle is valid
    out = slerp(a, b, alpha)
    angle = math.atan2(float(torch.linalg.vector_norm(out - (na @ out) * na)), float(na @ out))
    assert angle == pytest.approx(alpha * theta, abs=1e-6)
    assert torch.allclose(out, slerp(b, a, 1.0 - alpha), atol=1e-6)
