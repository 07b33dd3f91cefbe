"""Vision tower families: which module is the tower, and which of its outputs is the gallery embedding.

The gallery embedding is fixed per family, so that a CoLLM gallery equals what the source model
itself gives for retrieval:

| family | tower (built from `vision_config`) | gallery embedding `f(v)` |
|---|---|---|
| clip   | `CLIPVisionModel`   | `visual_projection(pooler_output)` = `CLIPModel.get_image_features` |
| siglip | `SiglipVisionModel` | `pooler_output` = `SiglipModel.get_image_features` |
| blip   | `BlipVisionModel`   | `vision_proj(last_hidden_state[:, 0])` of `BlipForImageTextRetrieval` |

A new family is one entry of `VISION_FAMILIES`, not a new model class.
"""

from dataclasses import dataclass

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

# BLIP's retrieval projection size (`BlipConfig.image_text_hidden_size`); vision-only BLIP configs lack it.
BLIP_DEFAULT_PROJECTION_DIM = 256


def resolve_vision_family(vision_config: PreTrainedConfig) -> str:
    """Return the family name of a vision config, or raise a ValueError naming its `model_type`."""
    model_type = vision_config.model_type
    for family in VISION_FAMILIES.values():
        if model_type in family.vision_model_types:
            return family.name
    known = sorted(t for f in VISION_FAMILIES.values() for t in f.vision_model_types)
    raise ValueError(f"Unsupported vision tower model_type {model_type!r}; supported: {known}.")


def vision_embedding_size(family_name: str, vision_config: PreTrainedConfig, projected: bool = True) -> int | None:
    """Output size of the family's projection (None where the family has no projection)."""
    family = VISION_FAMILIES[family_name]
    if not (projected and family.has_projection):
        return None
    if family.name == "clip":
        return vision_config.projection_dim
    return BLIP_DEFAULT_PROJECTION_DIM


def build_vision_tower(vision_config: PreTrainedConfig) -> nn.Module:
    """Instantiate the (randomly initialised) tower for a vision config."""
    family = VISION_FAMILIES[resolve_vision_family(vision_config)]
    if family.name == "blip":  # BlipVisionConfig is not in AutoModel's mapping
        from transformers import BlipVisionModel

        return BlipVisionModel(vision_config)
    return AutoModel.from_config(vision_config)


def build_vision_projection(family_name: str, hidden_size: int, projection_dim: int | None) -> nn.Module | None:
    family = VISION_FAMILIES[family_name]
    if not family.has_projection:
        return None
    return nn.Linear(hidden_size, projection_dim, bias=family.projection_bias)


def pool_vision_output(family_name: str, outputs) -> torch.Tensor:
    """The pooled (pre-projection) image feature of a tower's output. Returns (batch, hidden)."""
    if VISION_FAMILIES[family_name].pooled == "cls":
        return outputs.last_hidden_state[:, 0]
    return outputs.pooler_output


def gallery_embedding_rule(config) -> str:
    """How a `CoLLMConfig`'s gallery embeddings come out of its tower, as a short stable string (recorded by saved
    indexes and embedding caches, so embeddings made by another rule are never mixed with these).

    Example: `"clip:pooler+projection"`, `"blip:cls+projection"`, `"siglip:pooler"`.
    """
    family = VISION_FAMILIES[config.vision_family]
    return f"{family.name}:{family.pooled}" + ("+projection" if family.has_projection else "")


def load_pretrained_vision(name_or_path: str, **kwargs) -> tuple[nn.Module, nn.Module | None, str, int | None]:
    """Load a pretrained tower and its projection from a full or vision-only checkpoint.

    Returns `(tower, projection or None, family name, projection size or None)`; weights are bit-exact copies.
    Weights are read from safetensors only unless the caller passes `use_safetensors=None` (or False).
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
        return tower, projection, family.name, (projection.out_features if projection is not None else None)
    known = sorted(t for f in VISION_FAMILIES.values() for t in f.full_model_types + f.vision_model_types)
    raise ValueError(f"{name_or_path!r} has model_type {config.model_type!r}; supported vision checkpoints: {known}.")
