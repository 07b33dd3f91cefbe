"""Collators for the stock `Trainer`: dataset rows -> `CoLLMModel.forward` inputs (with `return_loss=True`).

- `CoLLMPairCollator`: image-caption pairs (`image_id`, `image`, `caption`) for pre-training with on-the-fly
  triplet synthesis. It draws every random choice of the synthesis (augmentation, template or not, which
  template), pre-tokenises captions and templates, and leaves the neighbour-dependent assembly to the model.
- `CoLLMTripletCollator`: triplets (`reference_id`, `target_id`, `modifications`) with images resolved by id
  through an images table (`image_id`, `image`), or PIL images in the rows; one modification text is sampled
  per row and step, and a target that the sampled text of another row (same reference) describes too is marked
  as no negative of that row (`query_keys`).

Both are dataclasses with named column fields (never a column order). Use them with
`TrainingArguments(remove_unused_columns=False)`.

Randomness: every random choice is drawn per row, from a `torch.Generator` seeded by (`seed`, `epoch`, the row's
key) (`row_generators`). The key is the row's `id` column when it has one, else its content (pairs: image id and
caption; triplets: reference id, target id and texts). So a row's synthesis does not depend on which batch or
which process it lands in: N processes with per-device batch b draw exactly what one process with batch N x b
draws, a run is reproducible, the choices do not depend on the number of dataloader workers, a resumed run draws
what the uninterrupted run drew, and each epoch draws anew. The epoch is the Trainer's: `CollatorEpochCallback`
sets `collator.epoch` at the start of each epoch (`CoLLMTrainer` adds it; with the stock `Trainer`, pass
`callbacks=[CollatorEpochCallback(collator)]`). Two rows with the same key draw the same choices.
"""

import hashlib
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback

from ..models.collm.image_io import to_rgb_image
from ..models.collm.losses import PAD_QUERY_KEY
from ..models.collm.synthesis import (
    DEFAULT_MODIFICATION_RATE,
    KEEP_CAPTION,
    MODIFICATION_TEMPLATES,
    TEXT_SLOT,
    ImageAugmentation,
    apply_template,
    assemble_text_ids,
    hash_ids,
    pad_id_lists,
    sample_template_choices,
    template_token_ids,
)


def row_generators(seed: int, epoch: int, keys: list, stream: str) -> list[torch.Generator]:
    """One `torch.Generator` per row, seeded from (seed, epoch, stream, row key): stable across batches, processes,
    dataloader workers and runs.

    Args:
        seed: base seed (the training seed).
        epoch: the training epoch (each epoch draws anew).
        keys: one key per row (strings or anything with a stable `str`).
        stream: what the draws are for ("augmentation", "template", "text"), so that adding a draw to one kind
            of choice leaves the others unchanged.

    Example:
        >>> [int(torch.randint(10, (1,), generator=g)) for g in row_generators(0, 0, ["a", "b"], "text")]  # doctest: +SKIP
    """
    generators = []
    for key in keys:
        digest = hashlib.blake2b(f"{seed}\x1f{epoch}\x1f{stream}\x1f{key}".encode(), digest_size=8).digest()
        generators.append(torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1)))
    return generators


class _EpochKeyed:
    """The `epoch` of a collator, kept in shared memory so that dataloader workers, persistent ones included, see
    the value the main process sets."""

    def __post_init__(self):
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()

    @property
    def epoch(self) -> int:
        """The training epoch that keys the random draws (set by `CollatorEpochCallback`)."""
        return int(self._epoch)

    @epoch.setter
    def epoch(self, value: int):
        self._epoch.fill_(int(value))


class CollatorEpochCallback(TrainerCallback):
    """Sets `collator.epoch` to the Trainer's epoch at the start of each epoch (the collators' random draws are
    keyed by it).

    Example:
        >>> Trainer(model, args, data_collator=collator, callbacks=[CollatorEpochCallback(collator)])  # doctest: +SKIP
    """

    def __init__(self, collator):
        self.collator = collator
        self._epoch = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._epoch = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        # The first epoch of a run is the number of whole epochs its state has done (a resumed run's state.epoch is
        # e.g. 1.5 in the middle of the second epoch); every later epoch follows the one before.
        self._epoch = math.floor(state.epoch or 0.0) if self._epoch is None else self._epoch + 1
        self.collator.epoch = self._epoch


class ImageTable:
    """Images by id: a dict {image_id: image} or a `datasets.Dataset` with `image_id` and `image` columns.

    A dataset is indexed once (its id column only); images are decoded on access.
    """

    def __init__(self, images, id_column: str = "image_id", image_column: str = "image"):
        self.images, self.image_column = images, image_column
        if isinstance(images, Mapping):
            self.index = None
        else:
            missing = [c for c in (id_column, image_column) if c not in images.column_names]
            if missing:
                raise ValueError(f"The images table lacks column(s) {missing}; it has {images.column_names}.")
            self.index = {str(image_id): row for row, image_id in enumerate(images[id_column])}

    def __contains__(self, image_id) -> bool:
        return str(image_id) in (self.images if self.index is None else self.index)

    def get(self, image_ids: list) -> list:
        """The images of `image_ids`, in order; KeyError naming the first unknown id."""
        keys = [str(i) for i in image_ids]
        unknown = [k for k in keys if k not in self]
        if unknown:
            raise KeyError(
                f"Image id {unknown[0]!r} is not in the images table ({len(unknown)} unknown in this batch)."
            )
        if self.index is None:
            return [self.images[k] for k in keys]
        return self.images[[self.index[k] for k in keys]][self.image_column]


class ParquetImageTable(ImageTable):
    """Images by id, read on demand from Parquet files: the images table of streamed training data, which is
    neither loaded nor cached as a whole.

    Up front only the id column of every file is read (no image bytes), sorted, and kept as one Arrow string array
    beside each id's row number: the id's length plus 12 bytes per image (about 4 MB for 200,000 ids of 9
    characters), found by binary search. An image is read with its Parquet row group the first time it is asked
    for; the last `cache_row_groups` groups read stay in memory as encoded bytes, so rows that share images (an
    MTCIR reference and its edits) read them once. The package's dataset writer stores 100 images per row group.
    Files are local paths or fsspec URLs (`hf://datasets/<repo>/...`, as `datasets` resolves a hub dataset's files).

    Args:
        files: the Parquet files of the images config (`collm_hf.training.trainer.parquet_files`).
        id_column / image_column: column names (images schema: image_id, image).
        cache_row_groups: row groups kept in memory.

    Example:
        >>> table = ParquetImageTable(parquet_files("data/mtcir", "images"))  # doctest: +SKIP
        >>> table.get(["000000123"])[0]  # doctest: +SKIP
        {'bytes': b'\\xff\\xd8...', 'path': '00000/000000123.jpg'}
    """

    MAX_OPEN_FILES = 16

    def __init__(self, files, id_column: str = "image_id", image_column: str = "image", cache_row_groups: int = 8):
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        self.files, self.id_column, self.image_column = [str(f) for f in files], id_column, image_column
        if not self.files:
            raise ValueError("The images table has no Parquet files.")
        if cache_row_groups < 1:
            raise ValueError(f"cache_row_groups must be >= 1, got {cache_row_groups}")
        self.cache_row_groups = cache_row_groups
        self._handles, self._groups = {}, {}
        chunks, group_rows, self._group_location = [], [], []
        for number, path in enumerate(self.files):
            parquet = self._file(number)
            names = parquet.schema_arrow.names
            missing = [c for c in (id_column, image_column) if c not in names]
            if missing:
                raise ValueError(f"{path}: the images table lacks column(s) {missing}; it has {names}.")
            chunks += pc.cast(parquet.read(columns=[id_column]).column(0), pa.string()).chunks
            for group in range(parquet.num_row_groups):
                group_rows.append(parquet.metadata.row_group(group).num_rows)
                self._group_location.append((number, group))
        ids = pa.chunked_array(chunks, type=pa.string()).combine_chunks()
        order = pc.sort_indices(ids)
        self._sorted_ids = ids.take(order)  # (images,) ids in byte order (= str order for UTF-8)
        self._rows = order.to_numpy()  # (images,) global row of each sorted id
        self._group_starts = np.cumsum([0] + group_rows[:-1])  # (row groups,) global row of each group's first row

    def __getstate__(self):  # dataloader workers reopen the files
        return {**self.__dict__, "_handles": {}, "_groups": {}}

    def _file(self, number: int):
        import pyarrow.parquet as pq

        if number not in self._handles:
            if len(self._handles) >= self.MAX_OPEN_FILES:
                self._handles.pop(next(iter(self._handles))).close()
            path = self.files[number]
            if "://" in path:
                import fsspec

                source = fsspec.open(path, "rb").open()
            else:
                source = path
            self._handles[number] = pq.ParquetFile(source)
        return self._handles[number]

    def _row(self, image_id: str) -> int | None:
        """The global row of `image_id` (binary search over the sorted ids), or None."""
        ids, low, high = self._sorted_ids, 0, len(self._sorted_ids)
        while low < high:
            middle = (low + high) // 2
            if ids[middle].as_py() < image_id:
                low = middle + 1
            else:
                high = middle
        return int(self._rows[low]) if low < len(ids) and ids[low].as_py() == image_id else None

    def _read(self, row: int):
        import numpy as np

        group = int(np.searchsorted(self._group_starts, row, side="right")) - 1
        column = self._groups.pop(group, None)
        if column is None:
            number, index = self._group_location[group]
            column = self._file(number).read_row_group(index, columns=[self.image_column]).column(0)
            if len(self._groups) >= self.cache_row_groups:
                self._groups.pop(next(iter(self._groups)))  # the least recently used
        self._groups[group] = column  # (re)inserted last: most recently used
        return column[row - int(self._group_starts[group])].as_py()

    def __contains__(self, image_id) -> bool:
        return self._row(str(image_id)) is not None

    def get(self, image_ids: list) -> list:
        """The images of `image_ids`, in order, as stored (`{"bytes", "path"}` dicts); KeyError naming the first
        unknown id."""
        keys = [str(i) for i in image_ids]
        rows = [self._row(k) for k in keys]
        unknown = [k for k, row in zip(keys, rows) if row is None]
        if unknown:
            raise KeyError(
                f"Image id {unknown[0]!r} is not in the images table ({len(unknown)} unknown in this batch)."
            )
        return [self._read(row) for row in rows]


def _as_table(images) -> ImageTable | None:
    if images is None or isinstance(images, ImageTable):
        return images
    return ImageTable(images)


def _text(row: dict, column: str, index: int) -> str:
    if column not in row:
        raise KeyError(f"Row {index} has no column {column!r}; it has {sorted(row)}.")
    value = row[column]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"Row {index}: column {column!r} must be a non-empty string, got {value!r}.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate crashes the tokenizer
        raise ValueError(f"Row {index}: column {column!r} is not valid Unicode ({error.reason}).") from error
    return value


def _image(row: dict, image_column: str, id_column: str | None, table: ImageTable | None, index: int):
    """A row's image: the PIL image in `image_column`, or its id resolved through the images table."""
    value = row.get(image_column)
    if value is None and table is not None and id_column in row:
        value = table.get([row[id_column]])[0]
    if value is None:
        raise ValueError(
            f"Row {index} has no image: column {image_column!r} is missing or empty and no images table "
            f"resolves column {id_column!r}."
        )
    return to_rgb_image(value, f"row {index} {image_column}")


def _row_key(row: dict, *content) -> str:
    """A row's key for its random draws: its `id` column, else the given content columns."""
    if row.get("id") is not None:
        return f"id\x1f{row['id']}"
    return "\x1f".join(["content", *map(str, content)])


@dataclass
class CoLLMPairCollator(_EpochKeyed):
    """Image-caption pairs -> pair pre-training inputs with on-the-fly triplet synthesis (CoLLM §3.2).

    Per row i the batch holds the clean target image (`target_pixel_values`, gives z), its augmentation t(v_i)
    (`pixel_values`, gives h'), the image-only query ids (`input_ids`), the text-only query ids of the target
    caption (`text_input_ids`), and what the model needs to assemble the composed query once it knows the
    neighbour: the caption ids, the chosen template's ids (`synthesis.template_token_ids`) and the query frame.

    Args:
        processor: the `CoLLMProcessor` of the model.
        image_column / caption_column / image_id_column: column names (pairs schema: image, caption, image_id).
            `image_id_column=None`: no duplicate detection.
        images: optional images table (dict or `datasets.Dataset` with image_id, image) for rows without images.
        modification_rate: share of samples whose text is a template over (target, neighbour) captions.
        augmentation: the family t (`synthesis.ImageAugmentation`); None = no augmentation.
        seed: base seed of every random choice. Each row draws from its own generator, seeded by (seed, epoch, the
            row's key: its `id` column, else its image id and caption); see the module docstring.
        check_tokenization: on the first batch, compare the piecewise token assembly with the processor on the
            whole string and warn if they differ.

    Example:
        >>> collator = CoLLMPairCollator(processor)  # doctest: +SKIP
        >>> batch = collator([{"image_id": "1", "image": img1, "caption": "a dog"}, ...])  # doctest: +SKIP
    """

    processor: Any
    image_column: str = "image"
    caption_column: str = "caption"
    image_id_column: str | None = "image_id"
    images: Any = None
    modification_rate: float = DEFAULT_MODIFICATION_RATE
    augmentation: ImageAugmentation | None = field(default_factory=ImageAugmentation)
    seed: int = 0
    check_tokenization: bool = True
    _templates: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.modification_rate <= 1.0:
            raise ValueError(f"modification_rate must be in [0, 1], got {self.modification_rate}")
        self.images = _as_table(self.images)

    def _tokenize(self, text: str) -> list[int]:
        return self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]

    def template_ids(self, choice: int) -> list[int]:
        """Token ids of template `choice` (cached), with caption slots."""
        if choice not in self._templates:
            self._templates[choice] = template_token_ids(self._tokenize, choice)
        return self._templates[choice]

    def __call__(self, features: list[dict]) -> dict:
        if not features:
            raise ValueError("CoLLMPairCollator got an empty batch.")
        processor, pieces = self.processor, self.processor.pieces
        captions = [_text(row, self.caption_column, i).strip() for i, row in enumerate(features)]
        ids = None
        if self.image_id_column is not None:
            missing = [i for i, row in enumerate(features) if self.image_id_column not in row]
            if missing:
                raise KeyError(
                    f"Row {missing[0]} has no column {self.image_id_column!r} (set image_id_column=None to skip)."
                )
            ids = [str(row[self.image_id_column]) for row in features]
        keys = [_row_key(row, *([ids[i]] if ids is not None else []), captions[i]) for i, row in enumerate(features)]
        images = [
            _image(row, self.image_column, self.image_id_column, self.images, i) for i, row in enumerate(features)
        ]
        target_pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]  # (batch, 3, H, W)
        if self.augmentation is not None:
            augmented = self.augmentation(  # (batch, 3, H, W)
                target_pixel_values, row_generators(self.seed, self.epoch, keys, "augmentation")
            )
        else:
            augmented = target_pixel_values.clone()

        # Captions tokenised once, as the processor tokenises a modification text (" " + text).
        capacity = processor.max_text_tokens
        tokenized = processor.tokenizer([" " + c for c in captions], add_special_tokens=False)["input_ids"]
        if any(len(c) > capacity for c in tokenized):
            warnings.warn(f"Captions longer than max_text_tokens={capacity} were truncated.", stacklevel=2)
        caption_ids = [c[:capacity] for c in tokenized]
        image_only = pieces["prefix"] + pieces["image"] + pieces["end"]
        text_only = [pieces["prefix"] + pieces["text"] + c + pieces["end"] for c in caption_ids]
        frame = pieces["prefix"] + pieces["image"] + pieces["text"] + [TEXT_SLOT] * capacity + pieces["end"]
        choices = sample_template_choices(
            len(features), self.modification_rate, row_generators(self.seed, self.epoch, keys, "template"),
            len(MODIFICATION_TEMPLATES),
        )
        templates = [self.template_ids(int(c)) for c in choices.tolist()]
        if self.check_tokenization:
            self._check_tokenization(captions, caption_ids, choices)

        image_queries = processor.pad_query_ids([image_only] * len(features))
        text_queries = processor.pad_query_ids(text_only)
        batch = {
            "input_ids": image_queries["input_ids"],  # (batch, seq) image-only queries (h* fills the placeholder)
            "attention_mask": image_queries["attention_mask"],
            "text_input_ids": text_queries["input_ids"],  # (batch, seq) text-only queries of the target captions
            "text_attention_mask": text_queries["attention_mask"],
            "caption_ids": pad_id_lists(caption_ids),  # (batch, caption_len)
            "modification_template_ids": pad_id_lists(templates),  # (batch, template_len)
            "query_frame_ids": pad_id_lists([frame] * len(features)),  # (batch, frame_len)
            "pixel_values": augmented,
            "target_pixel_values": target_pixel_values,
            "return_loss": True,
        }
        if ids is not None:
            batch["target_image_ids"] = hash_ids(ids)  # (batch,)
        return batch

    def _check_tokenization(self, captions: list[str], caption_ids: list[list[int]], choices: torch.Tensor):
        """Once: compare piecewise assembly with whole-string tokenisation (neighbour = next row, for the check)."""
        self.check_tokenization = False
        n, differ, checked = len(captions), 0, 0
        for i, choice in enumerate(choices.tolist()):
            j = (i + 1) % n
            probe = choice if choice != KEEP_CAPTION else i % len(MODIFICATION_TEMPLATES)
            expected = self._tokenize(" " + apply_template(probe, captions[i], captions[j]))
            differ += (
                assemble_text_ids(self.template_ids(probe), caption_ids[i], caption_ids[j])
                != expected[: self.processor.max_text_tokens]
            )
            checked += 1
        if differ:
            warnings.warn(
                f"Template assembly from token pieces differs from tokenising the whole text for {differ}/{checked} "
                "probes of the first batch (tokenizer merges across the piece borders); training still works, "
                "with slightly different token ids than CoLLMProcessor would give for the same string.",
                stacklevel=3,
            )


@dataclass
class CoLLMTripletCollator(_EpochKeyed):
    """Triplets -> composed queries and targets (fine-tuning, CoLLM §3.3).

    Each row has a reference and a target, as PIL images (`reference_image`, `target_image`) or as ids
    resolved through `images`, and one or several modification texts; one text is sampled per row and step.

    Args:
        processor: the `CoLLMProcessor` of the model.
        images: images table: dict {image_id: image} or `datasets.Dataset` (image_id, image); None when rows
            carry PIL images.
        reference_id_column / target_id_column: id columns (triplets schema: reference_id, target_id).
        reference_image_column / target_image_column: image columns used when present in a row.
        modifications_column: a list of strings (one is sampled) or a string.
        seed: base seed of the text sampling. Each row draws from its own generator, seeded by (seed, epoch, the
            row's key: its `id` column, else its reference id, target id and texts); see the module docstring.
        cache_pixels: keep each image id's processed pixels after its first batch (images given by id only), so
            an image read again skips decoding and the image processor. For small images read many times (the
            quickstart: 48 px, ~25 KB each); the cache grows with the distinct images seen.
        mask_shared_texts: add `query_keys` (batch,), a key per row of (reference id, sampled text), and
            `target_query_keys` (batch, texts), the keys of (reference id, each of the row's texts): a row's
            texts all describe its target, so where row i sampled a text that row j lists for the same reference,
            target j answers query i as well and the loss does not count it as i's negative
            (`losses.false_negative_mask`). MTCIR-style groups hold such rows: a loose text ("make the circle a
            different colour") fits every sibling edit of the circle's colour. Needs the reference id column.

    Example:
        >>> collator = CoLLMTripletCollator(processor, images=images_dataset)  # doctest: +SKIP
        >>> batch = collator([{"id": "0", "reference_id": "a", "target_id": "b", "modifications": ["make it red"]}])  # doctest: +SKIP
    """

    processor: Any
    images: Any = None
    reference_id_column: str = "reference_id"
    target_id_column: str = "target_id"
    reference_image_column: str = "reference_image"
    target_image_column: str = "target_image"
    modifications_column: str = "modifications"
    seed: int = 0
    cache_pixels: bool = False
    mask_shared_texts: bool = True

    def __post_init__(self):
        super().__post_init__()
        self.images = _as_table(self.images)
        self._pixels: dict = {}  # ("id", image_id) -> (3, H, W) processed pixels, when cache_pixels

    def _modifications(self, row: dict, index: int) -> list[str]:
        if self.modifications_column not in row:
            raise KeyError(f"Row {index} has no column {self.modifications_column!r}; it has {sorted(row)}.")
        texts = row[self.modifications_column]
        if isinstance(texts, str):
            texts = [texts]
        texts = [t for t in (texts or []) if isinstance(t, str) and t.strip()]
        if not texts:
            raise ValueError(f"Row {index} has no non-empty modification text in {self.modifications_column!r}.")
        return texts

    def _query_keys(self, features: list[dict], row_texts: list[list[str]], texts: list[str]) -> dict:
        """`query_keys` and `target_query_keys` (see `mask_shared_texts`); {} without reference ids."""
        if not self.mask_shared_texts or not all(self.reference_id_column in row for row in features):
            return {}
        references = [str(row[self.reference_id_column]) for row in features]
        key = lambda reference, text: f"{reference}\x1f{text.strip()}"
        answered = [hash_ids([key(reference, t) for t in own]).tolist() for reference, own in zip(references, row_texts)]
        return {"query_keys": hash_ids([key(r, t) for r, t in zip(references, texts)]),  # (batch,)
                "target_query_keys": pad_id_lists(answered, PAD_QUERY_KEY)}  # (batch, most texts of a row)

    def __call__(self, features: list[dict]) -> dict:
        if not features:
            raise ValueError("CoLLMTripletCollator got an empty batch.")
        row_texts = [self._modifications(row, i) for i, row in enumerate(features)]
        keys = [
            _row_key(row, row.get(self.reference_id_column), row.get(self.target_id_column), *own)
            for row, own in zip(features, row_texts)
        ]
        generators = row_generators(self.seed, self.epoch, keys, "text")
        texts = [own[int(torch.randint(len(own), (1,), generator=g))] for own, g in zip(row_texts, generators)]
        # Each distinct image is read and processed once: a reference serves all its edits (MTCIR groups).
        slots, distinct, index, to_read = {}, [], [], {}
        for image_column, id_column in ((self.reference_image_column, self.reference_id_column),
                                        (self.target_image_column, self.target_id_column)):
            for i, row in enumerate(features):
                value = row.get(image_column)
                key = ("id", str(row[id_column])) if value is None and id_column in row else ("object", id(value))
                if key not in slots:
                    slots[key] = len(distinct)
                    distinct.append(key)
                    if key not in self._pixels:
                        to_read[key] = _image(row, image_column, id_column, self.images, i)
                index.append(slots[key])
        fresh = {}
        if to_read:
            processed = self.processor.image_processor(list(to_read.values()), return_tensors="pt")["pixel_values"]
            fresh = dict(zip(to_read, processed))
            if self.cache_pixels:  # a PIL image in a row has no stable id: only ids are cached
                self._pixels.update((key, pixels) for key, pixels in fresh.items() if key[0] == "id")
        pixel_values = torch.stack([fresh[k] if k in fresh else self._pixels[k] for k in distinct])[torch.tensor(index)]
        queries = self.processor.queries(texts, with_image=True)
        n = len(features)
        batch = {
            "input_ids": queries["input_ids"],  # (batch, seq)
            "attention_mask": queries["attention_mask"],
            "pixel_values": pixel_values[:n],  # (batch, 3, H, W) reference images
            "target_pixel_values": pixel_values[n:],  # (batch, 3, H, W) target images
            "return_loss": True,
        }
        if all(self.target_id_column in row for row in features):
            batch["target_image_ids"] = hash_ids([row[self.target_id_column] for row in features])  # (batch,)
        batch.update(self._query_keys(features, row_texts, texts))
        return batch


__all__ = ["CoLLMPairCollator", "CoLLMTripletCollator", "CollatorEpochCallback", "ImageTable", "ParquetImageTable",
           "row_generators"]
