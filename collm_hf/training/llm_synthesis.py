"""On-the-fly synthesis with an instruct LLM: the modification text w*_i written from (neighbour caption w_j ->
target caption w_i) by a language model, instead of one of the paper's 15 templates (CoLLM §3.2).

The templates stay the default. Given a `ComposedQueryWriter` (through `CoLLMTrainer(modification_writer=...)`,
or `CoLLMModel.forward(..., modification_writer=...)` directly), the pair pre-training step keeps everything else
of the synthesis - augmentation, in-batch neighbours, Slerp, the 75 % / 25 % split (samples whose collator choice
is "keep the caption" keep it) - and replaces the templated texts of the step by the LLM's, in one batched
generation:

    CoLLMModel.prepare_contrastive_inputs(..., modification_writer)
        synthesize_composed_queries(...)                     templates, as the paper (synthesis.py)
        modification_writer(synthesized, ...)                a ComposedQueryWriter, when given:
            decode target / neighbour captions -> LLMModificationWriter (one generate call)
            -> tokenise " " + text -> the same query frames (`assemble_composed_queries`)

`measure_llm_synthesis_cost` times a training step in both modes; README "Your own domain" says when the
LLM mode is worth its cost.

Example:
    >>> writer = LLMModificationWriter.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
    >>> writer(["a red car on a street"], ["a blue car on a street"])  # doctest: +SKIP
    ['make the car red']
    >>> trainer = CoLLMTrainer(model=model, args=args, train_dataset=pairs, data_collator=collator,
    ...                        modification_writer=ComposedQueryWriter(writer, processor.tokenizer))  # doctest: +SKIP
"""

import dataclasses
import time

import torch

from ..models.collm.losses import gather_padded
from ..models.collm.synthesis import (
    KEEP_CAPTION,
    PAD_SLOT,
    TARGET_SLOT,
    apply_template,
    assemble_composed_queries,
    pad_id_lists,
)

DEFAULT_WORD_LIMIT = 20
WRITER_SYSTEM = "You write one short image-editing instruction. You answer with the instruction only."


def writer_messages(target_caption: str, neighbor_caption: str, word_limit: int = DEFAULT_WORD_LIMIT) -> list[dict]:
    """The chat prompt: change the neighbour's image (A) into the target's image (B); one worked example first
    (small instruct models follow an example far better than a description)."""

    def ask(a: str, b: str) -> dict:
        return {"role": "user", "content": f"Image A: {a.strip()}\nImage B: {b.strip()}\n"
                                           f"One instruction, fewer than {word_limit} words, that changes A into B."}

    return [{"role": "system", "content": WRITER_SYSTEM},
            ask("a blue car parked on a street", "a red car parked on a street with a dog"),
            {"role": "assistant", "content": "make the car red and add a dog"},
            ask(neighbor_caption, target_caption)]


def clean_reply(reply: str, word_limit: int = DEFAULT_WORD_LIMIT) -> str:
    """First non-empty line, without quotes or an "Instruction:" label, cut to fewer than `word_limit` words."""
    lines = [line.strip() for line in (reply or "").splitlines() if line.strip()]
    text = lines[0] if lines else ""
    for label in ("instruction:", "answer:", "output:"):
        if text.lower().startswith(label):
            text = text[len(label):]
    words = text.strip().strip("\"'`").split()
    return " ".join(words[: word_limit - 1])


class LLMModificationWriter:
    """(target captions, neighbour captions) -> modification texts, in one batched generation.

    Args:
        model: an instruct causal LM (eval mode), on the device it should run on.
        tokenizer: its tokenizer (left padding is set).
        max_new_tokens: budget per text (texts are short: 24 is plenty).
        word_limit: texts are cut to fewer words than this.

    A reply with no text falls back to the paper's first template ("show {w_i} instead of {w_j}");
    `fallbacks` counts them.
    """

    def __init__(self, model, tokenizer, max_new_tokens: int = 24, word_limit: int = DEFAULT_WORD_LIMIT):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_new_tokens, self.word_limit, self.fallbacks = max_new_tokens, word_limit, 0

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | None = None, dtype=None, **kwargs) -> "LLMModificationWriter":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype or torch.float32)
        if device:
            model.to(device)
        return cls(model, AutoTokenizer.from_pretrained(name_or_path), **kwargs)

    def _prompt(self, target: str, neighbor: str) -> str:
        messages = writer_messages(target, neighbor, self.word_limit)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n".join(m["content"] for m in messages) + "\nInstruction:"

    @torch.inference_mode()
    def __call__(self, target_captions: list[str], neighbor_captions: list[str]) -> list[str]:
        """One text per (target, neighbour) pair; greedy decoding, so a step is reproducible."""
        if len(target_captions) != len(neighbor_captions):
            raise ValueError(f"{len(target_captions)} target captions but {len(neighbor_captions)} neighbour captions")
        if not target_captions:
            return []
        prompts = [self._prompt(t, n) for t, n in zip(target_captions, neighbor_captions)]
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        output = self.model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens,
                                     pad_token_id=self.tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
        replies = self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        texts = []
        for reply, target, neighbor in zip(replies, target_captions, neighbor_captions):
            text = clean_reply(reply, self.word_limit)
            if not text:
                self.fallbacks += 1
                text = apply_template(0, target, neighbor)
            texts.append(text)
        return texts


class ComposedQueryWriter:
    """A `modification_writer` for pair pre-training: the composed queries of a step, with texts from `writer`.

    `CoLLMModel.prepare_contrastive_inputs` calls it after the template synthesis. It is a training component,
    passed per step (`CoLLMTrainer(modification_writer=...)`), never stored on the model or saved with it.

    Args:
        writer: `(target_captions, neighbour_captions) -> list[str]` (e.g. `LLMModificationWriter`).
        tokenizer: the CoLLM processor's tokenizer (decodes the caption ids, encodes the new texts).
    """

    def __init__(self, writer, tokenizer):
        self.writer, self.tokenizer = writer, tokenizer

    def _decode(self, rows: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode([t for t in row if t >= 0], skip_special_tokens=True).strip()
                for row in rows.tolist()]

    def __call__(self, synthesized, caption_ids: torch.Tensor, modification_template_ids: torch.Tensor,
                 query_frame_ids: torch.Tensor):
        """Replace the templated texts of `synthesized` (a `SynthesizedQueries`) by the writer's texts.

        Args:
            synthesized: the template synthesis of this step (its neighbour indices are reused).
            caption_ids: (batch, caption_len) this process's target caption ids.
            modification_template_ids: (batch, template_len) the collator's choices; `[TARGET_SLOT]` alone =
                keep the caption (the paper's 25 %), left unchanged.
            query_frame_ids: (batch, frame_len) the composed-query frames.

        Returns:
            `SynthesizedQueries` with new `input_ids` / `attention_mask` (same reference embeddings).
        """
        all_captions, _ = gather_padded(caption_ids, PAD_SLOT)  # (global, caption_len)
        neighbor_ids = all_captions[synthesized.neighbor_indices.to(all_captions.device)]  # (batch, caption_len)
        keep = [[t for t in row if t != PAD_SLOT] == [TARGET_SLOT] for row in modification_template_ids.tolist()]
        rewrite = [i for i, k in enumerate(keep) if not k]
        texts = self.writer(self._decode(caption_ids[rewrite]), self._decode(neighbor_ids[rewrite])) if rewrite else []
        templates = [[TARGET_SLOT] for _ in keep]  # KEEP_CAPTION rows: the target caption itself
        for i, text in zip(rewrite, texts):
            templates[i] = self.tokenizer(" " + text, add_special_tokens=False)["input_ids"]
        input_ids, attention_mask = assemble_composed_queries(
            query_frame_ids, pad_id_lists(templates).to(query_frame_ids.device), caption_ids, neighbor_ids
        )  # (batch, seq) each, right-padded as the template synthesis
        return dataclasses.replace(synthesized, input_ids=input_ids.to(synthesized.input_ids.device),
                                   attention_mask=attention_mask.to(synthesized.attention_mask.device))


def measure_llm_synthesis_cost(model, processor, batch: dict, writer, steps: int = 3, warmup: int = 1) -> dict:
    """Seconds per pair pre-training step (forward + backward), templates vs. the LLM writer.

    Args:
        model: a `CoLLMModel` (or a peft wrapper of one), in train mode or not (restored afterwards).
        processor: its processor (its tokenizer builds the `ComposedQueryWriter`).
        batch: a `CoLLMPairCollator` batch.
        writer: the `LLMModificationWriter`.
        steps / warmup: timed and untimed repetitions (median reported).

    Returns:
        {"template_step_s", "llm_step_s", "slowdown" (llm / template), "batch_size",
         "texts_per_step" (rewritten samples)}.
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def timed(modification_writer) -> float:
        times = []
        for i in range(warmup + steps):
            start = time.perf_counter()
            model.zero_grad(set_to_none=True)
            model(**batch, modification_writer=modification_writer).loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    was_training = model.training
    model.train()
    try:
        template = timed(None)
        llm = timed(ComposedQueryWriter(writer, processor.tokenizer))
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    rows = [[t for t in row if t != PAD_SLOT] for row in batch["modification_template_ids"].tolist()]
    return {"template_step_s": template, "llm_step_s": llm, "slowdown": llm / template,
            "batch_size": len(rows), "texts_per_step": sum(row != [TARGET_SLOT] for row in rows)}


__all__ = ["KEEP_CAPTION", "ComposedQueryWriter", "LLMModificationWriter", "clean_reply", "measure_llm_synthesis_cost",
           "writer_messages"]
