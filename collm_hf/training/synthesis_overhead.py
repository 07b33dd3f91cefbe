"""How much of a pair pre-training step the in-step synthesis costs (`collm-hf train --measure-synthesis-overhead`).

`measure_synthesis_overhead` times the synthesis (neighbours, Slerp, token assembly, stacking) against a whole
training step of a given model and batch; `synthesis_overhead_benchmark` runs it on a random model and random pairs.
"""

import logging
import time

import torch

from ..models.collm.synthesis import concat_padded_queries, synthesize_composed_queries
from .collators import CoLLMPairCollator

logger = logging.getLogger(__name__)


def _synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_synthesis_overhead(model, batch: dict, steps: int = 5, warmup: int = 1) -> float:
    """Share of a training step spent in the in-step synthesis (neighbours, Slerp, token assembly, stacking).

    A step is forward + backward of `model(**batch)` on a pair batch (`CoLLMPairCollator` output). The
    synthesis part is `synthesize_composed_queries` + `concat_padded_queries` on the same inputs, timed apart.
    The augmented-image encoding h' = f(t(v)) is the method's own cost, not the assembly's, and is left out
    of the numerator (it is in the step). Median over `steps` runs after `warmup`.

    Args:
        model: a `CoLLMModel` (or a peft wrapper of one), on its device.
        batch: a pair batch; tensors are moved to the model's device.
        steps / warmup: timed and untimed repetitions.

    Returns:
        synthesis time / step time (e.g. 0.01 = 1 %).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(base.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if "caption_ids" not in batch:
        raise ValueError("measure_synthesis_overhead needs a pair batch (CoLLMPairCollator output).")
    with torch.no_grad():
        augmented = base.get_image_embeds(batch["pixel_values"])  # (batch, dim) h'
    alpha = base.config.slerp_alpha

    def synthesis():
        out = synthesize_composed_queries(
            augmented,
            batch["caption_ids"],
            batch["modification_template_ids"],
            batch["query_frame_ids"],
            batch.get("target_image_ids"),
            alpha,
        )
        concat_padded_queries(
            [
                (batch["input_ids"], batch["attention_mask"]),
                (batch["text_input_ids"], batch["text_attention_mask"]),
                (out.input_ids, out.attention_mask),
            ]
        )

    def step():
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()

    def timed(fn) -> float:
        times = []
        for i in range(warmup + steps):
            _synchronize(device)
            start = time.perf_counter()
            fn()
            _synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    was_training = model.training
    model.train()
    step_time = timed(step)
    synthesis_time = timed(synthesis)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    logger.info("synthesis %.2f ms / step %.2f ms", synthesis_time * 1e3, step_time * 1e3)
    return synthesis_time / step_time


BENCHMARK_WORDS = ["red", "blue", "green", "yellow", "purple", "small", "large", "wooden", "metal", "dog", "cat", "car", "bench", "tree", "house", "bicycle", "two", "three", "people", "street", "river", "mountain", "sitting", "standing", "next", "to", "on", "under", "near", "with", "a", "the", "of"]


def synthesis_overhead_benchmark(
    size: str = "tiny", batch_size: int = 32, device: str | None = None, steps: int = 5
) -> dict:
    """`measure_synthesis_overhead` on a random model and random pairs (no downloads).

    Args:
        size: "tiny" (hidden 32, CPU-friendly) or "base" (CLIP-B/32-shaped tower, 16-layer 2048-wide Llama,
            about 0.7B parameters; bf16 on CUDA; too slow for CPU). Real 7B LLMs make the share smaller still.
        batch_size: pairs per step (3 queries each).
        device: "cuda" or "cpu" (default: cuda when available).
        steps: timed repetitions.

    Returns:
        {"share": float, "batch_size": int, "size": str, "device": str}.
    """
    import numpy as np
    from PIL import Image

    from ..models.collm.configuration_collm import CoLLMConfig
    from ..models.collm.modeling_collm import CoLLMModel
    from ..models.collm.processing_collm import CoLLMProcessor
    from ..testing_utils import (
        TEXT_CONFIGS,
        VISION_CONFIGS,
        tiny_config,
        tiny_image_processor,
        tiny_tokenizer,
    )

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    if size == "tiny":
        config, image_size, dtype = tiny_config(vocab_size=len(tokenizer)), 32, torch.float32
    elif size == "base":  # CLIP-B/32-shaped tower, ~0.6B-parameter Llama (random weights)
        vision = dict(
            VISION_CONFIGS["clip"],
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
            projection_dim=512,
        )
        text = dict(
            TEXT_CONFIGS["llama"],
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=16,
            num_attention_heads=16,
            num_key_value_heads=8,
            vocab_size=len(tokenizer),
        )
        config = CoLLMConfig(vision_config=vision, text_config=text)
        image_size, dtype = 224, torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        raise ValueError(f"size must be 'tiny' or 'base', got {size!r}")
    with torch.device(device):
        model = CoLLMModel(config).to(dtype)
    processor = CoLLMProcessor.for_model(tiny_image_processor(image_size), tokenizer, model.config)
    rng = np.random.default_rng(0)
    rows = [
        {
            "image_id": str(i),
            "image": Image.fromarray(rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)),
            "caption": " ".join(rng.choice(BENCHMARK_WORDS, size=int(rng.integers(6, 16)))),
        }
        for i in range(batch_size)
    ]
    batch = CoLLMPairCollator(processor, check_tokenization=False)(rows)
    share = measure_synthesis_overhead(model, batch, steps=steps)
    return {"share": share, "batch_size": batch_size, "size": size, "device": str(device)}


__all__ = ["BENCHMARK_WORDS", "measure_synthesis_overhead", "synthesis_overhead_benchmark"]
