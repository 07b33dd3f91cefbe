"""GPU check: CoLLM training at the paper's shapes (CLIP ViT-L/14 + a Mistral-7B-shaped LLM cut to a few layers,
random weights) on the GPUs present: bf16, SDPA (and FlashAttention 2 when installed), LoRA, QLoRA, a gradient-cache
step over 1,024 triplets, FSDP over 2 or more GPUs. Prints step time, peak memory, MFU and the gradient-cache vs
full-batch loss difference; the logic and its description are in `collm_hf.apps.gpu_check`.

Examples:
    python examples/gpu_check.py                          # about 2-3 minutes on one GPU
    python examples/gpu_check.py --llm-layers 8 --json gpu_check.json
    python examples/gpu_check.py --tiny --device cpu      # a dry run of the same code on the CPU

Without CUDA (and without --device cpu) it prints one line and exits.
"""

import sys

from collm_hf.apps.gpu_check import main

if __name__ == "__main__":
    sys.exit(main(prog="gpu_check.py"))
