"""LoRA helpers: targets, paper defaults, trainable set, merge; QLoRA (4-bit) on CPU."""

import copy
import re

import numpy as np
import pytest
import torch
from _tiny_training import triplet_batch
from PIL import Image

from collm_hf.training.lora import (
    LoraArguments,
    apply_lora,
    load_lora_adapter,
    lora_config_for,
    lora_target_regex,
    merge_lora,
    quantization_config,
)


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


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """A tiny CLIP folder and a tiny Llama folder (with tokenizer and image processor), saved as from the hub."""
    from transformers import CLIPConfig, CLIPModel, LlamaConfig, LlamaForCausalLM

    from collm_hf.testing_utils import tiny_image_processor, tiny_tokenizer

    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    CLIPModel(CLIPConfig(vision_config={**tower, "image_size": 32, "patch_size": 8}, text_config=tower,
                         projection_dim=24)).save_pretrained(root / "clip")
    tiny_image_processor().save_pretrained(root / "clip")
    tokenizer = tiny_tokenizer()
    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256)
                     ).save_pretrained(root / "llama")
    tokenizer.save_pretrained(root / "llama")
    return root


def test_qlora_from_two_backbones_trains_and_merges_what_was_trained(backbones, tmp_path):
    """`--load_in_4bit` with two backbones quantizes the LLM alone, prepares it for k-bit training (peft's bitsandbytes
    LoRA layers), trains, and saves a merged model in the compute dtype whose embeddings are the adapter's on the
    quantized model: the LoRA update goes into the dequantized NF4 weights."""
    pytest.importorskip("bitsandbytes")
    from _tiny_training import write_triplet_data
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit
    from transformers import AutoModel, AutoProcessor

    from collm_hf.apps.cli import main as cli_main
    from collm_hf.training.arguments import ModelArguments
    from collm_hf.training.trainer import load_model_and_processor

    write_triplet_data(tmp_path / "data")
    model_args = ModelArguments(vision_name_or_path=str(backbones / "clip"), llm_name_or_path=str(backbones / "llama"))
    quantized, _ = load_model_and_processor(model_args, LoraArguments(load_in_4bit=True))
    assert type(quantized.language_model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert all(isinstance(m, torch.nn.Linear) for m in (quantized.projection, quantized.adapter.layers[0],
                                                        quantized.vision_tower.encoder.layers[0].mlp.fc1))
    prepared = apply_lora(copy.deepcopy(quantized), "triplets", LoraArguments(lora_rank=4, load_in_4bit=True))
    assert isinstance(prepared.get_base_model().language_model.layers[0].self_attn.q_proj, LoraLinear4bit)
    assert prepared.get_base_model().language_model.norm.weight.dtype == torch.float32  # k-bit preparation
    del prepared

    run = tmp_path / "run"
    assert cli_main(["train", "triplets", "--vision_name_or_path", str(backbones / "clip"), "--llm_name_or_path",
                     str(backbones / "llama"), "--load_in_4bit", "True", "--dataset", str(tmp_path / "data"),
                     "--output_dir", str(run), "--max_steps", "2", "--learning_rate", "1e-2", "--lora_rank", "4",
                     "--per_device_train_batch_size", "4", "--use_cpu", "True", "--save_strategy", "no",
                     "--dataloader_num_workers", "0", "--report_to", "none"]) == 0

    merged = AutoModel.from_pretrained(run).eval()
    compute = torch.bfloat16  # QLoRA's compute dtype when --dtype is float32
    assert {p.dtype for p in merged.parameters()} == {compute} and merged.config.dtype == compute
    assert not any("4bit" in type(m).__name__ for m in merged.modules())
    adapted = load_lora_adapter(quantized, str(run / "lora_adapter")).eval()
    lora_q = adapted.get_base_model().language_model.layers[0].self_attn.q_proj
    assert isinstance(lora_q, LoraLinear4bit)
    from peft.utils.integrations import dequantize_bnb_weight

    expected = dequantize_bnb_weight(lora_q.base_layer.weight).float() + lora_q.get_delta_weight("default").float()
    trained = merged.language_model.layers[0].self_attn.q_proj.weight
    torch.testing.assert_close(trained, expected.to(compute))
    assert lora_q.get_delta_weight("default").abs().max() > 10 * (expected.to(compute).float() - expected).abs().max()

    processor = AutoProcessor.from_pretrained(run)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)) for _ in range(3)]
    inputs = processor(images=images, text=["make it red", "add a dog", "two cats"])
    with torch.no_grad():
        from_merged = merged.get_query_embeds(**inputs).float()
        from_adapter = adapted.get_base_model().get_query_embeds(**inputs).float()
    assert torch.nn.functional.cosine_similarity(from_merged, from_adapter).min() >= 0.999
