"""LoRA helpers: targets, paper defaults, trainable set, merge; QLoRA (4-bit) on CPU."""

import copy
import re

import numpy as np
import pytest
import torch
from PIL import Image

from collm_hf.training.collators import CoLLMTripletCollator
from collm_hf.training.lora import LoraArguments, apply_lora, lora_config_for, lora_target_regex, merge_lora, quantization_config


def triplet_batch(processor):
    rng = np.random.default_rng(0)
    images = {str(i): Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)) for i in range(4)}
    rows = [{"reference_id": str(i), "target_id": str((i + 1) % 4), "modifications": [f"make it red {i}"]} for i in range(4)]
    return CoLLMTripletCollator(processor, images=images)(rows)


def test_targets_defaults_and_trainable_set(tiny_model_and_processor):
    model, _ = tiny_model_and_processor
    llm_only = lora_target_regex(model)
    names = [n for n, _ in model.named_modules()]
    hit = [n for n in names if re.fullmatch(llm_only, n)]
    assert hit and all(n.startswith("language_model.") for n in hit)
    assert any(n.startswith("vision_tower.") for n in names if re.fullmatch(lora_target_regex(model, vision=True), n))
    assert (lora_config_for(model, "pairs", LoraArguments()).r, lora_config_for(model, "triplets", LoraArguments()).r) == (64, 16)
    assert lora_config_for(model, "triplets", LoraArguments()).lora_alpha == 16
    custom = lora_config_for(model, "pairs", LoraArguments(lora_rank=8))
    assert (custom.r, custom.lora_alpha, custom.lora_dropout) == (8, 8, 0.1)

    peft_model = apply_lora(copy.deepcopy(model), "triplets", LoraArguments(lora_rank=4))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or ".adapter." in n or ".projection." in n for n in trainable)
    assert not any("vision" in n for n in trainable) and any(".adapter." in n for n in trainable)
    assert peft_model.get_base_model().config.learnable_logit_scale is False
    with_vision = apply_lora(copy.deepcopy(model), "triplets", LoraArguments(lora_rank=4, lora_vision_tower=True))
    vision_trainable = [n for n, p in with_vision.named_parameters() if p.requires_grad and "vision_tower" in n]
    assert vision_trainable and all("lora_" in n for n in vision_trainable)


def test_merge_gives_the_same_embeddings(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    peft_model = apply_lora(model, "triplets", LoraArguments(lora_rank=4))
    with torch.no_grad():  # make the LoRA update non-zero
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    batch = triplet_batch(processor)
    peft_model.eval()
    with torch.no_grad():
        before = peft_model(**batch).query_embeds
        merged = merge_lora(peft_model)
        after = merged(**batch).query_embeds
    assert type(merged).__name__ == "CoLLMModel"
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_qlora_four_bit_trains_on_cpu(tmp_path, tiny_model_and_processor):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModel

    model, processor = tiny_model_and_processor
    model.save_pretrained(tmp_path)
    quantized = AutoModel.from_pretrained(tmp_path, quantization_config=quantization_config(torch.float32), dtype=torch.float32)
    assert type(quantized.language_model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert isinstance(quantized.projection, torch.nn.Linear) and isinstance(quantized.adapter.layers[0], torch.nn.Linear)
    peft_model = apply_lora(quantized, "triplets", LoraArguments(lora_rank=4, load_in_4bit=True))
    peft_model.train()
    out = peft_model(**triplet_batch(processor))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if "lora_B" in n)
