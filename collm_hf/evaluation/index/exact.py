"""Exact top-k by inner product, streamed over the gallery's row blocks with a running top-k.

    (Q, D) queries x [(offset, (n_i, D) block), ...] --exact_search--> (Q, k) scores, (Q, k) gallery positions

The blocks are the index's shards (in memory or memory-mapped), so a search never holds more than one score
block: with torch, `max_block_bytes` of scores per (query block x gallery chunk); with FAISS (`faiss.knn` over
each shard, no copy of it), FAISS's own bounded blocks. Excluded positions are removed inside each block before
its top-k, so the result is exact whatever is excluded.
"""

import torch


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def merge_topk(best_scores, best_indices, scores, indices, k: int):
    """The top-k of two (Q, *) candidate sets. Returns (Q, <=k) scores and indices, best first."""
    scores = torch.cat([best_scores, scores], dim=1)
    indices = torch.cat([best_indices, indices], dim=1)
    top, order = scores.topk(min(k, scores.shape[1]), dim=1)
    return top, indices.gather(1, order)


def _score_block(queries: torch.Tensor, gallery_chunk: torch.Tensor) -> torch.Tensor:
    return queries @ gallery_chunk.T  # (b, chunk)


def _excluded_tensors(excluded: list[list[int]], device):
    rows = torch.tensor([r for r, cols in enumerate(excluded) for _ in cols], dtype=torch.long, device=device)
    cols = torch.tensor([c for cols in excluded for c in cols], dtype=torch.long, device=device)
    return rows, cols


def search_torch(blocks, queries: torch.Tensor, k: int, excluded: list[list[int]], max_block_bytes: int,
                 chunk_size: int | None = None):
    """Exact top-k with torch matmuls, on the blocks' device. blocks: [(offset, (n_i, D))]. Returns (Q, k) x 2."""
    device = blocks[0][1].device
    q_total = queries.shape[0]
    query_block = max(1, min(q_total, 4096))
    if chunk_size is None:
        chunk_size = max(k, max_block_bytes // (4 * query_block))
    chunk_size = max(1, chunk_size)
    excl_rows, excl_cols = _excluded_tensors(excluded, device)
    all_scores, all_indices = [], []
    for q0 in range(0, q_total, query_block):
        q = queries[q0:q0 + query_block].to(device)  # (b, D)
        in_block = (excl_rows >= q0) & (excl_rows < q0 + q.shape[0])
        block_rows, block_cols = excl_rows[in_block] - q0, excl_cols[in_block]
        best_scores = torch.empty(q.shape[0], 0, device=device)
        best_indices = torch.empty(q.shape[0], 0, dtype=torch.long, device=device)
        for offset, shard in blocks:
            for c0 in range(0, shard.shape[0], chunk_size):
                scores = _score_block(q, shard[c0:c0 + chunk_size])  # (b, chunk)
                start = offset + c0
                in_chunk = (block_cols >= start) & (block_cols < start + scores.shape[1])
                if bool(in_chunk.any()):
                    scores[block_rows[in_chunk], block_cols[in_chunk] - start] = float("-inf")
                top_scores, top_idx = scores.topk(min(k, scores.shape[1]), dim=1)  # (b, <=k)
                del scores  # freed before the next block is made: one score block at a time
                best_scores, best_indices = merge_topk(best_scores, best_indices, top_scores, top_idx + start, k)
        all_scores.append(best_scores.cpu())
        all_indices.append(best_indices.cpu())
    return _pad(torch.cat(all_scores), torch.cat(all_indices), k)


def search_faiss(blocks, queries: torch.Tensor, k: int, excluded: list[list[int]]):
    """Exact top-k with `faiss.knn` over each block in place (CPU). Returns (Q, k) scores and indices."""
    import faiss

    xq = queries.detach().cpu().float().contiguous().numpy()
    extra = max((len(e) for e in excluded), default=0)
    banned = [torch.tensor(e, dtype=torch.long) for e in excluded]
    best_scores = torch.empty(len(xq), 0)
    best_indices = torch.empty(len(xq), 0, dtype=torch.long)
    for offset, shard in blocks:
        if shard.shape[0] == 0:
            continue
        xb = shard.detach().cpu().contiguous().numpy()
        fetch = min(shard.shape[0], k + extra)
        scores, indices = faiss.knn(xq, xb, fetch, metric=faiss.METRIC_INNER_PRODUCT)  # (Q, fetch)
        scores, indices = torch.from_numpy(scores), torch.from_numpy(indices).long()
        scores[indices < 0] = float("-inf")
        indices = torch.where(indices < 0, indices, indices + offset)
        if extra:
            for row, positions in enumerate(banned):
                if len(positions):
                    scores[row, torch.isin(indices[row], positions)] = float("-inf")
        best_scores, best_indices = merge_topk(best_scores, best_indices, scores, indices, k)
    return _pad(best_scores, best_indices, k)


def _pad(scores, indices, k):
    """(Q, k) with -inf / -1 where fewer than k gallery rows were left."""
    if scores.shape[1] < k:
        fill = k - scores.shape[1]
        scores = torch.cat([scores, torch.full((len(scores), fill), float("-inf"))], dim=1)
        indices = torch.cat([indices, torch.full((len(indices), fill), -1, dtype=torch.long)], dim=1)
    indices = indices.clone()
    indices[torch.isneginf(scores)] = -1
    return scores, indices


__all__ = ["faiss_available", "merge_topk", "search_faiss", "search_torch"]
