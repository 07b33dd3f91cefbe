"""Benchmark retrieval metrics inside `Trainer.evaluate`, so that checkpoints are selected on real retrieval
(`metric_for_best_model="cirr_score"`) rather than in-batch accuracy.

`collm-hf train ... --eval_dataset_name_or_path <benchmark>` wires both pieces (`training.trainer.build_trainer`):
the benchmark's queries are the Trainer's `eval_dataset`, batched by `BenchmarkLossCollator` into triplets for
`eval_loss`, and `RetrievalEvalCallback` adds the retrieval metrics of the same queries over the whole gallery.
"""

from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback

from .scoring import evaluate_benchmark


class RetrievalEvalCallback(TrainerCallback):
    """Adds benchmark retrieval metrics over a real gallery to every `Trainer.evaluate`.

    The metrics (`eval_recall@1`, `eval_cirr_score`, ...) are added to the evaluation's metrics dict before
    `Trainer` picks the best checkpoint, so `metric_for_best_model="cirr_score"` works; they are logged too.
    Use `add_retrieval_evaluation(trainer, ...)`, which places this callback first (before early stopping).

    Args:
        queries, gallery: a benchmark split's tables (keep them small during training, e.g. a val subset).
        processor: the `CoLLMProcessor`.
        protocol: as in `evaluate_benchmark` (None infers it).
        trainer: when given, metrics are logged through `trainer.log` and the gallery is split across
            `trainer.accelerator`'s processes.
        metric_key_prefix: "eval" to match `Trainer`'s own keys.
        **kwargs: passed to `evaluate_benchmark` (batch_size, text_template, k_values, backend).
    """

    def __init__(self, queries, gallery, processor, protocol: str | None = None, trainer=None,
                 metric_key_prefix: str = "eval", **kwargs):
        self.queries, self.gallery, self.processor = queries, gallery, processor
        self.protocol, self.trainer, self.prefix, self.kwargs = protocol, trainer, metric_key_prefix, kwargs
        self.kwargs.setdefault("show_progress", False)

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if model is None:
            return
        accelerator = getattr(self.trainer, "accelerator", None)
        results = evaluate_benchmark(model, self.processor, self.queries, self.gallery, self.protocol,
                                     accelerator=accelerator, **self.kwargs)
        prefixed = {f"{self.prefix}_{key}": value for key, value in results.items()}
        if metrics is not None:
            metrics.update(prefixed)
        if self.trainer is not None:
            self.trainer.log(prefixed)
        else:
            state.log_history.append({**prefixed, "step": state.global_step})


def add_retrieval_evaluation(trainer, queries, gallery, processor=None, protocol: str | None = None,
                             **kwargs) -> RetrievalEvalCallback:
    """Attach a `RetrievalEvalCallback` to `trainer`, first in line, and return it.

    Example:
        >>> add_retrieval_evaluation(trainer, val_queries, val_gallery, processor, "cirr")  # doctest: +SKIP
        >>> trainer.train()  # with TrainingArguments(metric_for_best_model="cirr_score", ...)  # doctest: +SKIP
    """
    processor = processor or getattr(trainer, "processing_class", None)
    if processor is None:
        raise ValueError("add_retrieval_evaluation needs the CoLLMProcessor (processor= or trainer.processing_class).")
    callback = RetrievalEvalCallback(queries, gallery, processor, protocol, trainer=trainer, **kwargs)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback


@dataclass
class BenchmarkLossCollator:
    """Benchmark queries -> triplet batches for the contrastive loss on the benchmark (`eval_loss` of
    `Trainer.evaluate`): reference image + modification text against the query's first target, read from the
    gallery by id, with the other queries' targets in the batch as negatives (`CoLLMTripletCollator`).

    Args:
        processor: the `CoLLMProcessor`.
        gallery: the benchmark split's gallery (`image_id`, `image`): a `datasets.Dataset` or a dict {id: image}.
        seed: base seed of the collator's random draws.

    Example:
        >>> bench = load_benchmark("data/cirr", "val")  # doctest: +SKIP
        >>> Trainer(..., eval_dataset=bench.queries)  # with eval batches from BenchmarkLossCollator(processor, bench.gallery)  # doctest: +SKIP
    """

    processor: Any
    gallery: Any
    seed: int = 0

    def __post_init__(self):
        from ..training.collators import CoLLMTripletCollator

        self._triplets = CoLLMTripletCollator(self.processor, images=self.gallery,
                                              modifications_column="modification_text", seed=self.seed)

    def __call__(self, queries: list[dict]) -> dict:
        rows = []
        for i, query in enumerate(queries):
            if not query.get("target_ids"):
                raise ValueError(f"Query {query.get('query_id', i)} has no target_ids: the loss needs labelled queries.")
            rows.append({"id": str(query.get("query_id", i)), "reference_id": str(query["reference_id"]),
                         "reference_image": query.get("reference_image"), "target_id": str(query["target_ids"][0]),
                         "modification_text": query["modification_text"]})
        return self._triplets(rows)


__all__ = ["BenchmarkLossCollator", "RetrievalEvalCallback", "add_retrieval_evaluation"]
