"""Refine a benchmark with a judge against hard negatives (CoLLM §4.2, Refined-CIRR / Refined-FashionIQ).

For every labelled query (reference image + modification text -> target):
    1. mine the 3 hardest negatives: the gallery images most similar to the target by image embedding
       (never the reference, never another valid target; within the query's category for Fashion-IQ);
    2. show a judge the reference, the text and the 4 candidates (target + negatives) shuffled, 3 times
       with 3 different orders; the triplet is good when the judge finds the target at least 2 times of 3
       (`passes_rule`);
    3. an ambiguous triplet (fewer passes) is rewritten by an LLM when a rewriter is given, and judged
       again with the new text: kept as "rewritten" if it passes, else "removed".
`queries_refined` holds the kept triplets with `is_refined` and `original_text`; `refinement` holds the
decision for every query (negatives, the judge's picks, passes).

Judges (`choose(requests) -> list[int]`, one picked candidate index per request):
    * `CoLLMProxyJudge`: a CoLLM model ranks the 4 candidates by cosine with the composed query - cheap,
      and order-invariant (its 3 trials agree), so it measures "is the target the nearest of the 4?";
    * `ImageTextToTextJudge`: any transformers image-text-to-text model (LLaVA, Qwen2-VL, Idefics3/SmolVLM,
      ...) reads the images labelled A-D and the letter with the highest next-token logit is its answer
      (no free-text parsing, one forward pass per trial).
"""

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

DEFAULT_NUM_NEGATIVES = 3
DEFAULT_TRIALS = 3
DEFAULT_MIN_PASSES = 2
LETTERS = "ABCDEFGH"


def passes_rule(passes: int, trials: int = DEFAULT_TRIALS, min_passes: int = DEFAULT_MIN_PASSES) -> bool:
    """The paper's decision: a triplet is good when the judge finds the target in >= 2 of 3 trials."""
    if not 0 <= passes <= trials:
        raise ValueError(f"passes must be in [0, {trials}], got {passes}")
    return passes >= min_passes


def mine_hard_negatives(target_embeds: torch.Tensor, gallery_embeds: torch.Tensor, excluded: list[set[int]],
                        allowed: list[np.ndarray | None] | None = None, k: int = DEFAULT_NUM_NEGATIVES) -> list[list[int]]:
    """The `k` gallery rows most similar to each target, leaving out each query's excluded rows.

    Args:
        target_embeds: (queries, dim) L2-normalised target embeddings.
        gallery_embeds: (gallery, dim) L2-normalised gallery embeddings.
        excluded: per query, gallery rows never to return (the target, other valid targets, the reference).
        allowed: per query, an optional boolean (gallery,) mask of the rows it may use (same category).
        k: negatives per query.

    Returns:
        per query, `k` gallery row indices, most similar first (fewer if the gallery is too small).
    """
    sims = (target_embeds @ gallery_embeds.T).numpy()  # (queries, gallery)
    negatives = []
    for row, scores in enumerate(sims):
        scores = scores.copy()
        if allowed is not None and allowed[row] is not None:
            scores[~allowed[row]] = -np.inf
        scores[list(excluded[row])] = -np.inf
        order = np.argsort(-scores, kind="stable")
        negatives.append([int(j) for j in order[:k] if np.isfinite(scores[j])])
    return negatives


@dataclass
class JudgeRequest:
    """One trial: the reference image, the modification text, the candidate gallery ids in display order."""

    reference_image: object
    text: str
    candidate_ids: list[str]


class CoLLMProxyJudge:
    """A CoLLM model as a cheap judge: picks the candidate nearest to the composed query.

    Args:
        model: `CoLLMModel` (eval mode).
        processor: its `CoLLMProcessor`.
        images: gallery id -> image (a mapping or callable), used for candidates not yet embedded.
        batch_size: queries / images per forward pass.
    """

    def __init__(self, model, processor, images: Callable | dict | None = None, batch_size: int = 32):
        self.model, self.processor, self.batch_size = model, processor, batch_size
        self.images = images
        self._embeds: dict[str, torch.Tensor] = {}

    def cache_embeds(self, ids: list[str], embeds: torch.Tensor) -> None:
        """Reuse gallery embeddings already computed (e.g. for mining) instead of re-embedding."""
        self._embeds.update({str(i): e for i, e in zip(ids, embeds)})

    @torch.inference_mode()
    def _candidate_embeds(self, ids: list[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(i for i in ids if i not in self._embeds))
        load = self.images if callable(self.images) else (self.images or {}).__getitem__
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            pixels = self.processor(images=[load(i) for i in chunk], return_tensors="pt")["pixel_values"]
            self.cache_embeds(chunk, self.model.get_image_embeds(pixels).float().cpu())
        return torch.stack([self._embeds[i] for i in ids])  # (n, dim)

    @torch.inference_mode()
    def choose(self, requests: list[JudgeRequest]) -> list[int]:
        """Index of the picked candidate of each request (the highest cosine with the composed query)."""
        picks = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            inputs = self.processor(images=[r.reference_image for r in chunk], text=[r.text for r in chunk],
                                    return_tensors="pt")
            queries = self.model.get_query_embeds(**inputs).float().cpu()  # (chunk, dim)
            for query, request in zip(queries, chunk):
                candidates = self._candidate_embeds(request.candidate_ids)  # (4, dim)
                picks.append(int((candidates @ query).argmax()))
        return picks

    def describe(self) -> dict:
        return {"judge": "CoLLMProxyJudge", "model": str(getattr(self.model, "name_or_path", "") or "CoLLMModel")}


JUDGE_QUESTION = ("Which candidate image shows the reference image changed as the text says? "
                  "Answer with the letter only.")


class ImageTextToTextJudge:
    """Any transformers image-text-to-text model as the judge: the letter (A-D) with the highest logit.

    Args:
        model: e.g. `AutoModelForImageTextToText.from_pretrained(...)`, eval mode.
        processor: its `AutoProcessor` (with a chat template that accepts `{"type": "image"}` items).
        images: gallery id -> image (a mapping or callable).
    """

    def __init__(self, model, processor, images: Callable | dict | None = None):
        self.model, self.processor = model, processor
        self.images = images.__getitem__ if isinstance(images, dict) else images  # None: set by refine_benchmark
        tokenizer = getattr(processor, "tokenizer", processor)
        self.letter_ids = [tokenizer.encode(letter, add_special_tokens=False)[0] for letter in LETTERS]

    @classmethod
    def from_pretrained(cls, name_or_path: str, images=None, **kwargs) -> "ImageTextToTextJudge":
        from transformers import AutoModelForImageTextToText, AutoProcessor

        return cls(AutoModelForImageTextToText.from_pretrained(name_or_path, **kwargs).eval(),
                   AutoProcessor.from_pretrained(name_or_path), images)

    def messages(self, request: JudgeRequest) -> list[dict]:
        content = [{"type": "text", "text": "Reference image:"}, {"type": "image"},
                   {"type": "text", "text": f"Modification text: {request.text}\nCandidates:"}]
        for letter, _ in zip(LETTERS, request.candidate_ids):
            content += [{"type": "text", "text": f"{letter}:"}, {"type": "image"}]
        content.append({"type": "text", "text": JUDGE_QUESTION})
        return [{"role": "user", "content": content}]

    @torch.inference_mode()
    def choose(self, requests: list[JudgeRequest]) -> list[int]:
        picks = []
        for request in requests:
            prompt = self.processor.apply_chat_template(self.messages(request), add_generation_prompt=True,
                                                        tokenize=False)
            images = [request.reference_image] + [self.images(i) for i in request.candidate_ids]
            inputs = self.processor(text=[prompt], images=[images], return_tensors="pt").to(self.model.device)
            logits = self.model(**inputs).logits[0, -1]  # (vocab,)
            letters = logits[self.letter_ids[: len(request.candidate_ids)]]  # (candidates,)
            picks.append(int(letters.argmax()))
        return picks

    def describe(self) -> dict:
        return {"judge": "ImageTextToTextJudge", "model": str(getattr(self.model, "name_or_path", ""))}


# ----------------------------------------------------------------------------------------------------------
# Rewriting ambiguous texts
# ----------------------------------------------------------------------------------------------------------
def rewrite_messages(text: str, word_limit: int = 20) -> list[dict]:
    """The chat prompt asking an LLM to make an ambiguous modification text precise."""
    return [{"role": "system", "content": "You edit image-retrieval instructions. You answer with JSON only."},
            {"role": "user", "content": (
                f'This instruction for changing a reference image into a target image was found ambiguous: "{text}"\n'
                f"Rewrite it to be clear and specific, keeping its meaning, in fewer than {word_limit} words. "
                'Answer with JSON only: {"text": "..."}')}]


class LLMTextRewriter:
    """Rewrites ambiguous texts with an instruct LLM (any `generate(conversations, attempt)` generator,
    e.g. `generation.TransformersGenerator`). Returns None where the reply has no usable text."""

    def __init__(self, generator, word_limit: int = 20):
        self.generator, self.word_limit = generator, word_limit

    def __call__(self, texts: list[str]) -> list[str | None]:
        from .generation import _first_object

        replies = self.generator.generate([rewrite_messages(t, self.word_limit) for t in texts])
        out = []
        for reply in replies:
            value = _first_object(reply or "")
            text = value.get("text") if isinstance(value, dict) else None
            ok = isinstance(text, str) and text.strip() and len(text.split()) < self.word_limit
            out.append(" ".join(text.split()) if ok else None)
        return out


# ----------------------------------------------------------------------------------------------------------
# Trials and decisions
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Decision:
    """What happened to one query (one row of the `refinement` config)."""

    query_id: str
    decision: str  # "kept", "rewritten", "removed" or "unlabeled"
    passes: int = 0
    trials: int = 0
    negative_ids: list = field(default_factory=list)
    picks: list = field(default_factory=list)  # the candidate id the judge picked, per trial
    rewritten_text: str | None = None
    rewrite_passes: int | None = None


def run_trials(judge, queries: list[dict], negatives: list[list[str]], texts: list[str], seed: int = 0,
               trials: int = DEFAULT_TRIALS) -> tuple[list[int], list[list[str]]]:
    """Judge every query `trials` times with the candidates shuffled differently each time.

    Args:
        judge: `choose(requests) -> list[int]`.
        queries: rows with `query_id`, `reference_image`, `target_ids`.
        negatives: per query, its negative gallery ids.
        texts: per query, the modification text to judge.
        seed: the shuffles depend on (seed, query_id, trial) only, so reruns agree.

    Returns:
        (passes per query, picked ids per query and trial).
    """
    requests, targets = [], []
    for query, negs, text in zip(queries, negatives, texts):
        target = str(query["target_ids"][0])
        for trial in range(trials):
            candidates = [target] + list(negs)
            random.Random(f"{seed}-{query['query_id']}-{trial}").shuffle(candidates)
            requests.append(JudgeRequest(query["reference_image"], text, candidates))
            targets.append(target)
    picks = judge.choose(requests)
    picked_ids = [request.candidate_ids[p] for request, p in zip(requests, picks)]
    passes, per_query = [], []
    for q in range(len(queries)):
        ids = picked_ids[q * trials:(q + 1) * trials]
        per_query.append(ids)
        passes.append(sum(pid == t for pid, t in zip(ids, targets[q * trials:(q + 1) * trials])))
    return passes, per_query
