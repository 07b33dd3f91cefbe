"""Gradient caching: a contrastive batch larger than fits in memory, with the loss and gradients of the full batch.

GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup",
https://github.com/luyug/GradCache). The LLM pass dominates memory, so the queries are the cached side:

1. `prepare_contrastive_inputs` once, with its autograd graph (image embeddings, synthesis);
2. query embeddings chunk by chunk without a graph, recording the random state before each chunk;
3. the loss on the full (global) batch of embeddings; backward gives d loss / d query embedding, and d loss /
   d target and reference embedding;
4. each chunk again, with a graph, under the *same* random state (dropout, LoRA dropout), backpropagating its
   cached embedding gradient; then the image side's graph is backpropagated once with its gradients.

Step 4 recomputes exactly the forward of step 2, so the parameter gradients equal those of one backward
through the whole batch (up to float summation order).
"""

from contextlib import nullcontext
from dataclasses import replace

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType

from .trainer import CoLLMTrainer


class RandomState:
    """The CPU and CUDA random states at construction; `with state.restored():` replays them."""

    def __init__(self, device: torch.device):
        self.devices = [device] if device.type == "cuda" else []
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    def restored(self):
        fork = torch.random.fork_rng(devices=self.devices)
        state = self

        class _Restore:
            def __enter__(self):
                fork.__enter__()
                torch.set_rng_state(state.cpu)
                for device, cuda_state in zip(state.devices, state.cuda):
                    torch.cuda.set_rng_state(cuda_state, device)

            def __exit__(self, *exc):
                return fork.__exit__(*exc)

        return _Restore()


def _image_rows(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """(rows,) index into image_embeds of each row's image (-1 for text-only rows)."""
    has_image = (input_ids == image_token_id).any(-1)
    return torch.where(has_image, has_image.long().cumsum(0) - 1, torch.full_like(has_image, -1, dtype=torch.long))


def _at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _dot(tensors, grads) -> torch.Tensor:
    """sum_k <tensor_k, grad_k> in fp32: its backward sends each cached gradient into its tensor's graph."""
    return sum((_at_least_fp32(t) * g.to(t.device, torch.float32)).sum() for t, g in zip(tensors, grads))


def grad_cache_step(
    model,
    inputs: dict,
    chunk_size: int,
    loss_scale: float = 1.0,
    autocast=nullcontext,
    modification_writer=None,
    backward=None,
    return_outputs: bool = False,
):
    """One GradCache forward/backward of a `CoLLMModel` batch; gradients accumulate into `.grad` as after
    `(model(**inputs).loss * loss_scale).backward()`.

    Every backward pass is of a scalar (the loss, then `<embeddings, cached gradient>` per chunk and once for the
    image side), through `backward`, so a trainer can route them through `accelerator.backward`. The cached
    embeddings and their gradients are kept in fp32 whatever precision the forward passes run in.

    Args:
        model: a `CoLLMModel` (a peft model's base model works: LoRA layers are injected in place).
        inputs: a collator batch (pairs or triplets), on the model's device.
        chunk_size: query rows per chunk (pairs have 3 query rows per sample).
        loss_scale: factor on the loss before backward (1 / gradient accumulation steps).
        autocast: context manager factory for the forward passes (e.g. `accelerator.autocast`).
        modification_writer: pairs: rewrites the synthesised texts, as in `CoLLMModel.forward`.
        backward: callable on a scalar tensor (default `Tensor.backward`).
        return_outputs: also return the model output of the whole batch (`logits_per_query`, ...), without graph.

    Returns:
        the (unscaled) loss, detached (and the output, with `return_outputs`).

    Example:
        >>> loss = grad_cache_step(model, batch, chunk_size=32)  # doctest: +SKIP
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    backward = backward or torch.Tensor.backward
    inputs = {k: v for k, v in inputs.items() if k != "return_loss"}
    with autocast():
        prepared = model.prepare_contrastive_inputs(**inputs, modification_writer=modification_writer)
    if prepared.target_embeds is None:
        raise ValueError("Gradient caching needs targets (target_pixel_values or target_image_embeds).")
    # Leaves cut the image side's graph: the loss and the chunks backpropagate into them, and the graph itself is
    # backpropagated once at the end (the reference embeddings reach the loss too, as reference negatives).
    images, targets, negatives = prepared.image_embeds, prepared.target_embeds, prepared.negative_embeds
    image_leaf, target_leaf, negative_leaf = (
        None if root is None else _at_least_fp32(root.detach()).requires_grad_(root.requires_grad)
        for root in (images, targets, negatives))
    image_rows = _image_rows(prepared.input_ids, model.config.image_token_id)
    device = prepared.input_ids.device
    chunks = [slice(start, start + chunk_size) for start in range(0, prepared.input_ids.shape[0], chunk_size)]

    def embed(chunk: slice) -> torch.Tensor:
        rows = image_rows[chunk]
        chunk_images = None if image_leaf is None or not bool((rows >= 0).any()) else image_leaf[rows[rows >= 0]]
        with autocast():
            return model.get_query_embeds(
                prepared.input_ids[chunk], prepared.attention_mask[chunk], image_embeds=chunk_images
            )

    states = []
    with torch.no_grad():  # pass 1: embeddings only
        cached = []
        for chunk in chunks:
            states.append(RandomState(device))
            cached.append(embed(chunk))
    query_leaf = _at_least_fp32(torch.cat(cached)).requires_grad_(True)  # (rows, dim)
    leaves = replace(prepared, image_embeds=image_leaf, target_embeds=target_leaf, negative_embeds=negative_leaf)
    with autocast():
        outputs = model.contrastive_output(query_leaf, leaves, return_loss=True)
    loss = outputs.loss
    backward(loss * loss_scale)  # grads of the embeddings (and of the logit scale)
    for chunk, state in zip(chunks, states):  # pass 2: replay each chunk with a graph
        with state.restored():
            embeds = embed(chunk)
        backward(_dot([embeds], [query_leaf.grad[chunk]]))
    roots, grads = [], []
    for root, leaf in ((images, image_leaf), (targets, target_leaf), (negatives, negative_leaf)):
        if leaf is not None and leaf.grad is not None:
            roots.append(root), grads.append(leaf.grad)
    if roots:  # image side: the vision tower (when trained) and synthesis
        backward(_dot(roots, grads))
    if not return_outputs:
        return loss.detach()
    outputs.loss = loss.detach()
    if outputs.logits_per_query is not None:
        outputs.logits_per_query = outputs.logits_per_query.detach()
    return loss.detach(), outputs


def wrapped_grad_cache_step(
    model,
    inputs: dict,
    chunk_size: int,
    loss_scale: float = 1.0,
    autocast=nullcontext,
    modification_writer=None,
    backward=None,
    return_outputs: bool = False,
):
    """`grad_cache_step` for a model that may be wrapped in DDP and/or peft.

    DDP's gradient hooks expect one forward per backward, so the step runs under `no_sync()` and averages the
    gradients over processes itself afterwards (what DDP would have done). With gradient accumulation the
    already-averaged gradient of earlier micro-steps is identical on every rank, so averaging again keeps it.
    """
    distributed = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    unwrapped = model.module if distributed else model
    base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
    with model.no_sync() if distributed else nullcontext():
        result = grad_cache_step(base, inputs, chunk_size, loss_scale, autocast, modification_writer, backward,
                                 return_outputs)
    if distributed:
        world = dist.get_world_size()
        for param in model.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad /= world
    return result


class GradCacheTrainer(CoLLMTrainer):
    """A `CoLLMTrainer` whose training step is `grad_cache_step`: the contrastive batch is `per_device_train_batch_size`
    (times the number of processes: negatives are gathered), while the LLM sees `chunk_size` query rows at a time.

    Use it where the batch the paper uses (1024) does not fit: same loss, same gradients, more compute (the
    queries are encoded twice). The forward passes run under `accelerator.autocast()` (`--bf16 True` trains in
    bf16 autocast, as the plain trainer does) and every backward pass goes through `accelerator.backward`. Under DDP
    the step runs without DDP's hooks (`no_sync`) and averages the gradients itself after the backward passes.
    fp16 loss scaling is not supported (use bf16 or fp32).

    Args:
        chunk_size: query rows per LLM pass.
        *args, **kwargs: as `CoLLMTrainer` (`modification_writer` included).

    Example:
        >>> trainer = GradCacheTrainer(model=model, args=args, train_dataset=rows, data_collator=collator, chunk_size=32)  # doctest: +SKIP
    """

    def __init__(self, *args, chunk_size: int, **kwargs):
        super().__init__(*args, **kwargs)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if self.args.fp16:
            raise ValueError("GradCacheTrainer does not support fp16 loss scaling; use bf16 or fp32.")
        self.chunk_size = chunk_size

    def _backward(self, scalar: torch.Tensor) -> None:
        # As Trainer.training_step: DeepSpeed must not rescale by the accumulation steps (the loss already is).
        kwargs = {"scale_wrt_gas": False} if self.accelerator.distributed_type == DistributedType.DEEPSPEED else {}
        self.accelerator.backward(scalar, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        model.train()
        if callable(getattr(self.optimizer, "train", None)):  # schedule-free optimizers, as Trainer.training_step
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        scale = 1.0 / self.current_gradient_accumulation_steps
        loss, outputs = wrapped_grad_cache_step(model, inputs, self.chunk_size, scale, self.accelerator.autocast,
                                                self.modification_writer, self._backward, return_outputs=True)
        self._count_in_batch_hits(outputs, inputs)  # the logged in_batch_top1, as the plain trainer's
        return loss * scale


__all__ = ["GradCacheTrainer", "RandomState", "grad_cache_step", "wrapped_grad_cache_step"]
