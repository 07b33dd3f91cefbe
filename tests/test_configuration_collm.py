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
    # any transformers vision model is a tower (tests/test_vision_backbones.py); a text model is not
    with pytest.raises(ValueError, match="Unsupported vision tower model_type 'bert'"):
        CoLLMConfig(vision_config={"model_type": "bert", "hidden_size": 32})


def test_bad_options_rejected():
    with pytest.raises(Exception):
        CoLLMConfig(num_visual_tokens=0)
    with pytest.raises(Exception):
        CoLLMConfig(pooling="max")


def test_loss_options_are_typed_and_default_to_the_papers_hn_nce():
    from collm_hf.models.collm.losses import ContrastiveLossConfig

    config = CoLLMConfig()
    assert config.contrastive_loss == ContrastiveLossConfig() and config.contrastive_loss.loss_type == "hn_nce"
    assert config.contrastive_loss.two_way and (config.contrastive_loss.hn_alpha, config.contrastive_loss.hn_beta) == (1.0, 0.5)
    # a dict (config.json's form) becomes the dataclass once, at construction or assignment
    config = CoLLMConfig(contrastive_loss={"loss_type": "info_nce", "reference_negatives": True})
    assert config.contrastive_loss == ContrastiveLossConfig(loss_type="info_nce", reference_negatives=True)
    config.contrastive_loss = {"temperature": 0.05}
    assert isinstance(config.contrastive_loss, ContrastiveLossConfig) and config.contrastive_loss.temperature == 0.05
    with pytest.raises(ValueError, match="Unknown contrastive loss option"):
        config.contrastive_loss = {"tau": 1}
    with pytest.raises(Exception, match="contrastive_loss"):
        config.contrastive_loss = "hn_nce"


def test_loss_section_round_trips_through_save_load_and_auto_config(tmp_path):
    import json

    from collm_hf.models.collm.losses import ContrastiveLossConfig

    loss = ContrastiveLossConfig(loss_type="info_nce", two_way=False, temperature=0.02, reference_negatives=True)
    config = CoLLMConfig(contrastive_loss=loss)
    config.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())["contrastive_loss"]
    assert written == loss.to_dict()  # a plain dict in the file
    assert AutoConfig.from_pretrained(tmp_path).contrastive_loss == loss
    assert CoLLMConfig.from_json_file(tmp_path / "config.json").contrastive_loss == loss
    # the default is written out too: a new config always has a loss section
    CoLLMConfig().save_pretrained(tmp_path / "default")
    assert json.loads((tmp_path / "default" / "config.json").read_text())["contrastive_loss"]["loss_type"] == "hn_nce"
    assert AutoConfig.from_pretrained(tmp_path / "default").contrastive_loss == ContrastiveLossConfig()


@pytest.mark.parametrize("section", ["null", "absent"])
def test_config_without_a_loss_section_keeps_the_loss_it_trained_with(tmp_path, section):
    """collm-hf 0.1 wrote `"contrastive_loss": null`, which meant one-way InfoNCE; the new default must not apply."""
    import json

    from collm_hf.models.collm.configuration_collm import UNSPECIFIED_LOSS
    from collm_hf.models.collm.losses import ContrastiveLossConfig

    CoLLMConfig().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    if section == "null":
        saved["contrastive_loss"] = None
    else:
        del saved["contrastive_loss"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    expected = ContrastiveLossConfig(loss_type="info_nce", two_way=False)
    assert UNSPECIFIED_LOSS == expected
    assert AutoConfig.from_pretrained(tmp_path).contrastive_loss == expected
    assert CoLLMConfig.from_json_file(tmp_path / "config.json").contrastive_loss == expected
    # saved again, the section is explicit from now on
    AutoConfig.from_pretrained(tmp_path).save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["contrastive_loss"] == expected.to_dict()
