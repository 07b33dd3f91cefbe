"""examples/push_to_hub.py: the dry run writes what would be uploaded, and that folder loads with
trust_remote_code in a Python without collm_hf; the push goes through HfApi.upload_folder (mocked)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def _example():
    return load_script(ROOT / "examples" / "push_to_hub.py")


@pytest.fixture
def saved(tmp_path, tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    metrics = {"benchmarks": {"synthetic-cirr": {"collm": {"recall@1": 91.5, "recall@5": 99.0},
                                                  "sum_fusion": {"recall@1": 40.0}}}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    return tmp_path


def test_dry_run_writes_the_upload(saved, capsys):
    out = saved / "upload"
    code = _example().main(["--model", str(saved / "model"), "--repo-id", "me/collm-test", "--dry-run", str(out),
                            "--metrics", str(saved / "metrics.json")])
    assert code == 0
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "modeling_collm.py", "configuration_collm.py",
            "processing_collm.py", "processor_config.json", "tokenizer.json", "modules.json"} <= files
    assert not any(name.endswith(".bin") for name in files)
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_collm.CoLLMModel"
    card = (out / "README.md").read_text()
    assert "model-index" in card and "91.5" in card and "me/collm-test" in card
    assert "me/collm-test" in capsys.readouterr().out


def test_dry_run_folder_loads_without_the_package(saved):
    """Loaded with trust_remote_code in a Python without collm_hf, saved again: the sentence-transformers files are
    written again, and that folder is a SentenceTransformer giving the model's gallery embeddings."""
    out = saved / "upload"
    _example().main(["--model", str(saved / "model"), "--repo-id", "me/collm-test", "--dry-run", str(out)])
    script = (
        "import sys; sys.modules['collm_hf'] = None\n"  # the package is unavailable: code comes from the folder
        "import torch\nfrom transformers import AutoModel, AutoProcessor\n"
        "from PIL import Image\nfrom sentence_transformers import SentenceTransformer\n"
        f"m = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True)\n"
        f"p = AutoProcessor.from_pretrained({str(out)!r}, trust_remote_code=True)\n"
        "q = p(text=['make it red'])\n"
        "print(type(m).__name__, tuple(m.get_query_embeds(**q).shape))\n"
        f"m.save_pretrained({str(saved / 'again')!r}); p.save_pretrained({str(saved / 'again')!r})\n"
        "images = [Image.new('RGB', (30, 20), (200, 40, 10)), Image.new('RGB', (20, 30), (0, 90, 250))]\n"
        f"st = SentenceTransformer({str(saved / 'again')!r}, trust_remote_code=True)\n"
        "got = st.encode_document(images, convert_to_tensor=True).cpu()\n"
        "expected = m.get_image_embeds(p(images=images)['pixel_values'])\n"
        "print('st', (got - expected).abs().max().item() <= 1e-5)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(saved / "modules"), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], cwd=saved, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CoLLMModel (1, 24)" in result.stdout and "st True" in result.stdout
    assert {"modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"} <= set(os.listdir(saved / "again"))


def test_push_uses_upload_folder(saved, monkeypatch):
    from collm_hf.utils import hub_upload

    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls["create"] = repo_id

        def upload_folder(self, folder_path, repo_id, **kwargs):
            calls["files"] = sorted(os.listdir(folder_path))
            calls["repo"] = repo_id

    url = hub_upload.push_model_to_hub(saved / "model", "me/collm-test", api=FakeApi())
    assert url.endswith("me/collm-test") and calls["create"] == calls["repo"] == "me/collm-test"
    assert "model.safetensors" in calls["files"] and "README.md" in calls["files"]


def test_errors_are_clear(saved, tmp_path, capsys):
    example = _example()

    def error_line(argv) -> str:
        with pytest.raises(SystemExit) as exit_info:
            example.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
        return err

    assert "nothing" in error_line(["--model", str(tmp_path / "nothing"), "--repo-id", "me/x", "--dry-run",
                                    str(tmp_path / "o")])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert "busy" in error_line(["--model", str(saved / "model"), "--repo-id", "me/x", "--dry-run", str(busy)])
    assert (busy / "keep.txt").is_file()
