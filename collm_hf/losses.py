"""Contrastive losses as pure functions of L2-normalised embeddings.

Called from `CoLLMModel.forward` when `return_loss=True`, so the stock `Trainer` trains the model.
"""

import torch
import torch.nn.functional as F


def info_nce_loss(query_embeds: torch.Tensor, target_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """One-way InfoNCE with in-batch negatives: query i must pick target i.

    Args:
        query_embeds: (batch, dim), L2-normalised.
        target_embeds: (batch, dim), L2-normalised.
        logit_scale: scalar, log of the inverse temperature.

    Returns:
        scalar loss.
    """
    logits = logit_scale.exp() * query_embeds @ target_embeds.t()  # (batch, batch)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels)
