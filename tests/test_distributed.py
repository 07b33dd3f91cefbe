"""Two processes under torchrun (gloo, CPU) give the loss and gradients of one process on the concatenated batch.

The test launches this same file as the worker (`torchrun --nproc_per_node 2 tests/test_distributed.py OUT`):
each rank takes its rows of one collated batch (an uneven 5/3 split), runs the DDP-wrapped model, and rank 0
saves the loss and the synchronised gradients. Covered: triplets, and pairs with on-the-fly synthesis (global
nearest neighbours, Slerp, token assembly) with a trainable vision tower, so gradients also flow through the
gathered neighbour embeddings; HN-NCE two-way with duplicate-id and shared-text masking; and gradient caching
under DDP.
"""

import os
import sys
from datetime import timedelta

import numpy as np
import torch
from _multiprocess import launch_with_retry

from collm_hf.models.collm.losses import ContrastiveLossConfig

SPLIT = (5, 3)  # rows of rank 0 and rank 1
LOSS = ContrastiveLossConfig(loss_type="hn_nce", two_way=True, hn_alpha=1.0, hn_beta=0.5)


def build(stage: str):
    """The tiny model and the global batch (8 rows, with one duplicate image id) of a stage."""
    from PIL import Image

    from collm_hf.testing_utils import tiny_model_and_processor
    from collm_hf.training.collators import CoLLMPairCollator, CoLLMTripletCollator

    model, processor = tiny_model_and_processor(seed=0, freeze_vision_tower=False)
    model.config.contrastive_loss = LOSS
    rng = np.random.default_rng(0)
    images = {str(i): Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)) for i in range(8)}
    words = ["red circle", "blue square", "dog on a bench", "yellow stars", "purple cross", "cyan ring", "green star", "two cats"]
    ids = ["0", "1", "2", "3", "4", "5", "6", "2"]  # rows 2 and 7 share an image
    if stage == "pairs":
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


def worker(out_dir: str):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from collm_hf.training.gradient_cache import wrapped_grad_cache_step

    dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # a stuck collective raises, not hangs
    rank = dist.get_rank()
    start = sum(SPLIT[:rank])
    results = {}
    for stage in ("triplets", "pairs"):
        model, batch = build(stage)
        ddp = DistributedDataParallel(model)
        out = ddp(**rows(batch, start, start + SPLIT[rank]))
        out.loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        results[stage] = (out.loss.detach(), grads)
    model, batch = build("pairs")  # gradient caching under DDP (as GradCacheTrainer runs it)
    loss = wrapped_grad_cache_step(DistributedDataParallel(model), rows(batch, start, start + SPLIT[rank]), chunk_size=4)
    results["pairs_gradcache"] = (loss, {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    launch_with_retry(__file__, [tmp_path], nproc=2)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for stage in ("triplets", "pairs", "pairs_gradcache"):
        model, batch = build(stage.split("_")[0])
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


def test_single_process_gather_is_identity():
    from collm_hf.models.collm.losses import gather_padded, gather_rows

    x = torch.randn(3, 4)
    assert gather_rows(x) == (x, 0)
    assert gather_padded(x.long(), -1)[0] is not None


if __name__ == "__main__":
    worker(sys.argv[1])
