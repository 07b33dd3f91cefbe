"""`query_speedup_vs_naive`, `query_matmul_utilization`: the fast query encoder against the plain forward, on a
SmolLM2-135M-shaped CoLLM and the synthetic world's modification texts."""

import itertools
import random

import torch
import torch.nn.functional as F

from .harness import CLIP_B32, SMOLLM2_135M, TINY_LLM, TINY_VISION, BenchmarkSizes, interleaved_medians


def modification_texts(n: int, min_words: int = 6, max_words: int = 30, seed: int = 0) -> list[str]:
    """`n` modification texts of `min_words`-`max_words` words (uniform), joined from the synthetic world's edits."""
    from ...data.synthetic_world import WorldConfig, triplet_rows

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
    from ...testing_utils import tiny_image_processor, tiny_tokenizer
    from ...models.collm.configuration_collm import CoLLMConfig
    from ...models.collm.modeling_collm import CoLLMModel
    from ...models.collm.processing_collm import CoLLMProcessor

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
    from ...models.collm.query_encoder import CoLLMQueryEncoder, bf16_supported

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
