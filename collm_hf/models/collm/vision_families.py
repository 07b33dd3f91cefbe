"""Vision towers: which module is the tower, and which of its outputs is the gallery embedding.

One rule gives the gallery embedding `f(v)` of any tower; `resolve_gallery_pooling` decides it (and its size),
`pool_vision_output` applies it, `gallery_embedding_rule` names it:

1. CLIP, SigLIP and BLIP towers give their family's own retrieval feature, so a CoLLM gallery equals what the
   source model itself gives for retrieval:

   | family | tower (built from `vision_config`) | gallery embedding `f(v)` |
   |---|---|---|
   | clip   | `CLIPVisionModel`   | `visual_projection(pooler_output)` = `CLIPModel.get_image_features` |
   | siglip | `SiglipVisionModel` | `pooler_output` = `SiglipModel.get_image_features` |
   | blip   | `BlipVisionModel`   | `vision_proj(last_hidden_state[:, 0])` of `BlipForImageTextRetrieval` |

2. Any other vision model of transformers' `AutoModel` (DINOv2, ViT, ConvNeXt, ResNet, MobileNet, Swin, ...; the
   "generic" family) has no retrieval head: its gallery embedding is a pooled feature, `CoLLMConfig.vision_pooling`:
   - "pooler": the tower's `pooler_output`, a (batch, C, 1, 1) map flattened to (batch, C);
   - "cls": the class token `last_hidden_state[:, 0]` (towers with a learned `cls_token` / `class_embedding`);
   - "mean": the mean of `last_hidden_state` over its tokens, or over height and width for (batch, C, H, W) maps;
   - "auto" (the default): "pooler" where the tower gives a pooler output whose weights were loaded, else "cls"
     where it has a class token, else "mean".
   A pooler whose weights the checkpoint lacked (a ViT pooler in DINO or MAE checkpoints is random) is never used:
   "auto" falls back to the class token and an explicit "pooler" is refused. The effective choice and the
   embedding size are recorded in the config, so a saved model reloads with the same rule.

A new family with its own retrieval head is one entry of `VISION_FAMILIES`, not a new model class.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from transformers import AutoConfig, AutoModel
from transformers.configuration_utils import PreTrainedConfig


@dataclass(frozen=True)
class VisionFamily:
    name: str
    # `model_type`s of vision-only configs of this family.
    vision_model_types: tuple
    # `model_type`s of full (two-tower) checkpoints whose vision part we take.
    full_model_types: tuple
    # "pooler" = the tower's `pooler_output`; "cls" = `last_hidden_state[:, 0]`.
    pooled: str
    # Whether the family has its own projection after pooling, and whether it has a bias.
    has_projection: bool
    projection_bias: bool = False
    # Attribute of the full model holding the tower, and the one holding its projection.
    tower_attribute: str = "vision_model"
    projection_attribute: str | None = None
    # Auto-style class name to load a full checkpoint with (imported lazily from transformers).
    full_model_class: str = ""
    vision_model_class: str = ""


VISION_FAMILIES = {
    "clip": VisionFamily(
        name="clip", vision_model_types=("clip_vision_model",), full_model_types=("clip",), pooled="pooler",
        has_projection=True, projection_attribute="visual_projection", full_model_class="CLIPModel",
        vision_model_class="CLIPVisionModelWithProjection",
    ),
    "siglip": VisionFamily(
        name="siglip", vision_model_types=("siglip_vision_model",), full_model_types=("siglip",), pooled="pooler",
        has_projection=False, full_model_class="SiglipModel", vision_model_class="SiglipVisionModel",
    ),
    "blip": VisionFamily(
        name="blip", vision_model_types=("blip_vision_model",), full_model_types=("blip",), pooled="cls",
        has_projection=True, projection_bias=True, projection_attribute="vision_proj",
        full_model_class="BlipForImageTextRetrieval", vision_model_class="BlipVisionModel",
    ),
}
# Any other `AutoModel` vision tower: no retrieval head, a pooled feature (`resolve_gallery_pooling`).
GENERIC_FAMILY = "generic"
POOLING_CHOICES = ("pooler", "cls", "mean")
# Parameter names of a learned class token, which such towers put first in `last_hidden_state`.
CLASS_TOKEN_PARAMETERS = ("cls_token", "class_embedding")

# BLIP's retrieval projection size (`BlipConfig.image_text_hidden_size`); vision-only BLIP configs lack it.
BLIP_DEFAULT_PROJECTION_DIM = 256


def _auto_vision_class(config: PreTrainedConfig):
    """The `AutoModel` class of `config` if it is a vision model (its main input is `pixel_values`), else None."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        model_class = MODEL_MAPPING[type(config)]
    except (KeyError, ValueError):
        return None
    return model_class if getattr(model_class, "main_input_name", None) == "pixel_values" else None


def resolve_vision_family(vision_config: PreTrainedConfig) -> str:
    """Return the family name of a vision config ("generic" for any other `AutoModel` vision tower), or raise a
    ValueError naming its `model_type`."""
    model_type = vision_config.model_type
    for family in VISION_FAMILIES.values():
        if model_type in family.vision_model_types:
            return family.name
    if _auto_vision_class(vision_config) is not None:
        return GENERIC_FAMILY
    known = sorted(t for f in VISION_FAMILIES.values() for t in f.vision_model_types)
    raise ValueError(
        f"Unsupported vision tower model_type {model_type!r}: not one of {known} nor a transformers vision model "
        "(an AutoModel whose input is pixel_values)."
    )


def vision_embedding_size(family_name: str, vision_config: PreTrainedConfig, projected: bool = True) -> int | None:
    """Output size of the family's projection (None where the family has no projection)."""
    family = VISION_FAMILIES.get(family_name)
    if family is None or not (projected and family.has_projection):
        return None
    if family.name == "clip":
        return vision_config.projection_dim
    return BLIP_DEFAULT_PROJECTION_DIM


def build_vision_tower(vision_config: PreTrainedConfig) -> nn.Module:
    """Instantiate the (randomly initialised) tower for a vision config."""
    if resolve_vision_family(vision_config) == "blip":  # BlipVisionConfig is not in AutoModel's mapping
        from transformers import BlipVisionModel

        return BlipVisionModel(vision_config)
    return AutoModel.from_config(vision_config)


def build_vision_projection(family_name: str, hidden_size: int, projection_dim: int | None) -> nn.Module | None:
    family = VISION_FAMILIES.get(family_name)
    if family is None or not family.has_projection:
        return None
    return nn.Linear(hidden_size, projection_dim, bias=family.projection_bias)


def resolve_gallery_pooling(
    vision_config: PreTrainedConfig, family_name: str, requested: str | None = "auto", *,
    pooler_weights_missing: bool = False,
) -> tuple[str, int]:
    """The effective gallery pooling of a tower and the size of the pooled feature (the module docstring's rule).

    Args:
        vision_config: the tower's config.
        family_name: "clip", "siglip", "blip" or "generic" (`resolve_vision_family`).
        requested: "auto" (or None), "pooler", "cls" or "mean". CLIP, SigLIP and BLIP accept only "auto" or their
            own pooling.
        pooler_weights_missing: the checkpoint lacked the weights of the tower's pooler, so its output is random.

    Returns:
        `(pooling, size)`: one of "pooler", "cls", "mean", and the pooled feature's size (before any projection).

    Example:
        >>> from transformers import ResNetConfig
        >>> resolve_gallery_pooling(ResNetConfig(hidden_sizes=[8, 16], depths=[1, 1]), "generic")
        ('pooler', 16)
    """
    requested = requested or "auto"
    if requested not in ("auto", *POOLING_CHOICES):
        raise ValueError(f"vision_pooling must be 'auto' or one of {POOLING_CHOICES}, got {requested!r}.")
    family = VISION_FAMILIES.get(family_name)
    if family is not None:
        if requested not in ("auto", family.pooled):
            raise ValueError(f"The {family.name} family's gallery embedding is its retrieval feature "
                             f"({family.pooled}); vision_pooling={requested!r} does not apply.")
        return family.pooled, vision_config.hidden_size
    # Shapes only: a forward pass of the tower on the meta device costs no memory and no arithmetic.
    with torch.device("meta"):
        tower = AutoModel.from_config(vision_config).eval()
        size = getattr(vision_config, "image_size", None) or 224
        height, width = (size, size) if isinstance(size, int) else tuple(size)[-2:]
        pixel_values = torch.empty(1, getattr(vision_config, "num_channels", 3), height, width,
                                   dtype=next(tower.parameters()).dtype)
        with torch.no_grad():
            outputs = tower(pixel_values=pixel_values)
    has_pooler = outputs.get("pooler_output") is not None
    has_class_token = outputs.last_hidden_state.dim() == 3 and any(
        name.rsplit(".", 1)[-1] in CLASS_TOKEN_PARAMETERS for name, _ in tower.named_parameters())
    what = f"The {vision_config.model_type} tower"
    if requested == "auto":
        requested = "pooler" if has_pooler and not pooler_weights_missing else "cls" if has_class_token else "mean"
    elif requested == "pooler" and not has_pooler:
        raise ValueError(f"{what} gives no pooler output; use vision_pooling 'cls' or 'mean'.")
    elif requested == "pooler" and pooler_weights_missing:
        raise ValueError(f"{what}'s checkpoint lacks its pooler weights (the pooler would be random); use "
                         "vision_pooling 'auto', 'cls' or 'mean'.")
    elif requested == "cls" and not has_class_token:
        raise ValueError(f"{what} has no class token; use vision_pooling 'pooler' or 'mean'.")
    return requested, pool_vision_output(requested, outputs).shape[-1]


def pool_vision_output(pooling: str, outputs) -> torch.Tensor:
    """The pooled (pre-projection) image feature of a tower's output. Returns (batch, features).

    Args:
        pooling: "pooler", "cls" or "mean" (`resolve_gallery_pooling`; `CoLLMConfig.vision_pooling`).
        outputs: the tower's output (`last_hidden_state` (batch, tokens, hidden) or (batch, C, H, W), and
            `pooler_output`).
    """
    if pooling == "pooler":
        pooled = outputs.pooler_output  # (batch, hidden), or a (batch, C, 1, 1) map
        return pooled.flatten(2).mean(-1) if pooled.dim() > 2 else pooled  # (batch, C)
    hidden = outputs.last_hidden_state
    if pooling == "cls":
        if hidden.dim() != 3:
            raise ValueError(f"Class-token pooling needs (batch, tokens, hidden) states, got {tuple(hidden.shape)}.")
        return hidden[:, 0]  # (batch, hidden)
    if pooling == "mean":
        return hidden.mean((2, 3)) if hidden.dim() == 4 else hidden.mean(1)  # (batch, C) or (batch, hidden)
    raise ValueError(f"Unknown vision pooling {pooling!r}; expected one of {POOLING_CHOICES}.")


def vision_tower_outputs(tower: nn.Module, pixel_values: torch.Tensor):
    """The tower's raw outputs for `pixel_values` (moved to the tower's device and dtype); autograd records the pass
    only where some tower parameter trains.

    Returns:
        the tower's `ModelOutput`: `last_hidden_state` holds the patch or grid features, (batch, tokens, hidden) for
        transformers, (batch, C, H, W) for CNNs; `pooler_output` where the tower has one.
    """
    parameters = list(tower.parameters())
    track_grad = torch.is_grad_enabled() and any(p.requires_grad for p in parameters)
    with torch.set_grad_enabled(track_grad):
        return tower(pixel_values=pixel_values.to(device=parameters[0].device, dtype=parameters[0].dtype))


def patch_grid(outputs) -> torch.Tensor:
    """The tower's patch / grid features as a grid, for reference images fed to the LLM as patch tokens.

    CNN feature maps (batch, C, H, W) are taken as they are; token sequences (batch, tokens, hidden) lose their
    leading class (and register / distillation) tokens: the patches are the trailing `side * side` tokens, `side`
    the largest whole square root of the token count (towers' image processors give square images).

    Returns:
        (batch, height, width, features), from `last_hidden_state`.
    """
    hidden = outputs.last_hidden_state
    if hidden.dim() == 4:
        return hidden.permute(0, 2, 3, 1)  # (batch, H, W, C)
    side = math.isqrt(hidden.shape[1])
    patches = hidden[:, hidden.shape[1] - side * side:]  # (batch, side * side, hidden)
    return patches.reshape(hidden.shape[0], side, side, hidden.shape[-1])


def gallery_embedding_rule(config) -> str:
    """How a `CoLLMConfig`'s gallery embeddings come out of its tower, as a short stable string (recorded by saved
    indexes and embedding caches, so embeddings made by another rule are never mixed with these).

    Example: `"clip:pooler+projection"`, `"blip:cls+projection"`, `"siglip:pooler"`; for other towers the model
    type and the effective pooling, e.g. `"dinov2:pooler"`, `"vit:cls"`, `"resnet:mean"`.
    """
    return embedding_rule(config.vision_family, config.vision_config.model_type, config.vision_pooling)


def embedding_rule(family_name: str, model_type: str, pooling: str) -> str:
    """`gallery_embedding_rule` from its parts (a family, the tower's `model_type`, the effective pooling)."""
    family = VISION_FAMILIES.get(family_name)
    if family is None:
        return f"{model_type}:{pooling}"
    return f"{family.name}:{family.pooled}" + ("+projection" if family.has_projection else "")


class PretrainedVision(NamedTuple):
    """A loaded tower (`load_pretrained_vision`): what `CoLLMConfig` records about it, and the modules."""

    tower: nn.Module
    projection: nn.Module | None
    family: str
    projection_dim: int | None
    pooling: str
    feature_dim: int

    @property
    def rule(self) -> str:
        """How its embeddings are made, as `gallery_embedding_rule` names it for a CoLLM with this tower."""
        return embedding_rule(self.family, self.tower.config.model_type, self.pooling)


def load_pretrained_vision(name_or_path: str, *, pooling: str | None = "auto", **kwargs) -> PretrainedVision:
    """Load a pretrained tower (and its projection) from a full or vision-only checkpoint.

    CLIP / SigLIP / BLIP checkpoints give their tower and retrieval projection; any other transformers vision
    checkpoint (a base model or a `*ForImageClassification` one) gives its base model, and the gallery pooling is
    resolved with the knowledge of which weights the checkpoint held (`resolve_gallery_pooling`).

    Args:
        name_or_path: a model id or folder.
        pooling: the requested gallery pooling ("auto", "pooler", "cls" or "mean").
        **kwargs: `from_pretrained` keyword arguments. Weights are read from safetensors only unless the caller
            passes `use_safetensors=None` (or False).

    Returns:
        a `PretrainedVision`; its weights are bit-exact copies of the checkpoint's.
    """
    import transformers

    kwargs.setdefault("use_safetensors", True)  # a pickle checkpoint can run code when loaded
    config = AutoConfig.from_pretrained(name_or_path, **{k: v for k, v in kwargs.items()
                                                         if k not in ("dtype", "use_safetensors")})
    for family in VISION_FAMILIES.values():
        if config.model_type in family.full_model_types:
            source = getattr(transformers, family.full_model_class).from_pretrained(name_or_path, **kwargs)
            tower = getattr(source, family.tower_attribute)
        elif config.model_type in family.vision_model_types:
            source = getattr(transformers, family.vision_model_class).from_pretrained(name_or_path, **kwargs)
            tower = getattr(source, family.tower_attribute, source) if family.has_projection else source
        else:
            continue
        projection = getattr(source, family.projection_attribute, None) if family.projection_attribute else None
        if family.has_projection and projection is None:
            raise ValueError(
                f"{name_or_path!r} is a {config.model_type} vision tower without its retrieval projection "
                f"({family.projection_attribute}); pass the full {family.full_model_class} checkpoint."
            )
        pooled, feature_dim = resolve_gallery_pooling(tower.config, family.name, pooling)
        return PretrainedVision(tower, projection, family.name,
                                projection.out_features if projection is not None else None, pooled, feature_dim)
    if _auto_vision_class(config) is None:
        known = sorted(t for f in VISION_FAMILIES.values() for t in f.full_model_types + f.vision_model_types)
        raise ValueError(f"{name_or_path!r} has model_type {config.model_type!r}, which is not a vision model; "
                         f"supported vision checkpoints: {known} or any transformers vision model "
                         "(an AutoModel whose input is pixel_values).")
    tower, info = AutoModel.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    pooler_missing = any(key.startswith("pooler.") for key in info["missing_keys"])
    pooled, feature_dim = resolve_gallery_pooling(tower.config, GENERIC_FAMILY, pooling,
                                                  pooler_weights_missing=pooler_missing)
    return PretrainedVision(tower, None, GENERIC_FAMILY, None, pooled, feature_dim)
