"""training/sharding.py in one process: the layers FSDP shards at, the logit scale as a vector, and a model rebuilt
from a full state dict (the two-process FSDP2 run is in test_distributed.py)."""

import copy

import pytest
import torch

from collm_hf.training.sharding import (
    materialize,
    parameters_sharded,
    restore_scalar_shapes,
    vectorize_scalar_parameters,
)


def test_no_split_modules_name_the_sub_models_layers(tiny_model_and_processor):
    """Collected from the towers' own `_no_split_modules`: what FSDP auto-wrap and device maps split at."""
    model, _ = tiny_model_and_processor
    for tower in (model.vision_tower, model.language_model):
        assert set(type(tower)._no_split_modules) <= set(model._no_split_modules)
    assert {"CLIPEncoderLayer", "LlamaDecoderLayer"} <= set(model._no_split_modules)


def test_vectorized_logit_scale_computes_the_same(tiny_model_and_processor):
    from test_distributed import build

    model, _ = tiny_model_and_processor
    _, batch = build("triplets")
    before = model(**batch).loss
    assert vectorize_scalar_parameters(model) == ["logit_scale"] and model.logit_scale.shape == (1,)
    torch.testing.assert_close(model(**batch).loss, before, atol=0, rtol=0)
    assert vectorize_scalar_parameters(model) == []


def test_materialized_lora_model_merges_and_saves_what_the_live_one_does(tiny_model_and_processor, tmp_path):
    from transformers import AutoModel

    from collm_hf.training.lora import LoraArguments, apply_lora
    from collm_hf.training.trainer import write_trained

    model, processor = tiny_model_and_processor
    model = apply_lora(model, "triplets", LoraArguments(lora_rank=4, lora_dropout=0.0), gradient_checkpointing=False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()  # a trained adapter: merging changes the weights
    sharded = copy.deepcopy(model)
    vectorize_scalar_parameters(sharded)  # as under FSDP2
    full = {k: v.clone() for k, v in sharded.state_dict().items()}  # what a gather returns
    gathered_model = materialize(sharded, full)
    assert gathered_model.get_base_model().logit_scale.shape == ()
    write_trained(gathered_model, tmp_path / "gathered", processor)
    write_trained(model, tmp_path / "live", processor)
    pixels = torch.randn(2, 3, 32, 32)
    gathered, live = (AutoModel.from_pretrained(tmp_path / name).eval() for name in ("gathered", "live"))
    with torch.no_grad():
        torch.testing.assert_close(gathered.get_image_embeds(pixels), live.get_image_embeds(pixels), atol=0, rtol=0)
        inputs = processor(text=["make it red", "add a dog"])
        torch.testing.assert_close(gathered.get_query_embeds(**inputs), live.get_query_embeds(**inputs), atol=0, rtol=0)
    assert (tmp_path / "gathered" / "lora_adapter" / "adapter_model.safetensors").exists()
    with pytest.raises(ValueError, match="lacks 1 weights"):
        materialize(sharded, {k: v for k, v in full.items() if k != "base_model.model.projection.original_module.weight"})


def test_a_trainer_without_fsdp_or_zero3_is_not_sharded(tiny_model_and_processor, tmp_path):
    from transformers import Trainer, TrainingArguments

    model, _ = tiny_model_and_processor
    trainer = Trainer(model=model, args=TrainingArguments(tmp_path, use_cpu=True, report_to="none"))
    assert parameters_sharded(trainer) is False


def test_a_checkpoint_of_a_vectorized_model_loads_with_automodel(tiny_model_and_processor, tmp_path):
    """Under FSDP the Trainer saves checkpoints from the vectorized model's state dict: `CoLLMTrainer._save` writes
    the logit scale 0-dim again, so `AutoModel` loads the folder (a (1,) logit scale is refused as a size mismatch)."""
    from transformers import AutoModel, TrainingArguments

    from collm_hf.training.trainer import CoLLMTrainer

    model, processor = tiny_model_and_processor
    with torch.no_grad():
        model.logit_scale.fill_(3.25)
    trainer = CoLLMTrainer(model=model, args=TrainingArguments(tmp_path / "run", use_cpu=True, report_to="none"),
                           processing_class=processor)
    trainer._vectorized_parameters = vectorize_scalar_parameters(trainer.model)  # what FSDP does in __init__
    assert trainer.model.logit_scale.shape == (1,)
    trainer._save(str(tmp_path / "checkpoint"), state_dict=trainer.model.state_dict())
    loaded = AutoModel.from_pretrained(tmp_path / "checkpoint")
    assert loaded.logit_scale.shape == () and float(loaded.logit_scale) == 3.25
    state = {"base_model.model.logit_scale": torch.ones(1), "bias": torch.ones(1)}
    restored = restore_scalar_shapes(state, ["logit_scale"])
    assert restored["base_model.model.logit_scale"].shape == () and restored["bias"].shape == (1,)
