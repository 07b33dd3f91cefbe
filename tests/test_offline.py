"""Nothing contacts the network at import or when given local paths.

Each check runs in a fresh Python whose sockets refuse to connect or resolve (socket.socket.connect,
connect_ex, create_connection and getaddrinfo raise), once with `HF_HUB_OFFLINE=1` and once with every
offline variable unset: importing `collm_hf`, `CoLLMModel.from_pretrained` / `AutoModel.from_pretrained` of a
local folder (without trust_remote_code), `AutoProcessor.from_pretrained` of it, `datasets.load_dataset` of a
local Parquet folder written by `collm_hf.data.write_dataset`, and `evaluate.load` of `collm_hf/evaluation/cir_metric.py`.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BLOCK_NETWORK = """
import socket, sys
def _refuse(*args, **kwargs):
    message = "network access attempted: " + repr(args[:2])
    print(message, file=sys.stderr)  # visible even if a library swallows the error and falls back
    raise OSError(message)
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""


@pytest.fixture(scope="module")
def local_artifacts(tmp_path_factory):
    """A saved tiny model + processor folder and a local Parquet dataset folder."""
    from collm_hf.testing_utils import tiny_model_and_processor
    from collm_hf.data.schema import PAIRS_FEATURES
    from collm_hf.data.writer import write_dataset
    from PIL import Image

    root = tmp_path_factory.mktemp("offline")
    model, processor = tiny_model_and_processor()
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    rows = [{"image_id": str(i), "image": Image.new("RGB", (8, 8), (i * 40, 0, 0)), "caption": f"a red square {i}"}
            for i in range(3)]
    write_dataset(root / "pairs", {"pairs": {"train": rows}}, {"pairs": PAIRS_FEATURES})
    return root


def _start(script: str, tmp_path: Path, offline: bool) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update({"HF_HOME": str(tmp_path / "hf_home"), "HF_MODULES_CACHE": str(tmp_path / "modules"),
                "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"})
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    code = BLOCK_NETWORK + textwrap.dedent(script)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)


def _run(script: str, tmp_path: Path, offline: bool) -> tuple[int, str, str]:
    process = _start(script, tmp_path, offline)
    out, err = process.communicate(timeout=240)
    return process.returncode, out, err


def test_local_use_never_touches_the_network(local_artifacts, tmp_path):
    """Both settings run side by side (each is a fresh interpreter importing torch, datasets and evaluate)."""
    script = f"""
    import torch
    import collm_hf
    from collm_hf import CoLLMModel, CoLLMProcessor
    from transformers import AutoModel, AutoProcessor
    folder = {str(local_artifacts / 'model')!r}
    model = CoLLMModel.from_pretrained(folder).eval()
    auto_model = AutoModel.from_pretrained(folder)
    assert type(auto_model) is CoLLMModel, type(auto_model)
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor) is CoLLMProcessor, type(processor)
    inputs = processor(text=["make it blue"])
    with torch.no_grad():
        assert model.get_query_embeds(**inputs).shape[0] == 1

    import datasets
    pairs = datasets.load_dataset({str(local_artifacts / 'pairs')!r}, "pairs", split="train")
    assert len(pairs) == 3 and pairs[0]["image"].size == (8, 8), pairs

    import evaluate
    metric = evaluate.load({str(ROOT / 'collm_hf' / 'evaluation' / 'cir_metric.py')!r})
    scores = metric.compute(predictions=[["a", "b"], ["c", "d"]], references=[["b"], ["c"]], k_values=[1, 2])
    assert scores == {{"recall@1": 50.0, "recall@2": 100.0}}, scores
    print("OFFLINE-OK")
    """
    processes = {}
    for offline in (True, False):
        (tmp_path / str(offline)).mkdir()
        processes[offline] = _start(script, tmp_path / str(offline), offline)
    for offline, process in processes.items():
        out, err = process.communicate(timeout=240)
        where = "HF_HUB_OFFLINE=1" if offline else "no offline variables"
        assert process.returncode == 0 and "OFFLINE-OK" in out, f"{where}: {err[-4000:]}"
        assert "network access attempted" not in err, f"{where}: {err[-4000:]}"


def test_blocked_network_is_really_blocked(tmp_path):
    """The guard itself works: an attempted connection fails with our message."""
    code, out, err = _run("""
    import urllib.request
    try:
        urllib.request.urlopen("https://huggingface.co", timeout=5)
    except OSError as error:
        print("BLOCKED", error)
    """, tmp_path, offline=True)
    assert "BLOCKED" in out and "network access attempted" in out, out + err
