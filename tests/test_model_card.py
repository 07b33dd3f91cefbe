"""Model cards: the huggingface_hub ModelCard with a model-index that parses back, usage for transformers and
sentence-transformers, any model (not only the quickstart's)."""

import pytest
from huggingface_hub import ModelCard

from collm_hf.testing_utils import tiny_config
from collm_hf.utils.model_card import eval_results, render_model_card, write_model_card

METRICS = {"cirr": {"recall@1": 45.8, "recall@5": 80.1, "recall_subset@1": 70.0},
           "circo": {"map@5": 29.0, "map@10": 29.8, "per_aspect/map@10": {"x": 1}}}


def test_model_index_round_trips(tmp_path):
    card = render_model_card(tiny_config(), METRICS, model_name="my-collm", repo_id="me/my-collm",
                             description="A test model.", headline={"cirr": "recall@1", "circo": "map@5"})
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    results = {(r.dataset_name, r.metric_type): r.metric_value for r in loaded.data.eval_results}
    assert results[("cirr", "recall@1")] == 45.8 and results[("circo", "map@5")] == 29.0
    assert ("circo", "per_aspect/map@10") not in results  # only numbers go to the model-index
    assert loaded.data.model_name == "my-collm" and loaded.data.library_name == "transformers"
    text = loaded.text
    assert "A test model." in text and 'AutoModel.from_pretrained("me/my-collm"' in text
    assert "encode_query" in text and "encode_document" in text
    assert "| method | recall@1 |" in text  # the headline metric comes first


def test_comparison_tables(tmp_path):
    comparison = {"cirr": {"collm": {"recall@1": 90.0}, "sum_fusion": {"recall@1": 50.0}}}
    card = render_model_card(None, {"cirr": {"recall@1": 90.0}}, comparison=comparison)
    assert "| sum_fusion | 50.00 |" in card.text and "| collm | 90.00 |" in card.text


def test_write_model_card_reads_the_saved_config(tmp_path, tiny_model_and_processor):
    model, _ = tiny_model_and_processor
    model.save_pretrained(tmp_path)
    path = write_model_card(tmp_path, METRICS, model_name="saved")
    text = path.read_text()
    assert path.name == "README.md" and "llama" in text and "clip" in text
    assert not list(tmp_path.glob(".README*"))


def test_bad_metrics_name_the_benchmark():
    with pytest.raises(ValueError, match="cirr"):
        eval_results({"cirr": {}}, "m")
