"""Training CoLLM with `transformers.Trainer`: the two stages of the paper, as library functions.

    pairs    - pre-training on image-caption pairs with on-the-fly triplet synthesis (CoLLM §3.2)
    triplets - fine-tuning on triplets such as MTCIR (CoLLM §3.3)

`CoLLMTrainer` is the stock `Trainer` with one optional training component, the modification writer of pair
pre-training. `build_trainer` assembles model, processor, LoRA, loss options, data (prepared, or streamed with
`--streaming True`), collator and, with `--eval_dataset_name_or_path`, evaluation on a benchmark into one (or into
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
from .collators import CoLLMPairCollator, CoLLMTripletCollator, CollatorEpochCallback, ImageTable, ParquetImageTable
from .lora import LoraArguments, apply_lora, merge_lora, quantization_config
from .sharding import materialize, parameters_sharded, restore_scalar_shapes, vectorize_scalar_parameters

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

    Training logs also carry `logit_scale` and `in_batch_top1` (see `log`).

    Args:
        modification_writer: a callable as `CoLLMModel.forward` describes, or None (the paper's templates).
        eval_data_collator: batches the `eval_dataset` when its rows differ from the training rows (e.g.
            `collm_hf.evaluation.callback.BenchmarkLossCollator` for benchmark queries); None: `data_collator`.
        *args, **kwargs: as `Trainer`.

    Example:
        >>> writer = ComposedQueryWriter(LLMModificationWriter.from_pretrained(llm), processor.tokenizer)  # doctest: +SKIP
        >>> CoLLMTrainer(model=model, args=args, train_dataset=pairs, data_collator=collator,
        ...              modification_writer=writer).train()  # doctest: +SKIP
    """

    def __init__(self, *args, modification_writer=None, eval_data_collator=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.modification_writer = modification_writer
        self.eval_data_collator = eval_data_collator
        self._in_batch_hits = None  # (2,) top-1 hits and rows of the training batches since the last log
        if isinstance(self.data_collator, (CoLLMPairCollator, CoLLMTripletCollator)):
            self.add_callback(CollatorEpochCallback(self.data_collator))  # the collators' draws follow the epoch
        # fully_shard (FSDP2) refuses 0-dim parameters such as the logit scale; `_save` gives them their shape back.
        self._vectorized_parameters = vectorize_scalar_parameters(self.model) if self.is_fsdp_enabled else []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.modification_writer is not None:
            inputs = {**inputs, "modification_writer": self.modification_writer}
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if model.training:
            self._count_in_batch_hits(outputs, inputs)
        return (loss, outputs) if return_outputs else loss

    def _save(self, output_dir=None, state_dict=None) -> None:
        """`Trainer._save`, writing a vectorized logit scale (FSDP) with the model's own 0-dim shape, so every
        checkpoint folder loads with `AutoModel.from_pretrained`."""
        if self._vectorized_parameters:
            if state_dict is None:
                state_dict = self.accelerator.unwrap_model(self.model).state_dict()
            state_dict = restore_scalar_shapes(state_dict, self._vectorized_parameters)
        super()._save(output_dir, state_dict)

    def _count_in_batch_hits(self, outputs, inputs) -> None:
        logits = getattr(outputs, "logits_per_query", None)  # (batch, batch) query-target similarities
        if logits is None:
            return
        with torch.no_grad():
            best = logits.argmax(-1)  # (batch,)
            ids = inputs.get("target_image_ids")  # a copy of the row's own target image counts as found
            hits = ids[best] == ids if ids is not None else best == torch.arange(len(best), device=best.device)
            counts = torch.stack([hits.sum(), torch.tensor(len(hits), device=hits.device)]).float()
            self._in_batch_hits = counts if self._in_batch_hits is None else self._in_batch_hits + counts

    def log(self, logs: dict, start_time=None) -> None:
        """`Trainer.log`; training logs also carry `logit_scale` (the factor on cosine similarities, 1 / temperature)
        and `in_batch_top1` (the share of the training queries since the last log, over all processes, whose most
        similar target in their batch is their own)."""
        if "loss" in logs:  # a training log: every process logs at the same steps
            logs = {**logs, **self._training_statistics()}
        super().log(logs, start_time)

    def _training_statistics(self) -> dict:
        statistics = {}
        model = self.accelerator.unwrap_model(self.model)
        model = model.get_base_model() if hasattr(model, "get_base_model") else model
        scale = getattr(model, "logit_scale", None)
        if isinstance(scale, torch.Tensor):
            scale = scale.full_tensor() if hasattr(scale, "full_tensor") else scale  # a sharded parameter
            statistics["logit_scale"] = round(float(scale.detach().float().exp()), 4)
        if self._in_batch_hits is not None:
            hits, rows = self.accelerator.reduce(self._in_batch_hits, "sum").tolist()
            statistics["in_batch_top1"] = round(hits / max(rows, 1.0), 4)
            self._in_batch_hits = None
        return statistics

    def get_eval_dataloader(self, eval_dataset=None):
        """`Trainer.get_eval_dataloader`, batched by `eval_data_collator` when one is given (evaluation rows, e.g.
        benchmark queries, need not look like the training rows)."""
        if self.eval_data_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        training_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = training_collator


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
            vision_pooling=args.vision_pooling,
            reference_tokens=args.reference_tokens,
            patch_reduction=args.patch_reduction,
            num_visual_tokens=args.num_visual_tokens or (16 if args.reference_tokens == "patches" else 1),
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


def _local_parquet_files(local: Path, config: str, split: str, streaming: bool = False) -> str | list[str] | None:
    """Where `load_rows` finds the files of a local folder's config, when it need not ask the folder's card:

    - a folder without a card: `<folder>/<config>/*.parquet`, else `<folder>/*.parquet` (a list);
    - streaming a folder that `collm_hf.data.write_dataset` wrote (its card carries the writer's marker): the split's
      files, `<folder>/<config>/<split>-*.parquet` (one pattern). The card lists every file, and `datasets` resolves
      such a list file by file (about 1-2 ms each: seconds for the thousands of files of a full MTCIR build) before
      the first row; a pattern is one listing of the folder;
    - else None: the card's `configs` say where the files are.
    """
    from ..data.writer import BUILD_MARKER

    card = local / "README.md"
    if card.exists():
        pattern = local / config / f"{split}-*.parquet"
        if streaming and BUILD_MARKER in card.read_text(encoding="utf-8", errors="replace") \
                and any(pattern.parent.glob(pattern.name)):
            return str(pattern)
        return None
    for folder in (local / config, local):
        files = sorted(str(p) for p in folder.glob("*.parquet"))
        if files:
            return files
    raise FileNotFoundError(f"No Parquet files in {local / config} or {local}, and no README.md with configs.")


def load_rows(path: str, config: str, split: str = "train", streaming: bool = False):
    """Rows of one config: a dataset folder or hub id with `configs` in its card, or a folder of Parquet files.

    Accepted local layouts: `<path>/README.md` naming configs (what `collm_hf.data.write_dataset` writes),
    `<path>/<config>/*.parquet`, or `<path>/*.parquet` (the rows themselves).

    Args:
        streaming: return a `datasets.IterableDataset` read from the files as it is iterated (nothing is
            prepared or cached up front) instead of a `datasets.Dataset` (prepared once into the Arrow cache).
    """
    from datasets import load_dataset

    local = Path(path)
    files = _local_parquet_files(local, config, split, streaming) if local.is_dir() else None
    if files is not None:
        return load_dataset("parquet", data_files={split: files}, split=split, streaming=streaming)
    return load_dataset(path, config, split=split, streaming=streaming)


def parquet_files(path: str, config: str, split: str = "train") -> list[str]:
    """The Parquet files of one config and split (local paths, or `hf://` URLs for a hub dataset), as streaming
    `load_rows` reads them; nothing is downloaded."""
    from datasets import load_dataset_builder

    from ..evaluation.benchmarks import DatasetLayoutError

    local = Path(path)
    files = _local_parquet_files(local, config, split, streaming=True) if local.is_dir() else None
    if isinstance(files, str):
        files = sorted(str(p) for p in Path(files).parent.glob(Path(files).name))
    if files is None:
        data_files = load_dataset_builder(path, config).config.data_files or {}
        files = [str(f) for f in data_files.get(split, [])]
        if not files:
            raise DatasetLayoutError(f"{path}: config {config!r} has no data files for split {split!r} "
                                     f"(splits: {list(data_files)}).")
    others = [f for f in files if not f.endswith(".parquet")]
    if others:
        raise DatasetLayoutError(f"{path}: config {config!r} must be Parquet files to be read by id while streaming; "
                                 f"{others[0]} is not.")
    return files


def load_training_data(stage: str, args: DataArguments, seed: int = 0):
    """(rows, images table or None) of a stage.

    Without `args.streaming`: a `datasets.Dataset` and, for triplets without images in the rows, an `ImageTable`
    over the `images` config. With it: a `datasets.IterableDataset` (its first `max_train_samples` rows, shuffled
    through a buffer of `shuffle_buffer_size` with `seed`) and a `ParquetImageTable` that reads images by id
    from the `images` config's files. A stream has no length: nothing here counts its rows.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if not args.dataset_name_or_path:
        raise ValueError("Give --dataset_name_or_path (a hub dataset id or a local folder).")
    config = args.dataset_config or stage
    rows = load_rows(args.dataset_name_or_path, config, args.split, streaming=args.streaming)
    if args.streaming:
        if args.max_train_samples is not None:
            rows = rows.take(args.max_train_samples)
        if args.shuffle_buffer_size:
            rows = rows.shuffle(seed=seed, buffer_size=args.shuffle_buffer_size)
    elif args.max_train_samples is not None:
        rows = rows.select(range(min(args.max_train_samples, len(rows))))
    images = None
    if stage == "triplets" and "reference_image" not in (rows.column_names or []):
        if args.streaming:
            images = ParquetImageTable(parquet_files(args.dataset_name_or_path, args.images_config, args.split))
        else:
            images = ImageTable(load_rows(args.dataset_name_or_path, args.images_config, args.split))
    return rows, images


def load_eval_benchmark(args: DataArguments):
    """The benchmark split that evaluation during training ranks (`args.eval_dataset_name_or_path`, its
    `eval_split`, its first `eval_max_queries` queries), read by `collm_hf.evaluation.load_benchmark`.

    Returns:
        a `BenchmarkSplit`; `DatasetLayoutError` for a split whose queries lack targets (closed labels).
    """
    from ..evaluation._tables import column
    from ..evaluation.benchmarks import DatasetLayoutError, load_benchmark

    benchmark = load_benchmark(args.eval_dataset_name_or_path, args.eval_split).head(args.eval_max_queries)
    if not all(column(benchmark.queries, "target_ids", [[]])):
        raise DatasetLayoutError(f"{args.eval_dataset_name_or_path} split {benchmark.split!r} has queries without "
                                 "target_ids (closed labels): evaluation during training needs a labelled split "
                                 "(--eval_split).")
    return benchmark


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
        training_args: `transformers.TrainingArguments` (`remove_unused_columns` is forced to False; streaming sets
            `accelerator_config.dispatch_batches` and `split_batches` to False: each process reads its own shards).
        model, processor: an already loaded model and processor (skips `load_model_and_processor`).
        modification_writer: pairs: writes the composed queries' texts instead of the templates (`CoLLMTrainer`).

    Returns:
        `CoLLMTrainer` (`GradCacheTrainer` with `loss_args.gradient_cache_chunk_size`); with
        `data_args.eval_dataset_name_or_path`, its `eval_dataset` is the benchmark's queries (`eval_loss`) and a
        `RetrievalEvalCallback` adds the retrieval metrics (`eval_cirr_score`, ...) to each evaluation.
    """
    from transformers import set_seed
    from transformers.trainer_utils import has_length

    from .gradient_cache import GradCacheTrainer

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if data_args.streaming and training_args.max_steps <= 0:
        raise ValueError("Streaming needs --max_steps: a stream has no length to count epochs by.")
    benchmark = load_eval_benchmark(data_args) if data_args.eval_dataset_name_or_path else None  # checked first
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
    rows, images = load_training_data(stage, data_args, seed=training_args.seed)
    if data_args.streaming:
        # Each process reads its own shards of the stream (accelerate shards a `datasets.IterableDataset` by its
        # files, as `datasets.distributed.split_dataset_by_node` does), rather than rank 0 reading every batch and
        # sending each process its part.
        training_args.accelerator_config.dispatch_batches = False
        training_args.accelerator_config.split_batches = False
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "stage %s: %s rows, %d trainable parameters, loss %s",
        stage,
        len(rows) if has_length(rows) else "streamed",
        trainable,
        model.config.contrastive_loss,
    )
    collator = build_collator(stage, processor, data_args, synthesis_args, images, seed=training_args.seed)
    kwargs = dict(model=model, args=training_args, train_dataset=rows, data_collator=collator,
                  processing_class=processor, modification_writer=modification_writer)
    if benchmark is not None:  # eval_loss over the benchmark's queries, and its retrieval metrics (the callback)
        from ..evaluation.callback import BenchmarkLossCollator, add_retrieval_evaluation

        kwargs.update(eval_dataset=benchmark.queries,
                      eval_data_collator=BenchmarkLossCollator(processor, benchmark.gallery, seed=training_args.seed))
    if loss_args.gradient_cache_chunk_size:
        trainer = GradCacheTrainer(chunk_size=loss_args.gradient_cache_chunk_size, **kwargs)
    else:
        trainer = CoLLMTrainer(**kwargs)
    if benchmark is not None:
        add_retrieval_evaluation(trainer, benchmark.queries, benchmark.gallery, processor, benchmark.protocol,
                                 batch_size=training_args.per_device_eval_batch_size)
    return trainer


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
    "load_eval_benchmark",
    "load_model_and_processor",
    "load_rows",
    "load_training_data",
    "parquet_files",
    "run_training",
    "save_trained",
    "write_trained",
]
