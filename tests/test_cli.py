"""The `collm-hf` command line and the scripts on it: every user error is one line on stderr naming the item, exit
status 2, no traceback; `--debug` shows the traceback; a genuine bug keeps its traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _scripts import ROOT, load_script

from collm_hf.apps.cli import SUBCOMMANDS, UsageError, main

BUILDERS = ("cirr", "fashioniq", "circo", "mtcir", "pairs")


@pytest.fixture
def paths(tmp_path):
    """{"missing": a path that does not exist, "model": a folder that passes as a model, "out": a fresh output}."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return {"missing": str(tmp_path / "no" / "such" / "path"), "model": str(model), "out": str(tmp_path / "out"),
            "tmp": str(tmp_path)}


def _error_line(capsys, argv) -> str:
    """Run `collm-hf argv` in-process; assert exit status 2 and one line on stderr; return that line."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse, for a bad option
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


# One missing input path per subcommand (each `build-dataset` builder, both training stages).
MISSING_PATH = {
    "quickstart": ["quickstart", "--llm", "{missing}", "--output-dir", "{out}"],
    "search": ["search", "--model", "{model}", "--index", "{missing}", "--text", "x"],
    "index": ["index", "--model", "{model}", "--dataset", "{missing}", "--output-dir", "{out}"],
    **{f"build-dataset {name}": ["build-dataset", name, "--source-dir", "{missing}", "--images-dir", "{tmp}",
                                 "--output-dir", "{out}"] for name in BUILDERS},
    "train pairs": ["train", "pairs", "--model", "{missing}", "--dataset", "{tmp}", "--output_dir", "{out}"],
    "train triplets": ["train", "triplets", "--model", "{model}", "--dataset", "{missing}", "--output-dir", "{out}"],
    "evaluate": ["evaluate", "--model", "{model}", "--dataset", "{missing}"],
}


@pytest.mark.parametrize("name", list(MISSING_PATH))
def test_missing_input_path_is_one_line_naming_it(name, paths, capsys):
    line = _error_line(capsys, [arg.format(**paths) for arg in MISSING_PATH[name]])
    assert line.startswith(f"collm-hf {name.split()[0]}: error: ") and paths["missing"] in line
    assert not os.path.exists(paths["out"])


def test_every_subcommand_is_checked():
    assert {name.split()[0] for name in MISSING_PATH} == set(SUBCOMMANDS)


BAD_OPTION = {
    "quickstart": ["quickstart"],
    "search": ["search", "--index", "{tmp}"],
    "index": ["index", "--dataset", "{tmp}", "--output-dir", "{out}"],
    "build-dataset": ["build-dataset", "cirr", "--source-dir", "{tmp}", "--output-dir", "{out}"],
    "train": ["train", "pairs", "--model", "{model}", "--dataset", "{tmp}", "--output_dir", "{out}"],
    "evaluate": ["evaluate", "--model", "{model}", "--dataset", "{tmp}"],
}


@pytest.mark.parametrize("name", list(BAD_OPTION))
def test_bad_option_is_one_line(name, paths, capsys):
    line = _error_line(capsys, [arg.format(**paths) for arg in BAD_OPTION[name]] + ["--no-such-option", "1"])
    assert "error: unrecognized arguments: --no-such-option" in line


def test_positional_inputs_are_refused(paths, capsys):
    line = _error_line(capsys, ["evaluate", paths["model"], paths["tmp"]])
    assert "error:" in line


@pytest.mark.parametrize("argv, message", [
    (["quickstart", "--llm", "someone/no-such-llm"], "--llm someone/no-such-llm: no such local folder, and the hub is off"),
    (["train", "pairs", "--model", "someone/no-such-model", "--dataset", "{tmp}", "--output_dir", "{out}"],
     "--model someone/no-such-model: no such local folder, and the hub is off"),
    (["train", "pairs", "--vision_name_or_path", "{model}", "--llm_name_or_path", "someone/llm", "--dataset", "{tmp}",
      "--output_dir", "{out}"], "--llm_name_or_path someone/llm"),
    (["index", "--model", "{model}", "--dataset", "someone/no-such-gallery", "--output-dir", "{out}"],
     "someone/no-such-gallery"),
])
def test_unreachable_hub_id_is_one_line(argv, message, paths, capsys):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # tests/conftest.py: no network
    line = _error_line(capsys, [arg.format(**paths) for arg in argv])
    assert message.format(**paths) in line


def test_hub_id_without_a_network_is_one_line(paths, monkeypatch, capsys):
    """Online but unreachable (no network, DNS, proxy): the hub's answer is asked once, without retries."""
    import huggingface_hub

    def unreachable(self, repo_id, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", unreachable)
    line = _error_line(capsys, ["quickstart", "--llm", "someone/llm", "--output-dir", paths["out"]])
    assert "--llm someone/llm: no such local folder, and the hub cannot be reached" in line
    assert "Name or service not known" in line


def test_folder_that_is_not_the_expected_dataset(paths, tmp_path, capsys):
    from PIL import Image

    from collm_hf.data import gallery_features, write_dataset

    write_dataset(tmp_path / "gallery", {"gallery": {"val": [{"image_id": "a", "image": Image.new("RGB", (8, 8))}]}},
                  {"gallery": gallery_features()})
    line = _error_line(capsys, ["train", "triplets", "--model", paths["model"], "--dataset", str(tmp_path / "gallery"),
                                "--output_dir", paths["out"]])
    assert "not the expected dataset" in line and "'triplets'" in line and "gallery" in line
    (tmp_path / "empty").mkdir()
    line = _error_line(capsys, ["index", "--model", paths["model"], "--dataset", str(tmp_path / "empty"),
                                "--output-dir", paths["out"]])
    assert "collm-hf index: error:" in line and "empty" in line


def test_failed_build_lists_every_missing_image_on_one_line(tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"image": name, "caption": "c"}) + "\n" for name in ("a.png", "b.png")))
    line = _error_line(capsys, ["build-dataset", "pairs", "--source-dir", str(captions), "--images-dir", str(tmp_path),
                                "--output-dir", str(tmp_path / "out")])
    assert "2 referenced image(s)" in line and "a.png" in line and "b.png" in line
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(paths):
    with pytest.raises(UsageError, match="no such folder"):
        main(["--debug", "quickstart", "--llm", paths["missing"]])


def test_a_bug_keeps_its_traceback(paths, monkeypatch):
    import collm_hf.apps.commands.quickstart as command

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(command, "run_quickstart", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["quickstart", "--output-dir", paths["out"]])


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "pairs", "--help"])
    assert exit_info.value.code == 0 and "--model_name_or_path" in capsys.readouterr().out


# The scripts in examples/ and dataset_scripts/: the same errors, named after the script.
SCRIPTS = {
    "examples/train_collm.py": ["pairs", "--model", "{missing}", "--dataset", "{tmp}", "--output_dir", "{out}"],
    "examples/push_to_hub.py": ["--model", "{missing}", "--repo-id", "me/x", "--dry-run", "{out}"],
    "examples/convert_smollm2.py": ["--gguf", "{missing}", "--output-dir", "{out}"],
    "examples/convert_mobilenet_v2.py": ["--weights", "{missing}", "--output-dir", "{out}"],
    "examples/diagnose_quickstart.py": ["--run-dir", "{missing}"],
    **{f"dataset_scripts/build_{name}.py": ["--source-dir", "{missing}", "--output-dir", "{out}", "--no-images"]
       for name in BUILDERS},
    "dataset_scripts/generate_mtcir.py": ["--pairs", "{missing}", "--vision", "{model}", "--generator", "{model}",
                                          "--output-dir", "{out}"],
    "dataset_scripts/refine_benchmark.py": ["--benchmark", "{missing}", "--split", "val", "--judge", "{model}",
                                            "--output-dir", "{out}"],
}


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_scripts_report_user_errors_the_same_way(script, paths, capsys):
    module = load_script(script)
    good = [arg.format(**paths) for arg in SCRIPTS[script]]
    for argv, expected in ((good, paths["missing"]), (good + ["--no-such-option"], "--no-such-option")):
        with pytest.raises(SystemExit) as exit_info:
            module.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith(f"{Path(script).name}: error: ") and expected in err
    assert not os.path.exists(paths["out"])


def test_console_command_in_a_subprocess(tmp_path):
    """`python -m collm_hf`: one line on stderr and exit status 2, as the console script `collm-hf` gets it."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "collm_hf", "train", "pairs", "--model", str(tmp_path / "missing"),
                             "--dataset", str(tmp_path), "--output_dir", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines() == [f"collm-hf train: error: --model {tmp_path / 'missing'}: no such folder"]
