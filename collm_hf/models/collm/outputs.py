"""What `CoLLMModel` returns (`CoLLMOutput`) and what a training step passes from the image side to the LLM and the
loss (`CoLLMContrastiveInputs`)."""

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class CoLLMOutput(ModelOutput):
    """Output of [`CoLLMModel.forward`].

    Args:
        loss: scalar contrastive loss, when `return_loss=True`.
        query_embeds: (batch, dim) L2-normalised query embeddings.
        target_embeds: (batch, dim) L2-normalised target embeddings, when targets are given.
        logits_per_query: (batch, batch) scaled query-target similarities, when targets are given.
    """

    loss: torch.FloatTensor | None = None
    query_embeds: torch.FloatTensor | None = None
    target_embeds: torch.FloatTensor | None = None
    logits_per_query: torch.FloatTensor | None = None


@dataclass
class CoLLMContrastiveInputs:
    """The LLM inputs of a training step and its targets ([`CoLLMModel.prepare_contrastive_inputs`]).

    Args:
        input_ids, attention_mask: (groups * batch, seq) the query groups stacked (pairs: 3 groups).
        image_embeds: the adapter's input, one row per query with an image placeholder, in order: (images, dim)
            reference embeddings, or (images, tokens, features) patch features (`reference_tokens="patches"`).
        num_groups: query groups sharing the targets (1 for triplets, 3 for pairs).
        target_embeds: (batch, dim) or None; target_image_ids: (batch,) or None.
        query_keys, target_query_keys: (batch,) and (batch, keys) or None: which targets answer which queries
            besides their own (`losses.false_negative_mask`).
        negative_embeds: (references, dim) the batch's distinct reference embeddings f(v_ref), extra negatives of
            every query (`ContrastiveLossConfig.reference_negatives`, triplets), or None.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    image_embeds: torch.Tensor | None
    num_groups: int
    target_embeds: torch.Tensor | None
    target_image_ids: torch.Tensor | None
    query_keys: torch.Tensor | None = None
    target_query_keys: torch.Tensor | None = None
    negative_embeds: torch.Tensor | None = None


__all__ = ["CoLLMContrastiveInputs", "CoLLMOutput"]
