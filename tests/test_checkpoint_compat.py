"""A checkpoint saved by collm-hf 0.1.0 (flat module layout, its own remote code) still loads and embeds the same:
through the installed package's Auto classes, and with `trust_remote_code=True` in a Python without the package."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor

from _scripts import WITHOUT_PACKAGE

import collm_hf

FIXTURE = Path(__file__).parent / "fixtures" / "collm-0.1-checkpoint"


def _query_images():
    spec = json.loads((FIXTURE / "expected_inputs.json").read_text())
    rng = np.random.default_rng(spec["image_seed"])
    images = [Image.fromarray(rng.integers(0, 255, spec["image_shape"], dtype=np.uint8)) for _ in spec["texts"]]
    return images, spec["texts"]


def test_pre_move_checkpoint_loads_through_the_package():
    expected = load_file(str(FIXTURE / "expected_embeds.safetensors"))
    model = AutoModel.from_pretrained(FIXTURE).eval()
    processor = AutoProcessor.from_pretrained(FIXTURE)
    assert type(model) is collm_hf.CoLLMModel and type(processor) is collm_hf.CoLLMProcessor
    assert model.config.reference_tokens == "pooled"  # saved before the option existed: the paper's pooled token
    images, texts = _query_images()
    inputs = processor(images=images, text=texts)
    assert torch.equal(inputs["pixel_values"], expected["query_pixel_values"])
    with torch.no_grad():
        assert (model.get_image_embeds(expected["pixel_values"]) - expected["image_embeds"]).abs().max() <= 1e-6
        assert (model.get_query_embeds(**inputs) - expected["query_embeds"]).abs().max() <= 1e-6


def test_pre_move_checkpoint_loads_with_remote_code_without_the_package(tmp_path):
    folder = tmp_path / "checkpoint"
    shutil.copytree(FIXTURE, folder)
    script = WITHOUT_PACKAGE + textwrap.dedent(
        f"""
        import json, sys
        import numpy as np, torch
        from PIL import Image
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoProcessor
        folder = {str(folder)!r}
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        expected = load_file(folder + "/expected_embeds.safetensors")
        spec = json.load(open(folder + "/expected_inputs.json"))
        rng = np.random.default_rng(spec["image_seed"])
        images = [Image.fromarray(rng.integers(0, 255, spec["image_shape"], dtype=np.uint8)) for _ in spec["texts"]]
        inputs = processor(images=images, text=spec["texts"])
        with torch.no_grad():
            image_diff = (model.get_image_embeds(expected["pixel_values"]) - expected["image_embeds"]).abs().max().item()
            query_diff = (model.get_query_embeds(**inputs) - expected["query_embeds"]).abs().max().item()
        assert image_diff <= 1e-6 and query_diff <= 1e-6, (image_diff, query_diff)
        assert "collm_hf" not in sys.modules
        print("OK", type(processor).__name__)
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK CoLLMProcessor" in result.stdout


def test_pre_move_checkpoint_keeps_its_one_way_info_nce_loss(tmp_path):
    """0.1 saved `"contrastive_loss": null`, which meant one-way InfoNCE: loading gives exactly that, not today's
    HN-NCE default; saved again, the section is written out and survives the next load."""
    from collm_hf.models.collm.losses import ContrastiveLossConfig

    assert json.loads((FIXTURE / "config.json").read_text())["contrastive_loss"] is None
    model = AutoModel.from_pretrained(FIXTURE)
    one_way_info_nce = ContrastiveLossConfig(loss_type="info_nce", two_way=False)
    assert model.config.contrastive_loss == one_way_info_nce
    model.save_pretrained(tmp_path / "resaved")
    assert json.loads((tmp_path / "resaved" / "config.json").read_text())["contrastive_loss"] == one_way_info_nce.to_dict()
    assert AutoModel.from_pretrained(tmp_path / "resaved").config.contrastive_loss == one_way_info_nce


def test_a_new_configs_loss_section_survives_save_and_load(tmp_path):
    from dataclasses import replace

    model = AutoModel.from_pretrained(FIXTURE)
    model.config.contrastive_loss = replace(collm_hf.CoLLMConfig().contrastive_loss, reference_negatives=True)
    model.save_pretrained(tmp_path / "new")
    loaded = AutoModel.from_pretrained(tmp_path / "new").config.contrastive_loss
    assert loaded == model.config.contrastive_loss and loaded.loss_type == "hn_nce" and loaded.reference_negatives
