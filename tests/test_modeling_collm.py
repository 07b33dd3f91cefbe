import dataclasses
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModel

from _scripts import WITHOUT_PACKAGE

from collm_hf import CoLLMModel, CoLLMOutput
from collm_hf.testing_utils import tiny_model_and_processor as make_tiny

TEXTS = ["make it red", "add two yellow stars at the top", "a"]


def _query_inputs(processor, images):
    return processor(images=images[: len(TEXTS)], text=TEXTS)


@pytest.mark.parametrize("vision", ["clip", "siglip", "blip"])
@pytest.mark.parametrize("llm", ["llama", "qwen2", "mistral", "bert"])
def test_embeddings_shapes_norms_and_padding_independence(vision, llm, rgb_images):
    model, processor = make_tiny(vision, llm)
    inputs = _query_inputs(processor, rgb_images)
    with torch.no_grad():
        right = model.get_query_embeds(**inputs)
        processor.padding_side = "left"
        left = model.get_query_embeds(**_query_inputs(processor, rgb_images))
        gallery = model.get_image_embeds(inputs["pixel_values"])
        text_only = model.get_query_embeds(**processor(text=TEXTS))
        image_only = model.get_query_embeds(**processor.image_queries(rgb_images[:2]))
    dim = model.config.projection_dim
    assert right.shape == (3, dim) and gallery.shape == (3, model.config.image_embedding_size)
    assert text_only.shape == (3, dim) and image_only.shape == (2, dim)
    for emb in (right, gallery, text_only, image_only):
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(emb.shape[0]), atol=1e-5, rtol=0)
    assert (right - left).abs().max() <= 1e-5
    # each query alone equals the batched query (padding never leaks)
    single = model.get_query_embeds(**processor(images=rgb_images[1:2], text=TEXTS[1:2]))
    assert (single[0] - right[1]).abs().max() <= 1e-5


def test_precomputed_image_embeds_equal_pixels(tiny_model_and_processor, rgb_images):
    model, processor = tiny_model_and_processor
    inputs = _query_inputs(processor, rgb_images)
    with torch.no_grad():
        from_pixels = model.get_query_embeds(**inputs)
        embeds = model.get_image_embeds(inputs["pixel_values"])
        from_embeds = model.get_query_embeds(inputs["input_ids"], inputs["attention_mask"], image_embeds=embeds)
    torch.testing.assert_close(from_pixels, from_embeds)


def test_forward_loss_and_backward(tiny_model_and_processor, rgb_images):
    model, processor = tiny_model_and_processor
    model.train()
    inputs = _query_inputs(processor, rgb_images)
    out = model(**inputs, target_pixel_values=processor(images=rgb_images[1:4])["pixel_values"], return_loss=True)
    assert isinstance(out, CoLLMOutput) and out.loss.ndim == 0 and out.logits_per_query.shape == (3, 3)
    out.loss.backward()
    assert model.adapter.layers[0].weight.grad is not None and model.projection.weight.grad is not None
    assert model.logit_scale.grad is not None
    assert all(p.grad is None for p in model.vision_tower.parameters())  # frozen by default


def test_reference_negatives_use_each_distinct_reference_once(rgb_images):
    from collm_hf.models.collm.losses import ContrastiveLossConfig, info_nce_loss

    model, processor = make_tiny(freeze_vision_tower=False)
    model.config.contrastive_loss = ContrastiveLossConfig(loss_type="info_nce", two_way=False)
    references = [rgb_images[0], rgb_images[0], rgb_images[1]]  # a reference serving two edits, as in MTCIR groups
    inputs = processor(images=references, text=["make it red", "add a square", "make it blue"])
    targets = processor(images=rgb_images[1:4])["pixel_values"]
    plain = model(**inputs, target_pixel_values=targets, return_loss=True)
    model.config.contrastive_loss = dataclasses.replace(model.config.contrastive_loss, reference_negatives=True)
    out = model(**inputs, target_pixel_values=targets, return_loss=True)
    reference_embeds = model.get_image_embeds(processor(images=rgb_images[:2])["pixel_values"])  # distinct ones
    expected = info_nce_loss(out.query_embeds, out.target_embeds, model.logit_scale, extra_negatives=reference_embeds)
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.loss, plain.loss)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.vision_tower.parameters())


def test_query_keys_reach_the_loss(rgb_images):
    from collm_hf.models.collm.losses import hn_nce_loss

    model, processor = make_tiny()  # the default loss: HN-NCE, two-way
    inputs = processor(images=[rgb_images[0]] * 3, text=["make it red", "make it another colour", "make it blue"])
    targets = processor(images=rgb_images[1:4])["pixel_values"]
    keys = {"query_keys": torch.tensor([1, 2, 3]), "target_query_keys": torch.tensor([[1, 2], [2, 0], [3, 2]])}
    out = model(**inputs, target_pixel_values=targets, return_loss=True, **keys)
    expected = hn_nce_loss(out.query_embeds, out.target_embeds, model.logit_scale, 1.0, 0.5, two_way=True, **keys)
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
    plain = model(**inputs, target_pixel_values=targets, return_loss=True)
    assert float(out.loss) < float(plain.loss)  # targets 0 and 2 are no longer negatives of query 1


def test_references_and_targets_share_one_tower_pass(rgb_images):
    model, processor = make_tiny(freeze_vision_tower=False)
    inputs = processor(images=[rgb_images[0]] * 2 + [rgb_images[1]], text=["make it red", "make it blue", "add a dot"])
    targets = processor(images=rgb_images[1:4])["pixel_values"]  # the third query's reference is the first target
    calls = []
    model.vision_tower.register_forward_hook(lambda module, args, kwargs, out: calls.append(len(kwargs["pixel_values"])),
                                             with_kwargs=True)
    joint = model(**inputs, target_pixel_values=targets, return_loss=True)
    assert calls == [4]  # the 4 distinct images of 3 references and 3 targets, in one pass
    with torch.no_grad():
        apart = model(**{k: v for k, v in inputs.items() if k != "pixel_values"}, return_loss=True,
                      image_embeds=model.get_image_embeds(inputs["pixel_values"]),
                      target_image_embeds=model.get_image_embeds(targets))
    torch.testing.assert_close(joint.loss, apart.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(joint.query_embeds, apart.query_embeds, atol=1e-5, rtol=1e-5)


def test_unfrozen_tower_trains(rgb_images):
    model, processor = make_tiny(freeze_vision_tower=False)
    model.train()
    inputs = _query_inputs(processor, rgb_images)
    out = model(**inputs, target_pixel_values=inputs["pixel_values"], return_loss=True)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.vision_tower.parameters())


def test_repeated_images_are_embedded_once_with_the_same_values_and_gradients(rgb_images):
    model, processor = make_tiny(freeze_vision_tower=False)
    pixels = processor(images=rgb_images[:3])["pixel_values"][[0, 1, 0, 2, 1, 0]]  # references shared by edits
    calls = []
    model.vision_tower.register_forward_hook(lambda module, args, kwargs, out: calls.append(len(kwargs["pixel_values"])),
                                             with_kwargs=True)
    distinct = model.embed_distinct_images(pixels)
    direct = model.get_image_embeds(pixels)
    assert calls[0] == 3 and calls[1] == 6
    torch.testing.assert_close(distinct, direct)
    torch.testing.assert_close(model.embed_distinct_images(pixels[[0, 1, 3]]), direct[[0, 1, 3]])  # all distinct
    assert calls[2] == 3
    weights = torch.randn_like(direct)
    grads = []
    for embeds in (model.embed_distinct_images(pixels), model.get_image_embeds(pixels)):
        model.zero_grad()
        (embeds * weights).sum().backward()
        grads.append([p.grad.clone() for p in model.vision_tower.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_save_load_round_trip_and_auto(tmp_path, tiny_model_and_processor, rgb_images):
    model, processor = tiny_model_and_processor
    inputs = _query_inputs(processor, rgb_images)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    assert (tmp_path / "modeling_collm.py").exists()  # code travels with the checkpoint
    for loader in (CoLLMModel, AutoModel):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert type(loaded) is CoLLMModel
        with torch.no_grad():
            assert (loaded.get_query_embeds(**inputs) - model.get_query_embeds(**inputs)).abs().max() <= 1e-5
            a, b = loaded.get_image_embeds(inputs["pixel_values"]), model.get_image_embeds(inputs["pixel_values"])
            assert (a - b).abs().max() <= 1e-5
        assert not any(p.requires_grad for p in loaded.vision_tower.parameters())


def test_fresh_process_trust_remote_code_without_package(tmp_path, tiny_model_and_processor, rgb_images):
    model, processor = tiny_model_and_processor
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    inputs = _query_inputs(processor, rgb_images)
    with torch.no_grad():
        expected = model.get_query_embeds(**inputs)
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    torch.save(expected, tmp_path / "expected.pt")
    script = WITHOUT_PACKAGE + textwrap.dedent(
        f"""
        import sys
        import torch
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(tmp_path / 'model')!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(tmp_path / 'model')!r}, trust_remote_code=True)
        inputs = torch.load({str(tmp_path / 'inputs.pt')!r})
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert "collm_hf" not in sys.modules
        with torch.no_grad():
            got = model.get_query_embeds(**inputs)
        diff = (got - torch.load({str(tmp_path / 'expected.pt')!r})).abs().max().item()
        assert diff <= 1e-5, diff
        print("OK", type(processor).__name__)
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK CoLLMProcessor" in result.stdout


def test_gradient_checkpointing_and_sdpa(rgb_images):
    model, processor = make_tiny(attn_implementation="sdpa")
    assert model.language_model.config._attn_implementation == "sdpa"
    model.activation_checkpointing_enable()
    model.train()
    inputs = _query_inputs(processor, rgb_images)
    out = model(**inputs, target_image_embeds=torch.nn.functional.normalize(torch.randn(3, 24), dim=-1),
                return_loss=True)
    out.loss.backward()
    assert model.language_model.gradient_checkpointing


def test_dtype_loading(tmp_path, tiny_model_and_processor):
    model, _ = tiny_model_and_processor
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.language_model.dtype == torch.bfloat16 and loaded.projection.weight.dtype == torch.bfloat16


def test_mismatched_images_and_placeholders_clear_error(tiny_model_and_processor, rgb_images):
    model, processor = tiny_model_and_processor
    inputs = _query_inputs(processor, rgb_images)
    with pytest.raises(ValueError, match="3 queries have an image placeholder but 2 images"):
        model.get_query_embeds(inputs["input_ids"], inputs["attention_mask"], pixel_values=inputs["pixel_values"][:2])
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.get_query_embeds(inputs["input_ids"], inputs["attention_mask"],
                               image_embeds=torch.full((3, 24), float("nan")))
    with pytest.raises(ValueError, match="image_embeds must be"):
        model.get_query_embeds(inputs["input_ids"], inputs["attention_mask"], image_embeds=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="pixel_values must be a 4-D tensor"):
        model.get_image_embeds(torch.zeros(3, 32, 32))


@pytest.mark.parametrize("options", [{"num_visual_tokens": 3}, {"pooling": "mean"}, {"adapter_type": "linear"}])
def test_options_change_the_query_path(options, rgb_images):
    model, processor = make_tiny(**options)
    inputs = processor(images=rgb_images[:2], text=TEXTS[:2])
    assert (inputs["input_ids"] == -200).sum(-1).tolist() == [model.config.num_visual_tokens] * 2
    with torch.no_grad():
        right = model.get_query_embeds(**inputs)
        processor.padding_side = "left"
        left = model.get_query_embeds(**processor(images=rgb_images[:2], text=TEXTS[:2]))
    assert (right - left).abs().max() <= 1e-5


def test_device_map_and_per_tower_attention(tmp_path, tiny_model_and_processor):
    model, _ = tiny_model_and_processor
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(
        tmp_path, device_map="cpu", attn_implementation={"vision_config": "eager", "text_config": "sdpa"}
    )
    assert loaded.vision_tower.config._attn_implementation == "eager"
    assert loaded.language_model.config._attn_implementation == "sdpa"
    assert loaded.projection.weight.device.type == "cpu"
