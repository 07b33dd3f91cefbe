"""The reference image as patch tokens (`CoLLMConfig.reference_tokens="patches"`) beside the paper's pooled token:
shapes and placeholders, padding invariance, the fast encoder, token-wise synthesis, training steps, evaluation,
save / load / remote code / LoRA."""

import copy
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from _scripts import WITHOUT_PACKAGE

from collm_hf import CoLLMQueryEncoder
from collm_hf.models.collm.image_adapter import reference_patch_features, sincos_positions_2d
from collm_hf.models.collm.synthesis import nearest_neighbor_indices, slerp, slerp_tokens, synthesize_composed_queries
from collm_hf.models.collm.vision_families import patch_grid
from collm_hf.testing_utils import tiny_model_and_processor
from collm_hf.training.collators import CoLLMPairCollator, CoLLMTripletCollator

TEXTS = ["make it red", "remove the square and add two yellow stars at the top", "blue"]
OPTIONS = {  # name: (config options, tokens per reference)
    "pooled": ({}, 1),
    "patches-grid": ({"reference_tokens": "patches", "num_visual_tokens": 4}, 4),
    "patches-resampler": ({"reference_tokens": "patches", "patch_reduction": "resampler", "num_visual_tokens": 3}, 3),
}


@pytest.fixture(scope="module")
def _models():
    return {name: tiny_model_and_processor(**options) for name, (options, _) in OPTIONS.items()}


@pytest.fixture(params=list(OPTIONS))
def option(request, _models):
    model, processor = _models[request.param]
    return request.param, copy.deepcopy(model), copy.deepcopy(processor)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + 4 * i, 48, 3), dtype=np.uint8)) for i in range(len(TEXTS))]


def test_shapes_and_placeholders(option, images):
    name, model, processor = option
    tokens = OPTIONS[name][1]
    inputs = processor(images=images, text=TEXTS)
    assert ((inputs["input_ids"] == model.config.image_token_id).sum(-1) == tokens).all()
    with torch.no_grad():
        reference = model.get_reference_embeds(inputs["pixel_values"])
        queries = model.get_query_embeds(**inputs)
    if name == "pooled":  # the paper's: the reference's gallery embedding
        assert reference.shape == (3, model.config.image_embedding_size)
        torch.testing.assert_close(reference, model.get_image_embeds(inputs["pixel_values"]))
    else:  # tiny CLIP: 32 px / patch 8 = a 4 x 4 grid, pooled to 2 x 2 or all 16 for the resampler
        grid_tokens = 4 if name == "patches-grid" else 16
        assert reference.shape == (3, grid_tokens, model.config.vision_config.hidden_size)
    assert queries.shape == (3, model.config.projection_dim)
    torch.testing.assert_close(queries.norm(dim=-1), torch.ones(3))
    with torch.no_grad():  # the gallery side does not change: f(v) whatever the option
        gallery = model.get_image_embeds(inputs["pixel_values"])
    assert gallery.shape == (3, model.config.image_embedding_size)


def test_left_and_right_padding_give_the_same_embedding(option, images):
    _, model, processor = option
    right = processor(images=images, text=TEXTS)
    processor.padding_side = "left"
    left = processor(images=images, text=TEXTS)
    assert not torch.equal(left["input_ids"], right["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(model.get_query_embeds(**left), model.get_query_embeds(**right), atol=1e-5, rtol=0)


def test_fast_encoder_equals_get_query_embeds(option, images):
    _, model, processor = option
    inputs = processor(images=images, text=TEXTS)
    with torch.no_grad():
        plain = model.get_query_embeds(**inputs)
        references = model.get_reference_embeds(inputs["pixel_values"])
    encoder = CoLLMQueryEncoder(model, processor)
    torch.testing.assert_close(encoder.encode(TEXTS, images=images), plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoder.encode(TEXTS, image_embeds=references), plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoder.encode_inputs(**inputs), plain, atol=1e-5, rtol=0)
    image_only = processor.image_queries(images)
    with torch.no_grad():
        expected = model.get_query_embeds(**image_only)
    torch.testing.assert_close(encoder.encode([None] * 3, images=images), expected, atol=1e-5, rtol=0)


def test_gallery_embeddings_are_refused_where_patch_features_are_needed(_models, images):
    model, processor = _models["patches-grid"]
    inputs = processor(images=images, text=TEXTS)
    gallery = model.get_image_embeds(inputs["pixel_values"])
    with pytest.raises(ValueError, match="patch tokens.*get_reference_embeds"):
        model.get_query_embeds(inputs["input_ids"], inputs["attention_mask"], image_embeds=gallery)
    with pytest.raises(ValueError, match="patch tokens"):
        CoLLMQueryEncoder(model, processor).encode(TEXTS, image_embeds=gallery)


def test_a_grid_must_be_square():
    with pytest.raises(ValueError, match="square"):
        tiny_model_and_processor(reference_tokens="patches", num_visual_tokens=5)


# ----------------------------------------------------------------------------------------------------------
# Features: the tower's grid, without its class token
# ----------------------------------------------------------------------------------------------------------
def test_patch_grid_leaves_out_the_class_token_and_takes_cnn_maps_as_they_are():
    from transformers.modeling_outputs import BaseModelOutput

    tokens = torch.randn(2, 1 + 9, 5)  # CLS + 3 x 3
    grid = patch_grid(BaseModelOutput(last_hidden_state=tokens))
    assert grid.shape == (2, 3, 3, 5) and torch.equal(grid.reshape(2, 9, 5), tokens[:, 1:])
    registers = torch.randn(2, 1 + 4 + 16, 5)  # CLS + 4 registers + 4 x 4 (DINOv2 with registers)
    assert torch.equal(patch_grid(BaseModelOutput(last_hidden_state=registers)).reshape(2, 16, 5), registers[:, 5:])
    cnn = torch.randn(2, 7, 3, 3)  # (batch, C, H, W)
    assert torch.equal(patch_grid(BaseModelOutput(last_hidden_state=cnn)), cnn.permute(0, 2, 3, 1))


def test_grid_reduction_is_adaptive_average_pooling(_models, images):
    model, processor = _models["patches-grid"]
    pixels = processor(images=images)["pixel_values"]
    with torch.no_grad():
        outputs = model.get_vision_outputs(pixels)
        features = reference_patch_features(model.config, outputs)
    patches = outputs.last_hidden_state[:, 1:].reshape(3, 4, 4, -1)  # the 4 x 4 grid without CLS
    top_left = patches[:, :2, :2].mean((1, 2))  # 2 x 2 pooling: each output token averages a 2 x 2 block
    torch.testing.assert_close(features[:, 0], top_left)


def test_sincos_positions_differ_per_cell():
    positions = sincos_positions_2d(4, 32)
    assert positions.shape == (16, 32) and len(torch.unique(positions, dim=0)) == 16


# ----------------------------------------------------------------------------------------------------------
# Token-wise synthesis (pair pre-training)
# ----------------------------------------------------------------------------------------------------------
def test_token_wise_slerp_returns_the_inputs_at_alpha_0_and_1():
    torch.manual_seed(0)
    start, end = torch.randn(5, 9, 16) * 3, torch.randn(5, 9, 16) * 0.5
    torch.testing.assert_close(slerp_tokens(start, end, 0.0), start, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(slerp_tokens(start, end, 1.0), end, atol=1e-5, rtol=1e-5)
    middle = slerp_tokens(start, end, 0.5)
    # Directions on the great circle (each token's own Slerp), norms interpolated linearly.
    torch.testing.assert_close(F.normalize(middle, dim=-1), slerp(start, end, 0.5))
    torch.testing.assert_close(middle.norm(dim=-1), 0.5 * start.norm(dim=-1) + 0.5 * end.norm(dim=-1))


def test_synthesis_interpolates_the_neighbours_patch_tokens(tiny_model_and_processor):
    from collm_hf.models.collm.synthesis import TEXT_SLOT, hash_ids, pad_id_lists, template_token_ids

    _, processor = tiny_model_and_processor
    tokenize = lambda text: processor.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    pieces = processor.pieces
    frame = pieces["prefix"] + pieces["image"] + pieces["text"] + [TEXT_SLOT] * 32 + pieces["end"]
    torch.manual_seed(3)
    embeds, patches = F.normalize(torch.randn(4, 8), dim=-1), torch.randn(4, 9, 6)
    ids = hash_ids(["a", "b", "c", "d"])
    captions = pad_id_lists([tokenize(f" caption {i}") for i in range(4)])
    args = (embeds, captions, pad_id_lists([template_token_ids(tokenize, 0)] * 4), pad_id_lists([frame] * 4), ids)
    neighbors = nearest_neighbor_indices(embeds, ids)  # chosen by the pooled embeddings, as without patches
    for alpha, expected in ((0.0, patches), (1.0, patches[neighbors]), (0.5, slerp_tokens(patches, patches[neighbors], 0.5))):
        out = synthesize_composed_queries(*args, alpha=alpha, patch_features=patches)
        assert torch.equal(out.neighbor_indices, neighbors)
        torch.testing.assert_close(out.reference_embeds, expected, atol=1e-5, rtol=1e-5)


def test_both_training_stages_train_the_patch_adapter(_models, images):
    model, processor = copy.deepcopy(_models["patches-grid"])
    model.config.contrastive_loss = type(model.config.contrastive_loss)(reference_negatives=True)
    model.train()
    table = {str(i): image for i, image in enumerate(images)}
    rows = [{"id": str(k), "reference_id": str(k), "target_id": str((k + 1) % 3), "modifications": [t]}
            for k, t in enumerate(TEXTS)]
    triplets = CoLLMTripletCollator(processor, images=table, seed=1)(rows)
    pairs = CoLLMPairCollator(processor, seed=1)(
        [{"image_id": str(i), "image": image, "caption": f"caption {i}"} for i, image in enumerate(images)])
    for batch in (triplets, pairs):
        model.zero_grad()
        out = model(**batch)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        adapter_grads = [p.grad for p in model.adapter.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in adapter_grads)
    # Reference negatives are the references' gallery embeddings f(v_ref), not their patch features.
    prepared = model.prepare_contrastive_inputs(**{k: v for k, v in triplets.items() if k != "return_loss"})
    assert prepared.image_embeds.dim() == 3 and prepared.negative_embeds.shape[-1] == model.config.image_embedding_size


def test_gradient_cache_equals_the_full_batch_under_patches(_models, images):
    from collm_hf.training.gradient_cache import grad_cache_step

    model, processor = copy.deepcopy(_models["patches-grid"])
    model.config.contrastive_loss = type(model.config.contrastive_loss)(reference_negatives=True)
    model.config.freeze_vision_tower = False
    model.apply_vision_freezing()
    model.train()
    table = {str(i): image for i, image in enumerate(images)}
    rows = [{"id": str(k), "reference_id": str(k), "target_id": str((k + 1) % 3), "modifications": [t]}
            for k, t in enumerate(TEXTS)]
    batch = CoLLMTripletCollator(processor, images=table, seed=1)(rows)
    full = model(**batch).loss
    full.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    cached = grad_cache_step(model, batch, chunk_size=1)
    torch.testing.assert_close(cached, full.detach(), atol=1e-5, rtol=1e-5)
    for name, grad in expected.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4, msg=name)


# ----------------------------------------------------------------------------------------------------------
# Evaluation, save / load, remote code, LoRA
# ----------------------------------------------------------------------------------------------------------
def test_evaluation_encodes_the_reference_image_again(_models, images):
    from collm_hf.evaluation.embedding import embed_gallery, embed_queries

    model, processor = _models["patches-grid"]
    gallery = {"image_id": ["0", "1", "2"], "image": images}
    queries = {"reference_id": ["0", "1", "2"], "reference_image": images, "modification_text": TEXTS}
    index = embed_gallery(model, processor, gallery, show_progress=False)
    with_index = embed_queries(model, processor, queries, index=index, show_progress=False)
    with torch.no_grad():
        expected = model.get_query_embeds(**processor(images=images, text=TEXTS))
    torch.testing.assert_close(with_index, expected, atol=1e-5, rtol=0)


def test_save_load_and_remote_code_without_the_package(_models, images, tmp_path):
    from transformers import AutoModel

    model, processor = _models["patches-resampler"]
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    inputs = processor(images=images, text=TEXTS)
    with torch.no_grad():
        expected = model.get_query_embeds(**inputs)
        reloaded = AutoModel.from_pretrained(tmp_path / "model").eval().get_query_embeds(**inputs)
    torch.testing.assert_close(reloaded, expected, atol=0, rtol=0)
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    torch.save(expected, tmp_path / "expected.pt")
    script = WITHOUT_PACKAGE + textwrap.dedent(f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / 'model')!r}, trust_remote_code=True).eval()
        assert model.config.reference_tokens == "patches"
        with torch.no_grad():
            got = model.get_query_embeds(**torch.load({str(tmp_path / 'inputs.pt')!r}))
        print("DIFF", (got - torch.load({str(tmp_path / 'expected.pt')!r})).abs().max().item())
        """)
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split("DIFF")[1]) <= 1e-6


def test_lora_saves_the_patch_adapter_with_the_adapter_folder(_models, images, tmp_path):
    from collm_hf.training.lora import LoraArguments, apply_lora, load_lora_adapter

    model, processor = copy.deepcopy(_models["patches-grid"])
    base = copy.deepcopy(model)
    peft_model = apply_lora(model, "triplets", LoraArguments(lora_rank=4), gradient_checkpointing=False)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("adapter" in n and "position_embeddings" in n for n in trainable)
    with torch.no_grad():  # change the trained copies, so a restore that dropped them would show
        for name, parameter in peft_model.named_parameters():
            if parameter.requires_grad:
                parameter.add_(0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    inputs = processor(images=images, text=TEXTS)
    peft_model.eval()
    restored = load_lora_adapter(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(restored.get_query_embeds(**inputs), peft_model.get_query_embeds(**inputs),
                                   atol=1e-6, rtol=0)


def test_search_feeds_the_reference_as_patch_tokens(_models, images):
    from collm_hf.apps.search import GallerySearcher
    from collm_hf.evaluation.embedding import embed_gallery

    model, processor = _models["patches-grid"]
    index = embed_gallery(model, processor, {"image_id": ["0", "1", "2"], "image": images}, show_progress=False)
    searcher = GallerySearcher(model, processor, index)
    with torch.no_grad():
        expected = model.get_query_embeds(**processor(images=images[:1], text=TEXTS[:1]))
    torch.testing.assert_close(searcher.encode_query(images[0], TEXTS[0]), expected, atol=1e-5, rtol=0)
    hits = searcher.search(images[0], TEXTS[0], k=3, exclude_reference=True)
    assert "0" not in [hit.image_id for hit in hits]  # the reference found by its gallery embedding, as before
