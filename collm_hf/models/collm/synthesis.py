"""On-the-fly triplet synthesis from image-caption pairs (CoLLM §3.2, §7; docs/method.md).

For each pair (v_i, w_i) of a batch, v_i is the *target*; a reference embedding and a modification text are
synthesised inside the (global) batch:

    h'_i = f(t(v_i))                         ImageAugmentation (collator) + the vision tower (model)
    j    = argmax_{j != i} cos(h'_i, h'_j)   nearest_neighbor_indices (never i, never a copy of image i)
    h*_i = slerp(h'_i, h'_j, alpha=0.5)      slerp
    w*_i = template(w_i, w_j) for 75 %, w_i for the rest    synthesize_modification_texts / token assembly

Where the randomness lives: every random choice (the augmentation, whether a sample gets a template and
which one) is drawn by the *collator*, from one `torch.Generator` per row (`ImageAugmentation` and
`sample_template_choices` accept a list of generators, one per row); the model's step is deterministic given the
batch. So a run reproduces from its seed, gradient caching needs no random-state replay for synthesis, and
running on N processes is the same as one process on the concatenated batch.

How the text is assembled without re-tokenising: the neighbour caption is known only after the images are
encoded, inside the model's step. The collator tokenises each caption once (as " " + caption, exactly what
`CoLLMProcessor.build_query_ids` tokenises) and each template once, split at its slots (`template_token_ids`);
the step then concatenates id lists (`assemble_composed_queries`). For byte-level BPE tokenizers (GPT-2,
Llama-3, Qwen2, Mistral-Nemo) splitting at a space gives exactly the ids of the whole string, because their
pre-tokenizer splits there too. Two known differences: a caption ending in punctuation followed by a
template comma ("cat." + ", show") may merge differently in the whole string; SentencePiece tokenizers that
prepend "▁" to every call can differ at the piece borders. `CoLLMPairCollator` checks this on its first
batch and warns with the mismatch count (`check_tokenization=True`).

This module imports only torch, the standard library and its sibling `losses.py` (it travels with checkpoints
for trust_remote_code).
"""

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .losses import gather_padded, gather_rows

# The 15 templates verbatim (CoLLM supplement §7); {w_i} = target caption, {w_j} = neighbour caption.
MODIFICATION_TEMPLATES = (
    "show {w_i} instead of {w_j}",
    "{w_i} instead of {w_j}",
    "show {w_i} rather than {w_j}",
    "{w_i} rather than {w_j}",
    "rather than {w_j}, show {w_i}",
    "rather than {w_j}, {w_i}",
    "instead of {w_j}, {w_i}",
    "{w_j}, changed to {w_i}",
    "not {w_j}, but {w_i}",
    "show {w_i}, not {w_j}",
    "{w_j} is missing, {w_i}",
    "{w_i}, and {w_j} is missing",
    "remove {w_j}, add {w_i}",
    "add {w_i}, remove {w_j}",
    "{w_j} become {w_i}",
)

# The paper applies a template to 75 % of samples; the rest keep the target caption.
DEFAULT_MODIFICATION_RATE = 0.75
# alpha = 0.5 was best in the paper's ablation (§7).
DEFAULT_SLERP_ALPHA = 0.5
# A template choice of KEEP_CAPTION means "use the target caption itself".
KEEP_CAPTION = -1

# Sentinel token ids used between the collator and the model (all negative, far from the image placeholder
# -200, so they can never be real token ids): slots in a tokenised template, the modification-text slots of a
# query frame, and padding of these ragged id lists.
TARGET_SLOT = -1001
NEIGHBOR_SLOT = -1002
TEXT_SLOT = -1003
PAD_SLOT = -1004


# ----------------------------------------------------------------------------------------------------------
# Embeddings: slerp and nearest neighbours
# ----------------------------------------------------------------------------------------------------------
def _orthogonal_unit(vectors: torch.Tensor) -> torch.Tensor:
    """A unit vector orthogonal to each row: Gram-Schmidt on the basis vector of its smallest coordinate."""
    basis = F.one_hot(vectors.abs().argmin(-1), vectors.shape[-1]).to(vectors.dtype)  # (..., dim)
    ortho = basis - (basis * vectors).sum(-1, keepdim=True) * vectors
    return F.normalize(ortho, dim=-1)


def slerp(
    start: torch.Tensor, end: torch.Tensor, alpha: float = DEFAULT_SLERP_ALPHA, eps: float = 1e-6
) -> torch.Tensor:
    """Spherical interpolation of unit vectors (CoLLM §3.2, Shoemake 1985).

    `slerp(a, b, alpha) = sin((1-alpha) θ)/sin θ · a + sin(alpha θ)/sin θ · b`, θ = arccos(a·b), computed in the
    equivalent form `cos(alpha θ) a + sin(alpha θ) u`, u = the unit part of b orthogonal to a, which never
    divides by sin θ: (nearly) identical vectors interpolate linearly; opposite vectors (θ = π, no unique great circle) turn `a`
    towards a fixed orthogonal direction. Inputs are L2-normalised first; the output has unit norm.

    Args:
        start: (..., dim) the sample's own embedding h'_i (alpha = 0 returns it).
        end: (..., dim) the neighbour's embedding h'_j (alpha = 1 returns it).
        alpha: interpolation weight towards `end`.
        eps: below this norm the orthogonal part counts as zero.

    Returns:
        (..., dim) unit vectors.

    Example:
        >>> a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
        >>> slerp(a, b, 0.5)  # 45 degrees
        tensor([[0.7071, 0.7071]])
    """
    a, b = F.normalize(start, dim=-1), F.normalize(end.to(start.dtype), dim=-1)
    dot = (a * b).sum(-1, keepdim=True)  # (..., 1) cos θ
    ortho = b - dot * a  # (..., dim), norm = sin θ
    sin_theta = ortho.norm(dim=-1, keepdim=True)  # (..., 1)
    degenerate = sin_theta < eps
    u = torch.where(degenerate, torch.zeros_like(ortho), ortho / sin_theta.clamp_min(eps))
    opposite = degenerate & (dot < 0)
    u = torch.where(opposite, _orthogonal_unit(a), u)  # θ = π: any great circle; a fixed one
    theta = torch.atan2(sin_theta, dot)  # (..., 1) in [0, π]; stable near 0 and π, unlike arccos
    spherical = F.normalize(torch.cos(alpha * theta) * a + torch.sin(alpha * theta) * u, dim=-1)
    # Nearly identical vectors: the normalised linear interpolation equals Slerp to first order in θ and keeps
    # both endpoints exact (alpha = 1 returns `end`, not `start`).
    linear = F.normalize((1 - alpha) * a + alpha * b, dim=-1)
    return torch.where(degenerate & ~opposite, linear, spherical)


def slerp_tokens(start: torch.Tensor, end: torch.Tensor, alpha: float = DEFAULT_SLERP_ALPHA) -> torch.Tensor:
    """Token-wise interpolation of patch features, for references fed as patch tokens: each token's direction by
    `slerp`, its norm linearly (patch features are not unit vectors; their norms carry information).

    Args:
        start: (..., tokens, features) the sample's own patch tokens (alpha = 0 returns them).
        end: (..., tokens, features) the neighbour's patch tokens, same grid (alpha = 1 returns them).
        alpha: interpolation weight towards `end`.

    Returns:
        (..., tokens, features).
    """
    end = end.to(start.dtype)
    norm = (1 - alpha) * start.norm(dim=-1, keepdim=True) + alpha * end.norm(dim=-1, keepdim=True)  # (..., tokens, 1)
    return slerp(start, end, alpha) * norm


def nearest_neighbor_indices(embeds: torch.Tensor, image_ids: torch.Tensor | list | None = None) -> torch.Tensor:
    """Index of each row's nearest other row by cosine similarity, never itself and never a row of the same image.

    Args:
        embeds: (batch, dim) image embeddings (normalised inside).
        image_ids: (batch,) integer ids (e.g. `hash_ids` of the string ids) or a list of ids; rows with equal
            ids are copies of one image and never each other's neighbour. None: only the row itself is excluded.

    Returns:
        (batch,) long tensor of neighbour indices.

    Raises:
        ValueError: a row has no admissible neighbour (the batch holds fewer than two distinct images).

    Example:
        >>> nearest_neighbor_indices(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]))
        tensor([1, 0, 1])
    """
    if embeds.dim() != 2:
        raise ValueError(f"embeds must be (batch, dim), got {tuple(embeds.shape)}")
    normed = F.normalize(embeds.detach().float(), dim=-1)
    similarity = normed @ normed.t()  # (batch, batch)
    excluded = torch.eye(len(normed), dtype=torch.bool, device=normed.device)
    if image_ids is not None:
        ids = image_ids if isinstance(image_ids, torch.Tensor) else hash_ids(image_ids)
        ids = ids.to(normed.device)
        excluded |= ids[:, None] == ids[None, :]
    similarity = similarity.masked_fill(excluded, float("-inf"))
    lonely = excluded.all(-1)
    if bool(lonely.any()):
        row = int(lonely.nonzero()[0])
        raise ValueError(
            f"Batch row {row} has no neighbour: every other row is a copy of the same image (or the batch has one "
            "row). Pair synthesis needs at least two distinct images per (global) batch."
        )
    return similarity.argmax(-1)


def hash_ids(ids) -> torch.Tensor:
    """Map string (or int) ids to int64 tensors, stable across processes and runs (blake2b, 8 bytes).

    Tensors travel through all_gather; strings do not. Collisions of 64-bit hashes are negligible.

    Returns:
        (len(ids),) long tensor.
    """
    values = [
        int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little", signed=True) for i in ids
    ]
    return torch.tensor(values, dtype=torch.long)


# ----------------------------------------------------------------------------------------------------------
# Modification texts
# ----------------------------------------------------------------------------------------------------------
Generators = torch.Generator | Sequence[torch.Generator] | None


def _uniform(num_samples: int, generator: Generators) -> torch.Tensor:
    """(num_samples,) uniform [0, 1) draws: from one generator, or one draw from each row's own generator."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(num_samples, generator=generator)
    if len(generator) != num_samples:
        raise ValueError(f"{len(generator)} row generators for {num_samples} rows")
    return torch.cat([torch.rand(1, generator=g) for g in generator])


def sample_template_choices(
    num_samples: int,
    rate: float = DEFAULT_MODIFICATION_RATE,
    generator: Generators = None,
    num_templates: int = len(MODIFICATION_TEMPLATES),
) -> torch.Tensor:
    """Per sample: a template index drawn uniformly (with probability `rate`), else `KEEP_CAPTION` (-1).

    Args:
        num_samples: rows of the batch.
        rate: share of samples that get a template.
        generator: one seeded `torch.Generator` for the batch, or a list of one per row (a row's choice then
            depends on its own generator only, not on the other rows of its batch).
        num_templates: templates to choose from.

    Returns:
        (num_samples,) long tensor with values in [-1, num_templates).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"modification rate must be in [0, 1], got {rate}")
    applied = _uniform(num_samples, generator) < rate
    template = (_uniform(num_samples, generator) * num_templates).long().clamp_max(num_templates - 1)
    return torch.where(applied, template, torch.full_like(template, KEEP_CAPTION))


def apply_template(choice: int, target_caption: str, neighbor_caption: str) -> str:
    """The modification text of one sample: template `choice` filled in, or the target caption (choice -1)."""
    w_i, w_j = target_caption.strip(), neighbor_caption.strip()
    if choice == KEEP_CAPTION:
        return w_i
    return MODIFICATION_TEMPLATES[choice].format(w_i=w_i, w_j=w_j)


def synthesize_modification_texts(
    target_captions: list[str],
    neighbor_captions: list[str],
    rate: float = DEFAULT_MODIFICATION_RATE,
    generator: torch.Generator | None = None,
    choices: torch.Tensor | None = None,
) -> list[str]:
    """Modification texts w*_i: a random template over (w_i, w_j) for `rate` of the samples, else w_i.

    Args:
        target_captions: the captions w_i of the targets.
        neighbor_captions: the captions w_j of their nearest neighbours.
        rate: share of samples that get a template (0.75 in the paper).
        generator: seeded `torch.Generator` for reproducible choices.
        choices: (batch,) precomputed `sample_template_choices` (then `rate`/`generator` are unused).

    Returns:
        list of strings, one per sample.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> synthesize_modification_texts(["a red car"], ["a blue car"], rate=1.0, generator=g)  # doctest: +SKIP
        ['a red car instead of a blue car']
    """
    if len(target_captions) != len(neighbor_captions):
        raise ValueError(f"{len(target_captions)} target captions but {len(neighbor_captions)} neighbour captions")
    if choices is None:
        choices = sample_template_choices(len(target_captions), rate, generator)
    return [
        apply_template(int(c), w_i, w_j) for c, w_i, w_j in zip(choices.tolist(), target_captions, neighbor_captions)
    ]


_SLOT_PATTERN = re.compile(r" ?\{(w_i|w_j)\}")


def template_token_ids(tokenize, choice: int) -> list[int]:
    """Token ids of template `choice` with `TARGET_SLOT` / `NEIGHBOR_SLOT` where the captions go.

    The text the processor tokenises is " " + modification text; each slot takes its caption tokenised as
    " " + caption (the space before a slot belongs to the caption), so the pieces split at spaces.

    Args:
        tokenize: str -> list[int], without special tokens.
        choice: template index, or `KEEP_CAPTION` (then the result is just `[TARGET_SLOT]`).
    """
    if choice == KEEP_CAPTION:
        return [TARGET_SLOT]
    ids, position, text = [], 0, " " + MODIFICATION_TEMPLATES[choice]
    for match in _SLOT_PATTERN.finditer(text):
        if match.start() > position:
            ids += tokenize(text[position : match.start()])
        ids.append(TARGET_SLOT if match.group(1) == "w_i" else NEIGHBOR_SLOT)
        position = match.end()
    if position < len(text):
        ids += tokenize(text[position:])
    return ids


def assemble_text_ids(template: list[int], target_ids: list[int], neighbor_ids: list[int]) -> list[int]:
    """Fill a tokenised template's slots with caption token ids (no truncation)."""
    out = []
    for token in template:
        if token == TARGET_SLOT:
            out += target_ids
        elif token == NEIGHBOR_SLOT:
            out += neighbor_ids
        elif token != PAD_SLOT:
            out.append(token)
    return out


def _unpad(rows: torch.Tensor) -> list[list[int]]:
    return [[t for t in row if t != PAD_SLOT] for row in rows.tolist()]


def assemble_composed_queries(
    query_frame_ids: torch.Tensor,
    modification_template_ids: torch.Tensor,
    caption_ids: torch.Tensor,
    neighbor_caption_ids: torch.Tensor,
    pad_token_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composed-query token ids, assembled once the neighbours are known (inside the training step).

    A frame is the query prompt with `TEXT_SLOT` repeated `max_text_tokens` times where the modification text
    goes (so the frame also carries the truncation length): the assembled text fills the slots, unused slots
    are dropped, a longer text is truncated, as `CoLLMProcessor.build_query_ids` does.

    Args:
        query_frame_ids: (batch, frame_len) prompt frame, `PAD_SLOT`-padded.
        modification_template_ids: (batch, template_len) `template_token_ids` rows, `PAD_SLOT`-padded.
        caption_ids: (batch, caption_len) target caption ids (" " + caption), `PAD_SLOT`-padded.
        neighbor_caption_ids: (batch, neighbor_len) the neighbours' caption ids, `PAD_SLOT`-padded.
        pad_token_id: id used for padding (masked out, so it does not change the embedding).

    Returns:
        input_ids (batch, seq) right-padded, attention_mask (batch, seq).
    """
    sequences = []
    for frame, template, target, neighbor in zip(
        _unpad(query_frame_ids), _unpad(modification_template_ids), _unpad(caption_ids), _unpad(neighbor_caption_ids)
    ):
        capacity = frame.count(TEXT_SLOT)
        text = assemble_text_ids(template, target, neighbor)[:capacity]
        first = frame.index(TEXT_SLOT)
        sequences.append(frame[:first] + text + frame[first + capacity :])
    longest = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    device = query_frame_ids.device
    return input_ids.to(device), attention_mask.to(device)


def pad_id_lists(sequences: list[list[int]], pad_value: int = PAD_SLOT) -> torch.Tensor:
    """Right-pad ragged id lists into one (batch, longest) long tensor (at least one column)."""
    longest = max([1] + [len(s) for s in sequences])
    return torch.tensor([s + [pad_value] * (longest - len(s)) for s in sequences], dtype=torch.long)


def concat_padded_queries(groups: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack query batches of different lengths: pad each on the right (mask 0), then concatenate rows.

    Extra right padding does not change an embedding (positions follow the mask; the last attended token is
    pooled), also for left-padded inputs.

    Returns:
        input_ids (rows, longest), attention_mask (rows, longest).
    """
    longest = max(ids.shape[1] for ids, _ in groups)
    ids = [F.pad(i, (0, longest - i.shape[1]), value=0) for i, _ in groups]
    masks = [F.pad(m.to(i.device), (0, longest - m.shape[1]), value=0) for i, m in groups]
    return torch.cat(ids), torch.cat(masks)


@dataclass
class SynthesizedQueries:
    """What `synthesize_composed_queries` returns for this process's rows.

    Args:
        reference_embeds: (batch, dim) synthesised reference embeddings h*, or (batch, tokens, features) patch tokens.
        input_ids: (batch, seq) composed-query ids (prompt + image placeholder + w*), right-padded.
        attention_mask: (batch, seq).
        neighbor_indices: (batch,) each row's neighbour, an index into the global (gathered) batch.
    """

    reference_embeds: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    neighbor_indices: torch.Tensor


def synthesize_composed_queries(
    augmented_embeds: torch.Tensor,
    caption_ids: torch.Tensor,
    modification_template_ids: torch.Tensor,
    query_frame_ids: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    alpha: float = DEFAULT_SLERP_ALPHA,
    patch_features: torch.Tensor | None = None,
) -> SynthesizedQueries:
    """The in-step half of pair synthesis: global neighbours, Slerp, and composed-query token assembly.

    Under torch.distributed the neighbour search runs over the global batch (embeddings with gradients, ids and
    caption ids gathered from every process), so N processes give what one process gives on the concatenated
    batch.

    Args:
        augmented_embeds: (batch, dim) h' = f(t(v)) of this process's targets.
        caption_ids: (batch, caption_len) their caption ids (" " + caption), `PAD_SLOT`-padded.
        modification_template_ids: (batch, template_len) chosen templates (`template_token_ids`), padded.
        query_frame_ids: (batch, frame_len) composed-query frames with `TEXT_SLOT`s.
        image_ids: (batch,) integer target image ids (copies of one image are never neighbours).
        alpha: Slerp weight towards the neighbour.
        patch_features: (batch, tokens, features) the targets' patch tokens, for a model that feeds the reference as
            patch tokens: the synthesised reference is then their token-wise interpolation with the neighbour's
            (`slerp_tokens`); the neighbour is still chosen by the pooled embeddings h'.

    Returns:
        `SynthesizedQueries`.
    """
    all_embeds, offset = gather_rows(augmented_embeds)  # (global, dim)
    all_ids = None if image_ids is None else gather_rows(image_ids.to(augmented_embeds.device), with_grad=False)[0]
    all_captions, _ = gather_padded(caption_ids, PAD_SLOT)  # (global, caption_len)
    neighbors = nearest_neighbor_indices(all_embeds, all_ids)[offset : offset + augmented_embeds.shape[0]]  # (batch,)
    if patch_features is None:
        reference = slerp(augmented_embeds, all_embeds[neighbors], alpha)  # (batch, dim)
    else:
        all_patches, _ = gather_rows(patch_features)  # (global, tokens, features)
        reference = slerp_tokens(patch_features, all_patches[neighbors], alpha)  # (batch, tokens, features)
    input_ids, attention_mask = assemble_composed_queries(
        query_frame_ids, modification_template_ids, caption_ids, all_captions[neighbors.to(all_captions.device)]
    )
    return SynthesizedQueries(reference, input_ids, attention_mask, neighbors)


# ----------------------------------------------------------------------------------------------------------
# Augmentation t(v) of the target image
# ----------------------------------------------------------------------------------------------------------
@dataclass
class ImageAugmentation:
    """The augmentation family `t` applied to the target before encoding it as h' (the paper does not give it).

    Default: random resized crop (area 60-100 %, aspect 3/4-4/3) and horizontal flip (p = 0.5), applied to the
    processed `pixel_values` in one batched `grid_sample`. Colour jitter is off by default: the synthesised
    reference is described by the target's caption, so colour words ("a red car") must stay true. Geometric
    changes keep the caption valid while making h' differ from the target embedding z.
    """

    # Fraction of the image area kept by the random crop.
    crop_scale: tuple[float, float] = (0.6, 1.0)
    # Aspect ratio range of the crop (width / height), sampled log-uniformly.
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    # Probability of a horizontal flip.
    flip_probability: float = 0.5
    # Max relative contrast change (0 = off): each image is scaled around its own mean by 1 +/- contrast.
    contrast: float = 0.0

    def __call__(self, pixel_values: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        """Augment a batch of processed images.

        Args:
            pixel_values: (batch, channels, height, width).
            generator: one seeded `torch.Generator` for the batch, or a list of one per row (a row's
                augmentation then depends on its own generator only, not on the other rows of its batch).

        Returns:
            (batch, channels, height, width) augmented images.
        """
        batch = pixel_values.shape[0]
        low, high = self.crop_scale
        area = low + (high - low) * _uniform(batch, generator)
        log_ratio = math.log(self.crop_ratio[0]) + (
            math.log(self.crop_ratio[1]) - math.log(self.crop_ratio[0])
        ) * _uniform(batch, generator)
        ratio = log_ratio.exp()
        scale_x = (area * ratio).sqrt().clamp(max=1.0)  # crop width / image width
        scale_y = (area / ratio).sqrt().clamp(max=1.0)
        shift_x = (1 - scale_x) * (2 * _uniform(batch, generator) - 1)  # crop centre, in [-1, 1] units
        shift_y = (1 - scale_y) * (2 * _uniform(batch, generator) - 1)
        flip = torch.where(_uniform(batch, generator) < self.flip_probability, -1.0, 1.0)
        theta = torch.zeros(batch, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = scale_x * flip, shift_x
        theta[:, 1, 1], theta[:, 1, 2] = scale_y, shift_y
        theta = theta.to(pixel_values.device, pixel_values.dtype)
        grid = F.affine_grid(theta, list(pixel_values.shape), align_corners=False)  # (batch, H, W, 2)
        out = F.grid_sample(pixel_values, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.contrast > 0:
            factor = 1 + self.contrast * (2 * _uniform(batch, generator).view(batch, 1, 1, 1) - 1)
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = mean + (out - mean) * factor.to(out.device, out.dtype)
        return out


__all__ = [
    "MODIFICATION_TEMPLATES",
    "DEFAULT_MODIFICATION_RATE",
    "DEFAULT_SLERP_ALPHA",
    "KEEP_CAPTION",
    "TARGET_SLOT",
    "NEIGHBOR_SLOT",
    "TEXT_SLOT",
    "PAD_SLOT",
    "slerp",
    "nearest_neighbor_indices",
    "hash_ids",
    "sample_template_choices",
    "apply_template",
    "synthesize_modification_texts",
    "template_token_ids",
    "assemble_text_ids",
    "assemble_composed_queries",
    "synthesize_composed_queries",
    "concat_padded_queries",
    "SynthesizedQueries",
    "pad_id_lists",
    "ImageAugmentation",
]
