"""Benchmark retrieval metrics inside `Trainer.evaluate`, so that checkpoints are selected on real retrieval
(`metric_for_best_model="cirr_score"`) rather than in-batch accuracy."""

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


__all__ = ["RetrievalEvalCallback", "add_retrieval_evaluation"]
