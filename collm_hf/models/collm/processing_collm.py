"""CoLLMProcessor: reference images + modification texts -> the model's query inputs.

A query is laid out as the paper's prompt (CoLLM §7.2), built from token pieces so that the instruction is
never truncated and the image placeholder never collides with text:

    [lead specials] "Instruct: <instruction>\nQuery:" [" Image:" <img>*n] [" Text:" " <modification text>"] [end]

(with `instruction=None` the "Instruct: ...\nQuery:" piece is left out).

`<img>` is `image_token_id` (negative, replaced by the adapter output inside the model); `[end]` is the
tokenizer's own trailing special token (BERT's [SEP]) or else its EOS token, which is the pooled token.
Only the modification text is truncated (to `max_text_tokens`, with a warning).
"""

import json
import warnings

import torch
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .configuration_collm import DEFAULT_INSTRUCTION
from .image_io import to_rgb_image


class CoLLMProcessor(ProcessorMixin):
    r"""Wraps any image processor and tokenizer into CoLLM query and gallery inputs.

    Args:
        image_processor: e.g. a `CLIPImageProcessor`.
        tokenizer: any tokenizer; one without a pad token (Llama family) is fine.
        instruction (`str`, *optional*): the instruction of the prompt; must match the model's `config.instruction`
            (None: no instruction line).
        num_visual_tokens (`int`): placeholders per image; must match the model config.
        image_token_id (`int`): the placeholder id; must match the model config.
        max_text_tokens (`int`): longest modification text kept, in tokens.
        padding_side (`str`): "right" or "left"; the model gives the same embedding either way.

    Example:

    ```python
    >>> inputs = processor(images=[ref_image], text=["make it blue"], return_tensors="pt")  # doctest: +SKIP
    >>> sorted(inputs.keys())  # doctest: +SKIP
    ['attention_mask', 'input_ids', 'pixel_values']
    ```
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        instruction: str | None = DEFAULT_INSTRUCTION,
        num_visual_tokens: int = 1,
        image_token_id: int = -200,
        max_text_tokens: int = 128,
        padding_side: str = "right",
        **kwargs,
    ):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.instruction = instruction
        self.num_visual_tokens = num_visual_tokens
        self.image_token_id = image_token_id
        self.max_text_tokens = max_text_tokens
        self.padding_side = padding_side
        super().__init__(image_processor, tokenizer, **kwargs)
        self._pieces = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "CoLLMProcessor":
        """`ProcessorMixin.from_pretrained`; a corrupt JSON file (tokenizer.json, ...) raises an OSError naming the folder."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except json.JSONDecodeError as error:
            raise OSError(f"{pretrained_model_name_or_path}: a processor or tokenizer file is not valid JSON "
                          f"({error})") from error

    @classmethod
    def from_backbones(cls, vision_name_or_path: str, llm_name_or_path: str, **kwargs) -> "CoLLMProcessor":
        """The processor matching `CoLLMModel.from_backbones(vision_name_or_path, llm_name_or_path)`."""
        from transformers import AutoImageProcessor, AutoTokenizer

        return cls(AutoImageProcessor.from_pretrained(vision_name_or_path), AutoTokenizer.from_pretrained(llm_name_or_path), **kwargs)

    @classmethod
    def for_model(cls, image_processor, tokenizer, config, **kwargs) -> "CoLLMProcessor":
        """A processor whose prompt options are taken from a `CoLLMConfig`."""
        return cls(image_processor, tokenizer, instruction=config.instruction, num_visual_tokens=config.num_visual_tokens,
                   image_token_id=config.image_token_id, **kwargs)

    # ------------------------------------------------------------------------------------------------------
    # Token pieces
    # ------------------------------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def pieces(self) -> dict:
        """Token ids of the fixed prompt parts, computed once."""
        if self._pieces is None:
            with_specials = self.tokenizer("a", add_special_tokens=True)["input_ids"]
            bare = self._encode("a")
            start = next((i for i in range(len(with_specials)) if with_specials[i:i + len(bare)] == bare), 0)
            lead, trail = with_specials[:start], with_specials[start + len(bare):]
            if not trail:
                eos = self.tokenizer.eos_token_id
                if eos is None:
                    raise ValueError("The tokenizer has neither an end-of-sequence token nor trailing special tokens to pool.")
                trail = [eos]
            self._pieces = {
                "prefix": lead + ([] if self.instruction is None else self._encode(f"Instruct: {self.instruction}\nQuery:")),
                "image": self._encode(" Image:") + [self.image_token_id] * self.num_visual_tokens,
                "text": self._encode(" Text:"),
                "end": trail,
            }
        return self._pieces

    @property
    def pad_token_id(self) -> int:
        for token_id in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if token_id is not None:
                return token_id
        return 0

    def build_query_ids(self, text: str | None, with_image: bool, text_ids: list[int] | None = None) -> tuple[list[int], bool]:
        """Token ids of one query (no padding). Returns the ids and whether the text was truncated.

        `text_ids`: the text's ids when already tokenised (`queries` tokenises a batch in one call)."""
        ids, truncated = list(self.pieces["prefix"]), False
        if with_image:
            ids += self.pieces["image"]
        if text is not None:
            if text_ids is None:
                text_ids = self._encode(self._text_piece(text))
            truncated = len(text_ids) > self.max_text_tokens
            ids += self.pieces["text"] + text_ids[: self.max_text_tokens]
        return ids + self.pieces["end"], truncated

    @staticmethod
    def _text_piece(text: str) -> str:
        """The modification text as tokenised after " Text:" (checked: the tokenizer would fail on invalid
        Unicode with an opaque TypeError)."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(f"modification text {text[:40]!r} is not valid Unicode ({error.reason}).") from error
        return " " + text.strip()

    def pad_query_ids(self, sequences: list[list[int]], return_tensors: str = "pt") -> dict:
        """Pad token id lists to one (batch, longest) tensor with an attention mask."""
        longest = max(len(s) for s in sequences)
        input_ids, attention_mask = [], []
        for seq in sequences:
            pad = [self.pad_token_id] * (longest - len(seq))
            ones, zeros = [1] * len(seq), [0] * len(pad)
            input_ids.append(seq + pad if self.padding_side == "right" else pad + seq)
            attention_mask.append(ones + zeros if self.padding_side == "right" else zeros + ones)
        if return_tensors == "pt":
            return {"input_ids": torch.tensor(input_ids), "attention_mask": torch.tensor(attention_mask)}
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    # ------------------------------------------------------------------------------------------------------
    # Validation
    # ------------------------------------------------------------------------------------------------------
    @staticmethod
    def _as_list(value, what: str) -> list | None:
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            if len(value) == 0:
                raise ValueError(f"{what} is an empty list.")
            return list(value)
        return [value]

    def _check_texts(self, texts: list) -> list[str]:
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text[{i}] must be a string, got {type(text).__name__}.")
            if not text.strip():
                raise ValueError(f"text[{i}] is empty; pass text=None for image-only queries.")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:  # e.g. a lone surrogate from "\ud800" in JSON
                raise ValueError(f"text[{i}] is not valid Unicode ({error.reason} at character {error.start}).") from error
        return texts

    def _check_images(self, images: list) -> list:
        checked = []
        for i, image in enumerate(images):
            if image is None:
                raise ValueError(f"images[{i}] is None; every query given images needs an image.")
            checked.append(to_rgb_image(image, f"images[{i}]"))
        return checked

    # ------------------------------------------------------------------------------------------------------
    # Call
    # ------------------------------------------------------------------------------------------------------
    def __call__(self, images=None, text=None, return_tensors: str = "pt", **kwargs) -> BatchFeature:
        """Process queries or gallery images.

        - `images` and `text`: composed queries (one image per text);
        - `text` only: text-only queries;
        - `images` only: gallery images (`pixel_values` only). For image-only *queries* use `image_queries`.

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` (queries) and/or `pixel_values`.
        """
        images, texts = self._as_list(images, "images"), self._as_list(text, "text")
        if images is None and texts is None:
            raise ValueError("CoLLMProcessor needs images, text, or both.")
        if images is not None and texts is not None and len(images) != len(texts):
            raise ValueError(f"Got {len(images)} images but {len(texts)} texts; a query is one image and one text.")
        data = {}
        if images is not None:
            data["pixel_values"] = self.image_processor(self._check_images(images), return_tensors="pt")["pixel_values"]
        if texts is not None:
            data.update(self.queries(self._check_texts(texts), with_image=images is not None, return_tensors=return_tensors))
        return BatchFeature(data=data, tensor_type=None)

    def queries(self, texts: list[str | None], with_image: bool, return_tensors: str = "pt") -> dict:
        """Token inputs for a batch of queries (texts may be None for image-only queries)."""
        given = [self._text_piece(t) for t in texts if t is not None]
        encoded = iter(self.tokenizer(given, add_special_tokens=False)["input_ids"] if given else [])
        built = [self.build_query_ids(t, with_image, None if t is None else next(encoded)) for t in texts]
        truncated = [i for i, (_, cut) in enumerate(built) if cut]
        if truncated:
            warnings.warn(
                f"Modification text(s) {truncated[:10]} longer than max_text_tokens={self.max_text_tokens} were "
                "truncated (the instruction never is).", stacklevel=3,
            )
        return self.pad_query_ids([ids for ids, _ in built], return_tensors)

    def image_queries(self, images, return_tensors: str = "pt") -> BatchFeature:
        """Image-only queries: the prompt with the image part and no text part."""
        images = self._check_images(self._as_list(images, "images"))
        data = self.queries([None] * len(images), with_image=True, return_tensors=return_tensors)
        data["pixel_values"] = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return BatchFeature(data=data)


__all__ = ["CoLLMProcessor"]
