"""CoLLM configuration: a vision tower, a language model and the options that join them.

Like `LlavaConfig`, a `CoLLMConfig` holds two sub-configs, each given as a dict (with `model_type`) or a
config object:

- `vision_config`: any vision tower of transformers: CLIP, SigLIP and BLIP towers give their own retrieval
  feature as the gallery embedding; any other (DINOv2, ViT, ConvNeXt, ResNet, Swin, ...) a pooled feature, by the
  one rule of `vision_families.py` (`vision_pooling`).
- `text_config`: any decoder LLM (Llama, Qwen2, Mistral, ...) or a text encoder (BERT).

The defaults of both sub-configs are deliberately tiny (a 2-layer CLIP vision tower and a 2-layer Llama):
a default full-size LLM config would silently allocate billions of parameters. Real models are built with
`CoLLMModel.from_backbones(...)` or from explicit sub-configs.
"""

import math
from dataclasses import field
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.models.auto.configuration_auto import AutoConfig

from .losses import ContrastiveLossConfig
from .vision_families import resolve_gallery_pooling, resolve_vision_family, vision_embedding_size

# The paper's prompt (CoLLM §7.2). `{image}` and `{text}` mark where the two query parts go; a missing
# modality's part is dropped (text-only and image-only queries).
DEFAULT_INSTRUCTION = "Find the image that matches the query."
# The loss of a config saved without a loss section (`"contrastive_loss": null` or no key, as collm-hf 0.1 wrote
# it): that default was one-way InfoNCE, so such a checkpoint keeps the loss it trained with.
UNSPECIFIED_LOSS = ContrastiveLossConfig(loss_type="info_nce", two_way=False)


@strict
class CoLLMConfig(PreTrainedConfig):
    r"""Configuration of a [`CoLLMModel`].

    Args:
        vision_config (`dict` or `PreTrainedConfig`): the vision tower `f`.
        text_config (`dict` or `PreTrainedConfig`): the language model `Φ`.
        vision_family (`str`, *optional*): "clip", "siglip", "blip", or "generic" for any other vision tower;
            inferred from `vision_config`.
        vision_projection_dim (`int`, *optional*): size of the tower's own projection (CLIP `projection_dim`,
            BLIP `image_text_hidden_size`); inferred from the family. SigLIP and generic towers have none.
        vision_pooling (`str`, *optional*): how a generic tower's output becomes the gallery embedding: "pooler",
            "cls", "mean", or "auto" (None): pooler output, else class token, else mean of the last hidden state
            (`vision_families.resolve_gallery_pooling`). Replaced by the effective choice; CLIP, SigLIP and BLIP
            record their own.
        vision_feature_dim (`int`, *optional*): size of the pooled feature before any projection; inferred.
        reference_tokens (`str`, defaults to "pooled"): what the reference becomes in the LLM: "pooled" (its gallery
            embedding, the paper's single visual token) or "patches" (the tower's patch features).
        patch_reduction (`str`, defaults to "grid"): with "patches", "grid" (adaptive pooling to k x k) or
            "resampler" (learned queries).
        num_visual_tokens (`int`, defaults to 1): tokens the image occupies in the LLM input.
        adapter_type (`str`, defaults to "mlp"): the image adapter `g`.
        pooling (`str`, defaults to "last"): how the LLM's hidden states become one vector.
        instruction (`str`, *optional*): the instruction of the prompt; None drops the instruction line, so a
            query is `[IMAGE] Text: [TEXT]` only (for an LLM trained from scratch, to which the constant line is
            only cost).
        projection_dim (`int`, *optional*): size of the retrieval space; defaults to the image embedding size.
        logit_scale_init_value (`float`): initial log of the inverse temperature.
        learnable_logit_scale (`bool`): whether the temperature is trained.
        freeze_vision_tower (`bool`): whether the vision tower is frozen.
        image_token_id (`int`): the placeholder id of image tokens in `input_ids`.
        slerp_alpha (`float`): neighbour weight of the Slerp in pair pre-training.
        contrastive_loss (`ContrastiveLossConfig` or `dict`, *optional*): the loss options; a dict (config.json's
            form) becomes a `ContrastiveLossConfig` when set. Defaults to `ContrastiveLossConfig()`, two-way HN-NCE.

    Example:

    ```python
    >>> from collm_hf import CoLLMConfig
    >>> config = CoLLMConfig(
    ...     vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 37,
    ...                    "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 32, "patch_size": 8,
    ...                    "projection_dim": 16},
    ...     text_config={"model_type": "llama", "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
    ...                  "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100},
    ... )
    >>> config.vision_family, config.projection_dim
    ('clip', 16)
    ```
    """

    model_type = "collm"

    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "image_size": 32, "patch_size": 8, "projection_dim": 32},
        ),
        "text_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="llama",
            init_kwargs={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024,
                         "max_position_embeddings": 512},
        ),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    # Which embedding of the tower is the gallery embedding (`vision_families.py`); inferred from the tower's type.
    vision_family: str | None = None
    # Output size of the tower's own projection layer (CLIP projection_dim, BLIP image_text_hidden_size).
    vision_projection_dim: int | None = None
    # Towers without a retrieval head: which output is pooled into the gallery embedding ("auto" = pooler output,
    # else class token, else mean); recorded as the effective choice, so a saved model reloads with the same rule.
    vision_pooling: Literal["auto", "pooler", "cls", "mean"] | None = None
    # Size of that pooled feature (the gallery embedding where the tower has no projection); inferred from the tower.
    vision_feature_dim: int | None = None
    # What the reference image becomes in the LLM: "pooled" = its gallery embedding f(v) through the adapter (the
    # paper, §3.1); "patches" = the tower's patch / grid features, reduced to `num_visual_tokens` tokens with their
    # positions, so attributes stay bound to places (the paper's single token is a limitation it names, §6).
    reference_tokens: Literal["pooled", "patches"] = "pooled"
    # "patches": how the patch grid becomes `num_visual_tokens` tokens: "grid" = adaptive average pooling to a k x k
    # grid (k^2 tokens, no parameters); "resampler" = that many learned queries attending over every patch.
    patch_reduction: Literal["grid", "resampler"] = "grid"
    # The paper feeds a single visual token (§3.1); >1 maps the image embedding to several tokens (an extension).
    # With reference_tokens="patches": the number of patch tokens (a square for patch_reduction="grid").
    num_visual_tokens: int = 1
    # The paper does not give the adapter; a 2-layer MLP (as LLaVA-1.5) is the default, "linear" the cheap one.
    adapter_type: Literal["linear", "mlp"] = "mlp"
    # SFR-Embedding / E5-Mistral pool the appended end-of-sequence token ("last"); "mean" for encoders.
    pooling: Literal["last", "mean"] = "last"
    # The paper's instruction (§7.2): "Instruct: {instruction}\nQuery: Image: [IMAGE] Text: [TEXT]". None drops the
    # "Instruct: {instruction}\nQuery:" line: a pretrained LLM reads it, one trained from scratch (the quickstart)
    # gains nothing from tokens every query shares (their causal states are constant) and pays for them.
    instruction: str | None = DEFAULT_INSTRUCTION
    # Targets live in the vision embedding space, so the query projection `p` maps there (None = that size).
    projection_dim: int | None = None
    # log(1 / 0.07), the CLIP and HN-NCE-for-CIR temperature.
    logit_scale_init_value: float = 2.6592
    # CLIP learns its temperature; set False to keep it fixed at the initial value.
    learnable_logit_scale: bool = True
    # Pretrained towers are frozen in the paper; a tower trained from scratch (the quickstart) must not be.
    freeze_vision_tower: bool = True
    # Placeholder id for image tokens in `input_ids`; negative, as in the original LLaVA code (-200), so it
    # can never collide with text and the LLM vocabulary is not resized.
    image_token_id: int = -200
    # Slerp weight of the neighbour in on-the-fly triplet synthesis (CoLLM §3.2: 0.5 is best in the ablation).
    slerp_alpha: float = 0.5
    # Options of the contrastive loss; default: the loss the paper cites (HN-NCE, both directions). A dict is converted.
    contrastive_loss: ContrastiveLossConfig | dict = field(default_factory=ContrastiveLossConfig)
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.vision_family is None:
            self.vision_family = resolve_vision_family(self.vision_config)
        if self.vision_projection_dim is None:
            self.vision_projection_dim = vision_embedding_size(self.vision_family, self.vision_config, projected=True)
        if self.vision_pooling in (None, "auto") or self.vision_feature_dim is None:
            self.vision_pooling, self.vision_feature_dim = resolve_gallery_pooling(
                self.vision_config, self.vision_family, self.vision_pooling)
        if self.projection_dim is None:
            self.projection_dim = self.image_embedding_size
        if self.num_visual_tokens < 1:
            raise ValueError(f"num_visual_tokens must be >= 1, got {self.num_visual_tokens}")
        if self.reference_tokens == "patches" and self.patch_reduction == "grid":
            side = math.isqrt(self.num_visual_tokens)
            if side * side != self.num_visual_tokens:
                raise ValueError(f"reference_tokens='patches' with patch_reduction='grid' pools the patches to a k x k "
                                 f"grid: num_visual_tokens must be a square, got {self.num_visual_tokens}.")

    def __setattr__(self, key, value):
        # The loss options are typed in memory: a dict (from config.json, or assigned) is parsed once, here,
        # whether it comes in through the constructor or a later assignment.
        if key == "contrastive_loss" and isinstance(value, dict):
            value = ContrastiveLossConfig.from_dict(value)
        super().__setattr__(key, value)

    def to_dict(self) -> dict:
        output = super().to_dict()
        output["contrastive_loss"] = self.contrastive_loss.to_dict()  # always written, so it always round-trips
        return output

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """As `PreTrainedConfig.from_dict`; a dict without a loss section (collm-hf 0.1's configs) gets
        `UNSPECIFIED_LOSS`, the loss such a checkpoint trained with, not today's default."""
        return super().from_dict(_with_loss_section(config_dict), **kwargs)

    @classmethod
    def from_json_file(cls, json_file):
        return cls(**_with_loss_section(cls._dict_from_json_file(json_file)))

    @property
    def reference_embedding_size(self) -> int:
        """Size of what the adapter takes per reference token: the gallery embedding ("pooled"), or the tower's
        patch feature ("patches")."""
        return self.image_embedding_size if self.reference_tokens == "pooled" else self.vision_feature_dim

    @property
    def image_embedding_size(self) -> int:
        """Size of the gallery embedding `f(v)` (the tower's projection, or its pooled feature)."""
        return self.vision_projection_dim or self.vision_feature_dim


def _with_loss_section(config_dict: dict) -> dict:
    if config_dict.get("contrastive_loss") is not None:
        return config_dict
    return {**config_dict, "contrastive_loss": UNSPECIFIED_LOSS.to_dict()}


__all__ = ["CoLLMConfig", "DEFAULT_INSTRUCTION", "UNSPECIFIED_LOSS"]
