"""Training CoLLM with `transformers.Trainer`: the two stages of the paper, as library functions.

    pairs    - pre-training on image-caption pairs with on-the-fly triplet synthesis (CoLLM §3.2)
    triplets - fine-tuning on triplets such as MTCIR (CoLLM §3.3)

`CoLLMTrainer` is the stock `Trainer` with one optional training component, the modification writer of pair
pre-training. `build_trainer` assembles model, processor, LoRA, loss options, data and collator into one (or into
the `GradCacheTrainer` when a gradient-cache chunk size is set); `run_training` trains, resumes from checkpoints
and saves a folder that `AutoModel.from_pretrained` loads. Everything runs unchanged under `torchrun` or
`accelerate launch`: the model's loss gathers negatives (and, for pairs, synthesis neighbours) from every
process. The options are the dataclasses of `arguments.py`; `collm-hf train` and examples/train_collm.py parse them.
"""

import logging
import os
from dataclasses import fields, replace
from pathlib import Path

import torch
from transformers import Trainer

from ..models.collm.losses import ContrastiveLossConfig
from ..models.collm.synthesis import ImageAugmentation
from .arguments import (
    STAGES,
    DataArguments,
    LossArguments,
    ModelArguments,
    SynthesisArguments,
)
from .collators import CoLLMPairCollator, CoLLMTripletCollator, CollatorEpochCallback, ImageTable
from .lora import LoraArguments, apply_lora, merge_lora, quantization_config
from .sharding import materialize, parameters_sharded, vectorize_scalar_parameters

logger = logging.getLogger(__name__)

# Subfolder of the output directory holding the LoRA adapter (the root holds the merged model).
ADAPTER_DIR = "lora_adapter"


class CoLLMTrainer(Trainer):
    """The stock `Trainer`, plus the optional modification writer of pair pre-training (and, with a CoLLM
    collator, `CollatorEpochCallback`, which keys the collator's random draws by the epoch).

    The writer replaces the template texts w* of the synthesised composed queries (e.g. an LLM writes them:
    `llm_synthesis.ComposedQueryWriter`); each step passes it to the model as `forward(..., modification_writer=)`.
    It belongs to the trainer rather than the collator because a text is written from a sample's nearest
    neighbour, which the model picks inside the step from the image embeddings of the whole (gathered) batch; and
    rather than the model because it is a training tool (often a second LLM) that no checkpoint should carry.

    Args:
        modification_writer: a callable as `CoLLMModel.forward` describes, or None (the paper's templates).
        *args, **kwargs: as `Trainer`.

    Example:
        >>> writer = ComposedQueryWriter(LLMModificationWriter.from_pretrained(llm), processor.tokenizer)  # doctest: +SKIP
        >>> CoLLMTrainer(model=model, args=args, train_dataset=pairs, data_collator=collator,
        ...              modification_writer=writer).train()  # doctest: +SKIP
    """

    def __init__(self, *args, modification_writer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.modification_writer = modification_writer
        if isinstance(self.data_collator, (CoLLMPairCollator, CoLLMTripletCollator)):
            self.add_callback(CollatorEpochCallback(self.data_collator))  # the collators' draws follow the epoch
        if self.is_fsdp_enabled:  # fully_shard (FSDP2) refuses 0-dim parameters such as the logit scale
            vectorize_scalar_parameters(self.model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.modification_writer is not None:
            inputs = {**inputs, "modification_writer": self.modification_writer}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


# ----------------------------------------------------------------------------------------------------------
# Model and data
# ----------------------------------------------------------------------------------------------------------
def _dtype(name: str) -> torch.dtype:
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {name!r}")
    return getattr(torch, name)


def fp32_master_weights(model) -> None:
    """Hold every trainable parameter, and the logit scale, in fp32 whatever dtype the model was loaded in.

    `--dtype bfloat16` loads the towers in bf16 to save memory; the weights the optimizer updates (LoRA, the adapter,
    the projection, the logit scale, and in full fine-tuning the trained towers) stay fp32 master weights, so small
    updates are not rounded away. `--bf16 True` then runs the matrix products in bf16 under autocast. Call it after
    `apply_lora`: peft's trained copies of the new modules (`modules_to_save`) are among the trainable parameters.
    """
    for name, param in model.named_parameters():
        if param.dtype in (torch.float16, torch.bfloat16) and (param.requires_grad or name.endswith("logit_scale")):
            param.data = param.data.float()


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
    if args.max_text_tokens is not None:
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
    """Apply the options the user gave to the model config, where `forward` reads them (and saves them).

    Only options that are set change: `config.contrastive_loss` keeps every field `loss_args` leaves None (a
    loaded model keeps e.g. its `reference_negatives`), and `slerp_alpha` likewise. A fixed temperature freezes
    the logit scale, which the loss then no longer uses.
    """
    config = model.config
    given = {f.name: getattr(loss_args, f.name) for f in fields(ContrastiveLossConfig) if hasattr(loss_args, f.name)}
    config.contrastive_loss = replace(config.contrastive_loss, **{k: v for k, v in given.items() if v is not None})
    if loss_args.temperature is not None:
        config.learnable_logit_scale = False
        model.logit_scale.requires_grad_(False)
    if synthesis_args is not None and synthesis_args.slerp_alpha is not None:
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
    modification_writer=None,
):
    """Everything for one training stage, as a `CoLLMTrainer` (not yet trained).

    Args:
        stage: "pairs" or "triplets".
        model_args, data_args, synthesis_args, loss_args, lora_args: the option dataclasses.
        training_args: `transformers.TrainingArguments` (`remove_unused_columns` is forced to False).
        model, processor: an already loaded model and processor (skips `load_model_and_processor`).
        modification_writer: pairs: writes the composed queries' texts instead of the templates (`CoLLMTrainer`).

    Returns:
        `CoLLMTrainer` (`GradCacheTrainer` with `loss_args.gradient_cache_chunk_size`).
    """
    from transformers import set_seed

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
    fp32_master_weights(model)
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
    kwargs = dict(model=model, args=training_args, train_dataset=rows, data_collator=collator,
                  processing_class=processor, modification_writer=modification_writer)
    if loss_args.gradient_cache_chunk_size:
        return GradCacheTrainer(chunk_size=loss_args.gradient_cache_chunk_size, **kwargs)
    return CoLLMTrainer(**kwargs)


def save_trained(trainer, output_dir: str, merge: bool = True):
    """Save the final model: the LoRA adapter in `<output_dir>/lora_adapter`, and the whole (merged) model and the
    processor at `<output_dir>`, loadable with `AutoModel.from_pretrained(output_dir)`.

    Every process must call it. Parameters sharded across processes (FSDP, DeepSpeed ZeRO-3) are first gathered
    through accelerate (`Accelerator.get_state_dict`, a collective) into a CPU copy of the model on the main process
    (`sharding.materialize`), which is merged and saved; otherwise the main process saves the model it holds.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    if parameters_sharded(trainer):
        state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # full weights on the main process
        if trainer.is_world_process_zero():
            write_trained(materialize(model, state_dict), output_dir, trainer.processing_class, merge)
    elif trainer.is_world_process_zero():
        write_trained(model, output_dir, trainer.processing_class, merge)
    trainer.accelerator.wait_for_everyone()


def write_trained(model, output_dir: str, processor=None, merge: bool = True):
    """Write a trained model whose weights this process holds: a `PeftModel`'s adapter in
    `<output_dir>/lora_adapter` and (with `merge`) the merged model at `<output_dir>`; a plain model at `<output_dir>`;
    the processor beside the model."""
    from peft import PeftModel

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


__all__ = [
    "ADAPTER_DIR",
    "CoLLMTrainer",
    "build_collator",
    "build_trainer",
    "configure_loss",
    "fp32_master_weights",
    "load_model_and_processor",
    "load_rows",
    "load_training_data",
    "run_training",
    "save_trained",
    "write_trained",
]
