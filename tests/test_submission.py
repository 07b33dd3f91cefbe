"""CIRR / CIRCO test-server files: format, protocol rules shared with the metric, atomic writes, errors."""

import doctest
import json
import os
import random

import pytest

from collm_hf.evaluation import submission
from collm_hf.evaluation.cir_metric import cirr_metrics
from collm_hf.evaluation.submission import (
    circo_submission,
    cirr_submissions,
    write_circo_submission,
    write_cirr_submission,
)
from collm_hf.utils.atomic import atomic_write_json


def test_docstring_examples():
    result = doctest.testmod(submission)
    assert result.attempted >= 3 and result.failed == 0


def _cirr_case(seed=0, n=20, gallery_size=80):
    rng = random.Random(seed)
    gallery = [f"test1-{i}-img{i % 2}" for i in range(gallery_size)]
    ids, rankings, refs, members = [], [], [], []
    for q in range(n):
        six = rng.sample(gallery, 6)
        ids.append(1000 + q), refs.append(six[0]), members.append(six), rankings.append(rng.sample(gallery, gallery_size))
    return ids, rankings, refs, members


def test_cirr_files_follow_the_server_format():
    ids, rankings, refs, members = _cirr_case()
    recall, subset = cirr_submissions(ids, rankings, refs, members)
    assert (recall["version"], recall["metric"]) == ("rc2", "recall")
    assert (subset["version"], subset["metric"]) == ("rc2", "recall_subset")
    for qid, ranking, ref, six in zip(ids, rankings, refs, members):
        top = recall[str(qid)]
        assert len(top) == 50 and ref not in top
        assert top == [x for x in ranking if x != ref][:50]  # reference removed before taking the top 50
        assert len(subset[str(qid)]) == 3 and ref not in subset[str(qid)]
        assert set(subset[str(qid)]) <= set(six)
        assert subset[str(qid)] == [x for x in ranking if x in six and x != ref][:3]


def test_cirr_submission_scores_like_the_metric():
    """Scoring the exported lists against labels gives the metric's own numbers (same protocol)."""
    ids, rankings, refs, members = _cirr_case(seed=3)
    targets = [six[random.Random(i).randint(1, 5)] for i, six in enumerate(members)]
    recall, subset = cirr_submissions(ids, rankings, refs, members)
    metric = cirr_metrics(rankings, [[t] for t in targets], refs, members)
    for k in (1, 5, 10, 50):
        hits = [t in recall[str(q)][:k] for q, t in zip(ids, targets)]
        assert 100 * sum(hits) / len(hits) == pytest.approx(metric[f"recall@{k}"])
    for k in (1, 2, 3):
        hits = [t in subset[str(q)][:k] for q, t in zip(ids, targets)]
        assert 100 * sum(hits) / len(hits) == pytest.approx(metric[f"recall_subset@{k}"])


def test_circo_file_keeps_reference_and_top_50():
    rankings = [[str(1000 + j) for j in random.Random(i).sample(range(200), 120)] for i in range(4)]
    out = circo_submission(list(range(4)), rankings)
    assert sorted(out) == ["0", "1", "2", "3"]
    assert out["2"] == [int(x) for x in rankings[2][:50]]
    assert circo_submission(["0"], [["a", "7"]], int_ids=True) == {"0": ["a", 7]}
    assert circo_submission(["0"], [["12"]], int_ids=False) == {"0": ["12"]}


def test_writers_are_atomic_and_return_paths(tmp_path):
    ids, rankings, refs, members = _cirr_case(n=3)
    paths = write_cirr_submission(str(tmp_path / "sub"), ids, rankings, refs, members)
    assert [os.path.basename(p) for p in paths] == ["cirr_test_recall.json", "cirr_test_recall_subset.json"]
    assert json.load(open(paths[0]))["metric"] == "recall"
    path = write_circo_submission(str(tmp_path / "sub"), ["0"], [["1", "2"]])
    assert json.load(open(path)) == {"0": [1, 2]}
    assert not [f for f in os.listdir(tmp_path / "sub") if f.startswith(".tmp-")]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(str(target), {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(str(target), {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert os.listdir(tmp_path) == ["out.json"]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: cirr_submissions([1, 1], [["a", "b"], ["a", "b"]], ["a", "a"], [["a", "b"], ["a", "b"]]), "more than once"),
        (lambda: cirr_submissions([1], [["a", "b"]], ["a"], [["a", "b", "c"]]), "lacks subset member.*'c'"),
        (lambda: cirr_submissions([1], [["a", "b"]], [None], [["a", "b"]]), "missing reference"),
        (lambda: cirr_submissions([1], [["a", "b"]], ["a"], None), "one reference id and one subset"),
        (lambda: cirr_submissions(["version"], [["a"]], ["a"], [["a"]]), "collides"),
        (lambda: circo_submission(["0"], [["1", "1"]]), "more than once"),
        (lambda: circo_submission(["0", "1"], [["1"]]), "2 query ids for 1"),
    ],
)
def test_invalid_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_write_submission_refuses_other_protocols(tmp_path):
    from collm_hf.evaluation.scoring import BenchmarkRankings

    rankings = BenchmarkRankings("fashioniq", ["0"], [["a"]], [["a"]], ["r"])
    with pytest.raises(ValueError, match="only cirr and circo"):
        submission.write_submission(str(tmp_path), rankings)
