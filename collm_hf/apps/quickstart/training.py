"""The quickstart's model and its two training stages, with the stock `Trainer` and the project's collators.

    world pairs    --CoLLMPairCollator (on-the-fly synthesis)--> Trainer  (stage 1: pair pre-training)
    world triplets --GroupedTripletCollator(CoLLMTripletCollator)--> Trainer  (stage 2: triplet fine-tuning)

The model is small enough to learn on a laptop CPU in minutes: a CLIP vision tower trained from scratch
(`freeze_vision_tower=False`) on 48 px images and a Llama of a few layers (`QuickstartRecipe`) over a byte-level BPE
tokenizer trained on the world's own vocabulary. `--llm` swaps in a pretrained LLM folder (its tokenizer too).

Stage 2 batches whole MTCIR-style groups (one reference and several edits of it): the other edits of the same
reference are the hard in-batch negatives that make the text matter, as MTCIR groups similar images.
"""

import math
import random
from dataclasses import asdict, dataclass, field, fields, replace

import torch
from torch.utils.data import Dataset as TorchDataset

from ...models.collm.configuration_collm import DEFAULT_INSTRUCTION, CoLLMConfig
from ...models.collm.losses import ContrastiveLossConfig
from ...data.synthetic_world import WorldConfig, world_corpus
from ...models.collm.modeling_collm import CoLLMModel
from ...models.collm.processing_collm import CoLLMProcessor


@dataclass
class QuickstartRecipe:
    """Model sizes and training schedule of the quickstart.

    Each field's comment gives the reason for its value; docs/quickstart_recipe.md gives the runs behind it and
    the `collm-hf quickstart --recipe JSON` commands that repeat them.
    """

    world: WorldConfig = field(default_factory=WorldConfig)
    # LLM width: wider is better per step but worse per second, and the time budget fixes the seconds.
    hidden_size: int = 64
    vision_hidden_size: int = 128  # vision tower width (and retrieval space); cheap at 48 px
    # The retrieval space (the tower's projection); None = vision_hidden_size (64, the LLM's width, was no better).
    retrieval_size: int | None = None
    vision_layers: int = 2  # 4 layers trained from scratch collapsed
    # Position embeddings start at the patches' scale: CLIP's 0.02 leaves a new tower blind to where objects are.
    vision_position_std: float | None = 0.5
    vision_heads: int = 4  # 8 or 16 (a head per grid cell) were no better
    text_layers: int = 3  # with position-aware images, a third LLM layer paid more than more steps
    vocab_size: int = 800  # BPE tokenizer trained on the world's vocabulary (whole words, a short prompt)
    # Stage 1 step cap: more steps keep paying; within `time_budget_s` only a fast machine reaches it.
    pair_steps: int = 1600
    pair_batch_size: int = 64  # 32 and 128 were no better
    # Least area the stage-1 crop of the target keeps: captions name grid cells, which crops blur.
    pair_crop_min_area: float = 1.0
    triplet_steps: int = 4800  # stage 2 (triplet fine-tuning) step cap, as `pair_steps`
    groups_per_batch: int = 24  # MTCIR-style groups a batch: steps matter more than batch size
    learning_rate: float = 5e-4  # higher rates collapse the towers trained from scratch; lower ones learn slower
    freeze_vision_in_triplet_stage: bool = False  # a tower trained from scratch in stage 1 is not good enough to freeze
    warmup_steps: int = 30  # a short warm-up for weights that start from scratch (not tuned)
    weight_decay: float = 0.01  # mild decay (not tuned)
    # Fixed inverse temperature (None: learnable from 1/0.07), better from scratch than learnable; 50, 200 no better.
    inverse_temperature: float | None = 100.0
    two_way_loss: bool = True  # both directions trained better than one with both towers from scratch
    loss_type: str = "info_nce"  # HN-NCE (`ContrastiveLossConfig`, the library default) was no better here
    # Stage 2: the batch's references are negatives too, so queries leave their reference (CIRCO's gallery holds it).
    reference_negatives: bool = True
    # Stage 2: a target that another row's text also describes is a right answer, not that row's negative.
    mask_shared_texts: bool = True
    # No instruction line: an LLM trained from scratch learns nothing from tokens every query shares, and pays for them.
    instruction: str | None = None
    num_visual_tokens: int = 2  # 2 x 64 LLM dims carry the whole 128-wide image embedding (with the linear adapter)
    # The reference as its pooled embedding ("pooled", the paper) or as patch tokens ("patches"): docs/patch_tokens.md.
    reference_tokens: str = "pooled"
    patch_reduction: str = "grid"  # "patches": the tower's 3 x 3 grid pooled to `patch_tokens`, or a resampler
    patch_tokens: int = 9  # "patches": tokens per reference; 9 = the 3 x 3 grid as it is, one token per object cell
    slerp_alpha: float = 0.5  # stage 1's Slerp weight of the neighbour (the paper's best, §7)
    pooling: str = "mean"  # learned better than the last token
    adapter_type: str = "linear"  # the MLP squeezes the image embedding through the LLM's 64-wide hidden layer
    # Seconds a cold run may take: 10 minutes less a margin (None, or `--llm`: run every step whatever the time).
    time_budget_s: float | None = 585.0
    # Stage 1's share of the training seconds under the budget: the balance of the every-step runs on a slow machine.
    pair_time_share: float = 0.45
    attn_implementation: str = "eager"  # training only: as fast as sdpa at these sizes (saved models keep the default)

    def __post_init__(self):
        if not 0.0 < self.pair_time_share < 1.0:
            raise ValueError(f"pair_time_share must be between 0 and 1 (stage 1's share of the seconds), got "
                             f"{self.pair_time_share}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be > 0 seconds or None, got {self.time_budget_s}")

    @classmethod
    def tiny(cls, seed: int = 0) -> "QuickstartRecipe":
        """A reduced run for tests: a small world and a few steps (proves the plumbing, not the learning)."""
        return cls(world=WorldConfig.tiny(seed), pair_steps=4, pair_batch_size=16, triplet_steps=4, groups_per_batch=4,
                   time_budget_s=120.0)  # the tiny run's limit, under 2 minutes; it fits with room to spare

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, overrides: dict) -> "QuickstartRecipe":
        """A copy with some fields replaced, e.g. `{"pair_steps": 250, "world": {"max_objects": 2}}` (the
        `--recipe` option). Unknown fields are an error naming them."""
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        world = dict(overrides.get("world") or {})
        unknown += [f"world.{k}" for k in sorted(set(world) - {f.name for f in fields(self.world)})]
        if unknown:
            raise ValueError(f"unknown quickstart recipe field(s) {unknown}; known: {[f.name for f in fields(self)]}")
        return replace(self, **{**overrides, "world": replace(self.world, **world)})


def world_tokenizer(vocab_size: int = 800):
    """A byte-level BPE tokenizer trained on the world's words and the prompt (no network)."""
    from ...testing_utils import tiny_tokenizer

    prompt = f"Instruct: {DEFAULT_INSTRUCTION}\nQuery: Image: Text:"
    return tiny_tokenizer(world_corpus() + [prompt] * 50, vocab_size=vocab_size)


def build_model_and_processor(recipe: QuickstartRecipe, llm: str | None = None, seed: int = 0):
    """A fresh CoLLM for the world: tiny CLIP vision tower from scratch + tiny Llama (or the `llm` folder).

    Returns:
        (model, processor), fp32, train mode.
    """
    from ...testing_utils import tiny_image_processor

    h, vh, size = recipe.hidden_size, recipe.vision_hidden_size, recipe.world.image_size
    vision = {"model_type": "clip_vision_model", "hidden_size": vh, "intermediate_size": 2 * vh,
              "num_hidden_layers": recipe.vision_layers, "num_attention_heads": recipe.vision_heads, "image_size": size,
              "patch_size": size // 3, "projection_dim": recipe.retrieval_size or vh}  # 3x3 patches: one patch per grid cell
    if llm is None:
        tokenizer = world_tokenizer(recipe.vocab_size)
        text = {"model_type": "llama", "hidden_size": h, "intermediate_size": 2 * h, "num_hidden_layers": recipe.text_layers,
                "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": len(tokenizer),
                "max_position_embeddings": 256}
    else:
        from transformers import AutoConfig, AutoTokenizer

        tokenizer, text = AutoTokenizer.from_pretrained(llm), AutoConfig.from_pretrained(llm)
    torch.manual_seed(seed)
    patches = recipe.reference_tokens == "patches"
    temperature = {} if recipe.inverse_temperature is None else {
        "logit_scale_init_value": math.log(recipe.inverse_temperature), "learnable_logit_scale": False}
    config = CoLLMConfig(vision_config=vision, text_config=text, freeze_vision_tower=False,
                         contrastive_loss=ContrastiveLossConfig(loss_type=recipe.loss_type, two_way=recipe.two_way_loss,
                                                                reference_negatives=recipe.reference_negatives),
                         instruction=recipe.instruction,
                         num_visual_tokens=recipe.patch_tokens if patches else recipe.num_visual_tokens,
                         reference_tokens=recipe.reference_tokens, patch_reduction=recipe.patch_reduction,
                         slerp_alpha=recipe.slerp_alpha, pooling=recipe.pooling, adapter_type=recipe.adapter_type,
                         **temperature)
    model = CoLLMModel(config)
    model.set_attn_implementation(recipe.attn_implementation)
    if recipe.vision_position_std is not None:
        init_position_embeddings(model.vision_tower, recipe.vision_position_std)
    if llm is not None:
        from transformers import AutoModel

        model.language_model = AutoModel.from_pretrained(llm, dtype=torch.float32)
        model.language_model.config = model.config.text_config
    processor = CoLLMProcessor.for_model(tiny_image_processor(size), tokenizer, config)
    return model.train(), processor


def init_position_embeddings(tower, std: float):
    """Redraw a tower's learned position embeddings from N(0, std^2) (see `QuickstartRecipe.vision_position_std`);
    a tower without one is an error naming its class."""
    tables = [m for name, m in tower.named_modules() if name.split(".")[-1] == "position_embedding"]
    if not tables:
        raise ValueError(f"{type(tower).__name__} has no `position_embedding` to initialise")
    with torch.no_grad():
        for table in tables:
            table.weight.normal_(0.0, std)


class TripletGroups(TorchDataset):
    """Triplet rows grouped by reference: item i is the list of rows of group i (for `GroupedTripletCollator`)."""

    def __init__(self, triplets):
        groups: dict[str, list] = {}
        for row in triplets:
            groups.setdefault(row["reference_id"], []).append(dict(row))
        self.groups = list(groups.values())

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> list:
        return self.groups[index]


@dataclass
class GroupedTripletCollator:
    """Flattens a batch of triplet groups and hands the rows to a `CoLLMTripletCollator`."""

    triplet_collator: object

    def __call__(self, groups: list) -> dict:
        return self.triplet_collator([row for group in groups for row in group])


def _training_arguments(output_dir: str, steps: int, batch_size: int, recipe: QuickstartRecipe, seed: int, show_progress: bool):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=recipe.learning_rate, warmup_steps=min(recipe.warmup_steps, max(0, steps - 1)),
        lr_scheduler_type="cosine", weight_decay=recipe.weight_decay, logging_steps=max(1, steps // 10),
        save_strategy="no", report_to=[], use_cpu=True, remove_unused_columns=False, dataloader_num_workers=0,
        seed=seed, data_seed=seed, disable_tqdm=not show_progress,
    )


def stop_when(condition):
    """A `TrainerCallback` that ends training after the step at whose end `condition()` holds."""
    from transformers import TrainerCallback

    class StopWhen(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if condition():
                control.should_training_stop = True
            return control

    return StopWhen()


def deadline_callback(deadline: float):
    """`stop_when` `time.perf_counter()` has passed `deadline`: the quickstart's guard against a step that overran its
    stage's seconds by far (a stage stopped this way has not finished its learning-rate schedule; the run says so)."""
    import time

    return stop_when(lambda: time.perf_counter() > deadline)


def _timed_trainer(stage_clock):
    """A `Trainer` whose learning-rate schedule is `timed_cosine_schedule` and that stops when `stage_clock` has run
    out (after the step under way)."""
    from transformers import Trainer

    from .schedule import timed_cosine_schedule

    class TimedTrainer(Trainer):
        def __init__(self, *args, callbacks=None, **kwargs):
            time_is_up = stop_when(lambda: stage_clock.fraction() >= 1.0)
            super().__init__(*args, callbacks=[*(callbacks or []), time_is_up], **kwargs)

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            if self.lr_scheduler is None:
                self.lr_scheduler = timed_cosine_schedule(
                    optimizer or self.optimizer, self.args.get_warmup_steps(num_training_steps), num_training_steps,
                    stage_clock)
                self._created_lr_scheduler = True
            return self.lr_scheduler

    return TimedTrainer


def train_stage(model, dataset, collator, output_dir: str, steps: int, batch_size: int, recipe: QuickstartRecipe,
                seed: int, show_progress: bool = True, deadline: float | None = None, seconds: float | None = None) -> int:
    """Run one stage with the stock `Trainer`, stopping early past `deadline` (`time.perf_counter()` seconds);
    with `seconds`, the stage runs at most `steps` steps and at most about that many seconds, its cosine learning
    rate following whichever ends first (`timed_cosine_schedule`). Returns the steps it ran."""
    from transformers import Trainer

    from .schedule import StageClock

    args = _training_arguments(output_dir, steps, batch_size, recipe, seed, show_progress)
    callbacks = [] if deadline is None else [deadline_callback(deadline)]
    trainer_class = Trainer if seconds is None else _timed_trainer(StageClock(seconds))
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=callbacks)
    trainer.train()
    model.eval()
    return int(trainer.state.global_step)


def pair_collator(processor, seed: int, crop_min_area: float):
    """Stage 1 collator: synthesis augmentation without flips; crops keep at least `crop_min_area` of the image
    (`QuickstartRecipe.pair_crop_min_area`: positions are words here)."""
    from ...training.collators import CoLLMPairCollator
    from ...models.collm.synthesis import ImageAugmentation

    augmentation = ImageAugmentation(crop_scale=(crop_min_area, 1.0), flip_probability=0.0)
    return CoLLMPairCollator(processor, augmentation=augmentation, seed=seed, check_tokenization=False)


def triplet_collator(processor, images: dict, seed: int, mask_shared_texts: bool = True) -> GroupedTripletCollator:
    """Stage 2 collator; each image's pixels are processed once and kept (the world's images are 48 px: ~500 MB
    for the default world's 18k, and the image processor was ~60 % of a batch's collation)."""
    from ...training.collators import CoLLMTripletCollator

    return GroupedTripletCollator(CoLLMTripletCollator(processor, images=images, seed=seed, cache_pixels=True,
                                                       mask_shared_texts=mask_shared_texts))


def set_vision_trainable(model, trainable: bool):
    """Freeze or unfreeze the vision tower and its projection for a stage (the saved config is unchanged)."""
    for module in (model.vision_tower, model.vision_projection):
        if module is not None:
            module.requires_grad_(trainable)


def seed_everything(seed: int):
    random.seed(seed)
    torch.manual_seed(seed)


__all__ = ["QuickstartRecipe", "TripletGroups", "GroupedTripletCollator", "build_model_and_processor",
           "world_tokenizer", "train_stage", "deadline_callback", "set_vision_trainable", "pair_collator", "triplet_collator", "seed_everything"]
