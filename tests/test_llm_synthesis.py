"""LLM-written modification texts in pair pre-training: reply cleaning, the step hook, real SmolLM2, cost."""


import numpy as np
import pytest
import torch
from PIL import Image

from collm_hf.training.collators import CoLLMPairCollator
from collm_hf.training.llm_synthesis import (
    LLMModificationWriter,
    attach_llm_writer,
    clean_reply,
    detach_llm_writer,
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
    """Writes exactly the template text the collator chose: the hook must then give the template ids."""

    def __init__(self, choices):
        self.choices, self.calls = choices, []

    def __call__(self, targets, neighbours):
        self.calls.append((list(targets), list(neighbours)))
        return [apply_template(c, t, n) for c, t, n in zip(self.choices, targets, neighbours)]


def test_hook_with_template_writer_equals_template_synthesis(tiny_model_and_processor):
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
        attach_llm_writer(model, processor, writer)
        hooked = model.prepare_contrastive_inputs(**inputs)
        detach_llm_writer(model)
        again = model.prepare_contrastive_inputs(**inputs)
    assert len(writer.calls) == 1  # one batched generation per step
    targets, neighbours = writer.calls[0]
    assert targets == [CAPTIONS[i] for i, c in enumerate(choices) if c >= 0]
    assert all(n in CAPTIONS and n != t for t, n in zip(targets, neighbours))
    assert torch.equal(hooked.input_ids, reference.input_ids)
    assert torch.equal(hooked.attention_mask, reference.attention_mask)
    assert torch.equal(again.input_ids, reference.input_ids) and "modification_writer" not in model.__dict__


def test_hook_puts_the_llm_text_in_the_composed_queries(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    _, batch = _pair_batch(processor, rate=1.0)
    attach_llm_writer(model, processor, lambda targets, neighbours: ["make it green"] * len(targets))
    loss = model(**batch).loss
    loss.backward()  # the step still trains
    with torch.no_grad():
        inputs = model.prepare_contrastive_inputs(**{k: v for k, v in batch.items() if k != "return_loss"})
    composed = inputs.input_ids[-len(batch["input_ids"]):]  # the last query group
    expected = processor.build_query_ids("make it green", with_image=True)[0]
    assert composed[0, : len(expected)].tolist() == expected
    assert "modification_writer" not in dict(model.named_modules())  # a plain attribute, never saved
    assert not any("writer" in key for key in model.state_dict())


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
