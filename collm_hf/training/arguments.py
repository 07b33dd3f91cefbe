"""The options of `collm-hf train` (and examples/train_collm.py) as dataclasses for `HfArgumentParser`.

Options a checkpoint also stores (the loss, the Slerp weight, the text length) default to None: unset, they keep
what the loaded model says (a newly composed model: the library defaults); set, they replace it. So a second stage
started from a saved model trains with that model's options unless a flag says otherwise.
LoRA options are `lora.LoraArguments`; `TrainingArguments` are transformers' own.
"""

from dataclasses import dataclass, field
from typing import Literal

from ..models.collm.synthesis import DEFAULT_MODIFICATION_RATE

STAGES = ("pairs", "triplets")


@dataclass
class ModelArguments:
    """Which model to train: a saved CoLLM folder / hub id, or a vision and an LLM checkpoint to compose."""

    # A saved CoLLM (folder or hub id, with its processor); or leave empty and give the two backbones.
    model_name_or_path: str | None = field(default=None, metadata={"aliases": ["--model"]})
    # Vision checkpoint to compose with `llm_name_or_path`: CLIP / SigLIP / BLIP, or any transformers vision tower
    # (DINOv2, ViT, ConvNeXt, ResNet, ...; docs/vision_towers.md).
    vision_name_or_path: str | None = None
    # LLM checkpoint (decoder embedding model, e.g. SFR-Embedding-2, or any decoder LLM).
    llm_name_or_path: str | None = None
    # Weights dtype: float32, bfloat16 or float16.
    dtype: str = "float32"
    # Longest modification text in tokens (the instruction is never truncated); None keeps the processor's (128 new).
    max_text_tokens: int | None = None
    # Image adapter of a newly composed model ("mlp" or "linear").
    adapter_type: str = "mlp"
    # Gallery embedding of a newly composed model's tower without a retrieval head: "auto" (its pooler output where
    # the checkpoint holds the pooler's weights, else its class token, else the mean), "pooler", "cls" or "mean".
    vision_pooling: Literal["auto", "pooler", "cls", "mean"] = "auto"
    # What the reference image becomes in a newly composed model's LLM: "pooled" (its gallery embedding, the paper)
    # or "patches" (the tower's patch grid, reduced by --patch_reduction "grid" or "resampler"; docs/patch_tokens.md).
    reference_tokens: Literal["pooled", "patches"] = "pooled"
    patch_reduction: Literal["grid", "resampler"] = "grid"
    # LLM tokens per reference image; None: 1 for "pooled" (the paper), 16 (a 4 x 4 grid) for "patches".
    num_visual_tokens: int | None = None
    # Train the vision tower too (full fine-tuning or LoRA with --lora_vision_tower); the paper freezes it.
    train_vision_tower: bool = False


@dataclass
class DataArguments:
    """Training data: a hub dataset id or a local folder (a dataset folder with README configs, or Parquet files)."""

    dataset_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub dataset id or local folder.", "aliases": ["--dataset"]}
    )
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
    # Read the rows as a stream (`datasets` streaming): nothing is prepared or cached up front, each process reads
    # its own Parquet shards; triplets read their images by id from the images config's files. Needs --max_steps.
    streaming: bool = False
    # Streaming: rows shuffled through a buffer of this many (and the shard order shuffled); 0 keeps file order.
    shuffle_buffer_size: int = 1000
    # Benchmark folder or hub id (configs queries + gallery) to evaluate retrieval on at each --eval_strategy step:
    # eval_recall@K, eval_cirr_score, eval_map@K, ... (usable as --metric_for_best_model) and eval_loss.
    eval_dataset_name_or_path: str | None = None
    # Its split (default: the benchmark's split rule: val, validation, test, train).
    eval_split: str | None = None
    # Evaluate on the first N queries only (faster; the gallery stays whole).
    eval_max_queries: int | None = None


@dataclass
class SynthesisArguments:
    """On-the-fly triplet synthesis (pairs stage)."""

    # Share of samples whose text is a template over (target, neighbour) captions (paper: 0.75).
    modification_rate: float = DEFAULT_MODIFICATION_RATE
    # Slerp weight towards the neighbour; None keeps the model's `config.slerp_alpha` (paper and default: 0.5).
    slerp_alpha: float | None = None
    # Augmentation family of the target before encoding: "crop_flip" (default) or "none".
    augmentation: str = "crop_flip"


@dataclass
class LossArguments:
    """Contrastive loss options: each one given replaces that field of the model's `config.contrastive_loss`
    (`ContrastiveLossConfig`); the others keep the model's values (a new model's: two-way HN-NCE, alpha 1,
    beta 0.5, the loss the paper cites)."""

    loss_type: Literal["hn_nce", "info_nce"] | None = None
    # Symmetric loss (query -> target and target -> query), as the public HN-NCE CIR recipe (CoVR).
    two_way: bool | None = None
    hn_alpha: float | None = None
    hn_beta: float | None = None
    # Fixed temperature (freezes the logit scale; without one: the model's logit scale, 1/0.07 at init).
    temperature: float | None = None
    # Triplets: the batch's reference images are negatives of every query too.
    reference_negatives: bool | None = None
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


__all__ = ["STAGES", "DataArguments", "LossArguments", "ModelArguments", "SynthesisArguments", "training_defaults"]
