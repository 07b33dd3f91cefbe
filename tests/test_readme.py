"""README.md: short, its runnable Python block runs, and every `collm-hf` command line in it parses (those of
docs/reproducing.md too, with its `dataset_scripts/build_<name>.py` and `examples/train_collm.py` lines)."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
RUNNABLE_MARK = "<!-- tests/test_readme.py runs this block"


def test_readme_stays_short():
    assert len(README.splitlines()) <= 280  # ~250 for the core, a few lines for each later feature, details in docs/


def test_the_use_a_model_block_runs(tmp_path, monkeypatch, tiny_model_and_processor):
    block = README.split(RUNNABLE_MARK, 1)[1]
    code = re.search(r"```python\n(.*?)\n```", block, re.DOTALL).group(1)
    model, processor = tiny_model_and_processor
    model.save_pretrained(tmp_path / "collm-quickstart" / "model")
    processor.save_pretrained(tmp_path / "collm-quickstart" / "model")
    rng = np.random.default_rng(0)
    for name in ("ref.png", "a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    assert scope["scores"].shape == (1, 2) and scope["queries"].shape == (2, model.config.projection_dim)
    with torch.no_grad():  # the fast path gives the plain path's embedding
        plain = scope["model"].get_query_embeds(**processor(images=[Image.open("ref.png")], text=["make it blue"]))
    assert torch.allclose(scope["queries"][:1], plain, atol=1e-5)


def _collm_hf_lines(text):
    """The `collm-hf` command lines of the bash blocks; a dataset builder script or the training example as the
    `collm-hf` command it equals (`build-dataset <name>`, `train`), whatever launcher runs it."""
    for block in re.findall(r"```bash\n(.*?)\n```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ", 1)[0].strip()
            line = re.sub(r"^python dataset_scripts/build_(\w+)\.py", r"collm-hf build-dataset \1", line)
            launcher = r"^(torchrun .*?|accelerate launch .*?|python )examples/train_collm\.py"
            line = re.sub(launcher, "collm-hf train", line)
            if line.startswith("collm-hf "):
                yield line


REPRODUCING = (ROOT / "docs" / "reproducing.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("line", [*_collm_hf_lines(README), *_collm_hf_lines(REPRODUCING)])
def test_every_collm_hf_command_line_parses(line):
    from collm_hf.apps.cli import build_parser
    from collm_hf.apps.commands.train import parse_options

    argv = shlex.split(line)[1:]
    args = build_parser().parse_args(argv)
    if args.command == "train":
        options = list(args.options)
        if "--bf16" in options and not torch.cuda.is_available():  # TrainingArguments checks bf16 against the hardware
            options += ["--use_cpu", "True"]
        parse_options(options)


def test_reproducing_lists_every_training_and_dataset_command():
    lines = list(_collm_hf_lines(REPRODUCING))
    assert sum(line.startswith("collm-hf train ") for line in lines) == 4
    built = {line.split()[2] for line in lines if line.startswith("collm-hf build-dataset ")}
    assert built >= {"cirr", "circo", "fashioniq", "mtcir", "pairs"}
