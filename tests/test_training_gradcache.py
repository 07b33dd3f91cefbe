"""Gradient caching gives the loss and gradients of the plain full-batch backward."""

import numpy as np
import pytest
import torch
from _tiny_training import trainer_from_options, write_workspace
from PIL import Image

from collm_hf.models.collm.losses import ContrastiveLossConfig
from collm_hf.testing_utils import tiny_model_and_processor
from collm_hf.training.collators import CoLLMPairCollator, CoLLMTripletCollator
from collm_hf.training.gradient_cache import (
    GradCacheTrainer,
    RandomState,
    grad_cache_step,
)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return {str(i): Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)) for i in range(7)}


def batch_of(stage, processor, images):
    words = ["red circle", "blue square", "dog on a bench", "yellow stars", "purple cross", "cyan ring", "two cats"]
    ids = ["0", "1", "2", "3", "4", "5", "1"]
    if stage == "pairs":
        return CoLLMPairCollator(processor, seed=2)(
            [{"image_id": i, "image": images[str(k)], "caption": f"a {w}"} for k, (i, w) in enumerate(zip(ids, words))])
    rows = [{"id": str(k), "reference_id": str(k), "target_id": i, "modifications": [f"make it a {w}"]}
            for k, (i, w) in enumerate(zip(ids, words))]
    return CoLLMTripletCollator(processor, images=images)(rows)


def grads_of(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def tiny(dropout: float = 0.0):
    """Tiny model with a trainable tower (exercises the image-side backward) and optional LLM dropout."""
    model, processor = tiny_model_and_processor(freeze_vision_tower=False)
    for module in model.language_model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = dropout
    model.config.contrastive_loss = ContrastiveLossConfig(loss_type="hn_nce", two_way=True)
    return model.train(), processor


def assert_same(loss, grads, expected_loss, expected_grads):
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == expected_grads.keys() and any("vision_tower" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("stage", ["triplets", "pairs"])
def test_grad_cache_equals_plain_backward(stage, images):
    model, processor = tiny()
    batch = batch_of(stage, processor, images)
    plain_loss = model(**batch).loss
    (plain_loss * 0.5).backward()
    plain = grads_of(model)
    model.zero_grad(set_to_none=True)
    cached_loss = grad_cache_step(model, batch, chunk_size=4, loss_scale=0.5)
    assert_same(cached_loss, grads_of(model), plain_loss.detach(), plain)


def test_grad_cache_with_reference_negatives_and_a_trainable_tower(images):
    """The reference embeddings reach the loss (as negatives) and the queries (through the adapter): their graph
    through the trained tower is backpropagated once, with both gradients."""
    model, processor = tiny()
    model.config.contrastive_loss = ContrastiveLossConfig(reference_negatives=True)
    batch = batch_of("triplets", processor, images)
    plain_loss = model(**batch).loss
    plain_loss.backward()
    plain = grads_of(model)
    model.zero_grad(set_to_none=True)
    cached_loss = grad_cache_step(model, batch, chunk_size=3)
    assert_same(cached_loss, grads_of(model), plain_loss.detach(), plain)


def test_grad_cache_replays_dropout(images):
    """With dropout, the replayed chunks see the masks of the first pass: gradients equal one backward through
    the same chunked forward (same random stream)."""
    model, processor = tiny(dropout=0.3)
    batch = {k: v for k, v in batch_of("pairs", processor, images).items() if k != "return_loss"}
    torch.manual_seed(5)
    prepared = model.prepare_contrastive_inputs(**batch)
    embeds, used = [], 0
    for start in range(0, prepared.input_ids.shape[0], 4):
        ids = prepared.input_ids[start:start + 4]
        n_images = int((ids == model.config.image_token_id).any(-1).sum())
        chunk_images = prepared.image_embeds[used:used + n_images] if n_images else None
        used += n_images
        embeds.append(model.get_query_embeds(ids, prepared.attention_mask[start:start + 4], image_embeds=chunk_images))
    oracle_loss = model.contrastive_output(torch.cat(embeds), prepared).loss
    oracle_loss.backward()
    oracle = grads_of(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    cached_loss = grad_cache_step(model, batch, chunk_size=4)
    assert_same(cached_loss, grads_of(model), oracle_loss.detach(), oracle)


def test_random_state_replay():
    state = RandomState(torch.device("cpu"))
    first = torch.rand(3)
    with state.restored():
        again = torch.rand(3)
    assert torch.equal(first, again)
    assert not torch.equal(torch.rand(3), first)  # the outer stream moved on


def test_grad_cache_trainer_trains_as_the_plain_trainer(tmp_path, _tiny_clip_llama):
    """Built by the training command's options, two steps of the gradient-cache trainer (3 query rows per LLM pass)
    leave the same weights as two steps of the plain trainer (SGD: Adam's first steps magnify float noise in gradients
    near zero into lr-sized differences)."""
    workspace = write_workspace(tmp_path / "workspace", *_tiny_clip_llama)
    weights, logs = {}, {}
    for chunks in ([], ["--gradient_cache_chunk_size", "3"]):
        trainer = trainer_from_options(workspace, tmp_path / "run", "--optim", "sgd", "--logging_steps", "1", *chunks)
        assert isinstance(trainer, GradCacheTrainer) == bool(chunks)
        trainer.train()
        weights[bool(chunks)] = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        logs[bool(chunks)] = [(log["in_batch_top1"], log["logit_scale"])
                              for log in trainer.state.log_history if "loss" in log]
    assert len(logs[True]) == 2 and logs[True] == logs[False]  # both log the in-batch accuracy and the logit scale
    assert weights[True].keys() == weights[False].keys()
    for name, value in weights[False].items():
        torch.testing.assert_close(weights[True][name], value, atol=1e-5, rtol=1e-5, msg=name)
