import pytest
from transformers import AutoConfig, CLIPVisionConfig, LlamaConfig

from collm_hf import CoLLMConfig
from collm_hf.testing_utils import TEXT_CONFIGS, VISION_CONFIGS, tiny_config


def test_defaults_are_tiny_and_paper_options():
    config = CoLLMConfig()
    assert config.text_config.num_hidden_layers <= 2 and config.vision_config.num_hidden_layers <= 2
    assert config.num_visual_tokens == 1 and config.pooling == "last"
    assert config.instruction == "Find the image that matches the query."
    assert config.projection_dim == config.image_embedding_size == config.vision_config.projection_dim


@pytest.mark.parametrize("vision,dim", [("clip", 24), ("siglip", 32), ("blip", 256)])
def test_family_and_embedding_size(vision, dim):
    config = tiny_config(vision, "llama")
    assert config.vision_family == vision
    assert config.image_embedding_size == dim == config.projection_dim


def test_sub_configs_as_objects_and_dicts_round_trip(tmp_path):
    vision = CLIPVisionConfig(**{k: v for k, v in VISION_CONFIGS["clip"].items() if k != "model_type"})
    text = LlamaConfig(**{k: v for k, v in TEXT_CONFIGS["llama"].items() if k != "model_type"}, vocab_size=99)
    config = CoLLMConfig(vision_config=vision, text_config=text, adapter_type="linear", pooling="mean")
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, CoLLMConfig)
    assert loaded.text_config.vocab_size == 99 and loaded.adapter_type == "linear" and loaded.pooling == "mean"
    assert loaded.vision_config.to_dict() == config.vision_config.to_dict()


def test_unknown_vision_tower_is_a_clear_error():
    with pytest.raises(ValueError, match="Unsupported vision tower model_type 'vit'"):
        CoLLMConfig(vision_config={"model_type": "vit", "hidden_size": 32})


def test_bad_options_rejected():
    with pytest.raises(Exception):
        CoLLMConfig(num_visual_tokens=0)
    with pytest.raises(Exception):
        CoLLMConfig(pooling="max")
