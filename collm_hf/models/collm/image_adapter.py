"""The image adapter `g` of CoLLM (§3.1): one image embedding -> `num_visual_tokens` LLM input embeddings."""

import torch
from torch import nn

from .configuration_collm import CoLLMConfig


class CoLLMImageAdapter(nn.Module):
    """The adapter `g`: one image embedding -> `num_visual_tokens` LLM input embeddings."""

    def __init__(self, config: CoLLMConfig):
        super().__init__()
        in_dim, hidden = config.image_embedding_size, config.text_config.hidden_size
        self.num_visual_tokens = config.num_visual_tokens
        out_dim = hidden * config.num_visual_tokens
        if config.adapter_type == "linear":
            self.layers = nn.Sequential(nn.Linear(in_dim, out_dim))
        else:  # 2-layer MLP with GELU, as LLaVA-1.5's projector
            self.layers = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        out = self.layers(image_embeds)  # (batch, tokens * hidden)
        return out.view(image_embeds.shape[0], self.num_visual_tokens, -1)  # (batch, tokens, hidden)


__all__ = ["CoLLMImageAdapter"]
