"""README.md: short, its runnable Python block runs, and every `collm-hf` command line in it parses."""

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
    assert len(README.splitlines()) <= 250


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


def _collm_hf_lines():
    for block in re.findall(r"```bash\n(.*?)\n```", README, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ", 1)[0].strip()
            if line.startswith("collm-hf "):
                yield line


@pytest.mark.parametrize("line", list(_collm_hf_lines()))
def test_every_collm_hf_command_line_parses(line):
    from collm_hf.apps.cli import build_parser
    from collm_hf.apps.commands.train import parse_options

    argv = shlex.split(line)[1:]
    args = build_parser().parse_args(argv)
    if args.command == "train":
        parse_options(args.options)
