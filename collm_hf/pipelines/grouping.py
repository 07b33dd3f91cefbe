"""Groups of similar images and the image pairs inside them (CoLLM §4.1, MTCIR; docs/method.md).

The paper forms groups of 6 similar images, each member's similarity to the group's *first* image lying in
a window (0.5-0.95 with CLIP): below the window the images are unrelated, above it they are near-duplicates
with nothing to describe. Pairs are then taken inside each group.

Greedy assignment (the paper does not spell it out; this is our documented choice):
    1. Images are visited in their input order; every image not yet in a group is tried as a group's first
       image (its *seed*).
    2. The candidates are the seed's `num_candidates` nearest images (cosine), kept if their similarity to
       the seed lies in `[low, high]` and they are not yet in a group, ordered by similarity, most similar
       first (ties: input order).
    3. With at least `group_size - 1` candidates, the seed and its first `group_size - 1` candidates form a
       group and leave the pool; otherwise no group is formed (the group would be smaller: dropped), and the
       seed stays in the pool, so a later seed may still take it as a member.
This is deterministic, order-dependent on purpose (shuffle the input for another grouping), and needs only a
k-nearest-neighbour search, so it scales with faiss to millions of images.

Pairs in a group `[m0, ..., m5]`: consecutive members `(m0, m1), (m1, m2), ...` and first-to-every-member
`(m0, m1), (m0, m2), ...`, de-duplicated (the pair `(m0, m1)` is both), in that order: 9 pairs per group of 6.
Each pair is described in both directions (forward m_a -> m_b, backward m_b -> m_a).

Example:
    >>> import torch
    >>> embeds = torch.nn.functional.normalize(torch.randn(100, 16), dim=-1)
    >>> groups = group_images(embeds, group_size=6, low=0.5, high=0.95)  # doctest: +SKIP
    >>> pairs_in_group([0, 1, 2])
    [(0, 1), (1, 2), (0, 2)]
"""

from collections.abc import Sequence

import numpy as np
import torch

DEFAULT_GROUP_SIZE = 6  # the paper's groups of 6
DEFAULT_LOW = 0.5  # similarity window to the group's first image (CLIP cosine in the paper)
DEFAULT_HIGH = 0.95
DEFAULT_NUM_CANDIDATES = 64  # nearest neighbours looked at per seed (exact search when >= number of images)


def nearest_candidates(embeds: torch.Tensor, num_candidates: int, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """The `num_candidates` most similar other images of every image, by cosine similarity.

    Uses a faiss inner-product index when faiss is installed, else a batched matrix product.

    Args:
        embeds: (num_images, dim) L2-normalised embeddings.
        num_candidates: neighbours per image (capped at num_images - 1).
        batch_size: queries per search batch.

    Returns:
        (scores, indices), both (num_images, k): similarities in decreasing order and the neighbours' row
        indices (the image itself excluded; ties broken by the lower index).
    """
    vectors = np.ascontiguousarray(torch.as_tensor(embeds, dtype=torch.float32).cpu().numpy())  # (n, dim)
    n = vectors.shape[0]
    k = min(num_candidates, n - 1)
    if k <= 0:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    try:
        import faiss

        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        search = lambda block: index.search(block, k + 1)
    except ImportError:  # pragma: no cover - faiss is a dependency, this is a fallback
        def search(block):
            sims = block @ vectors.T  # (block, n)
            order = np.argsort(-sims, axis=1, kind="stable")[:, : k + 1]
            return np.take_along_axis(sims, order, 1), order
    scores, indices = np.empty((n, k), np.float32), np.empty((n, k), np.int64)
    for start in range(0, n, batch_size):
        block_scores, block_indices = search(vectors[start:start + batch_size])  # (block, k + 1)
        for row, (s, i) in enumerate(zip(block_scores, block_indices), start=start):
            # Drop the image itself, then order by (-score, index) so ties are deterministic.
            keep = [(float(score), int(j)) for score, j in zip(s, i) if j != row and j >= 0][:k]
            keep.sort(key=lambda item: (-item[0], item[1]))
            scores[row] = [score for score, _ in keep] + [-np.inf] * (k - len(keep))
            indices[row] = [j for _, j in keep] + [-1] * (k - len(keep))
    return scores, indices


def group_images(
    embeds: torch.Tensor,
    group_size: int = DEFAULT_GROUP_SIZE,
    low: float = DEFAULT_LOW,
    high: float = DEFAULT_HIGH,
    num_candidates: int = DEFAULT_NUM_CANDIDATES,
) -> list[list[int]]:
    """Greedy groups of `group_size` similar images (module docstring for the exact rule).

    Args:
        embeds: (num_images, dim) L2-normalised image embeddings.
        group_size: members per group, the first image included (6 in the paper).
        low, high: window of the cosine similarity of every member to the group's first image (inclusive).
        num_candidates: nearest neighbours examined per seed.

    Returns:
        list of groups, each a list of `group_size` row indices, first image first, members by decreasing
        similarity to it. No index appears twice.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2, got {group_size}")
    if not -1.0 <= low <= high <= 1.0:
        raise ValueError(f"need -1 <= low <= high <= 1, got low={low}, high={high}")
    embeds = torch.as_tensor(embeds, dtype=torch.float32)
    if embeds.dim() != 2:
        raise ValueError(f"embeds must be (num_images, dim), got {tuple(embeds.shape)}")
    if not torch.isfinite(embeds).all():
        raise ValueError("embeds contain NaN or infinite values")
    norms = embeds.norm(dim=-1)
    if embeds.shape[0] and not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
        raise ValueError("embeds must be L2-normalised (row norms are not 1)")
    scores, indices = nearest_candidates(embeds, max(num_candidates, group_size - 1))
    assigned = np.zeros(embeds.shape[0], dtype=bool)
    groups = []
    for seed in range(embeds.shape[0]):
        if assigned[seed]:
            continue
        members = [int(j) for s, j in zip(scores[seed], indices[seed])
                   if j >= 0 and not assigned[j] and low <= s <= high][: group_size - 1]
        if len(members) == group_size - 1:
            group = [seed] + members
            assigned[group] = True
            groups.append(group)
    return groups


def pairs_in_group(group: Sequence) -> list[tuple]:
    """Pairs of a group: consecutive members, then first-to-every-member, without repeats (order kept).

    Args:
        group: the members, first image first (ids or indices).

    Returns:
        list of (a, b) tuples; a group of n members gives 2n - 3 pairs (9 for n = 6).
    """
    pairs = [(group[i], group[i + 1]) for i in range(len(group) - 1)]
    pairs += [(group[0], member) for member in group[1:]]
    return list(dict.fromkeys(pairs))


def pairs_from_groups(groups: Sequence[Sequence]) -> list[tuple]:
    """All pairs of all groups (`pairs_in_group`), de-duplicated across groups, in group order."""
    return list(dict.fromkeys(pair for group in groups for pair in pairs_in_group(group)))
