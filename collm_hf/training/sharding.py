"""Sharded parameters (FSDP2, DeepSpeed ZeRO-3): the pieces `CoLLMTrainer` and `save_trained` use, and the
model-level path for hand-written loops.

- `fully_shard` (FSDP2) refuses 0-dim parameters, and CoLLM's logit scale is one. `vectorize_scalar_parameters`
  turns each into a one-element vector in place (the model computes the same; `CoLLMTrainer` does it whenever
  FSDP is on), and `materialize` (a model) or `restore_scalar_shapes` (a state dict: the Trainer's checkpoints)
  give a gathered state dict back the shapes `from_pretrained` expects.
- `shard_model` applies `fully_shard` to every layer the model names in `_no_split_modules` (the LLM's decoder
  layers, the vision tower's encoder layers: `post_init` collects them from the two sub-models), then to the
  whole model, as accelerate's FSDP2 auto-wrap policy does.
- `materialize` builds a CPU copy of a model (a peft `PeftModel` too) from its config, with empty parameters,
  and fills it with a full state dict gathered from sharded parameters (`Accelerator.get_state_dict`, or
  `torch.distributed.checkpoint.state_dict.get_model_state_dict(..., full_state_dict=True)`); it can then be
  merged (LoRA) and saved with `save_pretrained`.

Example (one process per GPU, after `torch.distributed.init_process_group`):

    >>> vectorize_scalar_parameters(model)  # doctest: +SKIP
    >>> shard_model(model)  # doctest: +SKIP
    >>> ... train ...  # doctest: +SKIP
    >>> full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))  # doctest: +SKIP
    >>> if rank == 0: write_trained(materialize(model, full), "out")  # doctest: +SKIP
"""

import copy

from torch import nn


def vectorize_scalar_parameters(model: nn.Module) -> list[str]:
    """Replace each 0-dim parameter by a one-element vector (same value and `requires_grad`), in place.

    Broadcasting makes every use of such a parameter (a logit scale) compute the same. `fully_shard` needs it;
    DDP, FSDP1 and DeepSpeed do not mind either shape.

    Returns:
        the names of the parameters changed.
    """
    changed = []
    for name, param in list(model.named_parameters()):
        if param.dim() == 0:
            owner_name, _, attribute = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            setattr(owner, attribute, nn.Parameter(param.detach().reshape(1), requires_grad=param.requires_grad))
            changed.append(name)
    return changed


def restore_scalar_shapes(state_dict: dict, names) -> dict:
    """`state_dict` with the one-element vectors `vectorize_scalar_parameters` made (`names`, as it returned them)
    back as 0-dim tensors, the shapes `from_pretrained` expects. Keys may carry or lack a wrapper's prefix."""
    names = tuple(names)

    def vectorized(key: str) -> bool:
        return any(key == n or key.endswith("." + n) or n.endswith("." + key) for n in names)

    return {key: value.reshape(()) if value.shape == (1,) and vectorized(key) else value
            for key, value in state_dict.items()}


def shard_model(model: nn.Module, **fully_shard_kwargs) -> nn.Module:
    """FSDP2: `fully_shard` each module whose class the model names in `_no_split_modules`, then the model.

    Scalar parameters are made one-element vectors first (`vectorize_scalar_parameters`).

    Args:
        model: a `CoLLMModel`, or a peft `PeftModel` around one.
        **fully_shard_kwargs: passed to every `fully_shard` call (`mesh`, `mp_policy`, ...).

    Returns:
        the model, sharded in place.
    """
    from torch.distributed.fsdp import fully_shard

    vectorize_scalar_parameters(model)
    layer_names = set(getattr(model, "_no_split_modules", None) or ())
    if not layer_names:
        raise ValueError(f"{type(model).__name__} names no layers in _no_split_modules to shard.")
    for module in model.modules():
        if module is not model and type(module).__name__ in layer_names:
            fully_shard(module, **fully_shard_kwargs)
    fully_shard(model, **fully_shard_kwargs)
    return model


def parameters_sharded(trainer) -> bool:
    """Whether a `Trainer`'s parameters are sharded across processes (FSDP, or DeepSpeed ZeRO stage 3)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def _empty_copy(model: nn.Module) -> nn.Module:
    """A copy of `model`'s structure built from its config, parameters on the meta device, buffers real."""
    from accelerate import init_empty_weights
    from peft import PeftModel, get_peft_model

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if getattr(base, "is_quantized", False):
        raise ValueError(
            "A quantized model trained with sharded parameters cannot be materialized from its gathered weights; "
            "save the adapter alone (merge_lora_at_end=False) and merge it into the unquantized model."
        )
    config = copy.deepcopy(base.config)
    with init_empty_weights():
        skeleton = type(base)(config)
    if isinstance(model, PeftModel):
        name = model.active_adapter
        skeleton = get_peft_model(skeleton, copy.deepcopy(model.peft_config[name]), adapter_name=name)
    return skeleton


def materialize(model: nn.Module, state_dict: dict) -> nn.Module:
    """A CPU model of `model`'s structure holding `state_dict` (the full weights gathered from sharded parameters).

    Parameters keep the state dict's dtypes; one-element vectors made by `vectorize_scalar_parameters` get back
    the model class's own shapes, so `save_pretrained` writes what `from_pretrained` loads.

    Args:
        model: the trained model (its parameters may be shards or empty placeholders): gives the structure.
        state_dict: its full state dict, every key present.

    Returns:
        a `PreTrainedModel` (or `PeftModel`) on the CPU, in eval mode.
    """
    skeleton = _empty_copy(model)
    expected = skeleton.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise ValueError(f"The gathered state dict lacks {len(missing)} weights, e.g. {missing[:3]}.")
    weights = {}
    for key, value in state_dict.items():
        value = value.full_tensor() if hasattr(value, "full_tensor") else value  # a DTensor not yet gathered
        if key in expected and value.shape != expected[key].shape and value.numel() == expected[key].numel():
            value = value.reshape(expected[key].shape)
        weights[key] = value.detach().to("cpu")
    skeleton.load_state_dict(weights, strict=True, assign=True)
    return skeleton.eval()


__all__ = ["materialize", "parameters_sharded", "restore_scalar_shapes", "shard_model", "vectorize_scalar_parameters"]
