"""Mixed precision: `--bf16 True` runs both trainers under autocast, with fp32 master weights and an fp32 loss."""

import math

import pytest
import torch
from _tiny_training import trainer_from_options, triplet_batch, write_workspace

from collm_hf.models.collm.losses import ContrastiveLossConfig, contrastive_loss
from collm_hf.training.gradient_cache import GradCacheTrainer
from collm_hf.training.trainer import CoLLMTrainer


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, _tiny_clip_llama):
    return write_workspace(tmp_path_factory.mktemp("mixed_precision"), *_tiny_clip_llama)


@pytest.mark.parametrize("chunked, kind", [(False, CoLLMTrainer), (True, GradCacheTrainer)])
def test_bf16_trains_under_autocast_with_fp32_master_weights(workspace, tmp_path, chunked, kind):
    chunks = ["--gradient_cache_chunk_size", "3"] if chunked else []
    trainer = trainer_from_options(workspace, tmp_path, "--dtype", "bfloat16", "--bf16", "True", *chunks)
    assert type(trainer) is kind
    model = trainer.model
    base = model.get_base_model()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any(".adapter." in n for n in trainable) and any(".projection." in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())  # LoRA and peft's copies of the new modules
    assert base.logit_scale.dtype == torch.float32
    assert base.language_model.layers[0].mlp.down_proj.base_layer.weight.dtype == torch.bfloat16  # frozen: as loaded
    before = {n: p.detach().clone() for n, p in trainable.items()}

    seen = []  # fp32 weights give fp32 outputs unless autocast runs the product in bf16
    hooks = [module.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
             for module in (base.projection, base.adapter)]
    trainer.train()
    for hook in hooks:
        hook.remove()

    assert seen and set(seen) == {torch.bfloat16}
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    changed = [n for n, p in trainable.items() if not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in changed) and any(".projection." in n for n in changed)


def test_loss_is_fp32_under_autocast():
    """Similarities and log-sum-exp in fp32 under bf16 autocast; an extra negative at cosine 0.998 to a target is
    not taken for that target (in bf16 the cosine rounds to 1)."""
    torch.manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    targets = torch.nn.functional.normalize(queries + 0.8 * torch.randn(6, 16), dim=-1)
    side = torch.randn(16)
    side = torch.nn.functional.normalize(side - (side @ targets[0]) * targets[0], dim=0)
    near = torch.nn.functional.normalize(targets[0] + 0.05 * side, dim=0)  # cosine 1 / sqrt(1.0025) = 0.99875
    extra = torch.stack([near, *torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)])
    scale = torch.tensor(math.log(1 / 0.07))
    for config in (ContrastiveLossConfig(), ContrastiveLossConfig(loss_type="info_nce")):
        expected = contrastive_loss(queries, targets, scale, config=config, extra_negatives=extra)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = contrastive_loss(queries, targets, scale, config=config, extra_negatives=extra)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
        half = contrastive_loss(queries.bfloat16(), targets.bfloat16(), scale.bfloat16(), config=config)
        assert half.dtype == torch.float32
        torch.testing.assert_close(half, contrastive_loss(queries.bfloat16().float(), targets.bfloat16().float(),
                                                          scale.bfloat16().float(), config=config))


def test_model_logits_and_loss_are_fp32_under_autocast(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**triplet_batch(processor))
    assert out.query_embeds.dtype == torch.bfloat16  # the towers ran under autocast
    assert out.loss.dtype == torch.float32 and out.logits_per_query.dtype == torch.float32
    expected = model.logit_scale.exp() * out.query_embeds.float() @ out.target_embeds.float().t()
    torch.testing.assert_close(out.logits_per_query, expected)
