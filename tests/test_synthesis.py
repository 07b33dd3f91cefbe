"""On-the-fly triplet synthesis: Slerp, neighbours, templates, rate, seeding, token assembly, augmentation."""

import math

import pytest
import torch
import torch.nn.functional as F

from collm_hf.models.collm.synthesis import (
    KEEP_CAPTION,
    MODIFICATION_TEMPLATES,
    NEIGHBOR_SLOT,
    TARGET_SLOT,
    TEXT_SLOT,
    ImageAugmentation,
    apply_template,
    assemble_composed_queries,
    assemble_text_ids,
    hash_ids,
    nearest_neighbor_indices,
    pad_id_lists,
    sample_template_choices,
    slerp,
    synthesize_composed_queries,
    synthesize_modification_texts,
    template_token_ids,
)

# Typed again from method.md (CoLLM supplement §7), not copied from the module.
PAPER_TEMPLATES = [
    "show {w_i} instead of {w_j}", "{w_i} instead of {w_j}", "show {w_i} rather than {w_j}",
    "{w_i} rather than {w_j}", "rather than {w_j}, show {w_i}", "rather than {w_j}, {w_i}",
    "instead of {w_j}, {w_i}", "{w_j}, changed to {w_i}", "not {w_j}, but {w_i}", "show {w_i}, not {w_j}",
    "{w_j} is missing, {w_i}", "{w_i}, and {w_j} is missing", "remove {w_j}, add {w_i}",
    "add {w_i}, remove {w_j}", "{w_j} become {w_i}",
]

CAPTIONS = [
    "a red circle on the left", "a small blue square", "the dog is sitting on a wooden bench",
    "two yellow stars at the top", "a large purple cross", "a cyan ring on a white background",
]


def paper_slerp(a, b, alpha):
    theta = torch.arccos((a * b).sum(-1, keepdim=True).clamp(-1, 1))
    return (torch.sin((1 - alpha) * theta) * a + torch.sin(alpha * theta) * b) / torch.sin(theta)


# ----------------------------------------------------------------------------------------------------------
# Slerp
# ----------------------------------------------------------------------------------------------------------
def test_slerp_endpoints_midpoint_and_paper_formula():
    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(16, 8, dtype=torch.float64), dim=-1), F.normalize(torch.randn(16, 8, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    mid = slerp(a, b, 0.5)
    torch.testing.assert_close(mid, F.normalize(a + b, dim=-1))  # the midpoint of the arc bisects a and b
    torch.testing.assert_close((mid * a).sum(-1), (mid * b).sum(-1))
    for alpha in (0.1, 0.3, 0.5, 0.9):
        torch.testing.assert_close(slerp(a, b, alpha), paper_slerp(a, b, alpha))


def test_slerp_preserves_norm_and_normalises_inputs():
    torch.manual_seed(1)
    a, b = torch.randn(64, 32), torch.randn(64, 32)
    for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
        torch.testing.assert_close(slerp(a, b, alpha).norm(dim=-1), torch.ones(64), atol=1e-6, rtol=0)
    angle_a = torch.arccos((slerp(a, b, 0.25) * F.normalize(a, dim=-1)).sum(-1).clamp(-1, 1))
    angle_ab = torch.arccos((F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1).clamp(-1, 1))
    torch.testing.assert_close(angle_a, 0.25 * angle_ab, atol=1e-4, rtol=0)  # constant angular speed


def test_slerp_identical_and_opposite_vectors_are_safe():
    a = F.normalize(torch.randn(4, 8), dim=-1).requires_grad_(True)
    same = slerp(a, a.detach().clone(), 0.5)
    torch.testing.assert_close(same, a.detach())
    opposite = slerp(a, -a.detach(), 0.5)
    assert torch.isfinite(opposite).all()
    torch.testing.assert_close(opposite.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close((opposite * a.detach()).sum(-1), torch.zeros(4), atol=1e-6, rtol=0)  # 90 degrees
    torch.testing.assert_close(slerp(a.detach(), -a.detach(), 1.0), -a.detach())
    (same.sum() + opposite.sum()).backward()
    assert torch.isfinite(a.grad).all()


# ----------------------------------------------------------------------------------------------------------
# Nearest neighbours
# ----------------------------------------------------------------------------------------------------------
def test_neighbor_is_never_itself_and_matches_oracle():
    torch.manual_seed(2)
    embeds = torch.randn(32, 16)
    got = nearest_neighbor_indices(embeds)
    normed = F.normalize(embeds, dim=-1)
    for i in range(32):
        assert got[i] != i
        best = max((j for j in range(32) if j != i), key=lambda j: float(normed[i] @ normed[j]))
        assert got[i] == best
    # All rows identical: the argmax over ties must still skip the row itself.
    assert (nearest_neighbor_indices(torch.ones(5, 4)) != torch.arange(5)).all()


def test_neighbor_never_a_copy_of_the_same_image():
    torch.manual_seed(3)
    base = torch.randn(6, 16)
    embeds = torch.cat([base, base[:3]])  # rows 6, 7, 8 are copies of images 0, 1, 2 (cosine 1)
    ids = ["a", "b", "c", "d", "e", "f", "a", "b", "c"]
    got = nearest_neighbor_indices(embeds, ids)
    for i, j in enumerate(got.tolist()):
        assert j != i and ids[j] != ids[i]
    assert (nearest_neighbor_indices(embeds, hash_ids(ids)) == got).all()  # hashed ids give the same
    with pytest.raises(ValueError, match="no neighbour"):
        nearest_neighbor_indices(torch.randn(3, 4), ["x", "x", "x"])


def test_hash_ids_is_stable_and_distinguishes():
    first, second = hash_ids(["1", "2", "1"]), hash_ids(["1", "2", "1"])
    assert first.dtype == torch.long and (first == second).all()
    assert first[0] == first[2] and first[0] != first[1]
    assert hash_ids([1]) == hash_ids(["1"])


# ----------------------------------------------------------------------------------------------------------
# Templates, rate, seeding
# ----------------------------------------------------------------------------------------------------------
def test_exactly_the_fifteen_paper_templates():
    assert len(MODIFICATION_TEMPLATES) == 15
    assert list(MODIFICATION_TEMPLATES) == PAPER_TEMPLATES
    for template in MODIFICATION_TEMPLATES:
        assert template.count("{w_i}") == 1 and template.count("{w_j}") == 1
    assert apply_template(7, "a cat", "a dog") == "a dog, changed to a cat"
    assert apply_template(KEEP_CAPTION, " a cat ", "a dog") == "a cat"


def test_modification_rate_within_binomial_bound_and_uniform_templates():
    n, rate = 20000, 0.75
    choices = sample_template_choices(n, rate, torch.Generator().manual_seed(0))
    applied = int((choices != KEEP_CAPTION).sum())
    sd = math.sqrt(n * rate * (1 - rate))
    assert abs(applied - n * rate) < 5 * sd  # 5 sigma: false alarm rate ~ 6e-7
    counts = torch.bincount(choices[choices != KEEP_CAPTION], minlength=15).float()
    expected = applied / 15
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 50  # 14 degrees of freedom: p < 1e-5
    assert (sample_template_choices(100, 0.0) == KEEP_CAPTION).all()
    assert (sample_template_choices(100, 1.0) != KEEP_CAPTION).all()
    with pytest.raises(ValueError):
        sample_template_choices(3, 1.5)


def test_row_generators_make_each_rows_choice_its_own():
    """With one generator per row, a row's template choice is what its generator draws alone, whatever the batch."""
    seeds = [3, 1, 4, 1, 5, 9]
    rows = lambda: [torch.Generator().manual_seed(s) for s in seeds]
    batch = sample_template_choices(len(seeds), 0.5, rows())
    alone = [int(sample_template_choices(1, 0.5, [torch.Generator().manual_seed(s)])) for s in seeds]
    assert batch.tolist() == alone
    assert batch[1] == batch[3]  # same seed, same choice
    with pytest.raises(ValueError, match="2 row generators for 3 rows"):
        sample_template_choices(3, 0.5, rows()[:2])


def test_same_seed_same_texts():
    neighbors = CAPTIONS[1:] + CAPTIONS[:1]
    first = synthesize_modification_texts(CAPTIONS * 10, neighbors * 10, generator=torch.Generator().manual_seed(7))
    second = synthesize_modification_texts(CAPTIONS * 10, neighbors * 10, generator=torch.Generator().manual_seed(7))
    other = synthesize_modification_texts(CAPTIONS * 10, neighbors * 10, generator=torch.Generator().manual_seed(8))
    assert first == second and first != other
    formatted = {t.format(w_i=w_i, w_j=w_j) for t in PAPER_TEMPLATES for w_i, w_j in zip(CAPTIONS, neighbors)}
    for text, w_i in zip(first, CAPTIONS * 10):
        assert text == w_i or text in formatted


# ----------------------------------------------------------------------------------------------------------
# Token assembly: ids from pieces equal the processor's ids of the whole string
# ----------------------------------------------------------------------------------------------------------
def test_piecewise_template_ids_equal_whole_string_tokenisation(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    tokenize = lambda text: processor.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for choice in range(-1, 15):
        template = template_token_ids(tokenize, choice)
        assert template.count(TARGET_SLOT) == 1 and template.count(NEIGHBOR_SLOT) == (choice != KEEP_CAPTION)
        for w_i, w_j in zip(CAPTIONS, CAPTIONS[2:] + CAPTIONS[:2]):
            text = apply_template(choice, w_i, w_j)
            got = assemble_text_ids(template, tokenize(" " + w_i), tokenize(" " + w_j))
            assert got == tokenize(" " + text), text


def test_assembled_queries_equal_processor_with_truncation(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    processor.max_text_tokens = 9  # forces truncation of most texts
    tokenize = lambda text: processor.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    pieces = processor.pieces
    frame = pieces["prefix"] + pieces["image"] + pieces["text"] + [TEXT_SLOT] * 9 + pieces["end"]
    choices = [-1, 0, 4, 7, 12, 14]
    neighbors = CAPTIONS[3:] + CAPTIONS[:3]
    input_ids, mask = assemble_composed_queries(
        pad_id_lists([frame] * 6),
        pad_id_lists([template_token_ids(tokenize, c) for c in choices]),
        pad_id_lists([tokenize(" " + c)[:9] for c in CAPTIONS]),
        pad_id_lists([tokenize(" " + c)[:9] for c in neighbors]),
    )
    for row, (choice, w_i, w_j) in enumerate(zip(choices, CAPTIONS, neighbors)):
        expected, _ = processor.build_query_ids(apply_template(choice, w_i, w_j), with_image=True)
        assert input_ids[row][mask[row].bool()].tolist() == expected


def test_synthesize_composed_queries_uses_neighbour_and_slerp(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    tokenize = lambda text: processor.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    pieces = processor.pieces
    frame = pieces["prefix"] + pieces["image"] + pieces["text"] + [TEXT_SLOT] * 64 + pieces["end"]
    torch.manual_seed(4)
    embeds = F.normalize(torch.randn(6, 8), dim=-1)
    ids = hash_ids(["a", "b", "c", "d", "e", "a"])
    out = synthesize_composed_queries(
        embeds, pad_id_lists([tokenize(" " + c) for c in CAPTIONS]), pad_id_lists([template_token_ids(tokenize, 0)] * 6),
        pad_id_lists([frame] * 6), ids,
    )
    expected_neighbors = nearest_neighbor_indices(embeds, ids)
    assert (out.neighbor_indices == expected_neighbors).all()
    torch.testing.assert_close(out.reference_embeds, slerp(embeds, embeds[expected_neighbors], 0.5))
    for row, j in enumerate(expected_neighbors.tolist()):
        expected, _ = processor.build_query_ids(apply_template(0, CAPTIONS[row], CAPTIONS[j]), with_image=True)
        assert out.input_ids[row][out.attention_mask[row].bool()].tolist() == expected


# ----------------------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------------------
def test_augmentation_is_seeded_and_identity_when_disabled():
    images = torch.randn(4, 3, 16, 16)
    augment = ImageAugmentation()
    first = augment(images, torch.Generator().manual_seed(0))
    second = augment(images, torch.Generator().manual_seed(0))
    assert first.shape == images.shape and torch.equal(first, second)
    assert not torch.allclose(first, augment(images, torch.Generator().manual_seed(1)))
    identity = ImageAugmentation(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_probability=0.0)
    torch.testing.assert_close(identity(images, torch.Generator().manual_seed(0)), images, atol=1e-5, rtol=0)
    flip = ImageAugmentation(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_probability=1.0)
    torch.testing.assert_close(flip(images), images.flip(-1), atol=1e-5, rtol=0)


def test_augmentation_with_row_generators_does_not_depend_on_the_batch():
    images = torch.randn(5, 3, 16, 16)
    augment = ImageAugmentation(contrast=0.2)
    rows = lambda: [torch.Generator().manual_seed(s) for s in range(5)]
    batch = augment(images, rows())
    for i, generator in enumerate(rows()):
        torch.testing.assert_close(batch[i : i + 1], augment(images[i : i + 1], [generator]), atol=1e-6, rtol=0)
    shuffled = augment(images[[4, 0, 2]], [rows()[k] for k in (4, 0, 2)])
    torch.testing.assert_close(shuffled, batch[[4, 0, 2]], atol=1e-6, rtol=0)
    assert not torch.allclose(batch[0], batch[1])


def test_slerp_properties_hold_for_arbitrary_vectors():
    pytest.importorskip("hypothesis")
    from hypothesis import given, settings
    from hypothesis import strategies as st

    vectors = st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=4, max_size=4).filter(
        lambda v: sum(x * x for x in v) > 1e-6)

    @settings(max_examples=60, deadline=None)
    @given(vectors, vectors, st.floats(0, 1))
    def check(a, b, alpha):
        a, b = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
        out = slerp(a, b, alpha)
        assert torch.isfinite(out).all()
        assert abs(float(out.norm()) - 1) < 1e-9
        ua, ub = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        total = float(torch.arccos((ua * ub).sum().clamp(-1, 1)))
        to_a = float(torch.arccos((out * ua).sum().clamp(-1, 1)))
        if total < 3.1:  # away from the antipodal case the path is the unique great-circle arc
            assert abs(to_a - alpha * total) < 1e-5

    check()
