"""Contrastive losses against naive loop oracles; false-negative masking; options."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from collm_hf.models.collm.losses import ContrastiveLossConfig, contrastive_loss, hn_nce_loss, info_nce_loss


def embeddings(n=6, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=-1)
    t = F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=-1)
    return q, t


def naive_info_nce(q, t, scale, ids=None, two_way=False):
    n = len(q)
    sim = [[scale * float(q[i] @ t[j]) for j in range(n)] for i in range(n)]

    def one_direction(s):
        total = 0.0
        for i in range(n):
            keep = [j for j in range(n) if j == i or ids is None or ids[j] != ids[i]]
            total += -s[i][i] + math.log(sum(math.exp(s[i][j]) for j in keep))
        return total / n

    loss = one_direction(sim)
    if two_way:
        loss = (loss + one_direction([list(col) for col in zip(*sim)])) / 2
    return loss


def naive_hn_nce(q, t, scale, alpha, beta, ids=None):
    """Radenovic et al. 2023 eq. 3, one way, written with plain sums (as CoVR's HardNegativeNCE, plus masking)."""
    n, total = len(q), 0.0
    for i in range(n):
        s = [scale * float(q[i] @ t[j]) for j in range(n)]
        negatives = [j for j in range(n) if j != i and (ids is None or ids[j] != ids[i])]
        z = sum(math.exp(beta * s[k]) for k in negatives)
        weighted = sum(len(negatives) * math.exp(beta * s[j]) / z * math.exp(s[j]) for j in negatives)
        total += -math.log(math.exp(s[i]) / (alpha * math.exp(s[i]) + weighted))
    return total / n


@pytest.mark.parametrize("two_way", [False, True])
def test_info_nce_matches_oracle(two_way):
    q, t = embeddings()
    scale = torch.tensor(math.log(10.0), dtype=torch.float64)
    got = info_nce_loss(q, t, scale, two_way=two_way)
    assert float(got) == pytest.approx(naive_info_nce(q, t, 10.0, two_way=two_way), rel=1e-6)


def test_hn_nce_matches_oracle_and_reduces_to_info_nce():
    q, t = embeddings(seed=1)
    scale = torch.tensor(math.log(14.0), dtype=torch.float64)
    for alpha, beta in [(1.0, 0.5), (0.5, 1.0), (1.0, 0.0)]:
        got = hn_nce_loss(q, t, scale, alpha, beta, two_way=False)
        assert float(got) == pytest.approx(naive_hn_nce(q, t, 14.0, alpha, beta), rel=1e-6)
    torch.testing.assert_close(hn_nce_loss(q, t, scale, 1.0, 0.0, two_way=True), info_nce_loss(q, t, scale, two_way=True))
    two_way = hn_nce_loss(q, t, scale, 1.0, 0.5, two_way=True)
    expected = (naive_hn_nce(q, t, 14.0, 1.0, 0.5) + naive_hn_nce(t, q, 14.0, 1.0, 0.5)) / 2
    assert float(two_way) == pytest.approx(expected, rel=1e-6)


def test_duplicate_image_ids_are_masked():
    q, t = embeddings(n=5, seed=2)
    t = torch.cat([t[:4], t[:1]])  # row 4's target is a second copy of row 0's target
    ids = torch.tensor([10, 11, 12, 13, 10])
    scale = torch.tensor(math.log(20.0), dtype=torch.float64)
    for two_way in (False, True):
        got = info_nce_loss(q, t, scale, ids, two_way=two_way)
        assert float(got) == pytest.approx(naive_info_nce(q, t, 20.0, ids.tolist(), two_way), rel=1e-6)
    got = hn_nce_loss(q, t, scale, 1.0, 0.5, ids, two_way=False)
    assert float(got) == pytest.approx(naive_hn_nce(q, t, 20.0, 1.0, 0.5, ids.tolist()), rel=1e-6)
    # Masking changes the loss: without it the copy counts as a (perfectly hard) negative.
    assert float(info_nce_loss(q, t, scale)) > float(info_nce_loss(q, t, scale, ids))
    # Rows whose only other rows are copies give a finite loss.
    assert torch.isfinite(hn_nce_loss(q[:2], t[:1].expand(2, -1), scale, target_ids=torch.tensor([1, 1])))


def naive_info_nce_valid(q, t, scale, valid, two_way=False):
    """InfoNCE whose query i leaves out every target j != i with (i, j) in `valid` (j answers i too)."""
    n = len(q)
    sim = [[scale * float(q[i] @ t[j]) for j in range(n)] for i in range(n)]

    def one_direction(s, pairs):
        total = 0.0
        for i in range(n):
            keep = [j for j in range(n) if j == i or (i, j) not in pairs]
            total += -s[i][i] + math.log(sum(math.exp(s[i][j]) for j in keep))
        return total / n

    loss = one_direction(sim, valid)
    if two_way:
        loss = (loss + one_direction([list(col) for col in zip(*sim)], {(j, i) for i, j in valid})) / 2
    return loss


def test_targets_that_answer_a_query_by_its_key_are_not_its_negatives():
    q, t = embeddings(n=5, seed=6)
    # Row 0 drew text key 7, which rows 1 and 3 list among the texts their targets answer; row 2 drew key 9, listed
    # by row 4 only; 0 pads. Row 4's own key (5) is nowhere else.
    query_keys = torch.tensor([7, 8, 9, 7, 5])
    target_query_keys = torch.tensor([[7, 0, 0], [8, 7, 0], [9, 0, 0], [7, 3, 0], [5, 9, 2]])
    valid = {(0, 1), (0, 3), (3, 0), (3, 1), (2, 4)}
    scale = torch.tensor(math.log(20.0), dtype=torch.float64)
    from collm_hf.models.collm.losses import false_negative_mask

    mask = false_negative_mask(None, 5, None, query_keys, target_query_keys)
    assert {(i, j) for i in range(5) for j in range(5) if mask[i, j]} == valid
    for two_way in (False, True):
        got = info_nce_loss(q, t, scale, two_way=two_way, query_keys=query_keys, target_query_keys=target_query_keys)
        assert float(got) == pytest.approx(naive_info_nce_valid(q, t, 20.0, valid, two_way), rel=1e-6)
    # with target ids as well, both reasons mask (row 2's and row 4's targets are one image)
    ids = torch.tensor([1, 2, 3, 4, 3])
    got = info_nce_loss(q, t, scale, ids, query_keys=query_keys, target_query_keys=target_query_keys)
    assert float(got) == pytest.approx(naive_info_nce_valid(q, t, 20.0, valid | {(4, 2)}), rel=1e-6)
    # HN-NCE at beta 0, alpha 1 is InfoNCE, masks included; contrastive_loss passes the keys through
    hn = hn_nce_loss(q, t, scale, 1.0, 0.0, two_way=True, query_keys=query_keys, target_query_keys=target_query_keys)
    assert float(hn) == pytest.approx(naive_info_nce_valid(q, t, 20.0, valid, True), rel=1e-6)
    config = ContrastiveLossConfig(loss_type="info_nce", two_way=True)
    got = contrastive_loss(q, t, scale, config=config, query_keys=query_keys, target_query_keys=target_query_keys)
    assert float(got) == pytest.approx(naive_info_nce_valid(q, t, 20.0, valid, True), rel=1e-6)


def naive_with_references(q, t, r, scale, alpha=1.0, beta=0.0):
    """One-way HN-NCE (InfoNCE at alpha 1, beta 0) whose negatives are the other targets plus every reference in
    `r` that is not the row's own target."""
    n, total = len(q), 0.0
    for i in range(n):
        s = [scale * float(q[i] @ x) for x in list(t) + list(r)]
        negatives = [j for j in range(n) if j != i] + [n + k for k in range(len(r)) if float(t[i] @ r[k]) < 1 - 1e-4]
        z = sum(math.exp(beta * s[k]) for k in negatives)
        weighted = sum(len(negatives) * math.exp(beta * s[j]) / z * math.exp(s[j]) for j in negatives)
        total += -math.log(math.exp(s[i]) / (alpha * math.exp(s[i]) + weighted))
    return total / n


def test_reference_negatives_extend_the_query_side_only():
    q, t = embeddings(n=5, seed=4)
    r, _ = embeddings(n=3, seed=5)
    r = torch.cat([r, t[2:3]])  # the last "reference" is row 2's own target: never its negative
    scale = torch.tensor(math.log(20.0), dtype=torch.float64)
    got = info_nce_loss(q, t, scale, extra_negatives=r)
    assert float(got) == pytest.approx(naive_with_references(q, t, r, 20.0), rel=1e-6)
    assert float(got) > float(info_nce_loss(q, t, scale))  # more negatives, higher loss
    hard = hn_nce_loss(q, t, scale, 0.5, 1.0, two_way=False, extra_negatives=r)
    assert float(hard) == pytest.approx(naive_with_references(q, t, r, 20.0, 0.5, 1.0), rel=1e-6)
    # the target -> query direction is unchanged: two-way = (extended one-way + plain reverse) / 2
    two_way = info_nce_loss(q, t, scale, two_way=True, extra_negatives=r)
    reverse = 2 * float(info_nce_loss(q, t, scale, two_way=True)) - float(info_nce_loss(q, t, scale))
    assert float(two_way) == pytest.approx((float(got) + reverse) / 2, rel=1e-6)
    config = ContrastiveLossConfig(loss_type="info_nce", two_way=False, reference_negatives=True)
    torch.testing.assert_close(contrastive_loss(q, t, scale, config=config, extra_negatives=r), got)


def test_contrastive_loss_dispatch_temperature_and_gradients():
    q, t = embeddings(seed=3)
    scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    plain = contrastive_loss(q, t, scale, config=ContrastiveLossConfig(loss_type="info_nce", two_way=False))
    torch.testing.assert_close(plain, info_nce_loss(q, t, scale))
    default = contrastive_loss(q, t, scale)  # the one default: the paper's HN-NCE, two-way
    torch.testing.assert_close(default, hn_nce_loss(q, t, scale, 1.0, 0.5, two_way=True))
    fixed = contrastive_loss(q, t, scale, config=ContrastiveLossConfig(loss_type="info_nce", temperature=0.5))
    torch.testing.assert_close(fixed, info_nce_loss(q, t, math.log(2.0), two_way=True))
    plain.backward()
    assert scale.grad is not None and torch.isfinite(scale.grad)
    big = torch.tensor(10.0, dtype=torch.float64)  # clamped to log(100), as CLIP does
    torch.testing.assert_close(info_nce_loss(q, t, big), info_nce_loss(q, t, torch.tensor(math.log(100.0), dtype=torch.float64)))


def test_loss_config_validation_and_round_trip():
    config = ContrastiveLossConfig(loss_type="info_nce", hn_beta=0.25, reference_negatives=True)
    assert ContrastiveLossConfig.from_dict(config.to_dict()) == config
    assert ContrastiveLossConfig.from_dict({}) == ContrastiveLossConfig()
    default = ContrastiveLossConfig()
    assert (default.loss_type, default.two_way, default.hn_alpha, default.hn_beta) == ("hn_nce", True, 1.0, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):  # changes go through `replace`, validated again
        default.loss_type = "triplet"
    with pytest.raises(ValueError, match="loss_type"):
        dataclasses.replace(default, loss_type="triplet")
    with pytest.raises(ValueError, match="Unknown contrastive loss option"):
        ContrastiveLossConfig.from_dict({"tau": 1})
    with pytest.raises(ValueError, match="loss_type"):
        ContrastiveLossConfig(loss_type="triplet")
    with pytest.raises(ValueError, match="shape|differ"):
        contrastive_loss(torch.randn(3, 4), torch.randn(2, 4), torch.tensor(1.0))
