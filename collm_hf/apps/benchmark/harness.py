"""What every figure shares: the sizes of a run, interleaved medians, peak memory, the machine's matmul rate."""

import ctypes
import re
import statistics
import threading
import time
from dataclasses import dataclass

import torch


# SmolLM2-135M's shape (HuggingFaceTB/SmolLM2-135M config.json) and OpenAI CLIP ViT-B/32's vision tower.
SMOLLM2_135M = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0}
CLIP_B32 = {"model_type": "clip_vision_model", "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "image_size": 224, "patch_size": 32, "projection_dim": 512}
TINY_LLM = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024, "max_position_embeddings": 512}
TINY_VISION = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
               "num_attention_heads": 4, "image_size": 32, "patch_size": 8, "projection_dim": 32}


@dataclass
class BenchmarkSizes:
    """What one run measures on; the JSON records it. `full()` is the full protocol, `quick()` fits 3 minutes."""

    llm_layers: int = 30  # SmolLM2-135M has 30; --quick keeps the layer shape and uses fewer layers
    tiny_models: bool = False  # hidden-32 towers (tests)
    num_queries: int = 1024
    batch_size: int = 64
    gallery_size: int = 200_000
    index_images: int = 1_000_000  # gallery rows of the index figures (saved to disk, memory-mapped)
    search_queries: int = 1000
    embed_dim: int = 512
    top_k: int = 10
    synthesis_batch: int = 16
    synthesis_steps: int = 3
    pipeline_images: int = 128
    builder_images: tuple = (2000, 8000)
    matmul_size: int = 2048
    quickstart_groups: int = 24  # stage-2 batch of the quickstart figure (its recipe's size); stage 1 gets 64 // 24 x
    streaming_rows: tuple = (20_000, 200_000)  # MTCIR-shaped rows of the two streamed training runs
    repeats: int = 3

    @classmethod
    def full(cls) -> "BenchmarkSizes":
        return cls()

    @classmethod
    def quick(cls) -> "BenchmarkSizes":
        return cls(llm_layers=4, num_queries=384, gallery_size=100_000, index_images=100_000, synthesis_batch=8,
                   synthesis_steps=3, pipeline_images=32, builder_images=(500, 2000), repeats=3)

    @classmethod
    def smoke(cls) -> "BenchmarkSizes":
        return cls(llm_layers=2, tiny_models=True, num_queries=24, batch_size=8, gallery_size=2000, index_images=3000,
                   search_queries=16, embed_dim=32, synthesis_batch=4, synthesis_steps=1, pipeline_images=4,
                   builder_images=(10, 40), matmul_size=128, quickstart_groups=3, streaming_rows=(200, 2000), repeats=1)


def interleaved_medians(functions: dict, repeats: int, warmup: int = 1) -> dict:
    """Median seconds of each function, run in alternating order (`warmup` untimed rounds first)."""
    times = {name: [] for name in functions}
    names = list(functions)
    for round_index in range(warmup + repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            functions[name]()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def read_status_kib(fields) -> dict | None:
    """The `fields` of /proc/self/status (e.g. RssAnon, VmHWM) in KiB; None where it does not say them (not Linux)."""
    try:
        with open("/proc/self/status") as handle:
            text = handle.read()
        return {field: int(re.search(rf"{field}:\s+(\d+)", text).group(1)) for field in fields}
    except (OSError, AttributeError):
        return None


class PeakMemory:
    """Peak RssAnon (heap) and RssFile (pages of memory-mapped files) of this process, sampled every `interval`
    seconds from a thread while the block runs (zeros where /proc/self/status is missing: not Linux).

    `with PeakMemory() as memory:` (or `start()` ... `stop()`); `added(field)`: bytes above the value at the start;
    `peak_bytes(field)`: the peak itself.
    """

    FIELDS = ("RssAnon", "RssFile")

    def __init__(self, interval: float = 0.001):
        self.interval, self.peak, self._stop = interval, {}, threading.Event()

    @classmethod
    def _now(cls) -> dict:
        return read_status_kib(cls.FIELDS) or dict.fromkeys(cls.FIELDS, 0)

    def start(self) -> "PeakMemory":
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap handed back: the baseline is live memory only
        except OSError:
            pass
        self.baseline = self._now()
        self.peak = dict(self.baseline)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self._update()
            time.sleep(self.interval)

    def _update(self):
        for field, value in self._now().items():
            self.peak[field] = max(self.peak[field], value)

    def stop(self):
        self._stop.set()
        self._thread.join()
        self._update()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def added(self, field: str) -> int:
        """Bytes of `field` added at the peak."""
        return max(0, self.peak[field] - self.baseline[field]) * 1024

    def peak_bytes(self, field: str) -> int:
        return self.peak[field] * 1024


def peak_memory_above_baseline(function) -> int | None:
    """Bytes of resident memory `function` adds at its peak (Linux: VmHWM reset via clear_refs); None elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the baseline is live memory only
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS
    except OSError:
        function()
        return None
    baseline = read_status_kib(("VmRSS",))
    function()
    peak = read_status_kib(("VmHWM",))
    return None if baseline is None or peak is None else max(0, peak["VmHWM"] - baseline["VmRSS"]) * 1024


def matmul_flops_per_second(size: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of an fp32 (size x size) @ (size x size) matmul, median of `repeats`."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = interleaved_medians({"matmul": lambda: a @ b}, repeats)["matmul"]
    return 2 * size**3 / seconds
