"""Validation of model inputs at the boundary, so bad tensors fail with a message instead of deep in torch.

Imported relatively by `modeling_collm.py` (it travels with checkpoints for `trust_remote_code`).
"""

import torch


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def check_pixel_values(pixel_values, num_channels: int, name: str = "pixel_values") -> None:
    """(batch >= 1, num_channels, H, W), floating point, finite."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
        raise ValueError(f"{name} must be a 4-D tensor (batch, channels, height, width), got {_describe(pixel_values)}.")
    if pixel_values.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch.")
    if pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"{name} has {pixel_values.shape[1]} channels; the vision tower expects {num_channels} (use the processor)."
        )
    if not pixel_values.is_floating_point():
        raise ValueError(f"{name} must be normalised floats from the processor, got dtype {pixel_values.dtype}.")
    if not torch.isfinite(pixel_values).all():
        raise ValueError(f"{name} contain NaN or infinite values.")


def check_query_tokens(input_ids, attention_mask) -> None:
    """(batch, seq) integer ids and a mask of the same shape with at least one token per row."""
    if input_ids is None or attention_mask is None:
        raise ValueError("A query batch needs input_ids and attention_mask (use CoLLMProcessor).")
    for name, value in (("input_ids", input_ids), ("attention_mask", attention_mask)):
        if not isinstance(value, torch.Tensor) or value.dim() != 2:
            raise ValueError(f"{name} must be a 2-D (batch, seq) tensor, got {_describe(value)}.")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}.")
    if input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ.")
    empty = (attention_mask.sum(-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"attention_mask rows {empty[:10]} have no tokens (empty queries).")


def check_embeds(embeds, width: int, name: str, rows: int | None = None, row_name: str = "batch") -> None:
    """(rows, width) finite floating-point embeddings."""
    if not isinstance(embeds, torch.Tensor) or embeds.dim() != 2 or embeds.shape[-1] != width:
        raise ValueError(f"{name} must be ({row_name}, {width}); got {_describe(embeds)}.")
    _check_values(embeds, name, rows)


def check_reference_embeds(embeds, config, name: str = "image_embeds") -> None:
    """What the adapter takes per reference image: (images, dim) gallery embeddings, or, for a model that feeds the
    reference as patch tokens, (images, tokens, features) patch features (`CoLLMModel.get_reference_embeds`)."""
    if config.reference_tokens == "pooled":
        check_embeds(embeds, config.image_embedding_size, name, row_name="images")
        return
    width = config.reference_embedding_size
    tokens = config.num_visual_tokens if config.patch_reduction == "grid" else "patches"
    if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3 or embeds.shape[-1] != width or (
            tokens != "patches" and embeds.shape[1] != tokens):
        raise ValueError(f"This model feeds the reference as patch tokens: {name} must be (images, {tokens}, {width}) "
                         f"patch features from model.get_reference_embeds(pixel_values), not gallery embeddings; "
                         f"got {_describe(embeds)}.")
    _check_values(embeds, name)


def _check_values(embeds, name: str, rows: int | None = None) -> None:
    if not embeds.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {embeds.dtype}.")
    if rows is not None and embeds.shape[0] != rows:
        raise ValueError(f"{name} has {embeds.shape[0]} rows but the batch has {rows} queries.")
    if not torch.isfinite(embeds).all():
        raise ValueError(f"{name} contain NaN or infinite values.")
