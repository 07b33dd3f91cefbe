"""The fast query path: the same embeddings as `CoLLMModel.get_query_embeds`, for a fraction of the compute.

Every query starts with the same instruction prompt (CoLLM §7.2), "Instruct: <instruction>\nQuery:" and, for
queries with an image, " Image:". A causal LLM's hidden states at those positions do not depend on what follows,
so their key/value cache is computed once and reused by every batch (expanded over the batch, positions
continuing after the prefix). Only the per-query suffix ([<img>] [" Text:" text] [end]) runs through the LLM.
Queries are sorted by suffix length before batching, so batches carry almost no padding; the forward runs
under `torch.inference_mode` with the model's attention implementation (SDPA by default), optionally in bf16
autocast where the hardware has it. Non-causal LLMs (BERT) get the sorted batches without the cache.

    plain:  64 x (prefix + suffix, padded to the batch's longest) tokens per batch
    here:   prefix once, then 64 x (suffix, padded to a near-equal length) tokens per batch
"""

import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from .input_checks import check_reference_embeds


def bf16_supported(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matmuls are native on `device` (CUDA with bf16, or a CPU with AVX512-BF16 / AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    return False


def _is_causal(language_model: torch.nn.Module) -> bool:
    flags = [m.is_causal for m in language_model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    return bool(flags) and all(flags)


def _common_prefix(sequences: list[list[int]], stop_id: int) -> list[int]:
    """Longest common prefix of `sequences`, ending before any `stop_id` and leaving every sequence >= 1 token."""
    limit = min(len(s) for s in sequences) - 1
    prefix = []
    for i in range(limit):
        token = sequences[0][i]
        if token == stop_id or any(s[i] != token for s in sequences):
            break
        prefix.append(token)
    return prefix


class CoLLMQueryEncoder:
    r"""Query embeddings equal to `model.get_query_embeds` (max abs diff ~1e-6 in fp32), computed faster.

    Args:
        model: a [`CoLLMModel`] (its mode and weights are used as they are; nothing is modified).
        processor: the matching [`CoLLMProcessor`] (builds the prompt token ids).
        autocast_dtype: e.g. `torch.bfloat16` to run the LLM under autocast (faster where `bf16_supported()`,
            embeddings then differ from fp32 at the bf16 level); None keeps the model's own precision.
        max_cached_prefixes: how many distinct prompt prefixes keep their key/value cache.

    Example:

    ```python
    >>> encoder = CoLLMQueryEncoder(model, processor)  # doctest: +SKIP
    >>> encoder.encode(["make it blue", "add a cat"], image_embeds=gallery[:2]).shape  # doctest: +SKIP
    torch.Size([2, 512])
    ```
    """

    def __init__(self, model, processor, autocast_dtype: torch.dtype | None = None, max_cached_prefixes: int = 8):
        self.model = model
        self.processor = processor
        self.autocast_dtype = autocast_dtype
        self.max_cached_prefixes = max_cached_prefixes
        self.image_token_id = model.config.image_token_id
        self.use_prefix_cache = _is_causal(model.language_model)
        self._prefix_cache: OrderedDict = OrderedDict()
        # What the LLM executed (for FLOP counts): padded suffix tokens, prefix tokens, causal (query, key) pairs.
        self.stats = {"queries": 0, "batches": 0, "suffix_tokens": 0, "real_tokens": 0, "prefix_tokens": 0,
                      "attention_pairs": 0}
        for name in ("instruction", "num_visual_tokens", "image_token_id"):
            if getattr(processor, name) != getattr(model.config, name):
                raise ValueError(
                    f"processor.{name}={getattr(processor, name)!r} differs from model.config.{name}="
                    f"{getattr(model.config, name)!r}; build the processor with CoLLMProcessor.for_model."
                )

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    # ------------------------------------------------------------------------------------------------------
    # Public entry points
    # ------------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, texts=None, images=None, image_embeds: torch.Tensor | None = None, batch_size: int = 64) -> torch.Tensor:
        """Embed queries: composed (texts + images), text-only (texts) or image-only (images with texts None).

        Args:
            texts: list of modification texts; an entry may be None for an image-only query (with an image).
            images: list of reference images (PIL, arrays, paths as `CoLLMProcessor` accepts), one per query; or
            image_embeds: precomputed `model.get_reference_embeds`, one per query: (N, image_embedding_size) gallery
                embeddings, or (N, tokens, features) patch features for a model fed patch tokens.
            batch_size: queries per LLM forward.

        Returns:
            (N, projection_dim) L2-normalised query embeddings, in the input order.
        """
        if images is not None and image_embeds is not None:
            raise ValueError("Pass images or image_embeds, not both.")
        sizes = {name: len(v) for name, v in (("texts", texts), ("images", images), ("image_embeds", image_embeds))
                 if v is not None}
        if not sizes:
            raise ValueError("encode needs texts, images or image_embeds.")
        if len(set(sizes.values())) != 1:
            raise ValueError(f"texts, images and image_embeds must have one entry per query; got sizes {sizes}.")
        n = next(iter(sizes.values()))
        with_image = images is not None or image_embeds is not None
        texts = [None] * n if texts is None else list(texts)
        for i, text in enumerate(texts):
            if text is None and not with_image:
                raise ValueError(f"texts[{i}] is None and no image is given: a query needs text, an image or both.")
            if text is not None and (not isinstance(text, str) or not text.strip()):
                raise ValueError(f"texts[{i}] must be a non-empty string or None, got {text!r}.")
        if images is not None:
            image_embeds = self._embed_images(list(images), batch_size)
        built = [self.processor.build_query_ids(t, with_image) for t in texts]
        truncated = [i for i, (_, cut) in enumerate(built) if cut]
        if truncated:
            warnings.warn(f"Modification text(s) {truncated[:10]} longer than max_text_tokens="
                          f"{self.processor.max_text_tokens} were truncated (the instruction never is).", stacklevel=2)
        return self._encode_sequences([ids for ids, _ in built], image_embeds, batch_size)

    @torch.inference_mode()
    def encode_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None = None,
                      image_embeds: torch.Tensor | None = None, batch_size: int = 64) -> torch.Tensor:
        """Embed processor outputs (left or right padded), as `model.get_query_embeds(...)` takes them.

        Args:
            input_ids, attention_mask: (N, seq) from `CoLLMProcessor`.
            pixel_values: (images, 3, H, W), one per row with an image placeholder; or
            image_embeds: precomputed `model.get_reference_embeds`, one per row with an image placeholder, in row
                order: (images, dim), or (images, tokens, features) for a model fed patch tokens.

        Returns:
            (N, projection_dim) L2-normalised query embeddings.
        """
        if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
                             "must be the same (batch, seq) shape.")
        if image_embeds is None and pixel_values is not None:
            image_embeds = torch.cat([self.model.get_reference_embeds(pixel_values[i:i + batch_size])
                                      for i in range(0, len(pixel_values), batch_size)])
        mask = attention_mask.bool().cpu()
        sequences = [row[m].tolist() for row, m in zip(input_ids.cpu(), mask)]
        for i, seq in enumerate(sequences):
            if not seq:
                raise ValueError(f"Query row {i} has an all-zero attention mask.")
        has_image = [self.image_token_id in seq for seq in sequences]
        n_images = 0 if image_embeds is None else len(image_embeds)
        if n_images != sum(has_image):
            raise ValueError(f"{sum(has_image)} queries have an image placeholder but {n_images} images were given.")
        if image_embeds is not None:  # one row per query: rows without an image get a dummy that is never read
            index = torch.cumsum(torch.tensor(has_image), 0) - 1
            image_embeds = image_embeds[index.clamp(min=0)]
        return self._encode_sequences(sequences, image_embeds, batch_size, has_image)

    # ------------------------------------------------------------------------------------------------------
    # Core
    # ------------------------------------------------------------------------------------------------------
    def _embed_images(self, images: list, batch_size: int) -> torch.Tensor:
        checked = self.processor._check_images(images)
        chunks = []
        for i in range(0, len(checked), batch_size):
            pixels = self.processor.image_processor(checked[i:i + batch_size], return_tensors="pt")["pixel_values"]
            chunks.append(self.model.get_reference_embeds(pixels))  # (batch, dim) or (batch, tokens, features)
        return torch.cat(chunks)

    def _encode_sequences(self, sequences: list[list[int]], image_embeds: torch.Tensor | None, batch_size: int,
                          has_image: list[bool] | None = None) -> torch.Tensor:
        """Embed token id lists; `image_embeds` has one row per sequence (read only where it has placeholders)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if has_image is None:
            has_image = [self.image_token_id in seq for seq in sequences]
        if any(has_image) and image_embeds is None:
            raise ValueError("Some queries hold an image placeholder but no images were given.")
        if image_embeds is not None:
            image_embeds = image_embeds.to(self.device)
            check_reference_embeds(image_embeds, self.model.config)
        out = torch.empty(len(sequences), self.model.config.projection_dim, device=self.device)
        for kind in (True, False):  # queries with an image share a longer prefix (through " Image:")
            rows = [i for i, h in enumerate(has_image) if h == kind]
            if not rows:
                continue
            group = [sequences[i] for i in rows]
            prefix = _common_prefix(group, self.image_token_id) if self.use_prefix_cache else []
            order = sorted(range(len(rows)), key=lambda k: len(group[k]))  # length-sorted: little padding
            for start in range(0, len(order), batch_size):
                chunk = [rows[k] for k in order[start:start + batch_size]]
                suffixes = [sequences[i][len(prefix):] for i in chunk]
                chunk_images = image_embeds[chunk] if kind else None
                out[chunk] = self._encode_batch(prefix, suffixes, chunk_images)
        return out

    def _prefix_state(self, prefix: list[int]):
        """(per-layer (keys, values) of the prefix, sum of its final hidden states), computed once per prefix."""
        key = tuple(prefix)
        if key in self._prefix_cache:
            self._prefix_cache.move_to_end(key)
            return self._prefix_cache[key]
        ids = torch.tensor([prefix], device=self.device)
        with self._autocast():
            output = self.model.language_model(
                inputs_embeds=self.model.embed_query_tokens(ids, None), attention_mask=torch.ones_like(ids),
                position_ids=torch.arange(len(prefix), device=self.device)[None], use_cache=True,
            )
        cache = output.cache if hasattr(output, "cache") else output.past_key_values
        layers = [(layer.keys, layer.values) for layer in cache.layers]  # each (1, kv_heads, prefix, head_dim)
        state = (layers, output.last_hidden_state[0].float().sum(0))  # hidden sum: (hidden,)
        self.stats["prefix_tokens"] += len(prefix)
        self.stats["attention_pairs"] += len(prefix) * (len(prefix) + 1) // 2
        self._prefix_cache[key] = state
        while len(self._prefix_cache) > self.max_cached_prefixes:
            self._prefix_cache.popitem(last=False)
        return state

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _encode_batch(self, prefix: list[int], suffixes: list[list[int]], image_embeds: torch.Tensor | None) -> torch.Tensor:
        model, device = self.model, self.device
        lengths = torch.tensor([len(s) for s in suffixes], device=device)  # (batch,)
        longest, batch, p = int(lengths.max()), len(suffixes), len(prefix)
        pad = self.processor.pad_token_id
        suffix_ids = torch.tensor([s + [pad] * (longest - len(s)) for s in suffixes], device=device)  # (batch, seq)
        suffix_mask = (torch.arange(longest, device=device)[None] < lengths[:, None]).long()  # (batch, seq)
        inputs_embeds = model.embed_query_tokens(suffix_ids, image_embeds)  # (batch, seq, hidden)
        stats = self.stats
        stats["queries"] += batch
        stats["batches"] += 1
        stats["suffix_tokens"] += batch * longest
        stats["real_tokens"] += int(lengths.sum())
        stats["attention_pairs"] += batch * (longest * p + longest * (longest + 1) // 2)
        kwargs = {}
        if p:
            layers, prefix_sum = self._prefix_state(prefix)
            kwargs["cache"] = DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in layers])
            kwargs["use_cache"] = True
        attention_mask = torch.cat([suffix_mask.new_ones(batch, p), suffix_mask], 1)  # (batch, prefix + seq)
        position_ids = (p + torch.arange(longest, device=device))[None].expand(batch, -1)  # (batch, seq)
        with self._autocast():
            hidden = model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                          position_ids=position_ids, **kwargs).last_hidden_state  # (batch, seq, hidden)
        if model.config.pooling == "mean":
            total = (hidden.float() * suffix_mask[..., None]).sum(1) + (prefix_sum if p else 0)
            pooled = total / (lengths + p)[:, None]  # (batch, hidden)
        else:
            pooled = hidden[torch.arange(batch, device=device), lengths - 1]  # (batch, hidden)
        return F.normalize(model.projection(pooled.to(model.projection.weight.dtype)), dim=-1).float()


__all__ = ["CoLLMQueryEncoder", "bf16_supported"]
