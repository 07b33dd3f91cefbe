"""PEFT for CoLLM: LoRA on the LLM (optionally the vision tower), adapters that restore the whole model, merge,
and 4-bit QLoRA through bitsandbytes.

- Targets are found by walking the model: every `nn.Linear` (or bitsandbytes linear) under `language_model`
  (and `vision_tower` with `vision=True`), written as one regex over full module names. Bare names such as
  `["q_proj", "v_proj"]` would also hit the CLIP tower, whose attention layers use the same names.
- `modules_to_save` = the adapter `g` and the projection `p`, the modules CoLLM adds, so an adapter folder alone
  restores the model on top of the two pretrained towers. The logit scale is a bare `nn.Parameter`, which
  `modules_to_save` cannot hold; LoRA runs therefore keep the temperature fixed at its initial value
  (`config.logit_scale_init_value`, 1/0.07 by default) and set `config.learnable_logit_scale = False`.
- Paper defaults (CoLLM §5, §9): rank 64 (pre-training on pairs), rank = alpha = 16 (fine-tuning on triplets),
  dropout 0.1. The paper gives no pre-training alpha; alpha = rank here.
"""

import re
from dataclasses import dataclass

import torch
from torch import nn

# (rank, alpha) per training stage (CoLLM §5, §9).
STAGE_LORA_DEFAULTS = {"pairs": (64, 64), "triplets": (16, 16)}
# Modules CoLLM adds to the two pretrained towers; saved whole in an adapter folder.
NEW_MODULES = ["adapter", "projection"]
# Kept in full precision under 4-bit loading: the vision tower (gallery embeddings must not drift), the new modules.
QUANTIZATION_SKIP_MODULES = ["vision_tower", "vision_projection", "adapter", "projection"]


@dataclass
class LoraArguments:
    """LoRA / QLoRA options (parsed by `HfArgumentParser` in examples/train_collm.py)."""

    # Train LoRA adapters (False: full fine-tuning of the LLM, adapter and projection).
    use_lora: bool = True
    # LoRA rank; None = the paper's default of the stage (64 pairs, 16 triplets).
    lora_rank: int | None = None
    # LoRA alpha; None = the stage default (alpha = rank).
    lora_alpha: int | None = None
    # LoRA dropout (paper: 0.1).
    lora_dropout: float = 0.1
    # Also put LoRA on the vision tower's linear layers (the paper freezes it or LoRA-tunes it).
    lora_vision_tower: bool = False
    # Load the LLM in 4-bit NF4 (QLoRA, bitsandbytes); the vision tower and new modules stay in full precision.
    load_in_4bit: bool = False
    # After training, also save the merged model (loadable with AutoModel.from_pretrained) next to the adapter.
    merge_lora_at_end: bool = True


def _linear_names(model: nn.Module, prefix: str) -> list[str]:
    names = set()
    for name, module in model.named_modules():
        if not name.startswith(prefix + "."):
            continue
        if isinstance(module, nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def lora_target_regex(model: nn.Module, vision: bool = False) -> str:
    """A regex (peft `target_modules`) matching the LLM's linear layers (and the vision tower's with `vision`).

    Example:
        >>> lora_target_regex(model)  # doctest: +SKIP
        'language_model\\\\..*\\\\.(?:down_proj|gate_proj|k_proj|o_proj|q_proj|up_proj|v_proj)'
    """
    parts = []
    for prefix in ["language_model"] + (["vision_tower"] if vision else []):
        leaves = _linear_names(model, prefix)
        if leaves:
            parts.append(rf"{prefix}\..*\.(?:{'|'.join(map(re.escape, leaves))})")
    if not parts:
        raise ValueError("No linear layers found under language_model to put LoRA on.")
    return "|".join(parts)


def lora_config_for(model: nn.Module, stage: str, args: LoraArguments):
    """The `peft.LoraConfig` of a stage with the paper's defaults, unless `args` overrides them."""
    from peft import LoraConfig

    rank, alpha = STAGE_LORA_DEFAULTS[stage]
    rank = args.lora_rank or rank
    alpha = args.lora_alpha or (rank if args.lora_rank else alpha)
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=args.lora_dropout,
        target_modules=lora_target_regex(model, vision=args.lora_vision_tower),
        modules_to_save=list(NEW_MODULES),
    )


def apply_lora(model, stage: str, args: LoraArguments, gradient_checkpointing: bool = True):
    """Wrap a `CoLLMModel` with LoRA (`peft.get_peft_model` on the whole composite, so the adapter covers every module).

    Args:
        model: a `CoLLMModel` (possibly with a 4-bit LLM).
        stage: "pairs" or "triplets" (picks the default rank).
        args: `LoraArguments`.
        gradient_checkpointing: passed to `prepare_model_for_kbit_training` for 4-bit models.

    Returns:
        a `peft.PeftModel`; trainable: LoRA weights, the adapter and the projection.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_quantized", False):
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    model.config.learnable_logit_scale = False  # see the module docstring
    peft_model = get_peft_model(model, lora_config_for(model, stage, args))
    base = peft_model.get_base_model()
    base.apply_vision_freezing()  # "projection" also matches vision_projection: keep it as the config says
    if args.lora_vision_tower:
        for name, param in base.vision_tower.named_parameters():
            param.requires_grad_("lora_" in name)
    return peft_model


def merge_lora(peft_model):
    """Merge LoRA weights into the base model and drop the peft wrappers; returns the plain `CoLLMModel`."""
    model = peft_model.merge_and_unload()
    model.apply_vision_freezing()
    return model


def quantization_config(compute_dtype: torch.dtype = torch.bfloat16):
    """4-bit NF4 `BitsAndBytesConfig` (QLoRA) that leaves the vision tower and the new modules unquantised."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=list(QUANTIZATION_SKIP_MODULES),
    )


def load_lora_adapter(base_model, adapter_dir: str, is_trainable: bool = False):
    """Restore a trained model from a base `CoLLMModel` (same towers) and an adapter folder."""
    from peft import PeftModel

    base_model.config.learnable_logit_scale = False
    return PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=is_trainable)


__all__ = [
    "LoraArguments",
    "STAGE_LORA_DEFAULTS",
    "apply_lora",
    "load_lora_adapter",
    "lora_config_for",
    "lora_target_regex",
    "merge_lora",
    "quantization_config",
]
