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
- QLoRA (Dettmers et al. 2023): only the LLM's linear layers are quantized (NF4, double quantization); the vision
  tower and the new modules are not. The merged model is written in the compute dtype, from the dequantized NF4
  weights plus the LoRA updates (`merge_lora`), so it gives the embeddings of the adapter on the quantized model.
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
    # Load the LLM in 4-bit NF4 (QLoRA, bitsandbytes); the vision tower and new modules are not quantized. Compute
    # dtype: --dtype (bfloat16 when --dtype is float32); the merged model is saved in it.
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


def is_quantized(model) -> bool:
    """Whether `model` (a `CoLLMModel`) or its LLM was loaded in 4 or 8 bits (bitsandbytes).

    transformers flags the model it loads: the composite when a saved CoLLM is loaded with a quantization config, the
    LLM alone when `CoLLMModel.from_backbones` loads a quantized LLM."""
    parts = (model, getattr(model, "language_model", None))
    return any(getattr(part, flag, False) for part in parts for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit"))


def _flag_quantized(model) -> None:
    """Copy the LLM's quantization flags onto the composite: peft reads them on the model it wraps to pick its
    bitsandbytes LoRA layers (and their merge)."""
    for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if getattr(model.language_model, flag, False):
            setattr(model, flag, True)


def apply_lora(model, stage: str, args: LoraArguments, gradient_checkpointing: bool = True):
    """Wrap a `CoLLMModel` with LoRA (`peft.get_peft_model` on the whole composite, so the adapter covers every module).

    A quantized LLM (QLoRA) is prepared for k-bit training first (`peft.prepare_model_for_kbit_training` on the LLM:
    its non-quantized weights in fp32, activation checkpointing), and its flags are copied onto the composite, which
    peft reads to wrap the 4-bit layers with its bitsandbytes LoRA layers. The vision tower keeps its dtype.

    Args:
        model: a `CoLLMModel` (possibly with a 4-bit LLM).
        stage: "pairs" or "triplets" (picks the default rank).
        args: `LoraArguments`.
        gradient_checkpointing: passed to `prepare_model_for_kbit_training` for 4-bit models.

    Returns:
        a `peft.PeftModel`; trainable: LoRA weights, the adapter and the projection.

    Example:
        >>> peft_model = apply_lora(model, "triplets", LoraArguments(lora_rank=4))  # doctest: +SKIP
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    if is_quantized(model):
        prepare_model_for_kbit_training(
            model.language_model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        _flag_quantized(model)
    model.config.learnable_logit_scale = False  # see the module docstring
    peft_model = get_peft_model(model, lora_config_for(model, stage, args))
    base = peft_model.get_base_model()
    base.apply_vision_freezing()  # "projection" also matches vision_projection: keep it as the config says
    if args.lora_vision_tower:
        for name, param in base.vision_tower.named_parameters():
            param.requires_grad_("lora_" in name)
    return peft_model


def _lora_deltas(model) -> dict[str, torch.Tensor]:
    """{module name: fp32 weight update} of every LoRA layer of `model` (the peft base model), active adapters only."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    deltas[name] = deltas.get(name, 0) + module.get_delta_weight(adapter).float()
    return deltas


def _dequantize(model, deltas: dict[str, torch.Tensor]) -> torch.dtype:
    """Replace every bitsandbytes linear layer of `model` by an `nn.Linear` holding its dequantized weight plus its
    LoRA update (popped from `deltas`; summed in fp32, rounded once to the layers' compute dtype), and drop the
    quantization flags and configs; returns the compute dtype."""
    from peft.utils.integrations import dequantize_bnb_weight

    dtype = getattr(model.language_model, "dtype", torch.float32)
    for name, module in list(model.named_modules()):
        kind = type(module).__name__
        if kind not in ("Linear4bit", "Linear8bitLt"):
            continue
        dtype = getattr(module, "compute_dtype", None) or dtype
        weight = dequantize_bnb_weight(module.weight, getattr(module, "state", None)).float()  # (out, in)
        weight = weight + deltas.pop(name, 0)
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                           device=weight.device, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        model.set_submodule(name, linear)
    for part in (model, model.language_model):
        for attribute in ("hf_quantizer", "quantization_method"):
            if hasattr(part, attribute):
                delattr(part, attribute)
        if hasattr(part.config, "quantization_config"):
            del part.config.quantization_config
        part.is_quantized = part.is_loaded_in_4bit = part.is_loaded_in_8bit = False
    return dtype


def merge_lora(peft_model):
    """Merge LoRA weights into the base model and drop the peft wrappers; returns the plain `CoLLMModel`.

    The merged model holds one dtype, the LLM's: trainable weights kept in fp32 during training are cast back.
    A quantized LLM (QLoRA) is merged into its dequantized weights (what was trained), in the compute dtype: the
    4-bit layers become `nn.Linear`s and the LoRA updates are added in fp32 and rounded once. (peft's own merge
    quantizes the sum to NF4 again: in a tiny test run the update it kept was off by ~70 % of the update's norm.) The result loads with `AutoModel.from_pretrained`.

    Example:
        >>> merged = merge_lora(peft_model)  # doctest: +SKIP
        >>> merged.save_pretrained("runs/merged")  # doctest: +SKIP
    """
    base = peft_model.get_base_model()
    if is_quantized(base):
        deltas = _lora_deltas(base)
        model = peft_model.unload()
        dtype = _dequantize(model, deltas)
        modules = dict(model.named_modules())  # LoRA layers on unquantized modules (the vision tower)
        with torch.no_grad():
            for name, delta in deltas.items():
                weight = modules[name].weight
                weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
    else:
        model = peft_model.merge_and_unload()
        dtype = model.language_model.dtype
    model.to(dtype)
    for config in (model.config, model.config.text_config, model.config.vision_config):
        config.dtype = dtype
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
    """Restore a trained model from a base `CoLLMModel` (same towers, possibly with a 4-bit LLM) and an adapter folder."""
    from peft import PeftModel

    base_model.config.learnable_logit_scale = False
    if is_quantized(base_model):
        _flag_quantized(base_model)
    return PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=is_trainable)


__all__ = [
    "LoraArguments",
    "STAGE_LORA_DEFAULTS",
    "apply_lora",
    "is_quantized",
    "load_lora_adapter",
    "lora_config_for",
    "lora_target_regex",
    "merge_lora",
    "quantization_config",
]
