"""LLM-written modification texts in pair pre-training: reply cleaning, the step's writer, real SmolLM2, cost."""


import numpy as np
import pytest
import torch
from PIL import Image

from collm_hf.training.collators import CoLLMPairCollator
from collm_hf.training.llm_synthesis import (
    ComposedQueryWriter,
    LLMModificationWriter,
    clean_reply,
    measure_llm_synthesis_cost,
    writer_messages,
)
from collm_hf.models.collm.synthesis import MODIFICATION_TEMPLATES, PAD_SLOT, apply_template

CAPTIONS = ["a red circle on the left", "a small blue square", "two yellow stars at the top",
            "a large purple cross on a white background", "a dog sitting on a wooden bench", "a green triangle",
            "three cyan rings", "a bicycle next to a tree"]


def test_clean_reply():
    assert clean_reply('"Make the car red."\nExplanation: ...') == "Make the car red."
    assert clean_reply("Instruction: add a dog") == "add a dog"
    assert clean_reply("") == ""
    assert len(clean_reply("word " * 40).split()) == 19
    assert "Image A: a blue car\nImage B: a red car" in writer_messages("a red car", "a blue car")[-1]["content"]


def _pair_batch(processor, n=6, rate=0.75, seed=0):
    rng = np.random.default_rng(seed)
    rows = [{"image_id": str(i), "image": Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)),
             "caption": CAPTIONS[i % len(CAPTIONS)]} for i in range(n)]
    collator = CoLLMPairCollator(processor, modification_rate=rate, seed=seed, check_tokenization=False)
    return collator, collator(rows)


class TemplateWriter:
    """Writes exactly the template text the collator chose: the step must then give the template ids."""

    def __init__(self, choices):
        self.choices, self.calls = choices, []

    def __call__(self, targets, neighbours):
        self.calls.append((list(targets), list(neighbours)))
        return [apply_template(c, t, n) for c, t, n in zip(self.choices, targets, neighbours)]


def test_template_writer_equals_template_synthesis(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    collator, batch = _pair_batch(processor, n=8)
    rows = [[t for t in row if t != PAD_SLOT] for row in batch["modification_template_ids"].tolist()]
    choices = [next((c for c in range(len(MODIFICATION_TEMPLATES)) if collator.template_ids(c) == row), -1)
               for row in rows]
    assert -1 in choices and any(c >= 0 for c in choices)  # some samples keep the caption (the paper's 25 %)
    inputs = {k: v for k, v in batch.items() if k != "return_loss"}
    with torch.no_grad():
        reference = model.prepare_contrastive_inputs(**inputs)
        writer = TemplateWriter([c for c in choices if c >= 0])
        written = model.prepare_contrastive_inputs(**inputs, modification_writer=ComposedQueryWriter(writer, processor.tokenizer))
    assert len(writer.calls) == 1  # one batched generation per step
    targets, neighbours = writer.calls[0]
    assert targets == [CAPTIONS[i] for i, c in enumerate(choices) if c >= 0]
    assert all(n in CAPTIONS and n != t for t, n in zip(targets, neighbours))
    assert torch.equal(written.input_ids, reference.input_ids)
    assert torch.equal(written.attention_mask, reference.attention_mask)


def green(targets, neighbours):
    return ["make it green"] * len(targets)


def test_writer_puts_the_llm_text_in_the_composed_queries(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    _, batch = _pair_batch(processor, rate=1.0)
    writer = ComposedQueryWriter(green, processor.tokenizer)
    loss = model(**batch, modification_writer=writer).loss
    loss.backward()  # the step still trains
    with torch.no_grad():
        inputs = model.prepare_contrastive_inputs(**{k: v for k, v in batch.items() if k != "return_loss"},
                                                  modification_writer=writer)
        templates = model.prepare_contrastive_inputs(**{k: v for k, v in batch.items() if k != "return_loss"})
    composed = inputs.input_ids[-len(batch["input_ids"]):]  # the last query group
    expected = processor.build_query_ids("make it green", with_image=True)[0]
    assert composed[0, : len(expected)].tolist() == expected
    assert not torch.equal(templates.input_ids, inputs.input_ids)  # without the writer: the paper's templates
    assert not any("writer" in name for name in vars(model)) and not any("writer" in key for key in model.state_dict())


class RecordingWriter(ComposedQueryWriter):
    """Counts the steps it wrote for."""

    calls = 0

    def __call__(self, *args):
        RecordingWriter.calls += 1
        return super().__call__(*args)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_trainer_passes_its_writer_to_every_step(tiny_model_and_processor, tmp_path, chunk_size):
    """`CoLLMTrainer(modification_writer=...)` (and `GradCacheTrainer`, which extends it) hands the writer to the
    model's step; the model itself carries nothing."""
    from transformers import TrainingArguments

    from collm_hf.training.gradient_cache import GradCacheTrainer
    from collm_hf.training.trainer import CoLLMTrainer

    model, processor = tiny_model_and_processor
    rng = np.random.default_rng(0)
    rows = [{"image_id": str(i), "image": Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)),
             "caption": CAPTIONS[i]} for i in range(8)]
    collator = CoLLMPairCollator(processor, modification_rate=1.0, seed=0, check_tokenization=False)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, use_cpu=True,
                             report_to=[], save_strategy="no", remove_unused_columns=False, dataloader_num_workers=0)
    RecordingWriter.calls = 0
    writer = RecordingWriter(green, processor.tokenizer)
    options = dict(model=model, args=args, train_dataset=rows, data_collator=collator, modification_writer=writer)
    trainer = CoLLMTrainer(**options) if chunk_size is None else GradCacheTrainer(chunk_size=chunk_size, **options)
    trainer.train()
    assert RecordingWriter.calls == 2 and trainer.state.global_step == 2
    assert not any("writer" in name for name in vars(model))


# ------------------------------------------------------------------------------------------------------------
# Real SmolLM2-135M-Instruct as the writer, and the cost per step
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_writer(smollm2_path):
    return LLMModificationWriter.from_pretrained(smollm2_path, max_new_tokens=10)


@pytest.mark.smollm2
def test_real_smollm2_writer_and_cost_per_step(smollm2_writer, tiny_model_and_processor, single_thread, capsys):
    model, processor = tiny_model_and_processor
    _, batch = _pair_batch(processor, n=2, rate=1.0)
    cost = measure_llm_synthesis_cost(model, processor, batch, smollm2_writer, steps=1, warmup=0)
    assert cost["texts_per_step"] == 2 and cost["llm_step_s"] > cost["template_step_s"] > 0
    texts = smollm2_writer(["a red car on a street"], ["a blue car on a street"])
    assert len(texts) == 1 and 0 < len(texts[0].split()) < 20
    with capsys.disabled():
        print(f"\nLLM synthesis cost (tiny CoLLM, SmolLM2-135M writer, batch 2, CPU): template step "
              f"{cost['template_step_s'] * 1e3:.0f} ms, LLM step {cost['llm_step_s'] * 1e3:.0f} ms "
              f"({cost['slowdown']:.0f}x); sample text: {texts[0]!r}")
