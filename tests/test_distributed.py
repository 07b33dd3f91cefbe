"""Two processes under torchrun (gloo, CPU) give the loss and gradients of one process on the concatenated batch,
with replicated (DDP) and with sharded (FSDP2) parameters.

The tests launch this same file as the worker once (`torchrun --nproc_per_node 2 tests/test_distributed.py OUT`):
each rank takes its rows of one collated batch (an uneven 5/3 split) and saves its loss and gradients.
- DDP: triplets, and pairs with on-the-fly synthesis (global nearest neighbours, Slerp, token assembly) with a
  trainable vision tower, so gradients also flow through the gathered neighbour embeddings; HN-NCE two-way with
  duplicate-id and shared-text masking; and gradient caching under DDP.
- FSDP2 (`fully_shard`): the model sharded by `sharding.shard_model` (every layer the model names in
  `_no_split_modules`, then the root), one forward/backward and one SGD step, then `save_trained` through a
  trainer stand-in whose `accelerator.get_state_dict` is accelerate's FSDP2 branch (`get_model_state_dict(...,
  full_state_dict=True, cpu_offload=True)`): the full pair-stage model with a trainable tower, and LoRA on triplets
  (adapter and merged model written from the gathered weights). `AutoModel` loads what rank 0 wrote.
"""

import os
import sys
from datetime import timedelta

import numpy as np
import pytest
import torch
from _multiprocess import launch_with_retry

from collm_hf.models.collm.losses import ContrastiveLossConfig

SPLIT = (5, 3)  # rows of rank 0 and rank 1
LOSS = ContrastiveLossConfig(loss_type="hn_nce", two_way=True, hn_alpha=1.0, hn_beta=0.5)
SHARDED = ("full", "lora")  # FSDP2 runs: full fine-tuning (pairs), LoRA (triplets)
LR = 0.5  # one plain SGD step after the sharded backward: every trained weight moves visibly


def build(stage: str):
    """The tiny model and the global batch (8 rows, with one duplicate image id) of a stage ("triplets", "pairs",
    or "pairs_patches": pairs with the reference fed as patch tokens, so the neighbours' patch features cross ranks)."""
    from PIL import Image

    from collm_hf.testing_utils import tiny_model_and_processor
    from collm_hf.training.collators import CoLLMPairCollator, CoLLMTripletCollator

    patches = {"reference_tokens": "patches", "num_visual_tokens": 4} if stage == "pairs_patches" else {}
    model, processor = tiny_model_and_processor(seed=0, freeze_vision_tower=False, **patches)
    model.config.contrastive_loss = LOSS
    rng = np.random.default_rng(0)
    images = {str(i): Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)) for i in range(8)}
    words = ["red circle", "blue square", "dog on a bench", "yellow stars", "purple cross", "cyan ring", "green star", "two cats"]
    ids = ["0", "1", "2", "3", "4", "5", "6", "2"]  # rows 2 and 7 share an image
    if stage.startswith("pairs"):
        rows = [{"image_id": i, "image": images[i], "caption": f"a {w}"} for i, w in zip(ids, words)]
        batch = CoLLMPairCollator(processor, seed=11)(rows)
    else:
        rows = [{"id": str(k), "reference_id": str(k), "target_id": i, "modifications": [f"make it a {w}", f"add {w}"]}
                for k, (i, w) in enumerate(zip(ids, words))]
        # Rows 4 (rank 0) and 5 (rank 1) share a reference and a text: target 4 answers query 5 across the ranks.
        rows[4]["modifications"].append("make it different")
        rows[5].update(reference_id="4", modifications=["make it different"])
        batch = CoLLMTripletCollator(processor, images=images, seed=11)(rows)
    return model, batch


def rows(batch: dict, start: int, stop: int) -> dict:
    return {k: v[start:stop] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def loss_and_grads(model, batch):
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads


def build_sharded(variant: str):
    """The model and global batch of an FSDP2 run: "full" (pairs, trainable tower) or "lora" (triplets)."""
    model, batch = build("pairs" if variant == "full" else "triplets")
    if variant == "lora":
        from collm_hf.training.lora import LoraArguments, apply_lora

        torch.manual_seed(1)
        model = apply_lora(model, "triplets", LoraArguments(lora_rank=4, lora_dropout=0.0), gradient_checkpointing=False)
    return model, batch


def sgd_step(model, batch):
    """Loss, full gradients (a shard's gradient gathered) and one SGD step."""
    out = model(**batch)
    out.loss.backward()
    grads = {}
    for name, param in model.named_parameters():
        if param.grad is not None:
            grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
            grads[name] = grad.detach().clone()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR).step()
    return out.loss.detach(), grads


class ShardedTrainer:
    """What `save_trained` reads of a `Trainer` whose parameters FSDP2 shards; `get_state_dict` is accelerate's
    FSDP2 branch of `Accelerator.get_state_dict` (its Trainer path needs GPUs)."""

    is_fsdp_enabled = True

    def __init__(self, model, processor):
        self.model = self.model_wrapped = model
        self.processing_class, self.accelerator = processor, self

    def unwrap_model(self, model):
        return model

    def get_state_dict(self, model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def is_world_process_zero(self):
        import torch.distributed as dist

        return dist.get_rank() == 0

    def wait_for_everyone(self):
        import torch.distributed as dist

        dist.barrier()


def worker(out_dir: str):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from collm_hf.testing_utils import tiny_model_and_processor
    from collm_hf.training.gradient_cache import wrapped_grad_cache_step
    from collm_hf.training.sharding import shard_model
    from collm_hf.training.trainer import save_trained

    dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # a stuck collective raises, not hangs
    rank = dist.get_rank()
    start = sum(SPLIT[:rank])
    results = {}
    for stage in ("triplets", "pairs", "pairs_patches"):
        model, batch = build(stage)
        ddp = DistributedDataParallel(model)
        out = ddp(**rows(batch, start, start + SPLIT[rank]))
        out.loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        results[stage] = (out.loss.detach(), grads)
    model, batch = build("pairs")  # gradient caching under DDP (as GradCacheTrainer runs it)
    loss = wrapped_grad_cache_step(DistributedDataParallel(model), rows(batch, start, start + SPLIT[rank]), chunk_size=4)
    results["pairs_gradcache"] = (loss, {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
    for variant in SHARDED:
        model, batch = build_sharded(variant)
        shard_model(model)
        assert all(hasattr(p, "full_tensor") for p in model.parameters())  # every parameter is a shard
        results[variant] = sgd_step(model, rows(batch, start, start + SPLIT[rank]))
        save_trained(ShardedTrainer(model, tiny_model_and_processor()[1]), os.path.join(out_dir, variant))
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The folder the two workers wrote (one launch for every test of this module)."""
    out = tmp_path_factory.mktemp("distributed")
    launch_with_retry(__file__, [out], nproc=2)
    return out


def test_two_processes_equal_one_process_on_the_concatenated_batch(launched):
    per_rank = [torch.load(launched / f"rank{r}.pt") for r in range(2)]
    for stage in ("triplets", "pairs", "pairs_patches", "pairs_gradcache"):
        model, batch = build("pairs" if stage == "pairs_gradcache" else stage)
        loss, grads = loss_and_grads(model, batch)
        if stage == "triplets":  # the shared text is masked: the loss differs from one without the query keys
            without = {k: v for k, v in batch.items() if k not in ("query_keys", "target_query_keys")}
            assert not torch.allclose(model(**without).loss, loss)
        assert any("vision_tower" in name for name in grads)  # the tower is trained: gradients cross ranks
        for rank_loss, rank_grads in (r[stage] for r in per_rank):
            torch.testing.assert_close(rank_loss, loss, atol=1e-5, rtol=1e-5)  # every rank reports the global loss
            assert rank_grads.keys() == grads.keys()
            for name, grad in grads.items():
                torch.testing.assert_close(rank_grads[name], grad, atol=1e-5, rtol=1e-5, msg=f"{stage}: {name}")


def test_sharded_parameters_equal_one_process_and_save_a_loadable_model(launched):
    from transformers import AutoModel

    from collm_hf.training.lora import merge_lora

    per_rank = [torch.load(launched / f"rank{r}.pt") for r in range(2)]
    for variant in SHARDED:
        model, batch = build_sharded(variant)
        loss, grads = sgd_step(model, batch)
        for rank_loss, rank_grads in (r[variant] for r in per_rank):
            torch.testing.assert_close(rank_loss, loss, atol=1e-5, rtol=1e-5)
            assert rank_grads.keys() == grads.keys()
            for name, grad in grads.items():  # the logit scale is a one-element vector under FSDP2
                torch.testing.assert_close(rank_grads[name].reshape(grad.shape), grad, atol=1e-5, rtol=1e-5,
                                           msg=f"{variant}: {name}")
        untrained = build_sharded(variant)[0]
        if variant == "full":
            assert any("vision_tower" in name for name in grads)  # gradients cross the shards into the tower
        else:
            assert (launched / "lora" / "lora_adapter" / "adapter_model.safetensors").exists()
            model, untrained = merge_lora(model), merge_lora(untrained)
        saved = AutoModel.from_pretrained(launched / variant).eval()
        assert saved.logit_scale.shape == ()  # the shape `from_pretrained` expects, not FSDP2's vector
        queries = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"])
        with torch.no_grad():
            for key in ("pixel_values", "target_pixel_values"):
                torch.testing.assert_close(saved.get_image_embeds(batch[key]), model.eval().get_image_embeds(batch[key]),
                                           atol=1e-5, rtol=1e-5)
            expected = model.get_query_embeds(**queries)
            torch.testing.assert_close(saved.get_query_embeds(**queries), expected, atol=1e-5, rtol=1e-5)
            assert not torch.allclose(untrained.eval().get_query_embeds(**queries), expected, atol=1e-4)  # it trained


def test_single_process_gather_is_identity():
    from collm_hf.models.collm.losses import gather_padded, gather_rows

    x = torch.randn(3, 4)
    assert gather_rows(x) == (x, 0)
    assert gather_padded(x.long(), -1)[0] is not None


if __name__ == "__main__":
    worker(sys.argv[1])
