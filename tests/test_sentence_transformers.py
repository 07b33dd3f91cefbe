"""A saved CoLLM loads as a SentenceTransformer: encode_query = composed query, encode_document = gallery
embedding, text-only strings = text-only queries; all equal to the transformers path. `save_pretrained` writes
the files (also from a model loaded with trust_remote_code in a Python without the package: test_push_to_hub.py)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from collm_hf.models.collm.sentence_transformers_files import (
    FILES,
    MODALITY_CONFIG,
    TRANSFORMER_MODULE,
    load_sentence_transformer,
    write_sentence_transformers_config,
)


@pytest.fixture(params=["pooled", "patches"])
def saved(request, tmp_path, tiny_model_and_processor):
    """A saved model; "patches" feeds the reference to the LLM as patch tokens (the sentence-transformers path too)."""
    model, processor = tiny_model_and_processor
    if request.param == "patches":
        from collm_hf.testing_utils import tiny_model_and_processor as make

        model, processor = make(reference_tokens="patches", num_visual_tokens=4)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    return tmp_path / "model", model, processor


def _images(n=3):
    return [Image.fromarray(np.random.RandomState(i).randint(0, 255, (40, 36, 3), dtype=np.uint8)) for i in range(n)]


def test_saved_model_is_a_sentence_transformer_equal_to_the_transformers_path(saved):
    from sentence_transformers import SentenceTransformer

    folder, model, processor = saved
    assert all((folder / name).is_file() for name in FILES)  # written by save_pretrained
    config = json.loads((folder / "sentence_bert_config.json").read_text())
    assert config["modality_config"] == MODALITY_CONFIG
    st = SentenceTransformer(str(folder))
    images, texts = _images(), ["make it red", "add a blue square at the top", "remove the circle"]
    queries = st.encode_query([{"image": i, "text": t} for i, t in zip(images, texts)], convert_to_tensor=True)
    documents = st.encode_document(images, convert_to_tensor=True)
    text_only = st.encode_query(texts, convert_to_tensor=True)
    with torch.no_grad():
        expected_q = model.get_query_embeds(**processor(images=images, text=texts))
        expected_d = model.get_image_embeds(processor(images=images)["pixel_values"])
        expected_t = model.get_query_embeds(**processor(text=texts))
    torch.testing.assert_close(queries.cpu(), expected_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(documents.cpu(), expected_d, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text_only.cpu(), expected_t, atol=1e-5, rtol=1e-5)
    scores = st.similarity(queries, documents)
    assert scores.shape == (3, 3)


def test_writing_the_config_leaves_the_model_files_alone(saved):
    folder, _, _ = saved
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    write_sentence_transformers_config(folder)
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert all(after[name] == data for name, data in before.items())
    assert {"modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"} <= set(after)


def test_load_adds_the_config_when_missing(saved):
    folder, _, _ = saved
    for name in FILES:  # a folder saved before save_pretrained wrote them
        (folder / name).unlink()
    st = load_sentence_transformer(folder)
    assert (folder / "modules.json").is_file()
    assert st.encode_document(_images(1)).shape[-1] == 24


def test_the_module_paths_exist_in_the_pinned_sentence_transformers():
    import importlib
    import re
    from pathlib import Path

    module, _, name = TRANSFORMER_MODULE.rpartition(".")
    assert hasattr(importlib.import_module(module), name)
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.search(r'"sentence-transformers>=([6-9]|\d\d)', pyproject), "the files use sentence-transformers 6 paths"


def test_the_training_and_quickstart_writers_save_sentence_transformer_folders(tmp_path, tiny_model_and_processor):
    from collm_hf.apps.quickstart.run import _save_atomically
    from collm_hf.training.trainer import write_trained

    model, processor = tiny_model_and_processor
    write_trained(model, str(tmp_path / "trained"), processor)
    _save_atomically(model, processor, tmp_path / "quickstart")
    for folder in (tmp_path / "trained", tmp_path / "quickstart"):
        assert all((folder / name).is_file() for name in FILES), folder


def test_not_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        write_sentence_transformers_config(tmp_path)
