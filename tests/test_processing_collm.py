import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from collm_hf import CoLLMProcessor


def test_composed_text_only_and_gallery_inputs(tiny_model_and_processor, rgb_images):
    _, processor = tiny_model_and_processor
    composed = processor(images=rgb_images[:2], text=["make it red", "add a blue square"])
    assert set(composed) == {"input_ids", "attention_mask", "pixel_values"}
    assert (composed["input_ids"] == processor.image_token_id).sum(-1).tolist() == [1, 1]
    text_only = processor(text=["make it red"])
    assert set(text_only) == {"input_ids", "attention_mask"}
    assert (text_only["input_ids"] == processor.image_token_id).sum() == 0
    gallery = processor(images=rgb_images)
    assert set(gallery) == {"pixel_values"} and gallery["pixel_values"].shape[0] == 4
    image_only = processor.image_queries(rgb_images[:3])
    assert (image_only["input_ids"] == processor.image_token_id).sum(-1).tolist() == [1, 1, 1]


def test_prompt_layout_and_pooled_end_token(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    ids = processor(text=["make it red"])["input_ids"][0].tolist()
    assert ids[0] == processor.tokenizer.bos_token_id
    assert ids[-1] == processor.tokenizer.eos_token_id  # appended and pooled
    decoded = processor.tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded == "Instruct: Find the image that matches the query.\nQuery: Text: make it red"


def test_no_instruction_line_and_round_trip(tmp_path, rgb_images):
    from collm_hf.testing_utils import tiny_model_and_processor

    model, processor = tiny_model_and_processor("clip", "llama", instruction=None)
    assert model.config.instruction is None and processor.instruction is None
    ids = processor(text=["make it red"])["input_ids"][0].tolist()
    assert processor.tokenizer.decode(ids, skip_special_tokens=True) == " Text: make it red"
    composed = processor(images=rgb_images[:1], text=["make it red"])["input_ids"][0].tolist()
    assert composed[: 1 + len(processor.pieces["image"])] == [processor.tokenizer.bos_token_id] + processor.pieces["image"]
    processor.save_pretrained(tmp_path)
    model.config.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert loaded.instruction is None and loaded(text=["make it red"])["input_ids"][0].tolist() == ids
    from collm_hf import CoLLMConfig

    assert CoLLMConfig.from_pretrained(tmp_path).instruction is None


def test_batch_tokenised_queries_equal_one_by_one(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    texts = ["make it red", None, "  add a  blue square ", "remove the triangle"]
    batch = processor.queries(texts, with_image=True)
    for row, text in enumerate(texts):
        ids, _ = processor.build_query_ids(text, with_image=True)
        assert batch["input_ids"][row, : len(ids)].tolist() == ids
        assert batch["attention_mask"][row].sum().item() == len(ids)


def test_no_pad_token_tokenizer_pads_with_eos(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    assert processor.tokenizer.pad_token is None
    out = processor(text=["a", "a much longer modification text than the first"])
    assert out["attention_mask"][0].sum() < out["attention_mask"][1].sum()
    assert out["input_ids"][0, -1].item() == processor.tokenizer.eos_token_id


def test_long_text_truncated_with_warning_instruction_kept(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    processor.max_text_tokens = 8
    with pytest.warns(UserWarning, match="truncated"):
        out = processor(text=["word " * 10_000])
    prefix = processor.pieces["prefix"]
    assert out["input_ids"][0, : len(prefix)].tolist() == prefix
    assert out["input_ids"].shape[1] == len(prefix) + len(processor.pieces["text"]) + 8 + 1


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({}, ValueError, "needs images, text"),
        ({"text": [3]}, TypeError, r"text\[0\] must be a string"),
        ({"text": ["  "]}, ValueError, r"text\[0\] is empty"),
        ({"images": [None], "text": ["x"]}, ValueError, r"images\[0\] is None"),
        ({"images": ["not an image"], "text": ["x"]}, ValueError, r"images\[0\]: expected a PIL image"),
        ({"text": []}, ValueError, "empty list"),
    ],
)
def test_bad_input_clear_errors(tiny_model_and_processor, kwargs, error, match):
    _, processor = tiny_model_and_processor
    with pytest.raises(error, match=match):
        processor(**kwargs)


def test_batch_length_mismatch(tiny_model_and_processor, rgb_images):
    _, processor = tiny_model_and_processor
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        processor(images=rgb_images[:2], text=["x"])


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_any_image_mode_is_converted(tiny_model_and_processor, mode):
    _, processor = tiny_model_and_processor
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)).convert(mode)
    out = processor(images=[image], text=["x"])
    assert out["pixel_values"].shape == (1, 3, 32, 32) and torch.isfinite(out["pixel_values"]).all()


def test_save_and_auto_load(tmp_path, tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    processor.max_text_tokens = 17
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, CoLLMProcessor) and loaded.max_text_tokens == 17
    assert loaded(text=["make it red"])["input_ids"].tolist() == processor(text=["make it red"])["input_ids"].tolist()
