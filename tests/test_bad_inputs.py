"""The bad-input battery: every public entry point, fed what real data and real users feed it.

Each case either works correctly (modes converted, long text truncated with a warning, K clipped) or raises a
clear exception naming the offending item (file, row, column, id or argument) - never a crash deep inside
torch/PIL/tokenizers, never a silent wrong result. Handling is general: the image cases run through one
decoder (`image_io`), and random byte corruptions of seven formats and a mutation fuzzer over every dataset
builder's annotation files check that no other exception type escapes.

| Entry point | Case | Outcome |
|---|---|---|
| image_io.open_image | zero-byte, text named .jpg, truncated JPEG/PNG, corrupt PNG, directory, missing | ImageReadError naming the file |
| image_io.open_image | decompression bomb (20000x20000 1-bit PNG, 48 kB) | ImageReadError from the header, before decoding, even with PIL's limit off |
| image_io.open_image | ~250 random corruptions of JPEG/PNG/GIF/BMP/TIFF/WEBP/TGA | an RGB image or ImageReadError, nothing else |
| image_io / processor | 1x1, 16-bit grey, 32-bit, float, CMYK, YCbCr, LAB, palette (+transparency), 1-bit, LA, La, RGBA, RGBa, PA | converted to RGB (transparency on white), right size |
| image_io / processor | EXIF orientation 6 | rotated (W, H swapped) |
| image_io / processor | 0-pixel image, float numpy, 2-channel numpy, tensor, str | ImageReadError naming images[i] |
| processor | None where an image belongs | ValueError naming images[i] |
| processor | empty / whitespace text | ValueError naming text[i] |
| processor | 10,000-character text | truncated to max_text_tokens, with a warning naming the row |
| processor | non-string text (int, None, bytes, list), lone surrogate | TypeError / ValueError naming text[i] |
| processor | mismatched images/texts lengths, empty list | ValueError with both counts |
| query_encoder.CoLLMQueryEncoder.encode | empty / non-string / None-without-image texts, lone surrogate, count mismatch, None or junk image, NaN or mis-sized image_embeds, nothing | ValueError / ImageReadError naming texts[i] / images[i] (the surrogate crashed in the tokenizer) |
| query_encoder | 10,000-character text | truncated, with a warning |
| model | image placeholders vs images mismatch; image_embeds wrong dim / NaN / inf; 3-D pixel_values; list input | ValueError saying what is wrong |
| model | return_loss without targets; targets and queries of different batch sizes | ValueError |
| model | 1-channel, uint8, NaN or empty pixel_values, float/1-D input_ids, all-zero attention mask, NaN or wrong-width target_image_embeds | ValueError naming the input (collm_hf/input_checks.py) |
| collators | unknown image id, missing column, empty/None caption or modification, corrupt image bytes, None image, empty batch, one-image pair batch | KeyError / ValueError / ImageReadError naming the row or id |
| collators | 10,000-character caption / modification | truncated, with a warning |
| collators | caption with a lone surrogate | ValueError naming the row and column (crashed in the tokenizer) |
| metric (plain functions and evaluate.load) | duplicate ids in a ranking, empty or None target, K < 1 or not int, mismatched lengths, non-id types, CIRR subset member missing, unknown protocol | ValueError / TypeError naming the query or argument |
| metric | K larger than the ranking / gallery | works: recall@K counts what is ranked |
| index | duplicate gallery ids, NaN/inf gallery or query embeddings, wrong query shape, k < 1, malformed exclude_ids, ids/embeddings count mismatch, empty gallery | ValueError / TypeError naming the id or shape |
| index | K larger than the gallery | works: the whole gallery, best first |
| search.GallerySearcher.search | no query, blank text, k < 1, a string as exclude_ids, missing or junk image, non-string text | SearchInputError / ImageReadError / ValueError naming it (a string exclude_ids silently excluded its characters) |
| evaluation.rank_benchmark | a target id missing from the gallery | ValueError naming the query and target (was a silent zero recall) |
| index | folder with a truncated embeddings file, ids not matching the embeddings, missing file | error naming the file, never a silently wrong index |
| dataset builders | annotation file truncated, empty, not UTF-8, wrong top-level type; any key deleted or set to null/number/bool/list/dict/""/lone surrogate/10,000 chars/"../.." | DatasetBuildError / DatasetWriteError naming the file or entry, or a valid build; never another exception |
| dataset builders | image path with ".." | refused ("outside the images folder"), never read |
| data.local_images.attach_images | a published annotation-only dataset with absolute or ".." image paths | ValueError naming the path, never resolved outside the folder |
| dataset builders | duplicate ids, target missing from the gallery, missing or corrupt images | DatasetBuildError listing every offending item; nothing written |
| dataset builders | null / bool / list / dict ids, null or non-string captions, empty modifications | DatasetBuildError naming the entry and key (was written as "None" / null) |
| CLI | missing source folder, malformed annotations, missing model/index, -k 0 | exit status != 0 and one "error:" line naming it, no traceback |
| from_pretrained | pickle-only checkpoint (model or vision backbone), missing / extra / NaN weights, unknown model_type, no config.json, truncated safetensors; processor folder with a corrupt JSON file | UnsafeWeightsError / MissingWeightsError / OSError naming it, warnings for extra and NaN weights: tests/test_safe_loading.py |

Accepted as they are (documented): an integer id becomes its string (ids are strings everywhere); optional
fields the benchmarks leave empty (CIRR test `target_hard`, CIRCO `shared_concept`) are written as given.
"""

import io
import json
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from collm_hf.models.collm.image_io import ImageReadError, open_image, to_rgb_image

RNG = np.random.default_rng(0)


def _rgb(height=30, width=40, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def _encoded(image, fmt="PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


# ==============================================================================================================
# Image files
# ==============================================================================================================
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_images")
    jpeg, png = _encoded(_rgb(), "JPEG"), _encoded(_rgb())
    files = {
        "zero.jpg": b"",
        "text.jpg": b"this is a caption file, not a picture\n",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "corrupt.png": png[:60] + b"\xff" * 40 + png[100:],
        "html.png": b"<html><body>404 Not Found</body></html>",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    Image.new("1", (20000, 20000)).save(folder / "bomb.png", optimize=True)  # 400 MP, ~48 kB
    (folder / "directory.jpg").mkdir()
    return folder


@pytest.mark.parametrize("name", ["zero.jpg", "text.jpg", "truncated.jpg", "truncated.png", "corrupt.png",
                                  "html.png", "bomb.png", "directory.jpg", "missing.jpg"])
def test_unreadable_image_files_name_the_file(bad_files, name):
    with pytest.raises(ImageReadError, match=name):
        open_image(bad_files / name)


def test_bomb_refused_even_with_pil_limit_disabled(bad_files, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # what many training scripts do
    with pytest.raises(ImageReadError, match="decompression bomb"):
        open_image(bad_files / "bomb.png")


def test_random_corruptions_never_escape_as_other_errors():
    base = _rgb(12, 16)
    formats = {fmt: _encoded(base, fmt) for fmt in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "TGA")}
    rng = random.Random(0)
    outcomes = {"ok": 0, "error": 0}
    for fmt, data in formats.items():
        for trial in range(36):
            corrupted = bytearray(data)
            if trial % 3 == 0:
                corrupted = corrupted[: rng.randrange(len(corrupted))]
            elif trial % 3 == 1:
                for _ in range(rng.randint(1, 8)):
                    corrupted[rng.randrange(len(corrupted))] = rng.randrange(256)
            else:
                at = rng.randrange(len(corrupted))
                corrupted[at:at + rng.randint(1, 40)] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
            try:
                image = open_image(io.BytesIO(bytes(corrupted)), f"{fmt}-{trial}")
            except ImageReadError as error:
                assert f"{fmt}-{trial}" in str(error)
                outcomes["error"] += 1
            else:
                assert image.mode == "RGB" and min(image.size) >= 1
                outcomes["ok"] += 1
    assert outcomes["error"] > 50  # the fuzzer does break files


# ==============================================================================================================
# Image modes, through image_io and through the processor
# ==============================================================================================================
def _exif_rotated() -> Image.Image:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    return Image.open(io.BytesIO(_encoded(image, "JPEG", exif=exif)))


def _transparent_palette() -> Image.Image:
    image = Image.new("P", (6, 5), 0)
    image.putpalette([0, 0, 0] * 256)
    image.info["transparency"] = 0
    return image


MODE_CASES = {
    "1x1": (lambda: Image.new("RGB", (1, 1), (9, 9, 9)), (1, 1), (9, 9, 9)),
    "16-bit": (lambda: Image.fromarray(np.full((5, 6), 65535, np.uint16)), (6, 5), (255, 255, 255)),
    "16-bit-png": (lambda: Image.open(io.BytesIO(_encoded(Image.fromarray(np.full((5, 6), 32768, np.uint16))))),
                   (6, 5), (127, 127, 127)),
    "32-bit": (lambda: Image.new("I", (6, 5), 70000), (6, 5), (255, 255, 255)),
    "float": (lambda: Image.new("F", (6, 5), 1.0), (6, 5), (255, 255, 255)),
    "CMYK": (lambda: Image.new("CMYK", (6, 5), (0, 255, 255, 0)), (6, 5), (255, 0, 0)),
    "CMYK-jpeg": (lambda: Image.open(io.BytesIO(_encoded(Image.new("CMYK", (6, 5), (0, 0, 0, 0)), "JPEG"))),
                  (6, 5), None),
    "YCbCr": (lambda: Image.new("YCbCr", (6, 5)), (6, 5), None),
    "LAB": (lambda: Image.new("LAB", (6, 5)), (6, 5), None),
    "palette": (lambda: Image.new("RGB", (6, 5), (0, 0, 255)).convert("P"), (6, 5), (0, 0, 255)),
    "palette-transparent": (_transparent_palette, (6, 5), (255, 255, 255)),
    "1-bit": (lambda: Image.new("1", (6, 5), 1), (6, 5), (255, 255, 255)),
    "LA": (lambda: Image.new("LA", (6, 5), (0, 0)), (6, 5), (255, 255, 255)),
    "La": (lambda: Image.new("La", (6, 5), (0, 255)), (6, 5), (0, 0, 0)),
    "RGBA": (lambda: Image.new("RGBA", (6, 5), (255, 0, 0, 0)), (6, 5), (255, 255, 255)),
    "RGBa": (lambda: Image.new("RGBa", (6, 5), (0, 255, 0, 255)), (6, 5), (0, 255, 0)),
    "PA": (lambda: Image.new("PA", (6, 5)), (6, 5), None),
    "EXIF-rotation": (_exif_rotated, (20, 40), None),
    "numpy-uint8": (lambda: np.zeros((5, 6, 3), np.uint8), (6, 5), (0, 0, 0)),
    "numpy-grey": (lambda: np.full((5, 6, 1), 7, np.uint8), (6, 5), (7, 7, 7)),
    "encoded-bytes": (lambda: _encoded(Image.new("RGB", (6, 5), (1, 2, 3))), (6, 5), (1, 2, 3)),
    "datasets-dict": (lambda: {"bytes": _encoded(Image.new("RGB", (6, 5), (1, 2, 3))), "path": "x.png"},
                      (6, 5), (1, 2, 3)),
}


@pytest.mark.parametrize("case", list(MODE_CASES))
def test_image_modes_are_converted(case):
    make, size, pixel = MODE_CASES[case]
    image = to_rgb_image(make(), case)
    assert image.mode == "RGB" and image.size == size
    if pixel is not None:
        assert image.getpixel((0, 0)) == pixel


def test_processor_takes_every_mode(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    images = [make() for make, _, _ in MODE_CASES.values()]
    out = processor(images=images, text=["make it blue"] * len(images))
    assert out["pixel_values"].shape == (len(images), 3, 32, 32)
    assert torch.isfinite(out["pixel_values"]).all()


@pytest.mark.parametrize(
    "image,match",
    [(Image.new("RGB", (0, 5)), "no pixels"), (np.zeros((4, 4, 3), np.float32), "uint8"),
     (np.zeros((4, 4, 2), np.uint8), "uint8"), (torch.zeros(3, 4, 4), "Tensor"), ("photo.jpg", "open_image"),
     (b"not an image", "cannot read"), ({"bytes": None, "path": None}, "neither")],
)
def test_processor_rejects_non_images_naming_them(tiny_model_and_processor, image, match):
    _, processor = tiny_model_and_processor
    with pytest.raises(ImageReadError, match=rf"images\[1\].*{match}|images\[1\]"):
        processor(images=[_rgb(), image], text=["a", "b"])
    with pytest.raises(ImageReadError, match=match):
        processor(images=[_rgb(), image], text=["a", "b"])


# ==============================================================================================================
# Processor text and batch shape
# ==============================================================================================================
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"images": [_rgb(), None], "text": ["a", "b"]}, ValueError, r"images\[1\] is None"),
        ({"text": ["ok", ""]}, ValueError, r"text\[1\] is empty"),
        ({"text": ["ok", " \n\t "]}, ValueError, r"text\[1\] is empty"),
        ({"text": ["ok", 5]}, TypeError, r"text\[1\] must be a string"),
        ({"text": ["ok", None]}, TypeError, r"text\[1\] must be a string"),
        ({"text": ["ok", b"bytes"]}, TypeError, r"text\[1\] must be a string"),
        ({"text": ["ok", ["nested"]]}, TypeError, r"text\[1\] must be a string"),
        ({"text": ["ok", "bad \ud800 surrogate"]}, ValueError, r"text\[1\] is not valid Unicode"),
        ({"images": [_rgb(), _rgb()], "text": ["only one"]}, ValueError, "2 images but 1 texts"),
        ({"images": [_rgb()], "text": ["a", "b"]}, ValueError, "1 images but 2 texts"),
        ({"text": []}, ValueError, "empty list"),
        ({"images": []}, ValueError, "empty list"),
        ({}, ValueError, "needs images, text"),
    ],
)
def test_processor_bad_inputs(tiny_model_and_processor, kwargs, error, match):
    _, processor = tiny_model_and_processor
    with pytest.raises(error, match=match):
        processor(**kwargs)


def test_processor_image_queries_none(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    with pytest.raises(ValueError, match=r"images\[0\] is None"):
        processor.image_queries([None])


def test_long_text_is_truncated_with_a_warning(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    long_text = ("make it red and blue " * 500)[:10_000]
    assert len(long_text) == 10_000
    with pytest.warns(UserWarning, match=r"\[1\].*truncated"):
        out = processor(images=[_rgb(), _rgb()], text=["short", long_text])
    short_len = int(out["attention_mask"][0].sum())
    long_len = int(out["attention_mask"][1].sum())
    assert long_len <= short_len + processor.max_text_tokens
    assert out["input_ids"][1, long_len - 1].item() == processor.pieces["end"][-1]  # end token kept
    with torch.no_grad():
        embeds = model.get_query_embeds(**out)
    assert torch.isfinite(embeds).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [({"texts": ["ok", ""]}, r"texts\[1\] must be a non-empty string"), ({"texts": ["ok", 5]}, r"texts\[1\]"),
     ({"texts": [None]}, r"texts\[0\] is None and no image"), ({"texts": ["a \ud800"]}, "not valid Unicode"),
     ({"texts": ["a", "b"], "images": [_rgb()]}, "one entry per query"),
     ({"texts": ["a"], "images": [None]}, r"images\[0\] is None"),
     ({"texts": ["a"], "images": [b"junk"]}, r"images\[0\]"),
     ({"texts": ["a"], "image_embeds": torch.full((1, 24), float("nan"))}, "NaN or infinite"),
     ({"texts": ["a"], "image_embeds": torch.randn(1, 7)}, "image_embeds must be"),
     ({}, "needs texts, images or image_embeds")],
)
def test_fast_query_encoder_bad_inputs(tiny_model_and_processor, kwargs, match):
    from collm_hf.models.collm.query_encoder import CoLLMQueryEncoder

    model, processor = tiny_model_and_processor
    with pytest.raises(ValueError, match=match):
        CoLLMQueryEncoder(model, processor).encode(**kwargs)


def test_fast_query_encoder_long_text_warns(tiny_model_and_processor):
    from collm_hf.models.collm.query_encoder import CoLLMQueryEncoder

    model, processor = tiny_model_and_processor
    with pytest.warns(UserWarning, match="truncated"):
        embeds = CoLLMQueryEncoder(model, processor).encode(texts=["short", "red " * 2500])
    assert embeds.shape == (2, 24) and torch.isfinite(embeds).all()


# ==============================================================================================================
# Model methods
# ==============================================================================================================
@pytest.fixture
def model_inputs(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    return model, dict(processor(images=[_rgb()], text=["make it red"]))


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda q: {**q, "pixel_values": None}, "1 queries have an image placeholder but 0 images"),
        (lambda q: {**q, "pixel_values": torch.randn(2, 3, 32, 32)}, "but 2 images"),
        (lambda q: {**q, "pixel_values": torch.randn(3, 32, 32)}, "4-D tensor"),
        (lambda q: {**q, "pixel_values": [[0.0]]}, "4-D tensor"),
        (lambda q: {**q, "pixel_values": None, "image_embeds": torch.randn(1, 7)}, r"image_embeds must be \(images, 24\)"),
        (lambda q: {**q, "pixel_values": None, "image_embeds": torch.full((1, 24), float("nan"))}, "NaN or infinite"),
        (lambda q: {**q, "pixel_values": None, "image_embeds": torch.full((1, 24), float("inf"))}, "NaN or infinite"),
        (lambda q: {**q, "attention_mask": q["attention_mask"][:, :-1]}, "differ"),
        (lambda q: {**q, "input_ids": None}, "needs input_ids"),
    ],
)
def test_model_query_bad_inputs(model_inputs, change, match):
    model, inputs = model_inputs
    with pytest.raises(ValueError, match=match):
        model.get_query_embeds(**change(inputs))


def test_model_forward_loss_needs_matching_targets(model_inputs):
    model, inputs = model_inputs
    with pytest.raises(ValueError, match="needs target"):
        model(**inputs, return_loss=True)
    with pytest.raises(ValueError, match=r"\(1, 24\).*\(3, 24\)"):
        model(**inputs, target_image_embeds=torch.randn(3, 24), return_loss=True)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda m, q: m.get_image_embeds(torch.randn(1, 1, 32, 32)), id="1-channel-pixels"),
        pytest.param(lambda m, q: m.get_image_embeds(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)), id="uint8-pixels"),
        pytest.param(lambda m, q: m.get_image_embeds(torch.full((1, 3, 32, 32), float("nan"))), id="nan-pixels"),
        pytest.param(lambda m, q: m.get_image_embeds(torch.randn(0, 3, 32, 32)), id="empty-batch"),
        pytest.param(lambda m, q: m.get_query_embeds(q["input_ids"].float(), q["attention_mask"], q["pixel_values"]),
                     id="float-input-ids"),
        pytest.param(lambda m, q: m.get_query_embeds(q["input_ids"][0], q["attention_mask"][0], q["pixel_values"]),
                     id="1-D-input-ids"),
        pytest.param(lambda m, q: m.get_query_embeds(q["input_ids"], torch.zeros_like(q["attention_mask"]),
                                                     q["pixel_values"]), id="all-zero-mask"),
        pytest.param(lambda m, q: m(**q, target_image_embeds=torch.full((1, 24), float("nan")), return_loss=True),
                     id="nan-target-embeds"),
        pytest.param(lambda m, q: m(**q, target_image_embeds=torch.randn(1, 7), return_loss=True), id="wrong-dim-targets"),
    ],
)
def test_model_rejects_bad_tensors(model_inputs, call):
    """Each of these raises a ValueError saying what is wrong (never a crash deep in torch, never silence)."""
    model, inputs = model_inputs
    with pytest.raises(ValueError, match="pixel_values|input_ids|attention_mask|target_image_embeds"):
        call(model, inputs)


# ==============================================================================================================
# Collators
# ==============================================================================================================
def _pair_rows(n=3):
    return [{"image_id": str(i), "image": _rgb(seed=i), "caption": f"a red square number {i}"} for i in range(n)]


@pytest.mark.parametrize(
    "mutate,error,match",
    [
        (lambda rows: rows[1].update(caption=""), ValueError, r"Row 1: column 'caption'"),
        (lambda rows: rows[1].update(caption=None), ValueError, r"Row 1: column 'caption'"),
        (lambda rows: rows[1].update(caption=7), ValueError, r"Row 1: column 'caption'"),
        (lambda rows: rows[1].update(caption="bad \ud800"), ValueError, r"Row 1: column 'caption' is not valid Unicode"),
        (lambda rows: rows[1].pop("caption"), KeyError, r"Row 1 has no column 'caption'"),
        (lambda rows: rows[1].update(image=None), ValueError, r"Row 1 has no image"),
        (lambda rows: rows[1].update(image=b"corrupt bytes"), ImageReadError, r"row 1 image"),
        (lambda rows: rows[1].update(image=np.zeros((4, 4), np.float64)), ImageReadError, r"row 1 image"),
        (lambda rows: rows[1].pop("image_id"), KeyError, r"Row 1 has no column 'image_id'"),
        (lambda rows: rows.__setitem__(slice(None), rows[:1]), ValueError, "no neighbour"),
        (lambda rows: rows.clear(), ValueError, "empty batch"),
    ],
)
def test_pair_collator_bad_rows(tiny_model_and_processor, mutate, error, match):
    from collm_hf.training.collators import CoLLMPairCollator

    _, processor = tiny_model_and_processor
    rows = _pair_rows()
    mutate(rows)
    with pytest.raises(error, match=match):
        batch = CoLLMPairCollator(processor, check_tokenization=False)(rows)
        tiny_model_and_processor[0](**batch)  # a one-image batch fails at synthesis, naming the row


def test_pair_collator_long_caption_is_cut_with_a_warning(tiny_model_and_processor):
    from collm_hf.training.collators import CoLLMPairCollator

    _, processor = tiny_model_and_processor
    rows = _pair_rows()
    rows[0]["caption"] = "red " * 2500
    with pytest.warns(UserWarning, match="truncated"):
        batch = CoLLMPairCollator(processor, check_tokenization=False)(rows)
    assert batch["caption_ids"].shape[1] <= processor.max_text_tokens


def _triplet_rows():
    return [{"id": str(i), "reference_id": f"r{i}", "target_id": f"t{i}", "modifications": [f"make it {c}"]}
            for i, c in enumerate(["red", "blue"])]


@pytest.fixture
def image_table():
    return {f"{kind}{i}": _rgb(seed=i + (10 if kind == "t" else 0)) for kind in ("r", "t") for i in range(2)}


@pytest.mark.parametrize(
    "mutate,error,match",
    [
        (lambda rows: rows[1].update(target_id="nowhere"), KeyError, "'nowhere' is not in the images table"),
        (lambda rows: rows[1].update(modifications=[]), ValueError, "Row 1 has no non-empty modification"),
        (lambda rows: rows[1].update(modifications=["", "  "]), ValueError, "Row 1 has no non-empty modification"),
        (lambda rows: rows[1].update(modifications=None), ValueError, "Row 1 has no non-empty modification"),
        (lambda rows: rows[1].pop("modifications"), KeyError, "Row 1 has no column 'modifications'"),
        (lambda rows: rows[1].update(target_image=b"garbage"), ImageReadError, "row 1 target_image"),
        (lambda rows: rows.clear(), ValueError, "empty batch"),
    ],
)
def test_triplet_collator_bad_rows(tiny_model_and_processor, image_table, mutate, error, match):
    from collm_hf.training.collators import CoLLMTripletCollator

    _, processor = tiny_model_and_processor
    rows = _triplet_rows()
    mutate(rows)
    with pytest.raises(error, match=match):
        CoLLMTripletCollator(processor, images=image_table)(rows)


def test_triplet_collator_long_modification_warns(tiny_model_and_processor, image_table):
    from collm_hf.training.collators import CoLLMTripletCollator

    model, processor = tiny_model_and_processor
    rows = _triplet_rows()
    rows[0]["modifications"] = ["bluer " * 1700]
    with pytest.warns(UserWarning, match="truncated"):
        batch = CoLLMTripletCollator(processor, images=image_table)(rows)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


# ==============================================================================================================
# Metric
# ==============================================================================================================
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"predictions": [["a", "b", "a"]], "references": [["a"]]}, ValueError, r"predictions\[0\] contains the id 'a'"),
        ({"predictions": [["a"]], "references": [[]]}, ValueError, r"references\[0\] is empty"),
        ({"predictions": [["a"]], "references": [None]}, ValueError, r"references\[0\] is None"),
        ({"predictions": [["a"]], "references": [["a"]], "k_values": [0]}, ValueError, "positive integers"),
        ({"predictions": [["a"]], "references": [["a"]], "k_values": [1.5]}, ValueError, "positive integers"),
        ({"predictions": [["a"], ["b"]], "references": [["a"]]}, ValueError, "references has 1 entries but there are 2"),
        ({"predictions": [["a", 1.5]], "references": [["a"]]}, TypeError, r"predictions\[0\]: ids must be int or str"),
        ({"predictions": [["a", None]], "references": [["a"]]}, TypeError, r"predictions\[0\]"),
        ({"predictions": ["abc"], "references": [["a"]]}, TypeError, r"predictions\[0\] must be a list"),
        ({"predictions": [], "references": []}, ValueError, "predictions is empty"),
        ({"predictions": [["a"]], "references": [["a"]], "protocol": "cirrr"}, ValueError, "protocol must be one of"),
        ({"predictions": [["r", "a"]], "references": [["a"]], "protocol": "cirr"}, ValueError, "needs reference_ids"),
        ({"predictions": [["r", "a"]], "references": [["a"]], "protocol": "cirr", "reference_ids": ["r"],
          "subset_ids": [["r", "a", "zz"]]}, ValueError, r"lacks subset member\(s\) \['zz'\]"),
        ({"predictions": [["a"]], "references": [["a"]], "reference_ids": ["r", "s"]}, ValueError, "reference_ids has 2"),
        ({"predictions": [["a", "b"]], "references": [["a", "a"]]}, ValueError, "repeats a target id"),
    ],
)
def test_metric_bad_inputs(kwargs, error, match):
    from collm_hf.evaluation.cir_metric import compute_cir_metrics

    with pytest.raises(error, match=match):
        compute_cir_metrics(**kwargs)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [({"predictions": [["a", None]], "references": [["a"]]}, TypeError, r"predictions\[0\]"),
     ({"predictions": [["a", "a"]], "references": [["a"]]}, ValueError, "more than once"),
     ({"predictions": [["a"], ["b"]], "references": [["a"]]}, ValueError, "number of predictions"),
     ({"predictions": [["a"]], "references": [None]}, TypeError, r"references\[0\]"),
     ({"predictions": ["abc"], "references": [["a"]]}, TypeError, r"predictions\[0\] must be a list"),
     ({"predictions": [["a"]], "references": [["a"]], "protocol": "nope"}, ValueError, "protocol must be one of")],
)
def test_evaluate_module_bad_inputs(kwargs, error, match):
    """The same checks through `evaluate.load("collm_hf/evaluation/cir_metric.py")` (its own input path)."""
    import evaluate

    metric = evaluate.load(str(Path(__file__).resolve().parents[1] / "collm_hf" / "evaluation" / "cir_metric.py"))
    with pytest.raises(error, match=match):
        metric.compute(**kwargs)


def test_metric_k_larger_than_the_gallery():
    from collm_hf.evaluation.cir_metric import compute_cir_metrics

    scores = compute_cir_metrics([["b", "a"], ["c", "d"]], [["a"], ["x"]], k_values=[1, 2, 1000])
    assert scores == {"recall@1": 0.0, "recall@2": 50.0, "recall@1000": 50.0}


# ==============================================================================================================
# Gallery index
# ==============================================================================================================
def _gallery(n=4, dim=8):
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(0)), dim=-1)


@pytest.mark.parametrize(
    "build,error,match",
    [
        (lambda G: G(_gallery(), ["a", "b", "a", "c"]), ValueError, "Gallery id 'a' appears more than once"),
        (lambda G: G(_gallery(), ["1", 1, "2", "3"]), ValueError, "'1' appears more than once"),
        (lambda G: G(_gallery().index_put_((torch.tensor([2]),), torch.full((8,), float("nan"))), list("abcd")),
         ValueError, "NaN or infinite.*'c'"),
        (lambda G: G(_gallery().index_put_((torch.tensor([1]),), torch.full((8,), float("inf"))), list("abcd")),
         ValueError, "NaN or infinite.*'b'"),
        (lambda G: G(_gallery(), ["a", "b"]), ValueError, "4 embeddings but 2 ids"),
        (lambda G: G(_gallery()[0], ["a"]), ValueError, "2-D tensor"),
        (lambda G: G(torch.empty(0, 8), []), ValueError, "empty"),
    ],
)
def test_index_bad_galleries(build, error, match):
    from collm_hf.evaluation.index import GalleryIndex

    with pytest.raises(error, match=match):
        build(GalleryIndex)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"query_embeds": torch.full((1, 8), float("nan"))}, ValueError, "NaN or infinite"),
        ({"query_embeds": torch.randn(1, 7)}, ValueError, r"\(queries, 8\)"),
        ({"query_embeds": torch.randn(8)}, ValueError, r"\(queries, 8\)"),
        ({"query_embeds": [[0.0] * 8]}, ValueError, r"\(queries, 8\)"),
        ({"query_embeds": torch.randn(1, 8), "k": 0}, ValueError, "positive integer"),
        ({"query_embeds": torch.randn(1, 8), "k": True}, ValueError, "positive integer"),
        ({"query_embeds": torch.randn(2, 8), "exclude_ids": [["a"]]}, ValueError, "1 entries for 2 queries"),
        ({"query_embeds": torch.randn(1, 8), "exclude_ids": ["a"]}, TypeError, "one list of ids per query"),
        ({"query_embeds": torch.randn(1, 8), "backend": "annoy"}, ValueError, "backend must be"),
    ],
)
def test_index_bad_searches(kwargs, error, match):
    from collm_hf.evaluation.index import GalleryIndex

    with pytest.raises(error, match=match):
        GalleryIndex(_gallery(), list("abcd")).search(**kwargs)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_index_k_larger_than_the_gallery(backend):
    from collm_hf.evaluation.index import GalleryIndex

    if backend == "faiss":
        pytest.importorskip("faiss")
    index = GalleryIndex(_gallery(), list("abcd"))
    query = _gallery()[2:3]
    found = index.search(query, k=50, backend=backend)
    assert found.ids[0][0] == "c" and sorted(found.ids[0]) == list("abcd")
    found = index.search(query, k=50, exclude_ids=[["c"]], backend=backend)
    assert sorted(found.ids[0]) == list("abd")


def test_index_folder_damage_is_detected(tmp_path):
    from collm_hf.evaluation.index import GalleryIndex

    GalleryIndex(_gallery(), list("abcd")).save(tmp_path / "index")
    good = tmp_path / "index"
    ids_file = next(good.glob("ids-*.json")).name
    embeddings_file = next(good.glob("embeddings-*.safetensors")).name
    for damage, error, match in [
        (lambda f: (f / ids_file).write_text(json.dumps(list("abcx"))), ValueError, "ids checksum differs"),
        (lambda f: (f / ids_file).write_text("[\"a\", "), ValueError, ""),
        (lambda f: (f / embeddings_file).write_bytes((f / embeddings_file).read_bytes()[:50]), Exception, ""),
        (lambda f: (f / ids_file).unlink(), FileNotFoundError, ids_file),
        (lambda f: (f / "manifest.json").write_text("{"), ValueError, "manifest.json"),
    ]:
        folder = tmp_path / "damaged"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(good, folder)
        damage(folder)
        with pytest.raises(error, match=match) as info:
            GalleryIndex.load(folder)
        assert not isinstance(info.value, (AttributeError, IndexError, KeyError))


def test_benchmark_target_missing_from_the_gallery_is_an_error():
    from collm_hf.evaluation.scoring import rank_benchmark
    from collm_hf.evaluation.index import GalleryIndex

    index = GalleryIndex(_gallery(), list("abcd"))
    queries = {"query_id": ["q0", "q1"], "reference_id": ["a", "b"], "target_ids": [["c"], ["zz"]]}
    with pytest.raises(ValueError, match=r"query q1: target 'zz'"):
        rank_benchmark(queries, index, _gallery()[:2], protocol="standard")
    queries["target_ids"][1] = ["d"]
    assert len(rank_benchmark(queries, index, _gallery()[:2], protocol="standard").rankings) == 2


@pytest.mark.parametrize(
    "kwargs,error,match",
    [({}, "SearchInputError", "needs a reference image, a modification text"),
     ({"text": "   "}, "SearchInputError", "needs a reference image"),
     ({"text": "red", "k": 0}, "SearchInputError", "k must be a positive integer"),
     ({"text": "red", "exclude_ids": "abc"}, "SearchInputError", "exclude_ids must be a list"),
     ({"image": "/nonexistent/ref.jpg"}, "ImageReadError", "ref.jpg"),
     ({"image": b"junk", "text": "red"}, "ImageReadError", "reference image"),
     ({"text": 5}, "ValueError", r"texts\[0\]")],
)
def test_search_api_bad_queries(tiny_model_and_processor, kwargs, error, match):
    from collm_hf.evaluation.index import GalleryIndex
    from collm_hf.apps.search import GallerySearcher

    model, processor = tiny_model_and_processor
    searcher = GallerySearcher(model, processor, GalleryIndex(_gallery(3, 24), ["a", "b", "c"]))
    with pytest.raises(ValueError, match=match) as info:
        searcher.search(**kwargs)
    assert type(info.value).__name__ == error
    assert len(searcher.search(text="red", k=100)) == 3  # K larger than the gallery: all of it


# ==============================================================================================================
# Dataset builders: specific cases, then a mutation fuzzer over every annotation file
# ==============================================================================================================
def _png(path: Path, seed: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (6, 5, 3), dtype=np.uint8)).save(path)


def _dump(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def make_cirr(root: Path):
    from collm_hf.data.cirr import build_cirr

    src, img = root / "cirr", root / "nlvr2"
    names = [f"dev-{i}-0-img0" for i in range(7)]
    paths = {n: f"./dev/{n}.png" for n in names}
    for i, rel in enumerate(paths.values()):
        _png(img / rel, i)
    _dump(src / "image_splits/split.rc2.val.json", paths)
    _dump(src / "captions/cap.rc2.val.json", [
        {"pairid": 1, "reference": names[0], "target_hard": names[1], "target_soft": {names[1]: 1.0},
         "caption": "make it blue", "img_set": {"id": 5, "members": names[:6], "reference_rank": 0, "target_rank": 1}},
        {"pairid": 2, "reference": names[2], "target_hard": names[3], "target_soft": {names[3]: 1.0},
         "caption": "add a dog", "img_set": {"id": 6, "members": names[1:7], "reference_rank": 1, "target_rank": 2}},
    ])
    files = [src / "captions/cap.rc2.val.json", src / "image_splits/split.rc2.val.json"]
    return (lambda options: build_cirr(src, options)), img, files


def make_fashioniq(root: Path):
    from collm_hf.data.fashioniq import build_fashioniq

    src, img = root / "fiq", root / "fiq_images"
    asins = [f"B00{i}" for i in range(4)]
    for i, asin in enumerate(asins):
        _png(img / f"{asin}.png", i)
    _dump(src / "image_splits/split.dress.val.json", asins)
    _dump(src / "captions/cap.dress.val.json", [
        {"candidate": asins[0], "target": asins[1], "captions": ["is red", "has no sleeves"]},
        {"candidate": asins[2], "target": asins[3], "captions": ["longer", "darker"]},
    ])
    files = [src / "captions/cap.dress.val.json", src / "image_splits/split.dress.val.json"]
    return (lambda options: build_fashioniq(src, options)), img, files


def make_circo(root: Path):
    from collm_hf.data.circo import build_circo

    src, img = root / "circo", root / "coco/unlabeled2017"
    ids = [11, 12, 13, 14]
    for i in ids:
        _png(img / f"{i:012d}.png", i)
    info = root / "coco/annotations/image_info_unlabeled2017.json"
    _dump(info, {"images": [{"id": i, "file_name": f"{i:012d}.png"} for i in ids]})
    _dump(src / "annotations/val.json", [
        {"id": 0, "reference_img_id": 11, "target_img_id": 12, "relative_caption": "has two cats",
         "shared_concept": "a cat", "gt_img_ids": [12, 13], "semantic_aspects": ["cardinality"]},
        {"id": 1, "reference_img_id": 13, "target_img_id": 14, "relative_caption": "at night",
         "shared_concept": "a street", "gt_img_ids": [14], "semantic_aspects": ["background"]},
    ])
    return (lambda options: build_circo(src, options)), img, [src / "annotations/val.json", info]


def make_mtcir(root: Path):
    from collm_hf.data.mtcir import build_mtcir

    src, img = root / "mtcir", root / "llava"
    for i in range(4):
        _png(img / f"00{i}/{i}.png", i)
    lines = [{"id": "t0", "image": "000/0.png", "target_image": "001/1.png", "modifications": ["make it red", "redder"]},
             {"id": "t1", "image": "002/2.png", "target_image": "003/3.png", "modifications": ["zoom out"]}]
    src.mkdir(parents=True, exist_ok=True)
    (src / "mtcir.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return (lambda options: build_mtcir(src, options)), img, [src / "mtcir.jsonl"]


def make_pairs(root: Path):
    from collm_hf.data.pairs import build_pairs

    src, img = root / "pairs", root / "pair_images"
    for i in range(3):
        _png(img / f"{i}.png", i)
    _dump(src / "captions.json", [
        {"id": str(i), "image": f"{i}.png",
         "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": f"a photo {i}"}]}
        for i in range(3)])
    return (lambda options: build_pairs(src / "captions.json", options)), img, [src / "captions.json"]


BUILDERS = {"cirr": make_cirr, "fashioniq": make_fashioniq, "circo": make_circo, "mtcir": make_mtcir,
            "pairs": make_pairs}
ODD_VALUES = [None, 7, True, "", [], {}, [[1]], "\ud800", "x" * 10000, "../../outside.png"]


def _entries(obj):
    if isinstance(obj, list):
        return [e for e in obj if isinstance(e, dict)]
    if isinstance(obj, dict):
        return [e for e in obj["images"] if isinstance(e, dict)] if isinstance(obj.get("images"), list) else [obj]
    return []


def annotation_mutations(path: Path):
    """(label, bytes): the file broken as a whole, then each key of its first entry deleted or given odd values."""
    raw = path.read_bytes()
    yield "truncated", raw[: len(raw) // 2]
    yield "empty", b""
    yield "not-utf8", b"\xff\xfe\x00garbage\x80\x81"
    jsonl = path.suffix == ".jsonl"
    docs = [json.loads(line) for line in raw.decode().splitlines() if line.strip()] if jsonl else [json.loads(raw)]

    def encode(objs):
        return (("\n".join(json.dumps(o) for o in objs) + "\n") if jsonl else json.dumps(objs[0])).encode()

    for top in (None, 5, "text", {}, [None], [[1, 2]]):
        yield f"top={json.dumps(top)}", encode([top] * len(docs))
    entries = _entries(docs[0])
    if entries:
        for key in list(entries[0]):
            original = entries[0].pop(key)
            yield f"del[{key}]", encode(docs)
            for value in ODD_VALUES:
                entries[0][key] = value
                yield f"{key}={json.dumps(value)[:16]}", encode(docs)
            entries[0][key] = original


@pytest.mark.parametrize("name", list(BUILDERS))
def test_builders_survive_every_annotation_mutation(tmp_path, name):
    from collm_hf.data._build import BuildOptions, DatasetBuildError
    from collm_hf.data.writer import DatasetWriteError

    build, images, files = BUILDERS[name](tmp_path)
    output = tmp_path / "out"
    build(BuildOptions(output_dir=output, images_dir=images, no_images=True))  # the fixture itself is valid
    shutil.rmtree(output)
    escaped, refused = [], 0
    for path in files:
        original = path.read_bytes()
        for label, data in annotation_mutations(path):
            path.write_bytes(data)
            try:
                build(BuildOptions(output_dir=output, images_dir=images, no_images=True))
            except (DatasetBuildError, DatasetWriteError) as error:
                refused += 1
                assert str(error).strip(), label
                assert not output.exists(), f"{label}: a failed build left {output}"
            except Exception as error:  # noqa: BLE001 - the point of the test
                escaped.append(f"{path.name} {label}: {type(error).__name__}: {str(error)[:200]}")
            else:
                shutil.rmtree(output)
        path.write_bytes(original)
    assert not escaped, "\n".join(escaped)
    assert refused > 10


def _archive_of(folder: Path, path: Path, prefix: str = "") -> Path:
    """Pack every file under `folder` into a zip or tar archive at `path`, under `prefix`."""
    import tarfile
    import zipfile

    files = sorted(f for f in folder.rglob("*") if f.is_file())
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as archive:
            for file in files:
                archive.write(file, prefix + file.relative_to(folder).as_posix())
    else:
        with tarfile.open(path, "w:gz") as archive:
            for file in files:
                archive.add(file, prefix + file.relative_to(folder).as_posix())
    return path


@pytest.mark.parametrize("name,suffix,prefix", [("cirr", ".zip", ""), ("fashioniq", ".tar.gz", ""),
                                                ("circo", ".zip", "unlabeled2017/"), ("mtcir", ".zip", "images/"),
                                                ("pairs", ".tar.gz", "")])
def test_builders_read_the_images_from_an_archive_in_place(tmp_path, name, suffix, prefix):
    """`--images-dir` naming a zip or tar (as the sources ship them) builds what the extracted folder builds."""
    from datasets import load_dataset

    from collm_hf.data._build import BuildOptions

    build, images, _ = BUILDERS[name](tmp_path)
    archive = _archive_of(images, images.parent / f"{images.name}{suffix}", prefix)  # e.g. coco/unlabeled2017.zip
    build(BuildOptions(output_dir=tmp_path / "from_folder", images_dir=images))
    shutil.rmtree(images)  # nothing is extracted: the archive alone serves the build
    build(BuildOptions(output_dir=tmp_path / "from_archive", images_dir=archive))
    configs = [p.name for p in (tmp_path / "from_folder").iterdir() if p.is_dir()]
    for config in configs:
        for split in {f.name.split("-")[0] for f in (tmp_path / "from_folder" / config).glob("*.parquet")}:
            folder_rows = load_dataset(str(tmp_path / "from_folder"), config, split=split).to_list()
            archive_rows = load_dataset(str(tmp_path / "from_archive"), config, split=split).to_list()
            assert archive_rows == folder_rows, (config, split)


def test_missing_image_in_an_archive_is_named(tmp_path):
    from collm_hf.data._build import BuildOptions, MissingImagesError

    build, images, _ = make_pairs(tmp_path)
    (images / "1.png").unlink()
    (images / "2.png").write_bytes(b"not a png")
    archive = _archive_of(images, tmp_path / "images.zip")
    with pytest.raises(MissingImagesError, match=r"images\.zip::1\.png") as error:
        build(BuildOptions(output_dir=tmp_path / "out", images_dir=archive))
    assert set(error.value.problems) == {"1.png", "2.png"} and not (tmp_path / "out").exists()


def test_cli_images_dir_takes_an_archive(tmp_path, capsys):
    from collm_hf.apps.cli import main as collm_hf_main

    _, images, _ = make_pairs(tmp_path)
    archive = _archive_of(images, tmp_path / "images.tar.gz")
    command = ["build-dataset", "pairs", "--source-dir", str(tmp_path / "pairs" / "captions.json"), "--output-dir"]
    assert collm_hf_main(command + [str(tmp_path / "out"), "--images-dir", str(archive)]) == 0
    (tmp_path / "notes.txt").write_text("not an archive")
    assert collm_hf_main(command + [str(tmp_path / "out2"), "--images-dir", str(tmp_path / "notes.txt")]) == 2
    assert capsys.readouterr().err.strip().endswith("notes.txt is neither a folder nor a zip or tar archive")


@pytest.mark.parametrize("name", list(BUILDERS))
def test_dataset_cards_name_their_license(tmp_path, name):
    import yaml

    from collm_hf.data._build import BuildOptions

    build, images, _ = BUILDERS[name](tmp_path)
    build(BuildOptions(output_dir=tmp_path / "out", images_dir=images, no_images=True))
    metadata = yaml.safe_load((tmp_path / "out" / "README.md").read_text().split("---")[1])
    assert metadata["license"]
    if metadata["license"] == "other":  # the hub asks for both, and shows them as the license
        assert metadata["license_name"] and metadata["license_link"].startswith("https://")


def test_builder_refuses_image_paths_leaving_the_images_folder(tmp_path):
    from collm_hf.data._build import BuildOptions, DatasetBuildError

    build, images, files = make_mtcir(tmp_path)
    _png(tmp_path / "secret.png", 99)  # exists, readable, outside --images-dir
    lines = files[0].read_text().splitlines()
    entry = json.loads(lines[0])
    entry["image"] = "../secret.png"
    files[0].write_text("\n".join([json.dumps(entry), *lines[1:]]) + "\n")
    with pytest.raises(DatasetBuildError, match=r"outside the images folder.*secret\.png"):
        build(BuildOptions(output_dir=tmp_path / "out", images_dir=images))
    with pytest.raises(DatasetBuildError, match="'..'"):
        BuildOptions(output_dir=tmp_path / "o", images_dir=images).image_value("a/../../secret.png")


@pytest.mark.parametrize("bad_path", ["../secret.png", "/etc/passwd", "dev/../../secret.png"])
def test_attach_images_refuses_paths_leaving_the_folder(tmp_path, bad_path):
    """A published annotation-only dataset must not point `attach_images` at files outside the images folder."""
    import datasets

    from collm_hf.data.local_images import attach_images

    _png(tmp_path / "secret.png", 1)
    _png(tmp_path / "images" / "dev" / "ok.png", 2)
    features = datasets.Features({"image_id": datasets.Value("string"), "image": datasets.Image()})
    rows = datasets.Dataset.from_dict(
        {"image_id": ["a", "b"], "image": [{"bytes": None, "path": "dev/ok.png"}, {"bytes": None, "path": bad_path}]},
        features=features)
    for check in (True, False):
        with pytest.raises(ValueError, match="leaves the images folder"):
            attach_images(rows, tmp_path / "images", check=check)
    good = attach_images(rows.select([0]), tmp_path / "images")
    assert good[0]["image"].size == (5, 6)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda caps, split: caps.append(dict(caps[0])), "pairid 1 is repeated"),
        (lambda caps, split: caps[0].update(target_hard="dev-99-0-img0"), r"target_hard \['dev-99-0-img0'\] not in the gallery"),
        (lambda caps, split: split.pop("dev-0-0-img0"), r"reference \['dev-0-0-img0'\] not in the gallery"),
    ],
)
def test_cirr_annotation_errors_name_every_item(tmp_path, edit, match):
    from collm_hf.data._build import BuildOptions, DatasetBuildError

    build, images, (captions_path, split_path) = make_cirr(tmp_path)
    captions, split = json.loads(captions_path.read_text()), json.loads(split_path.read_text())
    edit(captions, split)
    captions_path.write_text(json.dumps(captions))
    split_path.write_text(json.dumps(split))
    with pytest.raises(DatasetBuildError, match=match):
        build(BuildOptions(output_dir=tmp_path / "out", images_dir=images))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name,key,value",
    [("cirr", "caption", None), ("cirr", "pairid", None), ("cirr", "reference", {"a": 1}), ("circo", "relative_caption", 7),
     ("circo", "id", True), ("fashioniq", "candidate", None), ("mtcir", "id", None), ("mtcir", "modifications", ""),
     ("pairs", "id", ["x"])],
)
def test_builders_refuse_null_or_mistyped_ids_and_texts(tmp_path, name, key, value):
    """Written as "None" or null they would be silently wrong rows; the error names the entry and the key."""
    from collm_hf.data._build import BuildOptions, DatasetBuildError

    build, images, files = BUILDERS[name](tmp_path)
    path = files[0]
    if path.suffix == ".jsonl":
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        lines[0][key] = value
        path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    else:
        entries = json.loads(path.read_text())
        entries[0][key] = value
        path.write_text(json.dumps(entries))
    with pytest.raises(DatasetBuildError, match=key):
        build(BuildOptions(output_dir=tmp_path / "out", images_dir=images))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["corrupt", "missing", "text"])
def test_builders_report_bad_images_by_name(tmp_path, damage):
    from collm_hf.data._build import BuildOptions, MissingImagesError

    build, images, _ = make_fashioniq(tmp_path)
    target = images / "B001.png"
    if damage == "missing":
        target.unlink()
    elif damage == "text":
        target.write_text("not an image")
    else:
        target.write_bytes(target.read_bytes()[:40])
    with pytest.raises(MissingImagesError, match=r"B001\.png") as info:
        build(BuildOptions(output_dir=tmp_path / "out", images_dir=images))
    assert list(info.value.problems) == ["B001.png"]
    dropped = build(BuildOptions(output_dir=tmp_path / "out", images_dir=images, allow_missing=True))
    assert "B001" in (Path(dropped) / "README.md").read_text()


# ==============================================================================================================
# CLI
# ==============================================================================================================
def _cli(argv, capsys):
    from collm_hf.apps.cli import main

    capsys.readouterr()  # what the test printed before
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    assert code != 2 or len(captured.err.splitlines()) == 1, captured.err  # a user error is one line
    return code, captured.out + captured.err


def test_cli_build_dataset_errors_are_one_line(tmp_path, capsys):
    code, text = _cli(["build-dataset", "cirr", "--source-dir", str(tmp_path / "nowhere"), "--images-dir",
                       str(tmp_path), "--output-dir", str(tmp_path / "out")], capsys)
    assert code == 2 and "error:" in text and "nowhere" in text and "Traceback" not in text
    build, images, (captions_path, _) = make_cirr(tmp_path)
    captions_path.write_text("[{\"pairid\": 1,")  # malformed JSON
    code, text = _cli(["build-dataset", "cirr", "--source-dir", str(tmp_path / "cirr"), "--images-dir", str(images),
                       "--output-dir", str(tmp_path / "out")], capsys)
    assert code == 2 and "cap.rc2.val.json" in text and "not valid JSON" in text
    assert not (tmp_path / "out").exists()


def test_cli_search_errors_are_one_line(tmp_path, capsys, tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    from collm_hf.evaluation.index import GalleryIndex

    GalleryIndex(_gallery(2, 24), ["a", "b"]).save(tmp_path / "index")
    base = ["search", "--model", str(tmp_path / "model"), "--index", str(tmp_path / "index"), "--device", "cpu"]
    for extra, expected in [(["--text", "red", "-k", "0"], "-k"), (["--image", str(tmp_path / "none.jpg")], "none.jpg"),
                            (["--text", "   "], "empty")]:
        code, text = _cli(base + extra, capsys)
        assert code == 2 and "error:" in text and expected in text and "Traceback" not in text, text
    (tmp_path / "fake.jpg").write_text("not an image")
    code, text = _cli(base + ["--image", str(tmp_path / "fake.jpg"), "--text", "red"], capsys)
    assert code == 2 and "fake.jpg" in text
    code, text = _cli(["search", "--model", str(tmp_path / "nomodel"), "--index", str(tmp_path / "index"),
                       "--text", "red", "--device", "cpu"], capsys)
    assert code == 2 and "nomodel" in text
