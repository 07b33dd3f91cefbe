"""CoLLMQueryEncoder gives the plain path's embeddings (`CoLLMModel.get_query_embeds`) within 1e-4."""

import copy

import pytest
import torch

from collm_hf.testing_utils import tiny_model_and_processor
from collm_hf.models.collm.query_encoder import CoLLMQueryEncoder, _common_prefix, _is_causal, bf16_supported

TEXTS = [
    "make it green",
    "a red circle on the left and a small blue square",
    "show a large purple cross instead of a cyan ring on a white background and add two yellow stars",
    "remove the triangle",
    "add two yellow stars at the top",
]
TOL = 1e-4


@pytest.fixture(scope="module")
def _models():
    return {llm: tiny_model_and_processor("clip", llm) for llm in ("llama", "qwen2", "mistral")}


@pytest.fixture(params=["llama", "qwen2", "mistral"])
def model_and_processor(request, _models):
    model, processor = _models[request.param]
    return copy.deepcopy(model), copy.deepcopy(processor)


def _plain(model, processor, texts, image_embeds, with_image):
    inputs = processor.queries(texts, with_image=with_image)
    with torch.no_grad():
        return model.get_query_embeds(inputs["input_ids"], inputs["attention_mask"], image_embeds=image_embeds)


def _image_embeds(model, n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, model.config.image_embedding_size, generator=generator), dim=-1)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_equals_plain_path_all_query_kinds(model_and_processor, padding_side):
    model, processor = model_and_processor
    processor.padding_side = padding_side
    encoder = CoLLMQueryEncoder(model, processor)
    assert encoder.use_prefix_cache
    embeds = _image_embeds(model, len(TEXTS))
    cases = {
        "composed": (encoder.encode(TEXTS, image_embeds=embeds, batch_size=2), _plain(model, processor, TEXTS, embeds, True)),
        "text-only": (encoder.encode(TEXTS, batch_size=2), _plain(model, processor, TEXTS, None, False)),
        "image-only": (encoder.encode(image_embeds=embeds, batch_size=2),
                       _plain(model, processor, [None] * len(TEXTS), embeds, True)),
    }
    for kind, (fast, plain) in cases.items():
        assert fast.shape == plain.shape == (len(TEXTS), model.config.projection_dim), kind
        assert (fast - plain).abs().max() <= TOL, kind


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_encode_inputs_mixed_batch_equals_plain(model_and_processor, padding_side):
    """Processor outputs with composed, text-only and image-only rows mixed, either padding side."""
    model, processor = model_and_processor
    processor.padding_side = padding_side
    rows = [processor.build_query_ids(TEXTS[0], True)[0], processor.build_query_ids(TEXTS[1], False)[0],
            processor.build_query_ids(None, True)[0], processor.build_query_ids(TEXTS[2], True)[0]]
    inputs = processor.pad_query_ids(rows)
    embeds = _image_embeds(model, 3, seed=1)
    with torch.no_grad():
        plain = model.get_query_embeds(inputs["input_ids"], inputs["attention_mask"], image_embeds=embeds)
    fast = CoLLMQueryEncoder(model, processor).encode_inputs(inputs["input_ids"], inputs["attention_mask"],
                                                             image_embeds=embeds, batch_size=3)
    assert (fast - plain).abs().max() <= TOL


def test_images_path_and_order_preserved(tiny_model_and_processor, rgb_images):
    model, processor = tiny_model_and_processor
    texts = TEXTS[: len(rgb_images)]
    inputs = processor(images=rgb_images, text=texts)
    with torch.no_grad():
        plain = model.get_query_embeds(**inputs)
    fast = CoLLMQueryEncoder(model, processor).encode(texts, images=rgb_images, batch_size=3)
    assert (fast - plain).abs().max() <= TOL
    reversed_fast = CoLLMQueryEncoder(model, processor).encode(texts[::-1], images=rgb_images[::-1])
    assert (reversed_fast.flip(0) - plain).abs().max() <= TOL


def test_mean_pooling_and_prefix_cache_reuse():
    model, processor = tiny_model_and_processor("clip", "llama", pooling="mean")
    encoder = CoLLMQueryEncoder(model, processor, max_cached_prefixes=1)
    embeds = _image_embeds(model, len(TEXTS))
    for _ in range(2):  # second call reuses the cached prefix state
        fast = encoder.encode(TEXTS, image_embeds=embeds, batch_size=2)
        assert (fast - _plain(model, processor, TEXTS, embeds, True)).abs().max() <= TOL
    assert len(encoder._prefix_cache) == 1


def test_no_instruction_line_equals_plain_path():
    model, processor = tiny_model_and_processor("clip", "llama", pooling="mean", instruction=None)
    encoder = CoLLMQueryEncoder(model, processor)
    embeds = _image_embeds(model, len(TEXTS))
    for texts, image_embeds, with_image in ((TEXTS, embeds, True), (TEXTS, None, False), ([None] * len(TEXTS), embeds, True)):
        fast = encoder.encode(None if texts[0] is None else texts, image_embeds=image_embeds, batch_size=2)
        assert (fast - _plain(model, processor, texts, image_embeds, with_image)).abs().max() <= TOL


def test_non_causal_llm_falls_back_to_sorted_plain_batches():
    model, processor = tiny_model_and_processor("clip", "bert")
    encoder = CoLLMQueryEncoder(model, processor)
    assert not encoder.use_prefix_cache and not _is_causal(model.language_model)
    embeds = _image_embeds(model, len(TEXTS))
    fast = encoder.encode(TEXTS, image_embeds=embeds, batch_size=2)
    assert (fast - _plain(model, processor, TEXTS, embeds, True)).abs().max() <= TOL


def test_bf16_autocast_is_close(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    embeds = _image_embeds(model, len(TEXTS))
    fast = CoLLMQueryEncoder(model, processor, autocast_dtype=torch.bfloat16).encode(TEXTS, image_embeds=embeds)
    assert fast.dtype == torch.float32
    assert (fast - _plain(model, processor, TEXTS, embeds, True)).abs().max() < 0.1
    assert isinstance(bf16_supported("cpu"), bool)


def test_common_prefix_stops_before_image_and_keeps_a_suffix_token():
    assert _common_prefix([[1, 2, 3, -200, 5], [1, 2, 3, -200, 6]], -200) == [1, 2, 3]
    assert _common_prefix([[1, 2, 3], [1, 2, 3]], -200) == [1, 2]
    assert _common_prefix([[1, 2], [7, 2]], -200) == []


def test_bad_inputs_name_the_problem(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    encoder = CoLLMQueryEncoder(model, processor)
    embeds = _image_embeds(model, 2)
    with pytest.raises(ValueError, match="one entry per query"):
        encoder.encode(TEXTS, image_embeds=embeds)
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        encoder.encode(["ok", None])
    with pytest.raises(ValueError, match=r"texts\[0\]"):
        encoder.encode(["  ", "fine"], image_embeds=embeds)
    with pytest.raises(ValueError, match="not both"):
        encoder.encode(["a", "b"], images=[None, None], image_embeds=embeds)
    with pytest.raises(ValueError, match="NaN"):
        encoder.encode(["a", "b"], image_embeds=torch.full_like(embeds, float("nan")))
    with pytest.raises(ValueError, match="image_embeds must be"):
        encoder.encode(["a", "b"], image_embeds=torch.zeros(2, 3))
    other = copy.deepcopy(processor)
    other.instruction = "something else"
    with pytest.raises(ValueError, match="instruction"):
        CoLLMQueryEncoder(model, other)


def test_sliding_window_shorter_than_the_prompt_still_equal():
    model, processor = tiny_model_and_processor("clip", "mistral")
    model.config.text_config.sliding_window = 6  # the shared prefix alone is longer than the window
    model = type(model)(model.config).eval()
    embeds = _image_embeds(model, len(TEXTS))
    fast = CoLLMQueryEncoder(model, processor).encode(TEXTS, image_embeds=embeds, batch_size=2)
    assert (fast - _plain(model, processor, TEXTS, embeds, True)).abs().max() <= TOL
