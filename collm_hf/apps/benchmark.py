"""Performance figures of the package, each a ratio measured in one process on the same inputs.

Every timing is the median of `repeats` runs after one warm-up run; the two sides of a ratio are interleaved
(A, B, A, B, ...) so that load from other processes hits both alike. Models have random weights (shapes are what
costs time); nothing is downloaded. `examples/benchmark.py` is the command line; it calls `run_benchmarks`.

Figures (keys of the result):
    query_speedup_vs_naive       queries/s of `CoLLMQueryEncoder` over the plain padded forward
    query_matmul_utilization     FLOP/s the encoder executes over FLOP/s of a large fp32 matmul
    search_time_vs_faiss         exact top-k time, `GalleryIndex.search(backend="torch")` over FAISS IndexFlatIP
    synthesis_overhead           share of a pair pre-training step spent in triplet synthesis
    gallery_pipeline_efficiency  images/s from files (decode + preprocess + encode) over encoder-only images/s
    builder_memory_growth        peak RSS of a dataset build at a large size over a small one
    quickstart_eager_speedup     training-step time of the quickstart's model with sdpa attention over eager
                                 (the choice of `QuickstartRecipe.attn_implementation`)
"""

import ctypes
import itertools
import random
import re
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

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
    search_queries: int = 1000
    embed_dim: int = 512
    top_k: int = 10
    synthesis_batch: int = 16
    synthesis_steps: int = 3
    pipeline_images: int = 128
    builder_images: tuple = (2000, 8000)
    matmul_size: int = 2048
    quickstart_groups: int = 24  # stage-2 batch of the quickstart figure (its recipe's size); stage 1 gets 64 // 24 x
    repeats: int = 3

    @classmethod
    def full(cls) -> "BenchmarkSizes":
        return cls()

    @classmethod
    def quick(cls) -> "BenchmarkSizes":
        return cls(llm_layers=4, num_queries=384, gallery_size=100_000, synthesis_batch=8, synthesis_steps=3,
                   pipeline_images=32, builder_images=(500, 2000), repeats=3)

    @classmethod
    def smoke(cls) -> "BenchmarkSizes":
        return cls(llm_layers=2, tiny_models=True, num_queries=24, batch_size=8, gallery_size=2000, search_queries=16,
                   embed_dim=32, synthesis_batch=4, synthesis_steps=1, pipeline_images=4, builder_images=(10, 40),
                   matmul_size=128, quickstart_groups=3, repeats=1)


# ----------------------------------------------------------------------------------------------------------
# Timing and memory helpers
# ----------------------------------------------------------------------------------------------------------
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


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            return int(re.search(rf"{field}:\s+(\d+)", handle.read()).group(1))
    except (OSError, AttributeError):
        return None


def peak_memory_above_baseline(function) -> int | None:
    """Bytes of resident memory `function` adds at its peak (Linux: VmHWM reset via clear_refs); None elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the baseline is live memory only
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS
    except OSError:
        function()
        return None
    baseline = _status_kib("VmRSS")
    function()
    peak = _status_kib("VmHWM")
    return None if baseline is None or peak is None else max(0, peak - baseline) * 1024


def matmul_flops_per_second(size: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of an fp32 (size x size) @ (size x size) matmul, median of `repeats`."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = interleaved_medians({"matmul": lambda: a @ b}, repeats)["matmul"]
    return 2 * size**3 / seconds


# ----------------------------------------------------------------------------------------------------------
# Inputs: the synthetic world's modification texts, a tokenizer for them, a SmolLM2-shaped CoLLM
# ----------------------------------------------------------------------------------------------------------
def modification_texts(n: int, min_words: int = 6, max_words: int = 30, seed: int = 0) -> list[str]:
    """`n` modification texts of `min_words`-`max_words` words (uniform), joined from the synthetic world's edits."""
    from ..data.synthetic_world import WorldConfig, triplet_rows

    pieces = [t for row in triplet_rows(WorldConfig.tiny(seed)) for t in row["modifications"]]
    rng, stream = random.Random(seed), itertools.cycle(pieces)
    texts = []
    for _ in range(n):
        target, words = rng.randint(min_words, max_words), []
        while len(words) < target:
            words += ((" and " if words else "") + next(stream)).split()
        texts.append(" ".join(words[:target]))
    return texts


def build_benchmark_model(sizes: BenchmarkSizes, texts: list[str]):
    """(model, processor): CLIP-B/32-shaped tower + SmolLM2-135M-shaped Llama (`sizes.llm_layers` layers), random.

    The tokenizer is a byte-level BPE trained on `texts` and the paper's prompt (whole words, as a real one).
    """
    from ..testing_utils import tiny_image_processor, tiny_tokenizer
    from ..models.collm.configuration_collm import CoLLMConfig
    from ..models.collm.modeling_collm import CoLLMModel
    from ..models.collm.processing_collm import CoLLMProcessor

    vision = dict(TINY_VISION if sizes.tiny_models else CLIP_B32)
    text = dict(TINY_LLM if sizes.tiny_models else SMOLLM2_135M, num_hidden_layers=sizes.llm_layers)
    if sizes.tiny_models:
        vision["projection_dim"] = sizes.embed_dim
    corpus = texts[:2000] + ["Instruct: Find the image that matches the query.\nQuery: Image: Text:"]
    tokenizer = tiny_tokenizer(corpus, vocab_size=min(1000, text["vocab_size"]))
    torch.manual_seed(0)
    model = CoLLMModel(CoLLMConfig(vision_config=vision, text_config=text)).eval()
    processor = CoLLMProcessor.for_model(tiny_image_processor(vision["image_size"]), tokenizer, model.config)
    return model, processor


# ----------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------
def naive_query_embeds(model, processor, texts: list[str], image_embeds: torch.Tensor, batch_size: int = 64):
    """The plain transformers path: each full prompt tokenised, right-padded to its batch's longest, one LLM
    forward (`get_query_embeds`: splice, forward, last-token pooling, projection), in the given order."""
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            inputs = processor.pad_query_ids([processor.build_query_ids(t, True)[0] for t in texts[start:start + batch_size]])
            out.append(model.get_query_embeds(inputs["input_ids"], inputs["attention_mask"],
                                              image_embeds=image_embeds[start:start + batch_size]))
    return torch.cat(out)


def encoder_flops(model, stats: dict) -> float:
    """FLOPs the fast encoder executed: 2 x LLM linear parameters x tokens run (padding included) + attention
    (QK^T and AV over the causal (query, key) pairs) + adapter and projection per query."""
    llm = model.language_model
    linear = sum(m.weight.numel() for m in llm.modules() if isinstance(m, torch.nn.Linear))
    cfg = llm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attention = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * stats["attention_pairs"]
    heads = sum(m.weight.numel() for m in (*model.adapter.modules(), model.projection) if isinstance(m, torch.nn.Linear))
    return 2 * linear * (stats["suffix_tokens"] + stats["prefix_tokens"]) + attention + 2 * heads * stats["queries"]


def query_benchmark(model, processor, texts: list[str], batch_size: int = 64, repeats: int = 3, matmul_size: int = 2048,
                    seed: int = 0, bf16: bool | None = None) -> dict:
    """`query_speedup_vs_naive` and `query_matmul_utilization` on composed queries with precomputed image embeddings.

    With `bf16` (default: where `bf16_supported()`), also the encoder under bf16 autocast (reported apart: its
    embeddings differ from fp32 at the bf16 level, so it is not the headline figure).
    """
    from ..models.collm.query_encoder import CoLLMQueryEncoder, bf16_supported

    generator = torch.Generator().manual_seed(seed)
    image_embeds = F.normalize(torch.randn(len(texts), model.config.image_embedding_size, generator=generator), dim=-1)
    a, b = torch.randn(matmul_size, matmul_size), torch.randn(matmul_size, matmul_size)
    results = {}

    def fast():  # a fresh encoder each time: the prefix cache is built inside the timed call
        encoder = CoLLMQueryEncoder(model, processor)
        results["fast"] = encoder.encode(texts, image_embeds=image_embeds, batch_size=batch_size)
        results["stats"] = dict(encoder.stats)

    def fast_bf16():
        encoder = CoLLMQueryEncoder(model, processor, autocast_dtype=torch.bfloat16)
        results["fast_bf16"] = encoder.encode(texts, image_embeds=image_embeds, batch_size=batch_size)

    def naive():
        results["naive"] = naive_query_embeds(model, processor, texts, image_embeds, batch_size)

    def matmul():
        for _ in range(3):
            a @ b

    functions = {"naive": naive, "fast": fast, "matmul": matmul}
    if bf16 is None:
        bf16 = bf16_supported(model.device)
    if bf16:
        functions["fast_bf16"] = fast_bf16
    seconds = interleaved_medians(functions, repeats)
    matmul_rate = 3 * 2 * matmul_size**3 / seconds["matmul"]
    flops = encoder_flops(model, results["stats"])
    lengths = [len(processor.build_query_ids(t, True)[0]) for t in texts]
    naive_padded = sum(len(lengths[i:i + batch_size]) * max(lengths[i:i + batch_size])
                       for i in range(0, len(lengths), batch_size))
    extra = {}
    if bf16:
        extra = {"query_speedup_bf16_vs_naive": seconds["naive"] / seconds["fast_bf16"],
                 "query_bf16_max_abs_diff": float((results["fast_bf16"] - results["naive"]).abs().max())}
    return {
        **extra,
        "query_speedup_vs_naive": seconds["naive"] / seconds["fast"],
        "query_matmul_utilization": flops / seconds["fast"] / matmul_rate,
        "query_max_abs_diff": float((results["fast"] - results["naive"]).abs().max()),
        "queries_per_s_fast": len(texts) / seconds["fast"],
        "queries_per_s_naive": len(texts) / seconds["naive"],
        "encoder_gflop_per_s": flops / seconds["fast"] / 1e9,
        "matmul_gflop_per_s": matmul_rate / 1e9,
        "mean_prompt_tokens": sum(lengths) / len(texts),
        "naive_tokens_per_query": naive_padded / len(texts),
        "fast_tokens_per_query": (results["stats"]["suffix_tokens"] + results["stats"]["prefix_tokens"]) / len(texts),
        "prefix_tokens_cached": results["stats"]["prefix_tokens"],
    }


def search_benchmark(gallery_size: int = 200_000, num_queries: int = 1000, dim: int = 512, k: int = 10,
                     repeats: int = 3, seed: int = 0) -> dict:
    """`search_time_vs_faiss`: exact top-k, `GalleryIndex.search(backend="torch")` time over FAISS `IndexFlatIP`
    time (index built before timing), results checked equal, and each path's peak added memory / matrix bytes."""
    from ..evaluation.index import GalleryIndex, faiss_available

    generator = torch.Generator().manual_seed(seed)
    gallery = F.normalize(torch.randn(gallery_size, dim, generator=generator), dim=-1)  # (N, D)
    queries = F.normalize(torch.randn(num_queries, dim, generator=generator), dim=-1)  # (Q, D)
    ids = [str(i) for i in range(gallery_size)]
    matrix_bytes = gallery.numel() * gallery.element_size()
    index = GalleryIndex(gallery, ids)
    out = {"search_matrix_bytes": matrix_bytes}
    torch_memory = peak_memory_above_baseline(lambda: index.search(queries, k=k, backend="torch"))
    out["search_peak_memory_torch"] = None if torch_memory is None else torch_memory / matrix_bytes
    if not faiss_available():
        out.update(search_time_vs_faiss=None, search_note="faiss not installed")
        return out
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    faiss_memory = peak_memory_above_baseline(lambda: GalleryIndex(gallery, ids).search(queries, k=k, backend="faiss"))
    out["search_peak_memory_faiss"] = None if faiss_memory is None else faiss_memory / matrix_bytes
    start = time.perf_counter()
    index.faiss_index()
    out["faiss_build_s"] = time.perf_counter() - start
    found = {}

    def run(backend):
        found[backend] = index.search(queries, k=k, backend=backend)

    seconds = interleaved_medians({"torch": lambda: run("torch"), "faiss": lambda: run("faiss")}, repeats)
    same = (found["torch"].indices == found["faiss"].indices).float().mean().item()
    out.update(search_time_vs_faiss=seconds["torch"] / seconds["faiss"], search_torch_s=seconds["torch"],
               search_faiss_s=seconds["faiss"], search_same_results=same,
               search_auto_backend="faiss")  # GalleryIndex.search(backend="auto") uses FAISS when installed
    return out


def synthesis_benchmark(model, processor, batch_size: int = 16, steps: int = 3, seed: int = 0) -> dict:
    """`synthesis_overhead` through the training code's `measure_synthesis_overhead`, on synthetic-world pairs."""
    from ..training.collators import CoLLMPairCollator
    from ..data.synthetic_world import WorldConfig, pair_rows
    from ..training.synthesis_overhead import measure_synthesis_overhead

    rows = list(itertools.islice(pair_rows(WorldConfig.tiny(seed)), batch_size))
    batch = CoLLMPairCollator(processor, check_tokenization=False, seed=seed)(rows)
    share = measure_synthesis_overhead(model, batch, steps=steps, warmup=1)
    model.eval()
    return {"synthesis_overhead": share, "synthesis_batch": batch_size}


def _write_gallery_files(folder, n: int, seed: int = 0) -> list[str]:
    """`n` photo-like JPEGs (smooth random content, 320x240, as COCO-sized images compress) in `folder`."""
    import numpy as np
    from PIL import Image

    rng, paths = np.random.default_rng(seed), []
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
        path = f"{folder}/{i:06d}.jpg"
        small.resize((320, 240), Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def gallery_pipeline_benchmark(model, processor, num_images: int = 128, batch_size: int = 32, repeats: int = 3) -> dict:
    """`gallery_pipeline_efficiency`: images/s of `GalleryIndex.from_dataset` on JPEG files (decode + preprocess +
    encode) over images/s of `get_image_embeds` on the same images preloaded as pixel tensors."""
    from datasets import Dataset, Image

    from ..evaluation.index import GalleryIndex

    with tempfile.TemporaryDirectory() as folder:
        paths = _write_gallery_files(folder, num_images)
        dataset = Dataset.from_dict({"image_id": [str(i) for i in range(num_images)], "image": paths})
        dataset = dataset.cast_column("image", Image())
        pixels = [processor(images=dataset[i:i + batch_size]["image"])["pixel_values"]
                  for i in range(0, num_images, batch_size)]

        def from_files():
            GalleryIndex.from_dataset(dataset, model, processor, batch_size=batch_size, show_progress=False)

        def encoder_only():
            with torch.inference_mode():
                for chunk in pixels:
                    model.get_image_embeds(chunk)

        seconds = interleaved_medians({"files": from_files, "encoder": encoder_only}, repeats)
    return {"gallery_pipeline_efficiency": seconds["encoder"] / seconds["files"],
            "gallery_images_per_s_files": num_images / seconds["files"],
            "gallery_images_per_s_encoder": num_images / seconds["encoder"]}


def builder_memory_benchmark(small: int = 2000, large: int = 8000) -> dict:
    """`builder_memory_growth`: peak RSS of an MTCIR-shaped dataset build at `large` images over `small`
    (`collm_hf.data.benchmark_builder_memory`, each build in its own subprocess)."""
    from ..data.benchmark import benchmark_builder_memory

    with tempfile.TemporaryDirectory() as workdir:
        peaks = {n: benchmark_builder_memory(n, workdir) for n in (small, large)}
    return {"builder_memory_growth": peaks[large] / peaks[small], "builder_peak_rss_mib_small": peaks[small] / 2**20,
            "builder_peak_rss_mib_large": peaks[large] / 2**20}


def quickstart_attention_benchmark(groups: int = 24, repeats: int = 3, seed: int = 0) -> dict:
    """`quickstart_eager_speedup`: a stage-1 and a stage-2 training step (forward + backward) of the quickstart's
    model on synthetic-world batches, with sdpa and with eager attention (same weights, interleaved)."""
    from ..data.synthetic_world import WorldConfig, image_rows, pair_rows, triplet_rows
    from .quickstart.training import (QuickstartRecipe, TripletGroups, build_model_and_processor, pair_collator,
                                      triplet_collator)

    world = WorldConfig.tiny(seed)
    recipe = QuickstartRecipe(world=world)
    model, processor = build_model_and_processor(recipe, seed=seed)
    pair_batch = recipe.pair_batch_size * groups // recipe.groups_per_batch
    pairs = pair_collator(processor, seed, recipe.pair_crop_min_area)(list(itertools.islice(pair_rows(world), pair_batch)))
    images = {row["image_id"]: row["image"] for row in image_rows(world)}
    grouped = TripletGroups(list(triplet_rows(world)))
    triplets = triplet_collator(processor, images, seed)([grouped[i] for i in range(groups)])

    def step(batch, implementation):
        model.set_attn_implementation(implementation)
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)

    seconds = {}
    for stage, batch in (("pair", pairs), ("triplet", triplets)):
        timed = interleaved_medians({impl: (lambda b=batch, i=impl: step(b, i)) for impl in ("sdpa", "eager")}, repeats)
        seconds.update({f"quickstart_{stage}_step_{impl}_s": value for impl, value in timed.items()})
    model.set_attn_implementation(recipe.attn_implementation)
    total = {impl: seconds[f"quickstart_pair_step_{impl}_s"] + seconds[f"quickstart_triplet_step_{impl}_s"]
             for impl in ("sdpa", "eager")}
    return {"quickstart_eager_speedup": total["sdpa"] / total["eager"], "quickstart_groups": groups, **seconds}


# ----------------------------------------------------------------------------------------------------------
# All together
# ----------------------------------------------------------------------------------------------------------
FIGURES = ("query", "search", "synthesis", "pipeline", "builder", "quickstart")
TARGETS = {"query_speedup_vs_naive": (">=", 2.0), "query_matmul_utilization": (">=", 0.5),
           "search_time_vs_faiss": ("<=", 1.25), "synthesis_overhead": ("<=", 0.03),
           "gallery_pipeline_efficiency": None, "builder_memory_growth": ("<=", 1.2),
           "quickstart_eager_speedup": None}


def run_benchmarks(sizes: BenchmarkSizes, figures=FIGURES, log=print) -> dict:
    """Run the chosen figures; return {figure keys..., "details": {...}, "sizes": {...}, "machine": {...}}."""
    unknown = set(figures) - set(FIGURES)
    if unknown:
        raise ValueError(f"Unknown figure(s) {sorted(unknown)}; choose from {FIGURES}.")
    started = time.perf_counter()
    details, sizes_used = {}, asdict(sizes)
    needs_model = {"query", "synthesis", "pipeline"} & set(figures)
    if needs_model:
        texts = modification_texts(sizes.num_queries)
        model, processor = build_benchmark_model(sizes, texts)
        log(f"model built ({time.perf_counter() - started:.0f}s)")
    if "query" in figures:
        details.update(query_benchmark(model, processor, texts, sizes.batch_size, sizes.repeats, sizes.matmul_size))
        log(f"query done ({time.perf_counter() - started:.0f}s)")
    if "search" in figures:
        details.update(search_benchmark(sizes.gallery_size, sizes.search_queries, sizes.embed_dim, sizes.top_k, sizes.repeats))
        log(f"search done ({time.perf_counter() - started:.0f}s)")
    if "synthesis" in figures:
        details.update(synthesis_benchmark(model, processor, sizes.synthesis_batch, sizes.synthesis_steps))
        log(f"synthesis done ({time.perf_counter() - started:.0f}s)")
    if "pipeline" in figures:
        details.update(gallery_pipeline_benchmark(model, processor, sizes.pipeline_images, min(32, sizes.pipeline_images),
                                                  sizes.repeats))
        log(f"pipeline done ({time.perf_counter() - started:.0f}s)")
    if "builder" in figures:
        details.update(builder_memory_benchmark(*sizes.builder_images))
        log(f"builder done ({time.perf_counter() - started:.0f}s)")
    if "quickstart" in figures:
        details.update(quickstart_attention_benchmark(sizes.quickstart_groups, sizes.repeats))
        log(f"quickstart done ({time.perf_counter() - started:.0f}s)")
    result = {key: details.pop(key, None) for key in TARGETS}
    result["details"] = details
    result["sizes"] = sizes_used
    result["machine"] = {"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                         "device": "cpu", "seconds": time.perf_counter() - started}
    return result


def format_table(result: dict) -> str:
    """A plain-text table of the figures, their targets and whether each is met."""
    lines = [f"{'figure':<30} {'value':>8}  {'target':<8} met", "-" * 54]
    for key, target in TARGETS.items():
        value = result.get(key)
        shown = "n/a" if value is None else f"{value:.3f}"
        if target is None or value is None:
            lines.append(f"{key:<30} {shown:>8}  {'-' if target is None else target[0] + str(target[1]):<8} -")
            continue
        met = value >= target[1] if target[0] == ">=" else value <= target[1]
        lines.append(f"{key:<30} {shown:>8}  {target[0] + str(target[1]):<8} {'yes' if met else 'no'}")
    return "\n".join(lines)


__all__ = ["BenchmarkSizes", "FIGURES", "TARGETS", "build_benchmark_model", "builder_memory_benchmark",
           "encoder_flops", "format_table", "gallery_pipeline_benchmark", "interleaved_medians",
           "matmul_flops_per_second", "modification_texts", "naive_query_embeds", "peak_memory_above_baseline",
           "query_benchmark", "quickstart_attention_benchmark", "run_benchmarks", "search_benchmark", "synthesis_benchmark"]
