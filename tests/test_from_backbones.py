"""Composing a CoLLM from two pretrained checkpoints (tiny ones saved locally)."""

import pytest
import torch
from transformers import (
    AutoModel,
    BlipConfig,
    BlipForImageTextRetrieval,
    CLIPConfig,
    CLIPModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipConfig,
    SiglipModel,
)

from collm_hf import CoLLMModel, CoLLMProcessor
from collm_hf.models.collm.vision_families import gallery_embedding_rule
from collm_hf.testing_utils import tiny_image_processor, tiny_tokenizer

VISION = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
LLM = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           vocab_size=400, max_position_embeddings=256)


def _full_vision_model(family):
    torch.manual_seed(0)
    if family == "clip":
        return CLIPModel(CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=20))
    if family == "siglip":
        return SiglipModel(SiglipConfig(vision_config=VISION, text_config=TEXT))
    return BlipForImageTextRetrieval(BlipConfig(vision_config=VISION, text_config=dict(TEXT, vocab_size=99),
                                                image_text_hidden_size=16))


def _source_image_features(source, family, pixel_values):
    with torch.no_grad():
        if family == "blip":
            hidden = source.vision_model(pixel_values=pixel_values).last_hidden_state
            return torch.nn.functional.normalize(source.vision_proj(hidden[:, 0]), dim=-1)
        return torch.nn.functional.normalize(source.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)


RULES = {"clip": "clip:pooler+projection", "siglip": "siglip:pooler", "blip": "blip:cls+projection"}


@pytest.fixture(scope="module")
def llm_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("llms")
    torch.manual_seed(1)
    LlamaForCausalLM(LlamaConfig(**LLM)).save_pretrained(root / "llama")
    Qwen2ForCausalLM(Qwen2Config(**LLM)).save_pretrained(root / "qwen2")
    return root


@pytest.mark.parametrize("family", ["clip", "siglip", "blip"])
@pytest.mark.parametrize("llm", ["llama", "qwen2"])
def test_gallery_equals_source_image_features_and_llm_is_bit_exact(tmp_path, llm_checkpoints, family, llm, rgb_images):
    source = _full_vision_model(family).eval()
    source.save_pretrained(tmp_path / family)
    model = CoLLMModel.from_backbones(str(tmp_path / family), str(llm_checkpoints / llm), adapter_type="linear").eval()
    assert model.config.vision_family == family and model.config.adapter_type == "linear"
    # each family keeps its own retrieval feature (other towers: tests/test_vision_backbones.py)
    assert gallery_embedding_rule(model.config) == RULES[family]
    pixel_values = torch.randn(3, 3, 32, 32)
    expected = _source_image_features(source, family, pixel_values)
    with torch.no_grad():
        got = model.get_image_embeds(pixel_values)
    assert (got - expected).abs().max() <= 1e-6
    # the base LLM holds the causal-LM checkpoint's weights exactly (its LM head is dropped)
    causal = AutoModel.from_pretrained(llm_checkpoints / llm)
    for name, tensor in causal.state_dict().items():
        assert torch.equal(model.language_model.state_dict()[name], tensor), name
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert all(p.requires_grad for p in model.adapter.parameters())
    assert all(not p.is_meta for p in model.parameters())


def test_composed_model_saves_and_reloads(tmp_path, llm_checkpoints, rgb_images):
    _full_vision_model("clip").save_pretrained(tmp_path / "clip")
    model = CoLLMModel.from_backbones(str(tmp_path / "clip"), str(llm_checkpoints / "llama")).eval()
    processor = CoLLMProcessor.for_model(tiny_image_processor(), tiny_tokenizer(), model.config)
    inputs = processor(images=rgb_images[:2], text=["make it red", "add a star"])
    model.save_pretrained(tmp_path / "collm")
    reloaded = AutoModel.from_pretrained(tmp_path / "collm").eval()
    with torch.no_grad():
        assert (reloaded.get_query_embeds(**inputs) - model.get_query_embeds(**inputs)).abs().max() <= 1e-5


def test_processor_from_backbones(tmp_path, llm_checkpoints):
    tiny_image_processor().save_pretrained(tmp_path / "vision")
    tiny_tokenizer().save_pretrained(tmp_path / "llm")
    processor = CoLLMProcessor.from_backbones(str(tmp_path / "vision"), str(tmp_path / "llm"), max_text_tokens=9)
    assert processor.max_text_tokens == 9 and processor.tokenizer.eos_token == "</s>"
    assert processor(text=["make it red"])["input_ids"].shape[0] == 1


def test_unsupported_vision_checkpoint_is_clear(tmp_path, llm_checkpoints):
    with pytest.raises(ValueError, match="'llama', which is not a vision model; supported vision checkpoints"):
        CoLLMModel.from_backbones(str(llm_checkpoints / "llama"), str(llm_checkpoints / "llama"))


def test_pickle_only_llm_checkpoint_is_refused(tmp_path, llm_checkpoints):
    _full_vision_model("clip").save_pretrained(tmp_path / "clip")
    llm = LlamaForCausalLM(LlamaConfig(**LLM))
    llm.config.save_pretrained(tmp_path / "pickled")
    torch.save(llm.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    with pytest.raises(Exception, match="safetensors|model.safetensors"):
        CoLLMModel.from_backbones(str(tmp_path / "clip"), str(tmp_path / "pickled"))
    model = CoLLMModel.from_backbones(str(tmp_path / "clip"), str(tmp_path / "pickled"),
                                      llm_kwargs={"use_safetensors": None})  # explicit opt-in
    assert torch.equal(model.language_model.embed_tokens.weight, llm.model.embed_tokens.weight)
