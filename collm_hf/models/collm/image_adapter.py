"""The image adapter `g` of CoLLM (§3.1): the reference image -> `num_visual_tokens` LLM input embeddings.

Two forms, by `CoLLMConfig.reference_tokens`:

- "pooled" (the paper): `CoLLMImageAdapter` maps the reference's gallery embedding f(v), (images, dim), to
  `num_visual_tokens` tokens (one in the paper);
- "patches": `CoLLMPatchAdapter` maps the tower's patch features, (images, tokens, features), token by token, and
  adds a learned position embedding per token, so the LLM knows which part of the image each token shows.
  `reference_patch_features` gives its input: the patch grid (`vision_families.patch_grid`) pooled to a k x k grid
  (`patch_reduction="grid"`: parameter-free, so the features can be cached and interpolated), or the whole grid
  flattened for the learned resampler (`patch_reduction="resampler"`: `num_visual_tokens` learned queries attend
  over every patch, with fixed 2-D sine-cosine positions of the patches).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_collm import CoLLMConfig
from .vision_families import patch_grid


def _projector(config: CoLLMConfig, in_dim: int, out_dim: int) -> nn.Sequential:
    hidden = config.text_config.hidden_size
    if config.adapter_type == "linear":
        return nn.Sequential(nn.Linear(in_dim, out_dim))
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))  # as LLaVA-1.5's projector


class CoLLMImageAdapter(nn.Module):
    """The adapter `g` for `reference_tokens="pooled"`: one image embedding -> `num_visual_tokens` LLM embeddings."""

    def __init__(self, config: CoLLMConfig):
        super().__init__()
        self.num_visual_tokens = config.num_visual_tokens
        self.layers = _projector(config, config.image_embedding_size, config.text_config.hidden_size * self.num_visual_tokens)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        out = self.layers(image_embeds)  # (batch, tokens * hidden)
        return out.view(image_embeds.shape[0], self.num_visual_tokens, -1)  # (batch, tokens, hidden)


def sincos_positions_2d(side: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions of a side x side grid (MAE, Kaiming He et al. 2021), (side * side, dim)."""
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / max(quarter, 1))
    rows, cols = torch.meshgrid(torch.arange(side, device=device), torch.arange(side, device=device), indexing="ij")
    parts = []
    for coordinate in (rows.flatten(), cols.flatten()):
        angles = coordinate.float()[:, None] * frequencies[None]  # (side * side, quarter)
        parts += [angles.sin(), angles.cos()]
    positions = torch.cat(parts, dim=-1)  # (side * side, 4 * quarter)
    return F.pad(positions, (0, dim - positions.shape[-1])).to(dtype or torch.float32)


class CoLLMPatchAdapter(nn.Module):
    """The adapter `g` for `reference_tokens="patches"`: (images, tokens, features) -> (images, n, hidden).

    With `patch_reduction="grid"` the input is already the k x k grid (`reference_patch_features`), mapped token by
    token; with "resampler", `n` learned queries first attend over the whole patch grid (one attention layer).
    Every output token gets a learned position embedding.
    """

    def __init__(self, config: CoLLMConfig):
        super().__init__()
        features, hidden = config.reference_embedding_size, config.text_config.hidden_size
        self.num_visual_tokens = config.num_visual_tokens
        self.resample = config.patch_reduction == "resampler"
        if self.resample:
            heads = next(h for h in (8, 4, 2, 1) if features % h == 0)
            self.queries = nn.Parameter(torch.zeros(self.num_visual_tokens, features))
            self.norm = nn.LayerNorm(features)
            self.attention = nn.MultiheadAttention(features, heads, batch_first=True)
        self.layers = _projector(config, features, hidden)
        self.position_embeddings = nn.Parameter(torch.zeros(self.num_visual_tokens, hidden))

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        if self.resample:
            side = math.isqrt(patch_features.shape[1])
            keys = self.norm(patch_features)  # (images, patches, features)
            keys = keys + sincos_positions_2d(side, keys.shape[-1], keys.device, keys.dtype)
            queries = self.queries.unsqueeze(0).expand(len(patch_features), -1, -1)
            patch_features = self.attention(queries, keys, keys, need_weights=False)[0]  # (images, n, features)
        tokens = self.layers(patch_features)  # (images, n, hidden)
        return tokens + self.position_embeddings


def reference_patch_features(config: CoLLMConfig, vision_outputs) -> torch.Tensor:
    """What `CoLLMPatchAdapter` takes for each reference image: the k x k pooled patch grid ("grid",
    k^2 = `num_visual_tokens`) or the whole grid ("resampler"), as (images, tokens, features)."""
    grid = patch_grid(vision_outputs)  # (images, H, W, features)
    if config.patch_reduction == "grid":
        side = math.isqrt(config.num_visual_tokens)
        pooled = F.adaptive_avg_pool2d(grid.permute(0, 3, 1, 2), side)  # (images, features, k, k)
        return pooled.flatten(2).transpose(1, 2)  # (images, k * k, features)
    return grid.flatten(1, 2)  # (images, H * W, features)


def build_image_adapter(config: CoLLMConfig) -> nn.Module:
    """The adapter `g` the config asks for."""
    return CoLLMPatchAdapter(config) if config.reference_tokens == "patches" else CoLLMImageAdapter(config)


__all__ = ["CoLLMImageAdapter", "CoLLMPatchAdapter", "build_image_adapter", "reference_patch_features",
           "sincos_positions_2d"]
