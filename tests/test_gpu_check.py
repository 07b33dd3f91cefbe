"""examples/gpu_check.py on a CPU: one line without CUDA, a tiny dry run of every check that runs without a GPU, the
FSDP worker under torchrun (gloo), and its model FLOPs against torch's FLOP counter."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _multiprocess import launch_with_retry

from collm_hf.apps import gpu_check

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "gpu_check.py"


def test_without_cuda_it_exits_at_once_with_one_line():
    done = subprocess.run([sys.executable, str(SCRIPT)], check=False, capture_output=True, text=True, timeout=120,
                          env={"CUDA_VISIBLE_DEVICES": "", "PATH": "", "HF_HUB_OFFLINE": "1"}, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.splitlines() == [gpu_check.NO_CUDA]


def test_tiny_dry_run_on_the_cpu(tmp_path):
    """Every check that needs no GPU runs at tiny shapes, in a process where `datasets` and FAISS cannot be imported."""
    out = tmp_path / "gpu_check.json"
    code = ("import sys; sys.modules['datasets'] = sys.modules['faiss'] = None\n"
            "from collm_hf.apps.gpu_check import main\n"
            f"sys.exit(main(['--tiny', '--device', 'cpu', '--warmup', '0', '--steps', '1', '--json', {str(out)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.split(" ", 1)[0] in gpu_check.CHECKS]
    assert [line.split()[0] for line in lines] == list(gpu_check.CHECKS)
    report = json.loads(out.read_text())
    results = {r["name"]: r for r in report["results"]}
    assert report["peak_source"] == "measured matmul" and report["bf16_peak_tflops"] > 0
    for name in ("lora", "qlora", "gradient_cache"):
        result = results[name]
        assert result["skipped"] is None and result["step_s"] > 0 and 0 < result["mfu"] < 1, result
    assert results["gradient_cache"]["extra"]["loss_difference"] < 1e-3
    assert "no GPUs" in results["fsdp"]["skipped"] and results["lora_flash_attn2"]["skipped"]


def test_fsdp_worker_under_torchrun_on_cpu():
    pytest.importorskip("torch.distributed.fsdp")
    out = launch_with_retry(SCRIPT, ["--tiny", "--device", "cpu", "--warmup", "0", "--steps", "1", "--fsdp-worker"],
                            nproc=2)
    line = next(line for line in out.splitlines() if line.startswith(gpu_check.RESULT_PREFIX))
    result = json.loads(line[len(gpu_check.RESULT_PREFIX):])
    assert result["name"] == "fsdp" and result["extra"]["processes"] == 2 and result["step_s"] > 0


def test_model_flops_match_the_flop_counter():
    """The analytic count of `model_flops` (forward only) against torch's count of one forward of the tiny model."""
    from torch.utils.flop_counter import FlopCounterMode

    shapes = gpu_check.tiny_shapes()
    model = gpu_check.build_model(shapes, torch.device("cpu"), attn_implementation="eager").eval()
    batch = gpu_check.synthetic_batch(shapes, model.config, 6, torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**batch)
    expected = gpu_check.model_flops(shapes, 6, llm_passes=1)
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.005)


def test_bf16_peaks_by_device_name():
    assert gpu_check.bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert gpu_check.bf16_peak_tflops("NVIDIA H100 PCIe") == 756
    assert gpu_check.bf16_peak_tflops("NVIDIA H200") == 989
    assert gpu_check.bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert gpu_check.bf16_peak_tflops("NVIDIA A10") == 125 and gpu_check.bf16_peak_tflops("NVIDIA L40S") == 362
    assert gpu_check.bf16_peak_tflops("Some New GPU") is None


def test_paper_shapes_are_the_papers():
    shapes = gpu_check.paper_shapes(llm_layers=32)
    assert gpu_check.llm_forward_flops(shapes.llm, 1) == pytest.approx(2 * 6.98e9, rel=0.01)  # Mistral-7B less embeddings
    assert gpu_check.vision_forward_flops(shapes.vision) == pytest.approx(2 * 0.303e9 * 257, rel=0.05)  # ViT-L/14
