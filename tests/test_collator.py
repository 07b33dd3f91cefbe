"""Pair and triplet collators: schemas, image tables, seeding, and ids equal to the processor's."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from collm_hf.training.collators import CoLLMPairCollator, CoLLMTripletCollator, ImageTable
from collm_hf.models.collm.synthesis import (
    KEEP_CAPTION, MODIFICATION_TEMPLATES, PAD_SLOT, apply_template, hash_ids, nearest_neighbor_indices,
)

CAPTIONS = [
    "a red circle on the left", "a small blue square", "the dog is sitting on a wooden bench",
    "two yellow stars at the top", "a large purple cross", "a cyan ring on a white background",
]


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return {str(i): Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)) for i in range(6)}


def pair_rows(images):
    return [{"image_id": str(i), "image": images[str(i)], "caption": c} for i, c in enumerate(CAPTIONS)]


def test_pair_batch_layout_and_exact_ids(tiny_model_and_processor, images):
    _, processor = tiny_model_and_processor
    batch = CoLLMPairCollator(processor, seed=1)(pair_rows(images))
    assert batch["return_loss"] is True
    assert batch["pixel_values"].shape == batch["target_pixel_values"].shape == (6, 3, 32, 32)
    assert not torch.allclose(batch["pixel_values"], batch["target_pixel_values"])  # augmented
    assert torch.equal(batch["target_image_ids"], hash_ids([str(i) for i in range(6)]))
    image_only = processor.image_queries(list(images.values()))
    assert torch.equal(batch["input_ids"], image_only["input_ids"])
    text_only = processor(text=CAPTIONS)
    assert torch.equal(batch["text_input_ids"], text_only["input_ids"])
    assert torch.equal(batch["text_attention_mask"], text_only["attention_mask"])
    for row, caption in enumerate(CAPTIONS):
        ids = [t for t in batch["caption_ids"][row].tolist() if t != PAD_SLOT]
        assert ids == processor.tokenizer(" " + caption, add_special_tokens=False)["input_ids"]


def test_pair_collator_same_seed_same_batch(tiny_model_and_processor, images):
    _, processor = tiny_model_and_processor
    first = CoLLMPairCollator(processor, seed=3)(pair_rows(images))
    second = CoLLMPairCollator(processor, seed=3)(pair_rows(images))
    other = CoLLMPairCollator(processor, seed=4)(pair_rows(images))
    for key, value in first.items():
        assert torch.equal(value, second[key]) if isinstance(value, torch.Tensor) else value == second[key]
    assert not torch.equal(first["pixel_values"], other["pixel_values"])


def test_a_rows_draws_do_not_depend_on_its_batch(tiny_model_and_processor, images):
    """Per-row draws keyed by (seed, epoch, row): two half batches (two processes) draw what the whole batch draws."""
    _, processor = tiny_model_and_processor
    rows = pair_rows(images)
    collator = CoLLMPairCollator(processor, modification_rate=0.5, seed=3)
    whole = collator(rows)
    halves = [collator(rows[:2]), collator(rows[2:])]
    reordered = collator([rows[k] for k in (5, 0, 3)])
    chosen = lambda batch: [tuple(t for t in r if t != PAD_SLOT) for r in batch["modification_template_ids"].tolist()]
    assert torch.equal(torch.cat([h["pixel_values"] for h in halves]), whole["pixel_values"])
    assert chosen(halves[0]) + chosen(halves[1]) == chosen(whole)
    assert torch.equal(reordered["pixel_values"], whole["pixel_values"][[5, 0, 3]])
    assert chosen(reordered) == [chosen(whole)[k] for k in (5, 0, 3)]
    # An `id` column keys the row; without one, its content does (a row copied elsewhere draws the same).
    with_ids = collator([dict(r, id=f"row{k}") for k, r in enumerate(rows)])
    assert not torch.equal(with_ids["pixel_values"], whole["pixel_values"])

    triplets = CoLLMTripletCollator(processor, images=images, seed=5)
    many = [dict(r, id=f"{r['id']}-{k}") for k in range(4) for r in triplet_rows()]
    texts = lambda batch: [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert texts(triplets(many)) == [texts(triplets([row]))[0] for row in many]


def test_each_epoch_draws_anew_and_the_epoch_is_the_trainers(tiny_model_and_processor, images, tmp_path):
    from transformers import Trainer, TrainerState, TrainingArguments

    from collm_hf.training.collators import CollatorEpochCallback

    _, processor = tiny_model_and_processor
    collator = CoLLMPairCollator(processor, modification_rate=0.5, seed=3)
    first = collator(pair_rows(images))
    collator.epoch = 1
    second = collator(pair_rows(images))
    assert not torch.equal(first["pixel_values"], second["pixel_values"])
    collator.epoch = 0
    assert torch.equal(collator(pair_rows(images))["pixel_values"], first["pixel_values"])

    # The callback: a resumed run starts at the whole epochs its state has done; later epochs follow.
    callback, state = CollatorEpochCallback(collator), TrainerState(epoch=1.5)
    callback.on_train_begin(None, state, None)
    callback.on_epoch_begin(None, state, None)
    assert collator.epoch == 1
    callback.on_epoch_begin(None, state, None)
    assert collator.epoch == 2

    # Under the Trainer: 6 rows, batches of 3, 3 epochs; the model records the collator's epoch at each step.
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, **batch):
            seen.append(collator.epoch)
            return {"loss": (self.weight * batch["pixel_values"].mean()).sum()}

    args = TrainingArguments(tmp_path, use_cpu=True, per_device_train_batch_size=3, num_train_epochs=3,
                             remove_unused_columns=False, report_to="none", save_strategy="no")
    Trainer(model=Probe(), args=args, train_dataset=pair_rows(images), data_collator=collator,
            callbacks=[CollatorEpochCallback(collator)]).train()
    assert seen == [0, 0, 1, 1, 2, 2]


def test_persistent_dataloader_workers_see_the_epoch(tiny_model_and_processor, images):
    from torch.utils.data import DataLoader

    _, processor = tiny_model_and_processor
    collator = CoLLMPairCollator(processor, seed=3, check_tokenization=False)
    loader = DataLoader(pair_rows(images), batch_size=3, collate_fn=collator, num_workers=1, persistent_workers=True)
    epochs = []
    for epoch in (0, 1):
        collator.epoch = epoch
        epochs.append(torch.cat([batch["pixel_values"] for batch in loader]))
    for epoch, got in enumerate(epochs):
        collator.epoch = epoch
        assert torch.equal(got, collator(pair_rows(images))["pixel_values"])
    assert not torch.equal(epochs[0], epochs[1])


def test_pair_forward_assembles_the_processor_ids(tiny_model_and_processor, images):
    """The composed query the model builds inside the step is what the processor gives for the same string."""
    model, processor = tiny_model_and_processor
    collator = CoLLMPairCollator(processor, modification_rate=0.5, seed=0)
    batch = collator(pair_rows(images) + [{"image_id": "0", "image": images["0"], "caption": "a copy of image zero"}])
    inputs = model.prepare_contrastive_inputs(**{k: v for k, v in batch.items() if k != "return_loss"})
    assert inputs.num_groups == 3 and inputs.input_ids.shape[0] == 21 and inputs.image_embeds.shape[0] == 14
    templates = {tuple(collator.template_ids(c)): c for c in range(-1, 15)}
    neighbors = nearest_neighbor_indices(model.get_image_embeds(batch["pixel_values"]), batch["target_image_ids"])
    captions = CAPTIONS + ["a copy of image zero"]
    for row in range(7):
        template = tuple(t for t in batch["modification_template_ids"][row].tolist() if t != PAD_SLOT)
        text = apply_template(templates[template], captions[row], captions[int(neighbors[row])])
        expected, _ = processor.build_query_ids(text, with_image=True)
        composed = 14 + row
        assert inputs.input_ids[composed][inputs.attention_mask[composed].bool()].tolist() == expected
    assert neighbors[0] != 6 and neighbors[6] != 0  # the two copies of image "0"
    out = model(**batch)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.query_embeds.shape == (7, 24)


def test_pair_query_groups_embed_as_one_stacked_pass(tiny_model_and_processor, images):
    """`embed_query_groups` runs each pair query group trimmed to its own length: same embeddings as one pass."""
    model, processor = tiny_model_and_processor
    batch = CoLLMPairCollator(processor, modification_rate=1.0, seed=2)(pair_rows(images))
    with torch.no_grad():
        inputs = model.prepare_contrastive_inputs(**{k: v for k, v in batch.items() if k != "return_loss"})
        stacked = model.get_query_embeds(inputs.input_ids, inputs.attention_mask, image_embeds=inputs.image_embeds)
        grouped = model.embed_query_groups(inputs)
    lengths = inputs.attention_mask.sum(1).view(3, -1).max(1).values
    assert lengths[0] < lengths[2]  # image-only prompts are shorter than composed ones: there is padding to drop
    torch.testing.assert_close(grouped, stacked, atol=1e-5, rtol=0)


def test_pair_collator_rate_and_errors(tiny_model_and_processor, images):
    _, processor = tiny_model_and_processor
    always = CoLLMPairCollator(processor, modification_rate=1.0)(pair_rows(images))
    assert all(row[0] != KEEP_CAPTION for row in always["modification_template_ids"].tolist())
    never = CoLLMPairCollator(processor, modification_rate=0.0, augmentation=None)(pair_rows(images))
    assert torch.equal(never["pixel_values"], never["target_pixel_values"])
    assert len(MODIFICATION_TEMPLATES) == 15
    rows = pair_rows(images)
    rows[2]["caption"] = "  "
    with pytest.raises(ValueError, match="Row 2.*caption"):
        CoLLMPairCollator(processor)(rows)
    with pytest.raises(ValueError, match="modification_rate"):
        CoLLMPairCollator(processor, modification_rate=2.0)


def test_image_table_from_dict_and_dataset(images):
    dataset = datasets.Dataset.from_dict(
        {"image_id": list(images), "image": list(images.values())}, features=datasets.Features(
            {"image_id": datasets.Value("string"), "image": datasets.Image()})
    )
    for table in (ImageTable(images), ImageTable(dataset)):
        got = table.get(["3", "1"])
        assert np.array_equal(np.asarray(got[0]), np.asarray(images["3"]))
        with pytest.raises(KeyError, match="'nope'"):
            table.get(["1", "nope"])
    with pytest.raises(ValueError, match="lacks column"):
        ImageTable(dataset.rename_column("image_id", "id"))


def triplet_rows():
    return [
        {"id": str(i), "reference_id": str(i), "target_id": str((i + 1) % 6),
         "modifications": [f"make it red {i}", f"add a dog {i}", f"remove the star {i}"]}
        for i in range(6)
    ]


def test_triplet_collator_resolves_ids_and_samples_texts(tiny_model_and_processor, images):
    _, processor = tiny_model_and_processor
    collator = CoLLMTripletCollator(processor, images=images, seed=5)
    batch = collator(triplet_rows())
    assert batch["return_loss"] is True
    references = processor.image_processor([images[str(i)] for i in range(6)], return_tensors="pt")["pixel_values"]
    targets = processor.image_processor([images[str((i + 1) % 6)] for i in range(6)], return_tensors="pt")["pixel_values"]
    assert torch.equal(batch["pixel_values"], references) and torch.equal(batch["target_pixel_values"], targets)
    assert torch.equal(batch["target_image_ids"], hash_ids([str((i + 1) % 6) for i in range(6)]))
    # Each row's query is the processor's query of one of that row's texts.
    for row, triplet in enumerate(triplet_rows()):
        got = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        options = [processor.build_query_ids(t, with_image=True)[0] for t in triplet["modifications"]]
        assert got in options
    # Same seed, same triplets; over many rows every text gets sampled.
    again = CoLLMTripletCollator(processor, images=images, seed=5)(triplet_rows())
    assert torch.equal(again["input_ids"], batch["input_ids"])
    many = [dict(r, id=f"{r['id']}-{k}") for k in range(20) for r in triplet_rows()[:1]]
    texts = {tuple(row) for row in CoLLMTripletCollator(processor, images=images)(many)["input_ids"].tolist()}
    assert len(texts) == 3


def test_triplet_collator_reads_each_image_once(tiny_model_and_processor, images):
    _, processor = tiny_model_and_processor
    rows = [dict(row, reference_id="0") for row in triplet_rows()]  # one reference, six edits (an MTCIR group)
    calls = []
    image_processor = processor.image_processor

    class Counting:
        def __call__(self, batch, **kwargs):
            calls.append(len(batch))
            return image_processor(batch, **kwargs)

    processor.image_processor = Counting()
    try:
        batch = CoLLMTripletCollator(processor, images=images)(rows)
    finally:
        processor.image_processor = image_processor
    assert calls == [6]  # "0" once (reference and a target), targets "1"-"5"
    expected = image_processor([images["0"]] * 6 + [images[str((i + 1) % 6)] for i in range(6)], return_tensors="pt")
    assert torch.equal(torch.cat([batch["pixel_values"], batch["target_pixel_values"]]), expected["pixel_values"])


def test_triplet_collator_cache_pixels_keeps_ids_only(tiny_model_and_processor, images):
    _, processor = tiny_model_and_processor
    image_processor, calls = processor.image_processor, []

    class Counting:
        def __call__(self, batch, **kwargs):
            calls.append(len(batch))
            return image_processor(batch, **kwargs)

    rows = triplet_rows()  # references "0"-"5", targets "1"-"5" and "0"
    pil_row = {"reference_image": images["2"], "target_image": images["3"], "modifications": "add a cat"}
    plain = CoLLMTripletCollator(processor, images=images)
    cached = CoLLMTripletCollator(processor, images=images, cache_pixels=True)
    processor.image_processor = Counting()
    try:
        first, second = cached(rows[:3]), cached(rows)
        with_pil = cached([pil_row]), cached([pil_row])
    finally:
        processor.image_processor = image_processor
    # rows[:3] read "0"-"3"; the whole batch then reads only "4" and "5"; a row's own PIL images are never kept.
    assert calls == [4, 2, 2, 2]
    assert sorted(cached._pixels) == [("id", str(i)) for i in range(6)]
    for batch, expected in ((first, plain(rows[:3])), (second, plain(rows)), (with_pil[1], plain([pil_row]))):
        for key in ("pixel_values", "target_pixel_values", "input_ids"):
            assert torch.equal(batch[key], expected[key]), key
    assert plain._pixels == {}  # off by default


def test_triplet_collator_marks_targets_that_answer_another_rows_text(tiny_model_and_processor, images):
    from collm_hf.models.collm.losses import false_negative_mask

    _, processor = tiny_model_and_processor
    # One reference, three edits: the loose text fits edits 1 and 2; edit 0 is something else. A second reference's
    # row lists the same loose text: another reference, so never a valid answer of the first group's queries.
    loose = "make the circle a different colour"
    rows = [{"id": "a0", "reference_id": "0", "target_id": "1", "modifications": ["add a dog"]},
            {"id": "a1", "reference_id": "0", "target_id": "2", "modifications": [loose]},
            {"id": "a2", "reference_id": "0", "target_id": "3", "modifications": ["make the circle red ", loose]},
            {"id": "b0", "reference_id": "4", "target_id": "5", "modifications": [loose]}]
    seen = set()
    for seed in range(8):
        batch = CoLLMTripletCollator(processor, images=images, seed=seed)(rows)
        drawn_loose = batch["input_ids"][2].tolist() == batch["input_ids"][1].tolist()
        seen.add(drawn_loose)
        assert batch["target_query_keys"].shape == (4, 2)
        mask = false_negative_mask(None, 4, None, batch["query_keys"], batch["target_query_keys"])
        expected = {(1, 2)} | ({(2, 1)} if drawn_loose else set())
        assert {(i, j) for i in range(4) for j in range(4) if mask[i, j]} == expected
    assert seen == {True, False}  # row 2 drew each of its texts under some seed
    # Off, or without reference ids, the batch carries no keys (and the query texts are drawn as before).
    off = CoLLMTripletCollator(processor, images=images, seed=0, mask_shared_texts=False)(rows)
    assert "query_keys" not in off and "target_query_keys" not in off
    assert torch.equal(off["input_ids"], CoLLMTripletCollator(processor, images=images, seed=0)(rows)["input_ids"])
    pil = [{"reference_image": images["0"], "target_image": images["1"], "modifications": loose}]
    assert "query_keys" not in CoLLMTripletCollator(processor)(pil)


def test_triplet_collator_pil_rows_single_text_and_errors(tiny_model_and_processor, images):
    _, processor = tiny_model_and_processor
    rows = [{"reference_image": images["0"], "target_image": images["1"], "modifications": "make it blue"},
            {"reference_image": images["2"], "target_image": images["3"], "modifications": "add a cat"}]
    batch = CoLLMTripletCollator(processor)(rows)
    expected = processor(images=[images["0"], images["2"]], text=["make it blue", "add a cat"])
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert "target_image_ids" not in batch
    with pytest.raises(ValueError, match="Row 0 has no image"):
        CoLLMTripletCollator(processor)(triplet_rows())
    with pytest.raises(KeyError, match="'9'"):
        CoLLMTripletCollator(processor, images=images)([dict(triplet_rows()[0], target_id="9")])
    with pytest.raises(ValueError, match="no non-empty modification"):
        CoLLMTripletCollator(processor, images=images)([dict(triplet_rows()[0], modifications=[])])


def _cross_word_tokenizer():
    """A BPE whose merges span spaces (no whitespace pre-split): piecewise ids cannot equal whole-string ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    corpus = [f"show {a} instead of {b}" for a in CAPTIONS for b in CAPTIONS] * 3
    tokenizer.train_from_iterator(corpus, trainer=trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_tokenization_check_warns_only_when_pieces_differ(tiny_model_and_processor, images):
    import copy
    import warnings

    _, processor = tiny_model_and_processor
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # byte-level BPE: pieces are exact, no warning
        CoLLMPairCollator(processor, modification_rate=1.0)(pair_rows(images))
    other = copy.deepcopy(processor)
    other.tokenizer, other._pieces = _cross_word_tokenizer(), None
    collator = CoLLMPairCollator(other, modification_rate=1.0)
    with pytest.warns(UserWarning, match="differs from tokenising the whole text"):
        collator(pair_rows(images))
    assert collator.check_tokenization is False  # checked once
