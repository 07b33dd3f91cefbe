"""Training CoLLM with the stock `transformers.Trainer`: the two stages of the paper, as library functions.

    pairs    - pre-training on image-caption pairs with on-the-fly triplet synthesis (CoLLM §3.2)
    triplets - fine-tuning on triplets such as MTCIR (CoLLM §3.3)

`build_trainer` assembles model, processor, LoRA, loss options, data and collator into a `Trainer` (or the
`GradCacheTrainer` when a gradient-cache chunk size is set); `run_training` trains, resumes from checkpoints
and saves a folder that `AutoModel.from_pretrained` loads. Everything runs unchanged under `torchrun` or
`accelerate launch`: the model's loss gathers negatives (and, for pairs, synthesis neighbours) from every
process. examples/train_collm.py is the command line on top (`HfArgumentParser` over these dataclasses).

`measure_synthesis_overhead` times the in-step synthesis against a whole training step.
"""

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .collators import CoLLMPairCollator, CoLLMTripletCollator, ImageTable
from .lora import LoraArguments, apply_lora, merge_lora, quantization_config
from ..models.collm.losses import ContrastiveLossConfig
from ..models.collm.synthesis import (
    DEFAULT_MODIFICATION_RATE,
    DEFAULT_SLERP_ALPHA,
    ImageAugmentation,
    concat_padded_queries,
    synthesize_composed_queries,
)

logger = logging.getLogger(__name__)

STAGES = ("pairs", "triplets")
# Subfolder of the output directory holding the LoRA adapter (the root holds the merged model).
ADAPTER_DIR = "lora_adapter"


@dataclass
class ModelArguments:
    """Which model to train: a saved CoLLM folder / hub id, or a vision and an LLM checkpoint to compose."""

    # A saved CoLLM (folder or hub id, with its processor); or leave empty and give the two backbones.
    model_name_or_path: str | None = None
    # Vision checkpoint (CLIP / SigLIP / BLIP) to compose with `llm_name_or_path`.
    vision_name_or_path: str | None = None
    # LLM checkpoint (decoder embedding model, e.g. SFR-Embedding-2, or any decoder LLM).
    llm_name_or_path: str | None = None
    # Weights dtype: float32, bfloat16 or float16.
    dtype: str = "float32"
    # Longest modification text in tokens (the instruction is never truncated).
    max_text_tokens: int = 128
    # Image adapter of a newly composed model ("mlp" or "linear").
    adapter_type: str = "mlp"
    # Train the vision tower too (full fine-tuning or LoRA with --lora_vision_tower); the paper freezes it.
    train_vision_tower: bool = False


@dataclass
class DataArguments:
    """Training data: a hub dataset id or a local folder (a dataset folder with README configs, or Parquet files)."""

    dataset_name_or_path: str | None = field(default=None, metadata={"help": "Hub dataset id or local folder."})
    # Config of the rows; default "pairs" or "triplets" by stage.
    dataset_config: str | None = None
    # Config of the images table for triplets (image_id, image); ignored when rows carry images.
    images_config: str = "images"
    split: str = "train"
    # Use only the first N rows (quick runs).
    max_train_samples: int | None = None
    caption_column: str = "caption"
    image_column: str = "image"
    image_id_column: str = "image_id"
    modifications_column: str = "modifications"


@dataclass
class SynthesisArguments:
    """On-the-fly triplet synthesis (pairs stage)."""

    # Share of samples whose text is a template over (target, neighbour) captions (paper: 0.75).
    modification_rate: float = DEFAULT_MODIFICATION_RATE
    # Slerp weight towards the neighbour (paper: 0.5).
    slerp_alpha: float = DEFAULT_SLERP_ALPHA
    # Augmentation family of the target before encoding: "crop_flip" (default) or "none".
    augmentation: str = "crop_flip"


@dataclass
class LossArguments:
    """Contrastive loss options (stored in the model config as `contrastive_loss`)."""

    # "hn_nce" (the loss the paper cites) or "info_nce".
    loss_type: str = "hn_nce"
    # Symmetric loss (query->target and target->query), as the public HN-NCE CIR recipe (CoVR).
    two_way: bool = True
    hn_alpha: float = 1.0
    hn_beta: float = 0.5
    # Fixed temperature (None: the model's logit scale, 1/0.07 at init; learnable only without LoRA).
    temperature: float | None = None
    # Gradient caching: compute the queries in chunks of this many rows (same loss and gradients).
    gradient_cache_chunk_size: int | None = None


def training_defaults() -> dict:
    """`TrainingArguments` defaults of this recipe, for `HfArgumentParser.set_defaults` (paper §5, §9)."""
    return {
        "remove_unused_columns": False,  # collators read raw columns
        "activation_checkpointing": True,  # transformers 5 name of gradient checkpointing
        "learning_rate": 1e-4,
        "lr_scheduler_type": "constant",
        "num_train_epochs": 1.0,
        "logging_steps": 10,
        "report_to": "none",
    }


# ----------------------------------------------------------------------------------------------------------
# Model and data
# ----------------------------------------------------------------------------------------------------------
def _dtype(name: str) -> torch.dtype:
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {name!r}")
    return getattr(torch, name)


def load_model_and_processor(args: ModelArguments, lora_args: LoraArguments | None = None):
    """A `CoLLMModel` and its `CoLLMProcessor`, from a saved CoLLM or composed from two backbones.

    Returns:
        (model, processor).
    """
    from transformers import AutoModel, AutoProcessor

    from ..models.collm.modeling_collm import CoLLMModel
    from ..models.collm.processing_collm import CoLLMProcessor

    dtype = _dtype(args.dtype)
    quantize = lora_args is not None and lora_args.use_lora and lora_args.load_in_4bit
    quant = (
        {"quantization_config": quantization_config(dtype if dtype != torch.float32 else torch.bfloat16)}
        if quantize
        else {}
    )
    if args.model_name_or_path:
        model = AutoModel.from_pretrained(args.model_name_or_path, dtype=dtype, **quant)
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    elif args.vision_name_or_path and args.llm_name_or_path:
        if quantize:
            quant["quantization_config"].llm_int8_skip_modules = None  # the LLM alone is loaded here
        model = CoLLMModel.from_backbones(
            args.vision_name_or_path,
            args.llm_name_or_path,
            dtype=dtype,
            llm_kwargs=quant,
            adapter_type=args.adapter_type,
        )
        parts = CoLLMProcessor.from_backbones(args.vision_name_or_path, args.llm_name_or_path)
        processor = CoLLMProcessor.for_model(parts.image_processor, parts.tokenizer, model.config)
    else:
        raise ValueError(
            "Give --model_name_or_path (a saved CoLLM) or both --vision_name_or_path and --llm_name_or_path."
        )
    processor.max_text_tokens = args.max_text_tokens
    if args.train_vision_tower:
        model.config.freeze_vision_tower = False
        model.apply_vision_freezing()
    return model, processor


def load_rows(path: str, config: str, split: str = "train"):
    """Rows of one config: a dataset folder or hub id with `configs` in its card, or a folder of Parquet files.

    Accepted local layouts: `<path>/README.md` naming configs (what `collm_hf.data.write_dataset` writes),
    `<path>/<config>/*.parquet`, or `<path>/*.parquet` (the rows themselves).
    """
    from datasets import load_dataset

    local = Path(path)
    if local.is_dir() and not (local / "README.md").exists():
        for folder in (local / config, local):
            files = sorted(str(p) for p in folder.glob("*.parquet"))
            if files:
                return load_dataset("parquet", data_files={split: files}, split=split)
        raise FileNotFoundError(f"No Parquet files in {local / config} or {local}, and no README.md with configs.")
    return load_dataset(path, config, split=split)


def load_training_data(stage: str, args: DataArguments):
    """(rows, images table or None) of a stage."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if not args.dataset_name_or_path:
        raise ValueError("Give --dataset_name_or_path (a hub dataset id or a local folder).")
    rows = load_rows(args.dataset_name_or_path, args.dataset_config or stage, args.split)
    if args.max_train_samples is not None:
        rows = rows.select(range(min(args.max_train_samples, len(rows))))
    images = None
    if stage == "triplets" and "reference_image" not in rows.column_names:
        images = ImageTable(load_rows(args.dataset_name_or_path, args.images_config, args.split))
    return rows, images


def build_collator(
    stage: str, processor, data_args: DataArguments, synthesis_args: SynthesisArguments, images=None, seed: int = 0
):
    """The stage's collator with the named columns of `data_args`."""
    if stage == "pairs":
        augmentation = {"crop_flip": ImageAugmentation(), "none": None}
        if synthesis_args.augmentation not in augmentation:
            raise ValueError(f"augmentation must be one of {sorted(augmentation)}, got {synthesis_args.augmentation!r}")
        return CoLLMPairCollator(
            processor,
            image_column=data_args.image_column,
            caption_column=data_args.caption_column,
            image_id_column=data_args.image_id_column,
            images=images,
            modification_rate=synthesis_args.modification_rate,
            augmentation=augmentation[synthesis_args.augmentation],
            seed=seed,
        )
    return CoLLMTripletCollator(
        processor, images=images, modifications_column=data_args.modifications_column, seed=seed
    )


def configure_loss(model, loss_args: LossArguments, synthesis_args: SynthesisArguments | None = None):
    """Write the loss (and Slerp) options into the model config, where `forward` reads them (and saves them)."""
    config = model.config
    config.contrastive_loss = ContrastiveLossConfig(
        loss_type=loss_args.loss_type,
        two_way=loss_args.two_way,
        hn_alpha=loss_args.hn_alpha,
        hn_beta=loss_args.hn_beta,
        temperature=loss_args.temperature,
    ).to_dict()
    if loss_args.temperature is not None:  # a fixed temperature leaves the logit scale unused
        config.learnable_logit_scale = False
        model.logit_scale.requires_grad_(False)
    if synthesis_args is not None:
        config.slerp_alpha = synthesis_args.slerp_alpha


# ----------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------
def build_trainer(
    stage: str,
    model_args: ModelArguments,
    data_args: DataArguments,
    synthesis_args: SynthesisArguments,
    loss_args: LossArguments,
    lora_args: LoraArguments,
    training_args,
    model=None,
    processor=None,
):
    """Everything for one training stage, as a `Trainer` (not yet trained).

    Args:
        stage: "pairs" or "triplets".
        model_args, data_args, synthesis_args, loss_args, lora_args: the option dataclasses.
        training_args: `transformers.TrainingArguments` (`remove_unused_columns` is forced to False).
        model, processor: an already loaded model and processor (skips `load_model_and_processor`).

    Returns:
        `Trainer` (`GradCacheTrainer` with `loss_args.gradient_cache_chunk_size`).
    """
    from transformers import Trainer, set_seed

    from .gradient_cache import GradCacheTrainer

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    training_args.remove_unused_columns = False
    checkpointing = training_args.activation_checkpointing or training_args.gradient_checkpointing
    if (
        checkpointing
        and not training_args.activation_checkpointing_kwargs
        and not training_args.gradient_checkpointing_kwargs
    ):
        training_args.activation_checkpointing_kwargs = {"use_reentrant": False}  # LoRA grads through frozen layers
    if model is None:
        set_seed(training_args.seed)  # the new modules of a composed model are initialised from the seed
        model, processor = load_model_and_processor(model_args, lora_args)
    configure_loss(model, loss_args, synthesis_args if stage == "pairs" else None)
    set_seed(training_args.seed)  # LoRA matrices are initialised from the seed: same seed, same run
    if lora_args.use_lora:
        model = apply_lora(model, stage, lora_args, gradient_checkpointing=bool(checkpointing))
    rows, images = load_training_data(stage, data_args)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "stage %s: %d rows, %d trainable parameters, loss %s",
        stage,
        len(rows),
        trainable,
        model.config.contrastive_loss,
    )
    collator = build_collator(stage, processor, data_args, synthesis_args, images, seed=training_args.seed)
    kwargs = dict(
        model=model, args=training_args, train_dataset=rows, data_collator=collator, processing_class=processor
    )
    if loss_args.gradient_cache_chunk_size:
        return GradCacheTrainer(chunk_size=loss_args.gradient_cache_chunk_size, **kwargs)
    return Trainer(**kwargs)


def save_trained(trainer, output_dir: str, merge: bool = True):
    """Save the final model: the LoRA adapter in `<output_dir>/lora_adapter`, and the whole (merged) model and the
    processor at `<output_dir>`, loadable with `AutoModel.from_pretrained(output_dir)`."""
    from peft import PeftModel

    model = trainer.accelerator.unwrap_model(trainer.model)
    if not trainer.is_world_process_zero():
        return
    processor = trainer.processing_class
    if isinstance(model, PeftModel):
        model.save_pretrained(os.path.join(output_dir, ADAPTER_DIR))
        if not merge:
            return
        model = merge_lora(model)
    model.save_pretrained(output_dir)
    if processor is not None:
        processor.save_pretrained(output_dir)


def run_training(stage, model_args, data_args, synthesis_args, loss_args, lora_args, training_args):
    """Train one stage (resuming when `training_args.resume_from_checkpoint` is a path or "true"/"latest") and
    save the result (`save_trained`). Returns the `TrainOutput`."""
    trainer = build_trainer(stage, model_args, data_args, synthesis_args, loss_args, lora_args, training_args)
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "latest"):
        resume = True
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_state()
    save_trained(trainer, training_args.output_dir, merge=lora_args.merge_lora_at_end)
    return result


# ----------------------------------------------------------------------------------------------------------
# Synthesis overhead
# ----------------------------------------------------------------------------------------------------------
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
    alpha = getattr(base.config, "slerp_alpha", DEFAULT_SLERP_ALPHA)

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


BENCHMARK_WORDS = (
    "red blue green yellow purple small large wooden metal dog cat car bench tree house bicycle two three "
    "people street river mountain sitting standing next to on under near with a the of"
).split()


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

    from ..testing_utils import TEXT_CONFIGS, VISION_CONFIGS, tiny_config, tiny_image_processor, tiny_tokenizer
    from ..models.collm.configuration_collm import CoLLMConfig
    from ..models.collm.modeling_collm import CoLLMModel
    from ..models.collm.processing_collm import CoLLMProcessor

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


__all__ = [
    "DataArguments",
    "LossArguments",
    "ModelArguments",
    "STAGES",
    "SynthesisArguments",
    "build_collator",
    "build_trainer",
    "configure_loss",
    "load_model_and_processor",
    "load_rows",
    "load_training_data",
    "measure_synthesis_overhead",
    "run_training",
    "save_trained",
    "synthesis_overhead_benchmark",
    "training_defaults",
]
