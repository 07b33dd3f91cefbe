"""examples/benchmark.py runs end to end on tiny shapes and writes every figure (no timing assertions)."""

import json
from pathlib import Path

import pytest
import torch

from _scripts import load_script
from collm_hf.apps.benchmark import (TARGETS, encoder_flops, format_table, interleaved_medians, modification_texts,
                                   peak_memory_above_baseline)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "benchmark.py"


def _load_example():
    return load_script(EXAMPLE)


def test_smoke_run_writes_all_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = _load_example().main(["--smoke", "--json", str(out)])
    written = json.loads(out.read_text())
    for key in TARGETS:
        assert key in written and written[key] is not None, key
        assert written[key] > 0, key
    assert written["sizes"]["preset"] == "smoke" and written["sizes"]["num_queries"] == 24
    details = written["details"]
    assert details["query_max_abs_diff"] <= 1e-4  # the fast path gives the naive path's embeddings
    assert details["search_same_results"] == 1.0
    assert details["fast_tokens_per_query"] < details["mean_prompt_tokens"]
    assert result["query_speedup_vs_naive"] == written["query_speedup_vs_naive"]
    table = capsys.readouterr().out
    assert "query_speedup_vs_naive" in table and "builder_memory_growth" in table


def test_only_and_overrides_are_recorded(tmp_path):
    out = tmp_path / "bench.json"
    _load_example().main(["--smoke", "--only", "search", "--gallery-size", "500", "--json", str(out)])
    written = json.loads(out.read_text())
    assert written["sizes"]["gallery_size"] == 500
    assert written["search_time_vs_faiss"] is not None and written["query_speedup_vs_naive"] is None
    assert "n/a" in format_table(written)


def test_modification_texts_word_range():
    texts = modification_texts(50, seed=1)
    counts = [len(t.split()) for t in texts]
    assert len(texts) == 50 and min(counts) >= 6 and max(counts) <= 30
    assert texts == modification_texts(50, seed=1)


def test_interleaved_medians_and_memory_probe():
    calls = []
    seconds = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warmup=1)
    assert set(seconds) == {"a", "b"} and calls == ["a", "b", "b", "a", "a", "b"]
    added = peak_memory_above_baseline(lambda: torch.ones(4_000_000).sum())
    assert added is None or added >= 8_000_000  # 16 MB touched


def test_encoder_flops_counts_linear_params_per_token(tiny_model_and_processor):
    model, _ = tiny_model_and_processor
    stats = {"suffix_tokens": 10, "prefix_tokens": 0, "attention_pairs": 0, "queries": 0}
    linear = sum(m.weight.numel() for m in model.language_model.modules() if isinstance(m, torch.nn.Linear))
    assert encoder_flops(model, stats) == 2 * linear * 10


def test_unknown_figure_is_rejected():
    from collm_hf.apps.benchmark import BenchmarkSizes, run_benchmarks

    with pytest.raises(ValueError, match="Unknown figure"):
        run_benchmarks(BenchmarkSizes.smoke(), ["speed"])


def test_index_figures_on_smoke_sizes(tmp_path):
    out = tmp_path / "bench.json"
    _load_example().main(["--smoke", "--only", "index", "--json", str(out)])
    written = json.loads(out.read_text())
    details = written["details"]
    assert details["index_gallery_size"] == 3000 and details["exact_search_same_as_indexflatip"] == 1.0
    kinds = details["index_kinds"]
    assert set(kinds) == {"flat", "ivf-flat", "ivf-pq", "hnsw"}
    assert all(kinds[kind]["reopen_same_results"] for kind in ("ivf-flat", "ivf-pq", "hnsw"))
    assert 0 < written["ivfpq_recall_at_10"] <= 1 and 0 < written["index_reopen_vs_build"] < 1
    assert set(kinds["ivf-pq"]["refine"]) == {"4", "8", "16", "32"}


def test_index_memory_probe_sees_heap_and_mapped_file(tmp_path):
    import numpy as np

    from collm_hf.apps.benchmark.harness import PeakMemory

    with PeakMemory() as memory:
        heap = torch.ones(16_000_000)  # 64 MB of anonymous memory
        del heap
    assert memory.added("RssAnon") >= 60_000_000
    (tmp_path / "data").write_bytes(b"\1" * 32_000_000)
    mapped = np.memmap(tmp_path / "data", dtype=np.uint8, mode="r")
    with PeakMemory() as memory:
        assert int(mapped[::4096].sum()) == len(mapped[::4096])  # every page read once
    assert memory.added("RssFile") >= 30_000_000 and memory.added("RssAnon") < 10_000_000
