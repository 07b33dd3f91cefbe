"""Contrastive losses as pure functions of L2-normalised embeddings, and their multi-process gathering.

Called from `CoLLMModel.forward` when `return_loss=True`, so the stock `Trainer` trains the model.

- `info_nce_loss`: InfoNCE with in-batch negatives (CLIP, van den Oord et al. 2018), one- or two-way.
- `hn_nce_loss`: hard-negative InfoNCE of Radenovic et al. 2023 ("Filtering, Distillation, and Hard
  Negatives for Vision-Language Pre-Training", eq. 3), the loss CoLLM cites (§3.2); reference code:
  https://github.com/lucas-ventura/CoVR/blob/main/src/model/loss.py (`HardNegativeNCE`).
- `contrastive_loss`: the entry point; gathers queries, targets and ids from every process (with gradients,
  as `torch.distributed.nn.functional.all_gather`), so every process computes the loss of the *global* batch and
  the loss and the gradients do not depend on the number of processes (see `gather_rows`).

False negatives: rows whose targets share an image id (a duplicate image in the batch) are not counted as each
other's negatives; nor is a target that answers another row's query too, where the collator knows it (query keys:
`false_negative_mask`). The temperature is `1 / exp(logit_scale)`: learnable or fixed as `config.learnable_logit_scale`
says, or fixed by `ContrastiveLossConfig.temperature`. The loss arithmetic (similarities, log-sum-exp) runs in fp32
with autocast off, whatever precision the embeddings come in (`full_precision`).

This module imports only torch and the standard library (it travels with checkpoints for trust_remote_code).
"""

import functools
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.distributed as dist
import torch.nn.functional as F

# CLIP clamps the learnt inverse temperature at 100 to keep training stable.
MAX_LOGIT_SCALE = math.log(100.0)
# Padding of `target_query_keys` rows (a value no 64-bit hash key is expected to take).
PAD_QUERY_KEY = 0


@dataclass(frozen=True)
class ContrastiveLossConfig:
    """Options of the contrastive loss: the value of `CoLLMConfig.contrastive_loss` (a plain dict in config.json).

    The default is the loss the paper cites (§3.2): HN-NCE with alpha 1 and beta 0.5, in both directions.
    Frozen, so every change goes through `dataclasses.replace` and is validated again.

    Example:
        >>> from dataclasses import replace
        >>> loss = ContrastiveLossConfig()
        >>> loss.loss_type, loss.two_way
        ('hn_nce', True)
        >>> replace(loss, reference_negatives=True).to_dict()["reference_negatives"]
        True
    """

    # "hn_nce" (Radenovic et al. 2023, the loss the paper cites) or "info_nce" (CLIP's).
    loss_type: str = "hn_nce"
    # Also the target -> query direction (averaged with query -> target), as CLIP and CoVR do.
    two_way: bool = True
    # HN-NCE alpha: weight of the positive in the denominator (1 = InfoNCE-like; CoVR uses 1).
    hn_alpha: float = 1.0
    # HN-NCE beta: hardness of the negative re-weighting (0 = InfoNCE; CoVR uses 0.5).
    hn_beta: float = 0.5
    # A fixed temperature; None uses the model's logit_scale (learnable if config.learnable_logit_scale).
    temperature: float | None = None
    # Gather negatives from every process under torch.distributed (keep True: the loss then ignores world size).
    gather: bool = True
    # Triplet batches: the batch's reference images are negatives of every query too (query -> target direction).
    # A composed query must leave its reference behind: CIRCO's gallery holds the reference, and a query that stays
    # near it ranks it first. In-batch negatives never include it, since targets are edits.
    reference_negatives: bool = False

    def __post_init__(self):
        if self.loss_type not in ("info_nce", "hn_nce"):
            raise ValueError(f"loss_type must be 'info_nce' or 'hn_nce', got {self.loss_type!r}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @classmethod
    def from_dict(cls, options: dict) -> "ContrastiveLossConfig":
        """From the dict `to_dict` wrote; missing keys take the defaults, unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"Unknown contrastive loss option(s) {unknown}; known: {sorted(known)}")
        return cls(**options)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------
# Gathering across processes
# ----------------------------------------------------------------------------------------------------------
def world_size() -> int:
    """Number of processes of the default group (1 without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradients of every process and returns this rank's slice.

    The same as `torch.distributed.nn.functional.all_gather` (deprecated in torch 2.13), with one all_reduce
    in the backward, which every backend (gloo included) has.
    """

    @staticmethod
    def forward(ctx, tensor):
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        return torch.cat(parts)  # (world * rows, ...)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # sum over processes
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_rows(tensor: torch.Tensor, with_grad: bool = True) -> tuple[torch.Tensor, int]:
    """Concatenate `tensor` from every process along dim 0 (rank order); sizes may differ between ranks.

    With gradients (`_AllGatherWithGrad`, as `torch.distributed.nn.functional.all_gather`), the backward pass sums the gradient every
    process computes for this rank's rows. When every process computes the same global loss L, each rank's rows
    receive `world * dL/drow`, and DDP's gradient averaging divides by `world`: the parameter gradients equal
    those of one process on the concatenated batch.

    Args:
        tensor: (rows, ...) this process's rows.
        with_grad: keep the autograd graph (needed for embeddings; not for ids).

    Returns:
        (global_rows, ...) tensor and the offset of this process's rows in it.
    """
    world = world_size()
    if world == 1:
        return tensor, 0
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    padded = tensor
    if tensor.shape[0] < longest:
        filler = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, filler])
    if with_grad and padded.requires_grad:
        gathered = _AllGatherWithGrad.apply(padded)  # (world * longest, ...)
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        gathered = torch.cat(parts)
    out = torch.cat([gathered[r * longest : r * longest + n] for r, n in enumerate(sizes)])
    return out, sum(sizes[: dist.get_rank()])


def gather_padded(tensor: torch.Tensor, pad_value: int) -> tuple[torch.Tensor, int]:
    """`gather_rows` for (rows, length) id tensors whose length differs between processes (no gradient)."""
    world = world_size()
    if world == 1:
        return tensor, 0
    length = torch.tensor([tensor.shape[1]], device=tensor.device, dtype=torch.long)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    dist.all_gather(lengths, length)
    longest = max(int(n) for n in lengths)
    if tensor.shape[1] < longest:
        tensor = F.pad(tensor, (0, longest - tensor.shape[1]), value=pad_value)
    return gather_rows(tensor, with_grad=False)


# ----------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------
def false_negative_mask(
    target_ids: torch.Tensor | None,
    size: int,
    device=None,
    query_keys: torch.Tensor | None = None,
    target_query_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """(size, size) bool: True where target j is not a negative of query i (i != j).

    Either the two rows share a target image id, or query i's key is among target j's query keys: each key
    names a query (e.g. a hash of reference id and modification text, `CoLLMTripletCollator`), and target j's
    keys are the queries it answers. A loose text ("make the circle a different colour") written for one edit of a
    reference is answered as well by its sibling edit (the circle in another colour): that target is a valid answer,
    not a negative.

    Args:
        target_ids: (size,) integer target image ids, or None.
        size: rows in the batch.
        query_keys: (size,) integer key of each row's query, or None.
        target_query_keys: (size, keys) integer keys of the queries each row's target answers (padded with any
            value no query key takes), or None.
    """
    eye = torch.eye(size, dtype=torch.bool, device=device)
    same = torch.zeros((size, size), dtype=torch.bool, device=device)
    if target_ids is not None:
        ids = target_ids.to(device)
        same |= ids[:, None] == ids[None, :]
    if query_keys is not None and target_query_keys is not None:
        keys, answered = query_keys.to(device), target_query_keys.to(device)
        same |= (keys[:, None, None] == answered[None, :, :]).any(-1)  # (size, size)
    return same & ~eye


def _at_least_fp32(tensor):
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        return tensor
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def full_precision(loss_fn):
    """Run a loss with autocast off and its half-precision tensor arguments in fp32.

    Under bf16 autocast a similarity would be a bf16 product (8 bits of mantissa: logits of ~14 carry errors of
    ~0.06), the duplicate test of extra negatives (cosine > 1 - 1e-4) could not tell 0.996 from 1, and the log-sum-exp
    would add them up. The embeddings themselves may come from bf16 towers; only the loss arithmetic is fp32.
    """

    @functools.wraps(loss_fn)
    def wrapper(*args, **kwargs):
        device = next(a for a in args if isinstance(a, torch.Tensor)).device
        with torch.autocast(device.type, enabled=False):
            args = [_at_least_fp32(a) for a in args]
            return loss_fn(*args, **{k: _at_least_fp32(v) for k, v in kwargs.items()})

    return wrapper


@full_precision
def similarity_logits(query_embeds: torch.Tensor, target_embeds: torch.Tensor, logit_scale) -> torch.Tensor:
    """(queries, targets) similarities scaled by `exp(logit_scale)`, in fp32 whatever the inputs' precision or autocast.

    Example:
        >>> q = F.normalize(torch.randn(2, 8), dim=-1).bfloat16()
        >>> similarity_logits(q, q, torch.tensor(0.0)).dtype
        torch.float32
    """
    return logit_scale.exp() * query_embeds @ target_embeds.t()


def _scaled_logits(query_embeds, target_embeds, logit_scale) -> torch.Tensor:
    scale = (
        logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() if isinstance(logit_scale, torch.Tensor) else math.exp(logit_scale)
    )
    return scale * query_embeds @ target_embeds.t()  # (queries, targets), fp32 (`full_precision`)


def distinct_rows(embeds: torch.Tensor) -> torch.Tensor:
    """The first occurrence of each distinct row of `embeds` (rows, dim), with gradients (a reference serves all
    its edits, so a triplet batch's reference rows repeat)."""
    _, inverse = torch.unique(embeds.detach(), dim=0, return_inverse=True)
    rows = torch.arange(len(embeds), device=embeds.device)
    first = torch.full((int(inverse.max()) + 1,), len(embeds), device=embeds.device)
    return embeds[first.scatter_reduce(0, inverse, rows, reduce="amin")]


def with_extra_negatives(logits: torch.Tensor, masked: torch.Tensor, query_embeds, target_embeds, extra, logit_scale):
    """The query -> target `logits` and `masked` (n, n) extended by columns for `extra` (m, dim) negatives: (n, n + m).

    An extra negative that is the row's own target image (cosine > 1 - 1e-4: the same pixels) is masked out."""
    extra_logits = _scaled_logits(query_embeds, extra, logit_scale)  # (n, m)
    same_image = target_embeds @ extra.t() > 1 - 1e-4  # (n, m)
    return torch.cat([logits, extra_logits], 1), torch.cat([masked, same_image], 1)


def _info_nce_rows(logits: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    logits = logits.masked_fill(masked, float("-inf"))
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels)


def _hn_nce_rows(logits: torch.Tensor, masked: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Mean over rows of -log(e^{s_ii} / (alpha e^{s_ii} + sum_{j in neg(i)} w_ij e^{s_ij})),
    w_ij = |neg(i)| e^{beta s_ij} / sum_{k in neg(i)} e^{beta s_ik}, in log space (Radenovic et al. 2023, eq. 3)."""
    n = logits.shape[0]
    eye = torch.eye(n, logits.shape[1], dtype=torch.bool, device=logits.device)  # (n, columns): extra columns last
    negative = ~(eye | masked)  # (n, columns)
    positive = logits.diagonal()  # (n,)
    count = negative.sum(-1).clamp(min=1).to(logits.dtype)  # (n,)
    beta_logits = (beta * logits).masked_fill(~negative, float("-inf"))
    log_weights = count.log()[:, None] + beta_logits - torch.logsumexp(beta_logits, -1, keepdim=True)  # (n, columns)
    weighted_negatives = (logits + log_weights).masked_fill(~negative, float("-inf"))
    log_alpha = math.log(alpha) if alpha > 0 else float("-inf")
    terms = torch.cat([(positive + log_alpha)[:, None], weighted_negatives], dim=1)  # (n, 1 + columns)
    return (torch.logsumexp(terms, -1) - positive).mean()


@full_precision
def info_nce_loss(
    query_embeds: torch.Tensor,
    target_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    target_ids: torch.Tensor | None = None,
    two_way: bool = False,
    extra_negatives: torch.Tensor | None = None,
    query_keys: torch.Tensor | None = None,
    target_query_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE with in-batch negatives: query i must pick target i (no gathering; see `contrastive_loss`).

    Args:
        query_embeds: (batch, dim), L2-normalised.
        target_embeds: (batch, dim), L2-normalised.
        logit_scale: scalar, log of the inverse temperature.
        target_ids: (batch,) integer image ids of the targets; rows sharing an id are not negatives of each other.
        two_way: average with the target -> query direction.
        extra_negatives: (m, dim) L2-normalised negatives of every query (query -> target direction only), e.g.
            the batch's reference images (`ContrastiveLossConfig.reference_negatives`).
        query_keys, target_query_keys: (batch,) and (batch, keys): a target whose keys hold query i's key is
            not a negative of query i (`false_negative_mask`).

    Returns:
        scalar loss.

    Example:
        >>> q = F.normalize(torch.randn(4, 8), dim=-1)
        >>> info_nce_loss(q, q, torch.tensor(2.0)).shape
        torch.Size([])
    """
    logits = _scaled_logits(query_embeds, target_embeds, logit_scale)  # (batch, batch)
    masked = false_negative_mask(target_ids, logits.shape[0], logits.device, query_keys, target_query_keys)
    extended = (logits, masked) if extra_negatives is None else \
        with_extra_negatives(logits, masked, query_embeds, target_embeds, extra_negatives, logit_scale)
    loss = _info_nce_rows(*extended)
    if two_way:
        loss = (loss + _info_nce_rows(logits.t(), masked.t())) / 2
    return loss


@full_precision
def hn_nce_loss(
    query_embeds: torch.Tensor,
    target_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    alpha: float = 1.0,
    beta: float = 0.5,
    target_ids: torch.Tensor | None = None,
    two_way: bool = True,
    extra_negatives: torch.Tensor | None = None,
    query_keys: torch.Tensor | None = None,
    target_query_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hard-negative InfoNCE (HN-NCE, Radenovic et al. 2023): negatives re-weighted by exp(beta * logit).

    alpha = 1, beta = 0 gives InfoNCE exactly. Two-way averages the two directions (CoVR sums them; averaging
    keeps the one- and two-way losses on one scale).

    Args:
        query_embeds, target_embeds: (batch, dim), L2-normalised.
        logit_scale: scalar, log of the inverse temperature.
        alpha: weight of the positive in the denominator.
        beta: hardness of the negative weighting.
        target_ids: (batch,) integer image ids; rows sharing an id are not negatives of each other.
        two_way: average with the target -> query direction.
        extra_negatives: (m, dim) L2-normalised negatives of every query (query -> target direction only).
        query_keys, target_query_keys: (batch,) and (batch, keys), see `false_negative_mask`.

    Returns:
        scalar loss.
    """
    logits = _scaled_logits(query_embeds, target_embeds, logit_scale)  # (batch, batch)
    masked = false_negative_mask(target_ids, logits.shape[0], logits.device, query_keys, target_query_keys)
    extended = (logits, masked) if extra_negatives is None else \
        with_extra_negatives(logits, masked, query_embeds, target_embeds, extra_negatives, logit_scale)
    loss = _hn_nce_rows(*extended, alpha, beta)
    if two_way:
        loss = (loss + _hn_nce_rows(logits.t(), masked.t(), alpha, beta)) / 2
    return loss


def contrastive_loss(
    query_embeds: torch.Tensor,
    target_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    target_ids: torch.Tensor | None = None,
    config: ContrastiveLossConfig | None = None,
    extra_negatives: torch.Tensor | None = None,
    query_keys: torch.Tensor | None = None,
    target_query_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """The configured loss over the global batch (negatives from every process).

    Every process returns the same value: the loss of one process on the concatenated batch.

    Args:
        query_embeds: (batch, dim) this process's queries, L2-normalised.
        target_embeds: (batch, dim) their targets, L2-normalised.
        logit_scale: scalar log inverse temperature (ignored when `config.temperature` is set).
        target_ids: (batch,) integer target image ids for false-negative masking, or None.
        config: `ContrastiveLossConfig` (default: `ContrastiveLossConfig()`, two-way HN-NCE).
        extra_negatives: (m, dim) this process's extra negatives of every query, L2-normalised, or None.
        query_keys, target_query_keys: (batch,) and (batch, keys) this process's query keys and the keys each
            target answers (`false_negative_mask`), or None.

    Returns:
        scalar loss.
    """
    config = config or ContrastiveLossConfig()
    if query_embeds.shape != target_embeds.shape:
        raise ValueError(
            f"query_embeds {tuple(query_embeds.shape)} and target_embeds {tuple(target_embeds.shape)} differ"
        )
    if config.temperature is not None:
        logit_scale = math.log(1.0 / config.temperature)
    if config.gather:
        query_embeds, _ = gather_rows(query_embeds)
        target_embeds, _ = gather_rows(target_embeds)
        if target_ids is not None:
            target_ids, _ = gather_rows(target_ids.to(query_embeds.device), with_grad=False)
        if extra_negatives is not None:
            extra_negatives, _ = gather_rows(extra_negatives)
        if query_keys is not None and target_query_keys is not None:
            query_keys, _ = gather_rows(query_keys.to(query_embeds.device), with_grad=False)
            target_query_keys, _ = gather_padded(target_query_keys.to(query_embeds.device), PAD_QUERY_KEY)
    if config.loss_type == "hn_nce":
        return hn_nce_loss(query_embeds, target_embeds, logit_scale, config.hn_alpha, config.hn_beta, target_ids,
                           config.two_way, extra_negatives, query_keys, target_query_keys)
    return info_nce_loss(query_embeds, target_embeds, logit_scale, target_ids, config.two_way, extra_negatives,
                         query_keys, target_query_keys)


__all__ = [
    "ContrastiveLossConfig",
    "MAX_LOGIT_SCALE",
    "PAD_QUERY_KEY",
    "contrastive_loss",
    "distinct_rows",
    "false_negative_mask",
    "full_precision",
    "gather_padded",
    "gather_rows",
    "hn_nce_loss",
    "info_nce_loss",
    "similarity_logits",
    "with_extra_negatives",
    "world_size",
]
