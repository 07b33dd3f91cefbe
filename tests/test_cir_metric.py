"""cir_metric: docstring examples, protocol rules, invalid input, agreement with naive oracles, evaluate.load."""

import doctest
import os
import random

import numpy as np
import pytest

from collm_hf.evaluation import cir_metric
from collm_hf.evaluation.cir_metric import (
    circo_metrics,
    cirr_metrics,
    compute_cir_metrics,
    fashioniq_metrics,
    recall_at_k,
)

METRIC_PATH = os.path.join(os.path.dirname(cir_metric.__file__), "cir_metric.py")


def test_docstring_examples():
    result = doctest.testmod(cir_metric, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8 and result.failed == 0


# ---------------------------------------------------------------------------------------------------------------
# Oracles, written the way the official code bases do it: numpy arrays over full rankings.
# ---------------------------------------------------------------------------------------------------------------
def oracle_cirr(rankings, targets, references, members, ks=(1, 5, 10, 50), subset_ks=(1, 2, 3)):
    """CLIP4Cir validate.py style: name matrix, boolean reference mask, group mask (full rankings only)."""
    names = np.array(rankings)  # (Q, N)
    ref_mask = names != np.array(references)[:, None]
    names = names[ref_mask].reshape(names.shape[0], names.shape[1] - 1)
    labels = names == np.array(targets)[:, None]
    group = (names[..., None] == np.array(members)[:, None, :]).sum(-1).astype(bool)
    group_labels = labels[group].reshape(labels.shape[0], -1)
    out = {f"recall@{k}": labels[:, :k].sum() / len(labels) * 100 for k in ks}
    out.update({f"recall_subset@{k}": group_labels[:, :k].sum() / len(labels) * 100 for k in subset_ks})
    out["cirr_score"] = (labels[:, :5].sum() / len(labels) * 100 + group_labels[:, :1].sum() / len(labels) * 100) / 2
    return out


def oracle_circo(rankings, gts, ks=(5, 10, 25, 50), aspects=None):
    """miccunifi/CIRCO src/evaluation.py style: isin, cumsum precisions, min(|G|, K)."""
    aps, recalls, per_aspect = {k: [] for k in ks}, {k: [] for k in ks}, {}
    for i, (pred, gt) in enumerate(zip(rankings, gts)):
        pred = np.array(pred)
        labels = np.isin(pred, gt)
        precisions = np.cumsum(labels) * labels / np.arange(1, len(labels) + 1)
        for k in ks:
            aps[k].append(np.sum(precisions[:k]) / min(len(gt), k))
            recalls[k].append(np.sum((pred == gt[0])[:k]))
        for aspect in (aspects[i] if aspects else []):
            per_aspect.setdefault(aspect, []).append(np.sum(precisions[:10]) / min(len(gt), 10))
    out = {f"map@{k}": np.mean(aps[k]) * 100 for k in ks}
    out.update({f"recall@{k}": np.mean(recalls[k]) * 100 for k in ks})
    out.update({f"map@10/{a}": np.mean(v) * 100 for a, v in per_aspect.items()})
    return out


def oracle_fashioniq(rankings, targets, categories, ks=(10, 50)):
    out = {}
    for cat in set(categories):
        rows = [i for i, c in enumerate(categories) if c == cat]
        for k in ks:
            out[f"{cat}/recall@{k}"] = np.mean([targets[i] in rankings[i][:k] for i in rows]) * 100
    for k in ks:
        out[f"recall@{k}"] = np.mean([out[f"{c}/recall@{k}"] for c in set(categories)])
    return out


def assert_same(got, expected):
    assert set(got) == set(expected)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


@pytest.mark.parametrize("seed", range(8))
def test_cirr_matches_oracle(seed):
    rng = random.Random(seed)
    gallery = [f"dev-{i}-img{i % 3}" for i in range(rng.randint(60, 90))]
    rankings, targets, refs, members = [], [], [], []
    for _ in range(rng.randint(5, 40)):
        six = rng.sample(gallery, 6)
        ref, target = six[0], six[rng.randint(1, 5)]
        rng.shuffle(six)
        rankings.append(rng.sample(gallery, len(gallery)))
        targets.append(target), refs.append(ref), members.append(six)
    got = cirr_metrics(rankings, [[t] for t in targets], refs, members)
    assert_same(got, oracle_cirr(rankings, targets, refs, members))


@pytest.mark.parametrize("seed", range(8))
def test_circo_matches_oracle(seed):
    rng = random.Random(100 + seed)
    gallery = list(range(1000, 1300))
    rankings, gts, aspects = [], [], []
    for _ in range(rng.randint(5, 30)):
        gt = rng.sample(gallery, rng.randint(1, 60))  # often more ground truths than K
        pool = rng.sample(gallery, 120)
        ranking = list(dict.fromkeys(gt[: rng.randint(0, len(gt))] + pool))[: rng.choice([10, 37, 50])]
        rng.shuffle(ranking)
        rankings.append(ranking), gts.append(gt)
        aspects.append(rng.sample(["cardinality", "addition", "negation", "viewpoint"], rng.randint(0, 2)))
    got = circo_metrics(rankings, gts, semantic_aspects=aspects)
    assert_same(got, oracle_circo(rankings, gts, aspects=aspects))


@pytest.mark.parametrize("seed", range(6))
def test_fashioniq_matches_oracle(seed):
    rng = random.Random(200 + seed)
    rankings, targets, categories = [], [], []
    for cat, size in (("dress", 70), ("shirt", 90), ("toptee", 60)):
        gallery = [f"B{cat}{i:04d}" for i in range(size)]
        for _ in range(rng.randint(3, 25)):
            rankings.append(rng.sample(gallery, size)), targets.append(rng.choice(gallery)), categories.append(cat)
    got = fashioniq_metrics(rankings, targets, categories)
    assert_same(got, oracle_fashioniq(rankings, targets, categories))


# ---------------------------------------------------------------------------------------------------------------
# Protocol rules, one at a time
# ---------------------------------------------------------------------------------------------------------------
def test_cirr_removes_reference_before_cutting():
    # Without removal the target would sit at rank 2; with it, rank 1.
    got = cirr_metrics([["ref", "tgt", "x"]], [["tgt"]], ["ref"], k_values=[1])
    assert got == {"recall@1": 100.0}


def test_cirr_subset_uses_members_minus_reference_in_ranking_order():
    ranking = ["ref", "a", "m4", "tgt", "m2", "m3", "m1"]
    members = ["m1", "ref", "m2", "tgt", "m3", "m4"]
    got = cirr_metrics([ranking], [["tgt"]], ["ref"], [members], k_values=[1])
    assert got["recall_subset@1"] == 0.0 and got["recall_subset@2"] == 100.0
    assert got["cirr_score"] == pytest.approx((100.0 + 0.0) / 2)


def test_cirr_every_query_counts_even_with_shared_reference():
    got = cirr_metrics([["r", "t1"], ["r", "t1"]], [["t1"], ["t2"]], ["r", "r"], k_values=[1])
    assert got["recall@1"] == 50.0


def test_circo_keeps_reference_and_uses_min_g_k():
    # The reference (not a ground truth) at rank 1 is not removed: it costs precision.
    got = circo_metrics([["ref", "g1"]], [["g1"]], k_values=[2])
    assert got["map@2"] == pytest.approx(50.0)
    # |G| = 30 > K = 5: normaliser 5, not 30 and not the number of hits.
    ranking = ["g0", "x", "g1", "y", "z"]
    gts = [f"g{i}" for i in range(30)]
    assert circo_metrics([ranking], [gts], k_values=[5])["map@5"] == pytest.approx(100 * (1 + 2 / 3) / 5)


def test_circo_short_ranking_counts_missing_as_misses():
    got = circo_metrics([["g1"]], [["g1", "g2"]], k_values=[5, 50])
    assert got["map@5"] == pytest.approx(50.0) and got["map@50"] == pytest.approx(50.0)
    assert got["recall@5"] == 100.0


def test_circo_recall_uses_first_target_only():
    got = circo_metrics([["g2", "x"]], [["g1", "g2"]], k_values=[2])
    assert got["recall@2"] == 0.0 and got["map@2"] > 0


def test_fashioniq_does_not_remove_candidate_and_averages_categories_unweighted():
    rankings = [["cand", "t"], ["t", "x"], ["x", "t"], ["y", "t"]]
    got = fashioniq_metrics(rankings, ["t"] * 4, ["dress", "shirt", "shirt", "shirt"], k_values=[1])
    assert got["dress/recall@1"] == 0.0
    assert got["shirt/recall@1"] == pytest.approx(100 / 3)
    assert got["recall@1"] == pytest.approx(100 / 6)  # not the per-query mean (25)


def test_int_and_str_ids_compare_as_strings():
    assert recall_at_k([[1, 2, 3]], [["2"]], k_values=[2]) == recall_at_k([["1", "2", "3"]], [[2]], k_values=[2])
    assert recall_at_k([[np.int64(5)]], [5], k_values=[1]) == {"recall@1": 100.0}


def test_default_k_values_per_protocol():
    assert list(recall_at_k([["a"]], [["a"]])) == ["recall@1", "recall@5", "recall@10", "recall@50"]
    assert [k for k in circo_metrics([["a"]], [["a"]]) if k.startswith("map")] == ["map@5", "map@10", "map@25", "map@50"]
    assert set(fashioniq_metrics([["a"]], [["a"]])) == {"recall@10", "recall@50"}


# ---------------------------------------------------------------------------------------------------------------
# Invalid input
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: recall_at_k([["a"], ["b"]], [["a"]]), "1 entries but there are 2"),
        (lambda: recall_at_k([["a", "b", "a"]], [["a"]]), "'a' more than once"),
        (lambda: recall_at_k([], []), "empty"),
        (lambda: recall_at_k([["a"]], [[]]), "at least one target"),
        (lambda: recall_at_k([["a"]], [["a"]], k_values=[0]), "positive"),
        (lambda: recall_at_k([[1.5]], [["a"]]), "int or str"),
        (lambda: recall_at_k(["abc"], [["a"]]), "list of gallery ids"),
        (lambda: cirr_metrics([["a"]], [["a"]], [None]), "reference_ids\\[0\\] is missing"),
        (lambda: cirr_metrics([["a", "b"]], [["a"]], ["r"], [["r", "a", "zz"]]), "lacks subset member.*zz"),
        (lambda: compute_cir_metrics([["a"]], [["a"]], protocol="cirr"), "needs reference_ids"),
        (lambda: compute_cir_metrics([["a"]], [["a"]], protocol="circo", reference_ids=["r", "s"]), "reference_ids has 2"),
        (lambda: compute_cir_metrics([["a"]], [["a"]], protocol="nope"), "protocol must be"),
        (lambda: circo_metrics([["a", "a"]], [["a"]]), "more than once"),
        (lambda: fashioniq_metrics([["a"]], [["a"]], categories=["x", "y"]), "categories has 2"),
    ],
)
def test_invalid_input_raises_clear_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


# ---------------------------------------------------------------------------------------------------------------
# evaluate module
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def metric(tmp_path_factory):
    import evaluate

    return evaluate.load(METRIC_PATH, cache_dir=str(tmp_path_factory.mktemp("evaluate_cache")))


def test_evaluate_load_offline_and_matches_functions(metric):
    rankings = [[1, 2, 3, 4, 5, 6], [4, 5, 6, 1, 2, 3]]
    got = metric.compute(predictions=rankings, references=[3, [5]], protocol="cirr", reference_ids=[1, 4],
                         subset_ids=[[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    assert got == cirr_metrics(rankings, [[3], [5]], [1, 4], [[1, 2, 3, 4, 5, 6]] * 2)
    got = metric.compute(predictions=[["a", "b"]], references=[["b", "c"]], protocol="circo", k_values=[2],
                         semantic_aspects=[["addition"]])
    assert got == circo_metrics([["a", "b"]], [["b", "c"]], k_values=[2], semantic_aspects=[["addition"]])


def test_load_cir_metric_helper(tmp_path):
    from collm_hf.evaluation.cir_metric import METRIC_PATH, load_cir_metric

    assert os.path.samefile(METRIC_PATH, cir_metric.__file__)
    metric = load_cir_metric(cache_dir=str(tmp_path))
    assert metric.compute(predictions=[["a", "b"]], references=[["b"]], k_values=[1, 2]) == {"recall@1": 0.0, "recall@2": 100.0}


def test_evaluate_add_batch(metric):
    metric.add_batch(predictions=[["a", "b"]], references=["b"])
    metric.add(prediction=["c", "d"], reference=["c"])
    assert metric.compute(protocol="fashioniq", categories=["dress", "shirt"], k_values=[1]) == {
        "dress/recall@1": 0.0, "shirt/recall@1": 100.0, "recall@1": 50.0}


def test_add_batch_twice_equals_one_compute_with_per_query_inputs(metric):
    rankings = [["r0", "t0", "a", "b"], ["a", "r1", "b", "t1"], ["t2", "r2", "a", "b"], ["b", "a", "t3", "r3"]]
    targets = [["t0"], ["t1"], ["t2"], ["t3"]]
    refs, subsets = ["r0", "r1", "r2", "r3"], [["r0", "t0", "a"], ["r1", "t1", "b"], ["r2", "t2", "a"], ["r3", "t3", "b"]]
    whole = metric.compute(predictions=rankings, references=targets, protocol="cirr", reference_ids=refs,
                           subset_ids=subsets, k_values=[1, 2])
    for rows in (slice(0, 1), slice(1, 4)):
        metric.add_batch(predictions=rankings[rows], references=targets[rows], reference_ids=refs[rows],
                         subset_ids=subsets[rows])
    assert metric.compute(protocol="cirr", k_values=[1, 2]) == whole
    assert whole == cirr_metrics(rankings, targets, refs, subsets, k_values=[1, 2])
    # Fashion-IQ categories and CIRCO aspects travel the same way, one query at a time too.
    metric.add_batch(predictions=rankings[:2], references=targets[:2], categories=["dress", "shirt"])
    metric.add(prediction=rankings[2], reference=targets[2], categories="shirt")
    assert metric.compute(protocol="fashioniq", k_values=[1]) == fashioniq_metrics(
        rankings[:3], targets[:3], ["dress", "shirt", "shirt"], k_values=[1])
    metric.add_batch(predictions=rankings[:2], references=targets[:2], semantic_aspects=[["color"], ["shape"]])
    metric.add_batch(predictions=rankings[2:], references=targets[2:], semantic_aspects=[["color"], []])
    assert metric.compute(protocol="circo", k_values=[2]) == circo_metrics(
        rankings, targets, k_values=[2], semantic_aspects=[["color"], ["shape"], ["color"], []])


def test_per_query_inputs_given_twice_or_partly_are_errors(metric):
    metric.add_batch(predictions=[["r", "t"]], references=["t"], reference_ids=["r"])
    with pytest.raises(ValueError, match="given to compute"):
        metric.compute(protocol="cirr", reference_ids=["r"])
    metric.add_batch(predictions=[["r", "t"]], references=["t"], reference_ids=["r"])
    metric.add_batch(predictions=[["r", "t"]], references=["t"])  # this batch forgot its reference ids
    with pytest.raises(ValueError, match=r"reference_ids\[1\] is missing"):
        metric.compute(protocol="cirr")


def test_evaluate_module_errors_are_clear(metric):
    with pytest.raises(ValueError, match="more than once"):
        metric.compute(predictions=[["a", "a"]], references=[["a"]])


def test_subset_k_values_and_tensor_ids():
    import torch

    got = compute_cir_metrics([["r", "a", "t"]], [["t"]], "cirr", reference_ids=["r"], subset_ids=[["r", "a", "t"]],
                              k_values=[1], subset_k_values=[2])
    assert got == {"recall@1": 0.0, "recall_subset@2": 100.0, "cirr_score": 50.0}  # (R@5 = 100 + R_s@1 = 0) / 2
    assert recall_at_k([torch.tensor([3, 4])], [torch.tensor(4)], k_values=[2]) == {"recall@2": 100.0}
    # Arguments a protocol does not use are ignored: CIRCO and Fashion-IQ never remove the reference.
    assert compute_cir_metrics([["r", "a"]], [["a"]], "circo", reference_ids=["r"], subset_k_values=[1],
                               k_values=[1]) == {"map@1": 0.0, "recall@1": 0.0}
    assert compute_cir_metrics([["r", "a"]], [["a"]], "fashioniq", reference_ids=["r"], subset_ids=[["r", "a"]],
                               k_values=[1]) == {"recall@1": 0.0}


# ---------------------------------------------------------------------------------------------------------------
# Properties (hypothesis)
# ---------------------------------------------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_GALLERY = [f"img{i}" for i in range(30)]


@st.composite
def cirr_case(draw):
    ranking = draw(st.permutations(_GALLERY))
    members = draw(st.lists(st.sampled_from(_GALLERY), min_size=6, max_size=6, unique=True))
    target = draw(st.sampled_from(members[1:]))
    return ranking, members[0], members, target


@settings(max_examples=60, deadline=None)
@given(cirr_case(), st.integers(0, 29))
def test_cirr_reference_position_never_matters(case, position):
    ranking, reference, members, target = case
    moved = [x for x in ranking if x != reference]
    moved.insert(position, reference)
    args = dict(references=[[target]], reference_ids=[reference], subset_ids=[members])
    assert cirr_metrics([ranking], **args) == cirr_metrics([moved], **args)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.permutations(_GALLERY), min_size=1, max_size=5), st.data())
def test_recall_is_monotone_in_k(rankings, data):
    targets = [[data.draw(st.sampled_from(_GALLERY))] for _ in rankings]
    values = list(recall_at_k(rankings, targets, k_values=list(range(1, 31))).values())
    assert values == sorted(values) and values[-1] == 100.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(_GALLERY), min_size=1, max_size=25, unique=True), st.integers(1, 30))
def test_circo_ap_is_one_for_a_perfect_ranking_and_bounded(gts, k):
    perfect = gts + [x for x in _GALLERY if x not in gts]
    assert circo_metrics([perfect], [gts], k_values=[k])[f"map@{k}"] == pytest.approx(100.0)
    reversed_ranking = perfect[::-1]
    assert 0.0 <= circo_metrics([reversed_ranking], [gts], k_values=[k])[f"map@{k}"] <= 100.0
