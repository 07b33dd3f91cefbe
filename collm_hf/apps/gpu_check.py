"""GPU check: CoLLM training at the paper's shapes, with random weights, on the GPUs present, in a few minutes.

    python examples/gpu_check.py                       # the GPUs of this machine (about 2-3 minutes on one)
    python examples/gpu_check.py --tiny --device cpu   # the same code at tiny shapes on the CPU (a dry run)

The model has the paper's shapes (CoLLM §5): a CLIP ViT-L/14 tower (224 px, frozen, bf16) and an LLM shaped as
Mistral-7B (SFR-Embedding-2_R: hidden 4096, 32 heads, 8 key-value heads, MLP 14336, vocabulary 32000) cut to
`--llm-layers` decoder layers, with random weights; queries of `--text-tokens` tokens. Every check trains through
the package's own pieces (`CoLLMTrainer` or `GradCacheTrainer` with `--bf16`, `apply_lora`, `fp32_master_weights`,
QLoRA's 4-bit loading, `shard_model`) and prints one line:

    lora              LoRA rank 16 on the LLM, SDPA attention, `--batch` triplets per step
    lora_flash_attn2  the same with FlashAttention 2 (skipped when `flash_attn` is not installed)
    qlora             the LLM loaded in 4-bit NF4 (bitsandbytes), LoRA on it
    gradient_cache    steps of `--cache-rows` (1,024) triplets, `--chunk-size` queries per LLM pass, and the
                      difference between the loss of such a step and the full-batch loss of the same rows
    fsdp              FSDP2 over every GPU present (torchrun, one process per GPU); skipped on one GPU

A line gives the step time (median of the timed steps, after warm-up steps), the peak memory, the model FLOP rate
and the model FLOP utilisation (MFU) against the GPU's dense bf16 peak (`BF16_PEAK_TFLOPS` by device name; for
another GPU, a measured bf16 matrix-product rate). Model FLOPs count the work of a step once (`model_flops`):
activation recomputation and the gradient cache's second query pass are not counted, as MFU is defined (PaLM,
Chowdhery et al. 2022, appendix B). `--time-budget` (240 s) skips the checks that would start after it.

Without CUDA (unless `--device cpu`) it prints one line and exits. It imports neither `datasets` nor FAISS.

Measured: not yet run.
"""

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import torch

NO_CUDA = "gpu_check: no CUDA device, nothing checked (run it on a GPU machine; --tiny --device cpu is a dry run)"
RESULT_PREFIX = "gpu_check result: "

# Dense bf16 tensor-core peaks (TFLOP/s, without sparsity) from NVIDIA's data sheets, by a part of the device name;
# the longest matching key wins ("H100 PCIe" before "H100", "A100" before "A10").
BF16_PEAK_TFLOPS = {
    "B200": 2250.0,
    "GH200": 989.0,
    "H200 NVL": 835.0,
    "H200": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM ("NVIDIA H100 80GB HBM3")
    "H800": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10": 125.0,
}

# CLIP ViT-L/14 at 224 px, the paper's tower (with CLIP's 768-d projection: the gallery embedding).
CLIP_L14 = {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
            "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 224, "patch_size": 14,
            "projection_dim": 768}
# Mistral-7B's shape (SFR-Embedding-2_R, the paper's LLM); the number of layers is set per run.
MISTRAL_7B = {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
              "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 32000, "max_position_embeddings": 4096,
              "sliding_window": None}


@dataclass(frozen=True)
class Shapes:
    """What a check trains: the two towers' configs and the batch sizes."""

    vision: dict
    llm: dict
    text_tokens: int  # tokens per query (prompt, image placeholder, modification text, end token)
    batch: int  # triplets per step of the LoRA, QLoRA and FSDP checks (per GPU)
    cache_rows: int  # triplets per gradient-cache step (the paper's batch)
    chunk_size: int  # query rows per LLM pass of the gradient cache
    lora_rank: int = 16  # the paper's fine-tuning rank


def paper_shapes(llm_layers: int = 4, batch: int = 128, cache_rows: int = 1024, chunk_size: int = 128,
                 text_tokens: int = 64) -> Shapes:
    """CLIP ViT-L/14 + a Mistral-7B-shaped LLM of `llm_layers` layers (the paper's batch of 1,024 is 128 per GPU on
    8 GPUs)."""
    return Shapes(dict(CLIP_L14), dict(MISTRAL_7B, num_hidden_layers=llm_layers), text_tokens, batch, cache_rows,
                  chunk_size)


def tiny_shapes() -> Shapes:
    """The test configs (hidden 32, 2 layers): the same code in seconds on a CPU."""
    from ..testing_utils import TEXT_CONFIGS, VISION_CONFIGS

    return Shapes(dict(VISION_CONFIGS["clip"]), dict(TEXT_CONFIGS["mistral"], vocab_size=400), text_tokens=12,
                  batch=4, cache_rows=8, chunk_size=3, lora_rank=4)


# ----------------------------------------------------------------------------------------------------------
# Model FLOPs and the GPU's peak
# ----------------------------------------------------------------------------------------------------------
def _llm_dims(llm: dict) -> tuple[int, int, int, int, int, int]:
    hidden, heads = llm["hidden_size"], llm["num_attention_heads"]
    head_dim = llm.get("head_dim") or hidden // heads
    kv_heads = llm.get("num_key_value_heads", heads)
    return hidden, llm["intermediate_size"], llm["num_hidden_layers"], heads, kv_heads, head_dim


def llm_forward_flops(llm: dict, tokens: int) -> int:
    """Forward FLOPs of one sequence of `tokens` through a Llama/Mistral-style decoder (no LM head): the matrix
    products of attention (q, k, v, o) and the gated MLP, plus QK^T and AV (4 T^2 d per layer)."""
    hidden, intermediate, layers, heads, kv_heads, head_dim = _llm_dims(llm)
    weights = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2 + 3 * hidden * intermediate
    return layers * (2 * weights * tokens + 4 * tokens * tokens * heads * head_dim)


def vision_forward_flops(vision: dict) -> int:
    """Forward FLOPs of one image through a CLIP-style ViT (patch embedding, layers, projection)."""
    width, layers = vision["hidden_size"], vision["num_hidden_layers"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    tokens = patches + 1  # the class token
    patch_embedding = 2 * patches * 3 * vision["patch_size"] ** 2 * width
    per_layer = 2 * tokens * (4 * width * width + 2 * width * vision["intermediate_size"]) + 4 * tokens * tokens * width
    return patch_embedding + layers * per_layer + 2 * width * vision.get("projection_dim", 0)


def model_flops(shapes: Shapes, rows: int, llm_passes: int = 2, adapter_type: str = "mlp") -> int:
    """Model FLOPs of one training step on `rows` triplets.

    The frozen tower runs forward once per image (references and targets: 2 rows images). The LLM runs forward and,
    under LoRA, backward to its activations only (its weights are frozen): `llm_passes` = 2 forward-equivalents (3
    for full fine-tuning). LoRA's own products (r (in + out) per token and layer, under 1 % at rank 16) are left out.
    """
    hidden = shapes.llm["hidden_size"]
    image_dim = shapes.vision.get("projection_dim") or shapes.vision["hidden_size"]
    adapter = 2 * image_dim * hidden + 2 * hidden * hidden if adapter_type == "mlp" else 2 * image_dim * hidden
    projection = 2 * hidden * image_dim
    vision = 2 * rows * vision_forward_flops(shapes.vision)
    query = rows * (llm_forward_flops(shapes.llm, shapes.text_tokens) + adapter + projection)
    return vision + llm_passes * query


def bf16_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named `device_name` (`torch.cuda.get_device_name()`), or None if unknown."""
    matches = [key for key in BF16_PEAK_TFLOPS if key.lower() in device_name.lower()]
    return BF16_PEAK_TFLOPS[max(matches, key=len)] if matches else None


def measured_matmul_tflops(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """The bf16 rate of a (size x size) @ (size x size) product on `device`, best of `repeats` (TFLOP/s)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(repeats + 2):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _reset_peak_memory(device: torch.device) -> None:
    gc.collect()  # the previous check's model and trainer (reference cycles) before its memory is released
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ----------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """One line of the report."""

    name: str
    step_s: float | None = None
    peak_memory_gib: float | None = None
    model_tflops: float | None = None  # model FLOPs per second, all devices together
    mfu: float | None = None  # model_tflops / (peak x devices)
    note: str = ""
    skipped: str | None = None  # why the check did not run
    extra: dict = field(default_factory=dict)

    def line(self) -> str:
        if self.skipped is not None:
            return f"{self.name:<17} skipped: {self.skipped}"
        memory = "-" if self.peak_memory_gib is None else f"{self.peak_memory_gib:6.1f} GiB"
        mfu = "-" if self.mfu is None else f"{100 * self.mfu:5.1f} %"
        return (f"{self.name:<17} step {self.step_s:8.3f} s   peak {memory}   {self.model_tflops:8.4g} TFLOP/s"
                f"   MFU {mfu}   {self.note}").rstrip()


def _result(name, step_times, flops, peak_tflops, devices, device, note="", **extra) -> CheckResult:
    step = statistics.median(step_times)
    tflops = flops / step / 1e12
    mfu = tflops / (peak_tflops * devices) if peak_tflops else None
    return CheckResult(name, step, _peak_memory_gib(device), tflops, mfu, note, extra=extra)


# ----------------------------------------------------------------------------------------------------------
# Models and batches
# ----------------------------------------------------------------------------------------------------------
def build_model(shapes: Shapes, device: torch.device, attn_implementation: str = "sdpa", seed: int = 0):
    """A random `CoLLMModel` of `shapes` in bf16, built on `device` (no CPU copy of the weights), with
    `attn_implementation` in both towers."""
    from ..models.collm.configuration_collm import CoLLMConfig
    from ..models.collm.modeling_collm import CoLLMModel

    config = CoLLMConfig(vision_config=dict(shapes.vision), text_config=dict(shapes.llm))
    torch.manual_seed(seed)
    with torch.device(device):
        return CoLLMModel._from_config(config, dtype=torch.bfloat16, attn_implementation={
            "text_config": attn_implementation, "vision_config": attn_implementation})


def synthetic_batch(shapes: Shapes, config, rows: int, device: torch.device, seed: int = 0) -> dict:
    """A triplet batch as `CoLLMTripletCollator` makes it, of random tokens and pixels: `rows` queries of
    `shapes.text_tokens` tokens (the image placeholders after a short prompt) and distinct reference and target images."""
    generator = torch.Generator().manual_seed(seed)
    size = shapes.vision["image_size"]
    n_visual = config.num_visual_tokens
    ids = torch.randint(2, shapes.llm["vocab_size"], (rows, shapes.text_tokens), generator=generator)
    start = min(8, shapes.text_tokens - n_visual - 1)
    ids[:, start:start + n_visual] = config.image_token_id
    ids[:, -1] = 1  # the end-of-sequence token that is pooled
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "pixel_values": torch.randn(rows, 3, size, size, generator=generator).to(device, torch.bfloat16),
        "target_pixel_values": torch.randn(rows, 3, size, size, generator=generator).to(device, torch.bfloat16),
        "target_image_ids": torch.arange(rows).to(device),
        "return_loss": True,
    }


def with_lora(model, shapes: Shapes, dropout: float = 0.1):
    """The model with LoRA on its LLM (`apply_lora`, the paper's triplet stage) and fp32 master weights."""
    from ..training.lora import LoraArguments, apply_lora
    from ..training.trainer import fp32_master_weights

    peft_model = apply_lora(model, "triplets", LoraArguments(lora_rank=shapes.lora_rank, lora_dropout=dropout))
    fp32_master_weights(peft_model)
    return peft_model


# ----------------------------------------------------------------------------------------------------------
# Checks through the Trainer
# ----------------------------------------------------------------------------------------------------------
def _first(items):
    return items[0]


def train_steps(model, batch: dict, device: torch.device, warmup: int, steps: int, output_dir: str,
                chunk_size: int | None = None) -> list[float]:
    """Train `warmup + steps` steps on `batch` (already on `device`) with `CoLLMTrainer` (or `GradCacheTrainer` with
    `chunk_size`) under `--bf16`; returns the times of the last `steps` steps (s)."""
    from transformers import PrinterCallback, TrainerCallback, TrainingArguments

    from ..training.gradient_cache import GradCacheTrainer
    from ..training.trainer import CoLLMTrainer

    times = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            _sync(device)
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            times.append(time.perf_counter() - self.start)

    args = TrainingArguments(
        output_dir=output_dir, max_steps=warmup + steps, per_device_train_batch_size=1, bf16=True,
        use_cpu=device.type == "cpu", learning_rate=1e-4, lr_scheduler_type="constant", save_strategy="no",
        logging_strategy="no", report_to="none", disable_tqdm=True, dataloader_pin_memory=False,
        remove_unused_columns=False, activation_checkpointing=True,
        activation_checkpointing_kwargs={"use_reentrant": False}, seed=0,
    )
    kwargs = {"model": model, "args": args, "train_dataset": [batch] * (warmup + steps), "data_collator": _first,
              "callbacks": [StepTimer()]}
    trainer = GradCacheTrainer(chunk_size=chunk_size, **kwargs) if chunk_size else CoLLMTrainer(**kwargs)
    trainer.remove_callback(PrinterCallback)  # the report is this module's lines
    trainer.train()
    return times[warmup:]


def check_lora(shapes, device, peak, options, attn_implementation="sdpa", name="lora") -> CheckResult:
    _reset_peak_memory(device)
    model = with_lora(build_model(shapes, device, attn_implementation), shapes)
    batch = synthetic_batch(shapes, model.config, shapes.batch, device)
    times = train_steps(model, batch, device, options.warmup, options.steps, options.output_dir)
    note = f"(batch {shapes.batch} x {shapes.text_tokens} tokens, {attn_implementation})"
    return _result(name, times, model_flops(shapes, shapes.batch), peak, 1, device, note)


def check_flash_attention(shapes, device, peak, options) -> CheckResult:
    from transformers.utils import is_flash_attn_2_available

    if device.type != "cuda" or not is_flash_attn_2_available():
        return CheckResult("lora_flash_attn2", skipped="flash_attn is not installed (or no CUDA)")
    return check_lora(shapes, device, peak, options, "flash_attention_2", "lora_flash_attn2")


def check_qlora(shapes, device, peak, options) -> CheckResult:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return CheckResult("qlora", skipped="bitsandbytes is not installed")
    from transformers import AutoModel

    from ..training.lora import quantization_config

    folder = os.path.join(options.output_dir, "random_collm")
    model = build_model(shapes, device)
    model.save_pretrained(folder)
    del model
    _reset_peak_memory(device)
    quantized = AutoModel.from_pretrained(folder, quantization_config=quantization_config(torch.bfloat16),
                                          dtype=torch.bfloat16, device_map={"": str(device)})
    model = with_lora(quantized, shapes)
    batch = synthetic_batch(shapes, model.config, shapes.batch, device)
    times = train_steps(model, batch, device, options.warmup, options.steps, options.output_dir)
    note = f"(batch {shapes.batch}, LLM in 4-bit NF4)"
    return _result("qlora", times, model_flops(shapes, shapes.batch), peak, 1, device, note)


def check_gradient_cache(shapes, device, peak, options) -> CheckResult:
    """Steps of `cache_rows` triplets through `GradCacheTrainer`, and its loss against the full-batch loss of the same
    rows (no dropout; the full batch runs without a graph, which is what fits)."""
    from ..training.gradient_cache import grad_cache_step

    _reset_peak_memory(device)
    model = with_lora(build_model(shapes, device), shapes, dropout=0.0)
    batch = synthetic_batch(shapes, model.config, shapes.cache_rows, device, seed=1)
    base = model.get_base_model()

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16)

    with torch.no_grad(), autocast():
        full = float(base(**batch).loss)
    cached = float(grad_cache_step(base, batch, shapes.chunk_size, autocast=autocast))
    model.zero_grad(set_to_none=True)
    times = train_steps(model, batch, device, options.warmup // 2, max(1, options.steps // 2), options.output_dir,
                        chunk_size=shapes.chunk_size)
    difference = abs(cached - full)
    note = (f"(batch {shapes.cache_rows}, chunks of {shapes.chunk_size}; loss {cached:.5f} vs full batch {full:.5f}, "
            f"difference {difference:.2e})")
    return _result("gradient_cache", times, model_flops(shapes, shapes.cache_rows), peak, 1, device, note,
                   loss=cached, full_batch_loss=full, loss_difference=difference)


# ----------------------------------------------------------------------------------------------------------
# FSDP: one process per GPU under torchrun
# ----------------------------------------------------------------------------------------------------------
def fsdp_worker(shapes: Shapes, options) -> int:
    """One process of the FSDP check (under torchrun): FSDP2 over all processes (`sharding.shard_model`, bf16
    parameters, fp32 gradient reduction), LoRA, `shapes.batch` triplets per process; rank 0 prints the result."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from ..training.sharding import shard_model

    cuda = options.device == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        _reset_peak_memory(device)
        model = with_lora(build_model(shapes, device), shapes)  # same seed: the same weights on every process
        shard_model(model, mesh=init_device_mesh(device.type, (world,)),
                    mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        batch = synthetic_batch(shapes, model.config, shapes.batch, device, seed=100 + rank)
        model.train()
        times = []
        for _ in range(options.warmup + options.steps):
            _sync(device)
            start = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            times.append(time.perf_counter() - start)
        step = torch.tensor(statistics.median(times[options.warmup:]), device=device)
        dist.all_reduce(step, op=dist.ReduceOp.MAX)  # the slowest process sets the pace
        if rank == 0:
            peak = options.peak_tflops or None
            note = f"({world} processes x batch {shapes.batch}, loss {float(loss):.4f})"
            result = _result("fsdp", [float(step)], model_flops(shapes, shapes.batch * world), peak, world, device,
                             note, processes=world)
            print(RESULT_PREFIX + json.dumps(asdict(result)), flush=True)
    finally:
        dist.destroy_process_group()
    return 0


def check_fsdp(shapes, device, peak, options, argv: list[str]) -> CheckResult:
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if count < 2:
        return CheckResult("fsdp", skipped=f"{count or 'no'} GPU{'s' if count != 1 else ''}: FSDP needs 2 or more")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(count),
               "-m", "collm_hf.apps.gpu_check", *argv, "--fsdp-worker", "--peak-tflops", str(peak or 0)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=options.fsdp_timeout)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return CheckResult(**json.loads(line[len(RESULT_PREFIX):]))
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return CheckResult("fsdp", skipped=f"failed (exit status {done.returncode}): {tail[0]}")


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cuda (default), or cpu for a dry run of the same code (with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (hidden 32, 2 layers) instead of the paper's")
    parser.add_argument("--llm-layers", type=int, default=4, help="decoder layers of the Mistral-7B-shaped LLM (4)")
    parser.add_argument("--batch", type=int, default=128, help="triplets per step and GPU (128)")
    parser.add_argument("--cache-rows", type=int, default=1024, help="triplets per gradient-cache step (1024)")
    parser.add_argument("--chunk-size", type=int, default=128, help="query rows per LLM pass of the cache (128)")
    parser.add_argument("--text-tokens", type=int, default=64, help="tokens per query (64)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before the timed ones (2)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per check (5)")
    parser.add_argument("--only", nargs="+", choices=CHECKS, help="run only these checks")
    parser.add_argument("--time-budget", type=float, default=240.0,
                        help="seconds after which the remaining checks are skipped (240)")
    parser.add_argument("--fsdp-timeout", type=float, default=300.0, help="seconds for the FSDP launch (300)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--fsdp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--peak-tflops", type=float, default=0.0, help=argparse.SUPPRESS)


CHECKS = ("lora", "lora_flash_attn2", "qlora", "gradient_cache", "fsdp")


def _shapes(options) -> Shapes:
    if options.tiny:
        return tiny_shapes()
    return paper_shapes(options.llm_layers, options.batch, options.cache_rows, options.chunk_size, options.text_tokens)


def _forwarded_argv(argv: list[str]) -> list[str]:
    """The options a worker process gets: this run's, less those (and their values) only the parent uses."""
    out, dropping = [], False
    for item in argv:
        if item.startswith("--"):
            dropping = item.split("=", 1)[0] in ("--only", "--json", "--time-budget", "--fsdp-timeout")
        if not dropping:
            out.append(item)
    return out


def run(options, argv: list[str] | None = None) -> int:
    """Run the checks `options` selects and print one line each (and, with `--json`, write them)."""
    if options.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    shapes = _shapes(options)
    if options.fsdp_worker:
        return fsdp_worker(shapes, options)
    import transformers

    device = torch.device("cuda", torch.cuda.current_device()) if options.device == "cuda" else torch.device("cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = bf16_peak_tflops(name) if device.type == "cuda" else None
    source = "data sheet"
    if peak is None:
        peak, source = measured_matmul_tflops(device, 8192 if device.type == "cuda" else 256), "measured matmul"
    count = f" x {torch.cuda.device_count()}" if device.type == "cuda" else ""
    print(f"gpu_check: {name}{count}, bf16 peak "
          f"{peak:.4g} TFLOP/s ({source}); torch {torch.__version__}, transformers {transformers.__version__}; "
          f"LLM {shapes.llm['num_hidden_layers']} layers of hidden {shapes.llm['hidden_size']}, tower "
          f"{shapes.vision['num_hidden_layers']} layers of width {shapes.vision['hidden_size']}", flush=True)
    checks = {
        "lora": lambda: check_lora(shapes, device, peak, options),
        "lora_flash_attn2": lambda: check_flash_attention(shapes, device, peak, options),
        "qlora": lambda: check_qlora(shapes, device, peak, options),
        "gradient_cache": lambda: check_gradient_cache(shapes, device, peak, options),
        "fsdp": lambda: check_fsdp(shapes, device, peak, options, _forwarded_argv(argv or [])),
    }
    start, results = time.perf_counter(), []
    for check in options.only or CHECKS:
        if time.perf_counter() - start > options.time_budget:
            result = CheckResult(check, skipped=f"time budget of {options.time_budget:.0f} s spent")
        else:
            result = checks[check]()
        results.append(result)
        print(result.line(), flush=True)
        _reset_peak_memory(device)
    if options.json:
        from ..utils.atomic import atomic_write_json

        atomic_write_json(options.json, {"device": name, "bf16_peak_tflops": peak, "peak_source": source,
                                         "shapes": asdict(shapes), "results": [asdict(r) for r in results]}, indent=2)
    return 0


def main(argv: list[str] | None = None, prog: str = "gpu_check.py") -> int:
    """`python examples/gpu_check.py [options]` (and `python -m collm_hf.apps.gpu_check`, which torchrun starts)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="collm_gpu_check_") as output_dir:
        options.output_dir = output_dir
        return run(options, argv)


__all__ = ["BF16_PEAK_TFLOPS", "CheckResult", "Shapes", "bf16_peak_tflops", "model_flops", "paper_shapes", "run",
           "tiny_shapes"]


if __name__ == "__main__":
    sys.exit(main())

