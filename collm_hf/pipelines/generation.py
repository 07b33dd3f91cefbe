"""Modification texts for image pairs, written by an instruct LLM from the two captions (CoLLM §4.1, MTCIR).

Three pieces, each replaceable:
    * `build_messages(caption_a, caption_b)`: the chat prompt - the two captions, the six categories of
      change with an example each, and a request for forward (a -> b) and backward (b -> a) texts of
      fewer than `word_limit` words, as JSON.
    * a *generator*: any object with `generate(conversations, attempt=0) -> list[str]` (one reply per
      conversation, in one batched call). `TransformersGenerator` runs any instruct LLM of transformers;
      tests use a scripted one with the same interface.
    * `parse_modifications(reply)`: the JSON is found, parsed, validated; a reply truncated mid-way keeps its
      complete items ("partial"); each item or reply that fails says why (`ParsedReply.problems`).

The reply format the prompt asks for:
    {"modifications": [{"category": "attribute", "forward": "...", "backward": "..."}, ...]}
"""

import json
import re
from dataclasses import dataclass, field

# The paper's six categories (MTCIR shares: attribute 46 %, object added 22 %, object removed 21 %,
# relationship 6 %, viewpoint 4 %, number 1 %), with the example the prompt shows for each.
CATEGORIES = {
    "attribute": ("change an attribute (colour, material, size, style, pattern)", "make the car red instead of blue"),
    "object_added": ("add an object", "add a dog sitting on the sofa"),
    "object_removed": ("remove an object", "remove the lamp from the table"),
    "relationship": ("change how objects relate or are placed", "put the cup to the left of the laptop"),
    "viewpoint": ("change the viewpoint, framing or angle", "show it from above, zoomed out"),
    "number": ("change how many objects there are", "show three apples instead of one"),
}
# Names a model may use for a category, mapped to ours (lower case, spaces/dashes as underscores).
CATEGORY_ALIASES = {
    "attribute_changed": "attribute", "attribute_change": "attribute", "attributes": "attribute",
    "object_addition": "object_added", "add_object": "object_added", "addition": "object_added", "added": "object_added",
    "object_removal": "object_removed", "remove_object": "object_removed", "removal": "object_removed",
    "removed": "object_removed", "relation": "relationship", "relationships": "relationship",
    "spatial": "relationship", "view": "viewpoint", "view_point": "viewpoint", "camera": "viewpoint",
    "count": "number", "quantity": "number", "counting": "number",
}
DEFAULT_WORD_LIMIT = 20  # texts must have fewer words than this ("under 20 words")

SYSTEM_PROMPT = "You write short image-editing instructions. You answer with JSON only."


def build_messages(caption_a: str, caption_b: str, word_limit: int = DEFAULT_WORD_LIMIT) -> list[dict]:
    """The chat conversation asking for the modification texts between two captioned images.

    Args:
        caption_a: caption of image A (the reference of the forward text).
        caption_b: caption of image B (the target of the forward text).
        word_limit: every text must have fewer words than this.

    Returns:
        [{"role": "system", ...}, {"role": "user", ...}] for `tokenizer.apply_chat_template`.
    """
    kinds = "\n".join(f'- "{name}": {what}; e.g. "{example}"' for name, (what, example) in CATEGORIES.items())
    user = (
        f"Image A: {caption_a.strip()}\nImage B: {caption_b.strip()}\n\n"
        "Write how to change image A into image B (forward) and image B into image A (backward).\n"
        f"Use these kinds of change:\n{kinds}\n"
        f"Give one item per difference, each text fewer than {word_limit} words, written as an instruction.\n"
        'Answer with JSON only, in this form:\n'
        '{"modifications": [{"category": "attribute", "forward": "make the car red", '
        '"backward": "make the car blue"}]}'
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


@dataclass
class Modification:
    """One difference between two images, described both ways."""

    category: str
    forward: str
    backward: str


@dataclass
class ParsedReply:
    """The valid items of one reply, and why anything was rejected.

    `status` is "ok" (every item valid), "partial" (some items kept; the reply was cut off or some items
    were invalid) or "failed" (nothing usable). `problems` lists a reason per rejected item or reply, from
    `REASONS`.
    """

    modifications: list[Modification] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if not self.modifications:
            return "failed"
        return "partial" if self.problems else "ok"


# Every reason a reply or an item can be rejected for (the card counts them).
REASONS = ("no_json", "not_an_object", "no_modifications_list", "truncated", "item_not_an_object",
           "unknown_category", "missing_text", "too_long", "same_text", "privacy")

_FENCE = re.compile(r"```(?:json)?", re.IGNORECASE)


def _norm_category(value) -> str | None:
    if not isinstance(value, str):
        return None
    key = re.sub(r"[\s\-]+", "_", value.strip().lower())
    return key if key in CATEGORIES else CATEGORY_ALIASES.get(key)


def _clean_text(value) -> str | None:
    if not isinstance(value, str):
        return None
    text = " ".join(value.split()).strip().strip('"').strip()
    return text or None


def _first_object(text: str):
    """The first JSON object in `text` (prose and code fences around it are ignored), or None."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        return value
    return None


def _complete_items(text: str) -> list:
    """Salvage the complete objects of a `"modifications": [` list cut off before its end."""
    start = re.search(r'"modifications"\s*:\s*\[', text)
    if not start:
        return []
    decoder, position, items = json.JSONDecoder(), start.end(), []
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return items
        items.append(value)


def validate_item(item, word_limit: int = DEFAULT_WORD_LIMIT) -> tuple[Modification | None, str | None]:
    """Check one item of the `modifications` list; return (Modification, None) or (None, reason)."""
    if not isinstance(item, dict):
        return None, "item_not_an_object"
    category = _norm_category(item.get("category"))
    if category is None:
        return None, "unknown_category"
    forward, backward = _clean_text(item.get("forward")), _clean_text(item.get("backward"))
    if forward is None or backward is None:
        return None, "missing_text"
    if max(len(forward.split()), len(backward.split())) >= word_limit:
        return None, "too_long"
    if forward.lower() == backward.lower():
        return None, "same_text"
    return Modification(category, forward, backward), None


def parse_modifications(reply: str, word_limit: int = DEFAULT_WORD_LIMIT) -> ParsedReply:
    """Parse and validate one generator reply.

    Accepts the JSON object alone, inside prose or a ```json fence, a bare list of items, and a reply cut
    off mid-way (its complete items are kept, "truncated" is recorded). Duplicate items are dropped silently.

    Args:
        reply: the generated text.
        word_limit: texts must have fewer words than this.

    Returns:
        `ParsedReply` with the valid `Modification`s and the reasons of the rejected parts.

    Example:
        >>> parse_modifications('{"modifications": [{"category": "number", "forward": "add a cat",'
        ...                     ' "backward": "remove a cat"}]}').status
        'ok'
    """
    text = _FENCE.sub("", reply or "")
    parsed, problems = _first_object(text), []
    if '"modifications"' in text and not (isinstance(parsed, dict) and "modifications" in parsed):
        parsed = None  # the wrapper did not parse (cut off): an inner item is not the answer, salvage below
    elif parsed is None:
        list_start = text.find("[")
        if list_start >= 0:
            try:
                parsed, _ = json.JSONDecoder().raw_decode(text, list_start)
            except json.JSONDecodeError:
                parsed = None
    if isinstance(parsed, dict) and "modifications" not in parsed and {"forward", "backward"} <= set(parsed):
        parsed = [parsed]  # a single item instead of the wrapper
    if isinstance(parsed, dict):
        items = parsed.get("modifications")
        if not isinstance(items, list):
            return ParsedReply([], ["no_modifications_list"])
    elif isinstance(parsed, list):
        items = parsed
    else:
        items = _complete_items(text)
        if not items:
            return ParsedReply([], ["no_json" if "{" not in text else "truncated"])
        problems.append("truncated")
    kept, seen = [], set()
    for item in items:
        modification, reason = validate_item(item, word_limit)
        if reason:
            problems.append(reason)
        elif (key := (modification.category, modification.forward.lower(), modification.backward.lower())) not in seen:
            seen.add(key)
            kept.append(modification)
    return ParsedReply(kept, problems)


# ----------------------------------------------------------------------------------------------------------
# Privacy filter (the paper filters texts describing people's attributes)
# ----------------------------------------------------------------------------------------------------------
_PEOPLE = r"man|men|woman|women|person|people|boy|girl|child|children|kid|baby|guy|lady|gentleman|he|she|his|her|him"
_PERSONAL = (r"old|older|young|younger|elderly|age|aged|teen|teenage|race|racial|ethnic|ethnicity|skin|tan|"
             r"asian|african|caucasian|hispanic|latino|arab|indian|religious|muslim|christian|jewish|hijab|"
             r"fat|thin|skinny|overweight|slim|heavy|obese|tall|short|bald|beard|bearded|hair|hairy|blonde|"
             r"brunette|makeup|pregnant|disabled|wheelchair|tattoo|tattooed|attractive|ugly|beautiful|pretty|"
             r"handsome|gender|male|female|feminine|masculine|sexy|body|face|facial")
_PEOPLE_RE = re.compile(rf"\b({_PEOPLE})\b", re.IGNORECASE)
_PERSONAL_RE = re.compile(rf"\b({_PERSONAL})\b", re.IGNORECASE)
_GENDER = {"man": "m", "men": "m", "boy": "m", "woman": "f", "women": "f", "girl": "f"}
_GENDER_SWAP_RE = re.compile(r"\b(man|woman|boy|girl|men|women)\b.*\b(man|woman|boy|girl|men|women)\b", re.IGNORECASE)


def describes_personal_attributes(text: str) -> bool:
    """True when `text` speaks of a person together with a personal attribute (age, gender, ethnicity,
    body, religion, looks...), or turns one gender into another. A word-list heuristic: it removes
    "make the woman older" and "turn the man into a woman", keeps "add a man on the bench"."""
    if _PEOPLE_RE.search(text) and _PERSONAL_RE.search(text):
        return True
    match = _GENDER_SWAP_RE.search(text)
    return bool(match and _GENDER[match.group(1).lower()] != _GENDER[match.group(2).lower()])


def apply_privacy_filter(parsed: ParsedReply) -> ParsedReply:
    """Drop the items whose forward or backward text `describes_personal_attributes` (reason "privacy")."""
    kept, problems = [], list(parsed.problems)
    for modification in parsed.modifications:
        if describes_personal_attributes(modification.forward) or describes_personal_attributes(modification.backward):
            problems.append("privacy")
        else:
            kept.append(modification)
    return ParsedReply(kept, problems)


# ----------------------------------------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------------------------------------
class TransformersGenerator:
    """Batched chat generation with any instruct LLM of transformers.

    Attempt 0 decodes greedily; a retry (`attempt` > 0) samples with a seed derived from the attempt, so
    a rerun of the same work gives the same replies (what resuming relies on).

    Args:
        model: a causal LM (`AutoModelForCausalLM`), or a model id / local path to load one from.
        tokenizer: its tokenizer (loaded from `model` when that is a path). Padding is set to the left.
        max_new_tokens: reply budget per conversation.
        batch_size: conversations per `generate` call.
        temperature: sampling temperature of retries.
        seed: base seed of retries.
        response_prefix: text the reply is made to start with (appended after the generation prompt, and
            put back in front of every reply), e.g. `'{"modifications": [{"category": "'`: small models
            then keep to the JSON form far more often.

    Example:
        >>> generator = TransformersGenerator("HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
        >>> generator.generate([build_messages("a red car", "a blue car")])  # doctest: +SKIP
    """

    def __init__(self, model, tokenizer=None, *, max_new_tokens: int = 160, batch_size: int = 8,
                 temperature: float = 0.7, seed: int = 0, dtype=None, device: str | None = None,
                 response_prefix: str = ""):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = model if isinstance(model, str) else getattr(model, "name_or_path", type(model).__name__)
        if isinstance(model, str):
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype or torch.float32)
        if tokenizer is None:
            raise ValueError("a tokenizer is needed when `model` is a model object")
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.temperature, self.seed, self.response_prefix = temperature, seed, response_prefix

    def describe(self) -> dict:
        """What the card records about this generator."""
        return {"generator": str(self.name), "max_new_tokens": self.max_new_tokens, "decoding": "greedy",
                "retry_decoding": f"sampling, temperature {self.temperature}, seed {self.seed} + attempt",
                "response_prefix": self.response_prefix}

    def render(self, conversation: list[dict]) -> str:
        """The prompt text of one conversation (the tokenizer's chat template, else plain role lines)."""
        if getattr(self.tokenizer, "chat_template", None):
            prompt = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        else:
            prompt = "\n".join(f"{m['role']}: {m['content']}" for m in conversation) + "\nassistant: "
        return prompt + self.response_prefix

    def generate(self, conversations: list[list[dict]], attempt: int = 0) -> list[str]:
        """One reply per conversation, batched `batch_size` at a time.

        Args:
            conversations: chat message lists (`build_messages`).
            attempt: 0 = greedy; > 0 = seeded sampling (a retry).

        Returns:
            the decoded replies (new tokens only, special tokens removed).
        """
        import torch

        replies = []
        sample = attempt > 0
        for start in range(0, len(conversations), self.batch_size):
            prompts = [self.render(c) for c in conversations[start:start + self.batch_size]]
            inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            inputs = inputs.to(self.model.device)
            options = {"do_sample": sample, "max_new_tokens": self.max_new_tokens,
                       "pad_token_id": self.tokenizer.pad_token_id}
            if sample:
                torch.manual_seed(self.seed + 1000 * attempt + start)
                options["temperature"] = self.temperature
            else:
                options.update(temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                output = self.model.generate(**inputs, **options)  # (batch, prompt + new)
            new_tokens = output[:, inputs["input_ids"].shape[1]:]
            replies += [self.response_prefix + reply
                        for reply in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        return replies
