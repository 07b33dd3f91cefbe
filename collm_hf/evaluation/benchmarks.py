"""Benchmark evaluation: embed a split's queries, rank the right gallery, apply the benchmark's metric.

    queries --embed_queries--> (Q, D)  \
                                        --rank_benchmark--> rankings --cir_metric--> {"recall@1": ...}
    gallery --embed_gallery--> GalleryIndex /

Each benchmark is ranked over its own gallery as benchmarks.md says: CIRR over the split gallery (the metric
removes the reference), CIRCO over the whole unlabeled set (nothing removed), Fashion-IQ over the query's
category gallery (nothing removed). `RetrievalEvalCallback` runs the same flow inside `Trainer.evaluate`, so
`metric_for_best_model="cirr_score"` selects checkpoints on real retrieval metrics, not in-batch accuracy.
"""

import os
import warnings
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from .cir_metric import DEFAULT_K_VALUES, compute_cir_metrics
from .index import GalleryIndex, _load_images, check_finite

SUBMISSION_TOP_K = 50  # what the CIRR and CIRCO test servers take
DEFAULT_TEXT_TEMPLATE = "{modification_text}"
# CIRCO with its shared concept, phrased as several public CIRCO code bases do ("<concept> but <caption>");
# an explicit choice: the official baseline uses the relative caption only (DEFAULT_TEXT_TEMPLATE).
SHARED_CONCEPT_TEMPLATE = "{shared_concept} but {modification_text}"


METRIC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cir_metric.py")


def load_cir_metric(**kwargs):
    """`evaluate.load` of the package's metric module (works offline), e.g. for `evaluate`-based pipelines.

    Example:
        >>> metric = load_cir_metric()  # doctest: +SKIP
        >>> metric.compute(predictions=[["a", "b"]], references=[["b"]], protocol="standard", k_values=[1, 2])  # doctest: +SKIP
        {'recall@1': 0.0, 'recall@2': 100.0}
    """
    import evaluate

    return evaluate.load(METRIC_PATH, **kwargs)


def infer_protocol(column_names) -> str:
    """The benchmark protocol a `queries` table implies: CIRR (`subset_ids`), CIRCO (`semantic_aspects` /
    `shared_concept`), Fashion-IQ (`category`), else plain recall."""
    columns = set(column_names)
    if "subset_ids" in columns:
        return "cirr"
    if "semantic_aspects" in columns or "shared_concept" in columns:
        return "circo"
    if "category" in columns:
        return "fashioniq"
    return "standard"


def _column(table, name: str, default=None) -> list:
    names = table.column_names if hasattr(table, "column_names") else list(table.keys())
    if name not in names:
        if default is not None:
            return default
        raise KeyError(f"The queries have no {name!r} column (columns: {list(names)}).")
    return list(table[name])


def query_texts(queries, text_template: str = DEFAULT_TEXT_TEMPLATE) -> list[str]:
    """The text of each query, from `text_template` over its columns (default: the modification text only)."""
    names = queries.column_names if hasattr(queries, "column_names") else list(queries.keys())
    fields = [f for f in ("modification_text", "shared_concept", "query_id", "category") if f in names
              and "{" + f + "}" in text_template]
    if "{modification_text}" not in text_template:
        raise ValueError(f"text_template must contain {{modification_text}}, got {text_template!r}.")
    columns = {f: _column(queries, f) for f in fields}
    texts = []
    for i in range(len(columns["modification_text"])):
        values = {f: (columns[f][i] or "").strip() for f in fields}
        try:
            texts.append(text_template.format(**values).strip())
        except KeyError as error:
            raise KeyError(f"text_template {text_template!r} uses {error}, which the queries do not have.") from None
    return texts


def embed_gallery(model, processor, gallery, batch_size: int = 64, accelerator=None, show_progress: bool = True,
                  num_workers: int = 0) -> GalleryIndex:
    """Embed a benchmark `gallery` table (`image_id`, `image`) into a `GalleryIndex` (see `GalleryIndex.from_dataset`)."""
    return GalleryIndex.from_dataset(gallery, model=model, processor=processor, batch_size=batch_size,
                                     accelerator=accelerator, show_progress=show_progress, num_workers=num_workers)


@torch.inference_mode()
def embed_queries(model, processor, queries, batch_size: int = 32, text_template: str = DEFAULT_TEXT_TEMPLATE,
                  index: GalleryIndex | None = None, query_encoder=None, show_progress: bool = True) -> torch.Tensor:
    """Embed a benchmark `queries` table (reference image + modification text) with `model.get_query_embeds`.

    Args:
        model, processor: a `CoLLMModel` and its `CoLLMProcessor`.
        queries: a `datasets.Dataset` (or dict of lists) with `reference_id`, `reference_image`,
            `modification_text` (and whatever `text_template` uses).
        batch_size: queries per forward pass.
        text_template: how a query's text is built from its columns (see `SHARED_CONCEPT_TEMPLATE`).
        index: when given, a reference image that is in the gallery reuses its gallery embedding `f(v)`
            (the same vector the model would compute) instead of decoding and encoding the image again.
        query_encoder: optional fast encoder with `.encode(texts, image_embeds=...)` (e.g.
            `collm_hf.models.collm.query_encoder.CoLLMQueryEncoder`); used for batches whose reference embeddings are known.
        show_progress: tqdm bar.

    Returns:
        (Q, D) float32 CPU tensor of L2-normalised query embeddings, in table order.
    """
    texts = query_texts(queries, text_template)
    reference_ids = [str(r) for r in _column(queries, "reference_id")]
    names = queries.column_names if hasattr(queries, "column_names") else list(queries.keys())
    device = next(model.parameters()).device
    out = []
    for b0 in tqdm(range(0, len(texts), batch_size), desc="Embedding queries", disable=not show_progress):
        b1 = min(len(texts), b0 + batch_size)
        refs = reference_ids[b0:b1]
        if index is not None and all(r in index.position for r in refs):
            rows = torch.tensor([index.position[r] for r in refs], device=index.embeddings.device)
            image_embeds = index.embeddings.index_select(0, rows).to(device)  # (batch, D_image)
            if query_encoder is not None:
                embeds = query_encoder.encode(texts[b0:b1], image_embeds=image_embeds)
            else:
                inputs = processor.queries(texts[b0:b1], with_image=True)  # the image enters as embeddings
                embeds = model.get_query_embeds(inputs["input_ids"], inputs["attention_mask"], image_embeds=image_embeds)
        else:
            if "reference_image" not in names:
                raise KeyError("The queries have no 'reference_image' column and their references are not in the "
                               "gallery index: attach the images or pass index=.")
            values = queries["reference_image"][b0:b1] if isinstance(queries, dict) else queries[b0:b1]["reference_image"]
            images = _load_images(values, refs)
            inputs = processor(images=images, text=texts[b0:b1])
            embeds = model.get_query_embeds(inputs["input_ids"], inputs["attention_mask"],
                                            pixel_values=inputs["pixel_values"].to(device))
        embeds = embeds.float().cpu()  # (batch, D)
        check_finite(embeds, "Query embeddings", [f"query {i}" for i in range(b0, b1)])
        out.append(embeds)
    return torch.cat(out)


@dataclass
class BenchmarkRankings:
    """What ranking a benchmark split produced, with what the metric and the exporters need.

    Args:
        protocol: "cirr", "circo", "fashioniq" or "standard".
        query_ids: one id per query.
        rankings: per query, gallery ids best first (top `fetch` of its gallery; CIRR adds the remaining
            subset members, in score order, so that subset recall is exact).
        targets: per query, the ground-truth ids (empty lists on closed-label splits).
        reference_ids, subset_ids, categories, semantic_aspects: per query, where the protocol has them.
    """

    protocol: str
    query_ids: list[str]
    rankings: list[list[str]]
    targets: list[list[str]]
    reference_ids: list[str]
    subset_ids: list[list[str]] | None = None
    categories: list[str] | None = None
    semantic_aspects: list[list[str]] | None = None

    @property
    def has_labels(self) -> bool:
        return all(len(t) > 0 for t in self.targets)

    def metrics(self, k_values=None) -> dict:
        """The protocol's metrics over these rankings (percentages)."""
        if not self.has_labels:
            raise ValueError("Some queries have no target_ids (closed-label split): export a submission instead.")
        extra = {
            "cirr": {"reference_ids": self.reference_ids, "subset_ids": self.subset_ids},
            "circo": {"semantic_aspects": self.semantic_aspects},
            "fashioniq": {"categories": self.categories},
            "standard": {},
        }[self.protocol]
        return compute_cir_metrics(self.rankings, self.targets, protocol=self.protocol, k_values=k_values, **extra)


def _with_subset_members(ranking, members, reference_id, index: GalleryIndex, query_embed, query_name):
    """Append the subset members missing from a top-N ranking, ordered by their scores (ties: member order)."""
    ranked = set(ranking)
    missing = [m for m in members if m != reference_id and m not in ranked]
    if not missing:
        return ranking
    absent = [m for m in missing if m not in index.position]
    if absent:
        raise ValueError(f"{query_name}: subset member(s) {absent} are not in the gallery.")
    rows = torch.tensor([index.position[m] for m in missing], device=index.embeddings.device)
    member_scores = (index.embeddings.index_select(0, rows) @ query_embed.to(index.embeddings.device)).tolist()
    order = sorted(range(len(missing)), key=lambda j: -member_scores[j])
    return ranking + [missing[j] for j in order]


def rank_benchmark(queries, index: GalleryIndex, query_embeds: torch.Tensor, protocol: str | None = None,
                   gallery_categories: list[str] | None = None, top_k: int | None = None,
                   backend: str = "auto") -> BenchmarkRankings:
    """Rank each query over its benchmark gallery.

    Args:
        queries: the `queries` table (only its id / target / protocol columns are read).
        index: the embedded gallery of the split.
        query_embeds: (Q, D) from `embed_queries`.
        protocol: None infers it from the columns (`infer_protocol`).
        gallery_categories: Fashion-IQ: the category of each gallery image (index order); each query is
            ranked within its own category's gallery.
        top_k: ids kept per query (default: max(50, largest K of the protocol), +1 for CIRR's reference).
        backend: search backend ("auto", "torch", "faiss").

    Returns:
        `BenchmarkRankings`.
    """
    names = queries.column_names if hasattr(queries, "column_names") else list(queries.keys())
    protocol = protocol or infer_protocol(names)
    n = len(query_embeds)
    query_ids = [str(q) for q in _column(queries, "query_id", [str(i) for i in range(n)])]
    reference_ids = [str(r) for r in _column(queries, "reference_id")]
    targets = [[str(t) for t in (ts or [])] for ts in _column(queries, "target_ids", [[] for _ in range(n)])]
    if len(query_ids) != n:
        raise ValueError(f"{len(query_ids)} queries but {n} query embeddings.")
    absent = [(q, t) for q, ts in zip(query_ids, targets) for t in ts if t not in index.position]
    if absent:  # it could never be retrieved: a silent zero recall for that query
        raise ValueError(f"{len(absent)} target id(s) are not in the gallery, e.g. query {absent[0][0]}: target "
                         f"{absent[0][1]!r} (wrong gallery split, or a gallery built with --allow-missing?).")
    fetch = top_k or max(SUBMISSION_TOP_K, max(DEFAULT_K_VALUES[protocol])) + (1 if protocol == "cirr" else 0)
    result = BenchmarkRankings(protocol, query_ids, [None] * n, targets, reference_ids)
    groups = {None: list(range(n))}
    if protocol == "fashioniq":
        result.categories = [str(c) for c in _column(queries, "category")]
        if gallery_categories is None:
            warnings.warn("Fashion-IQ gallery without categories: every query is ranked over the whole gallery.")
        else:
            category_of = dict(zip(index.ids, (str(c) for c in gallery_categories)))
            wrong = [(query_ids[i], t) for i, c in enumerate(result.categories) for t in targets[i]
                     if category_of[t] != c]
            if wrong:  # ranked within its own category, such a target could never be found
                raise ValueError(f"{len(wrong)} target(s) are not in their query's category gallery, e.g. query "
                                 f"{wrong[0][0]}: target {wrong[0][1]!r} is {category_of[wrong[0][1]]!r}.")
            groups = {}
            for i, category in enumerate(result.categories):
                groups.setdefault(category, []).append(i)
    for category, rows in groups.items():
        sub_index = index
        if category is not None:
            members = [image_id for image_id, c in zip(index.ids, gallery_categories) if str(c) == category]
            if not members:
                raise ValueError(f"No gallery image has category {category!r}; its queries cannot be ranked.")
            sub_index = index.select(members)
        found = sub_index.search(query_embeds[rows], k=min(fetch, len(sub_index)), backend=backend)
        for row, ids in zip(rows, found.ids):
            result.rankings[row] = ids
    if protocol == "cirr" and "subset_ids" in names:  # without it: recall@K only (no subset metrics)
        result.subset_ids = [[str(m) for m in members] for members in _column(queries, "subset_ids")]
        for i in range(n):
            result.rankings[i] = _with_subset_members(result.rankings[i], result.subset_ids[i],
                                                      reference_ids[i], index, query_embeds[i], f"query {query_ids[i]}")
    if protocol == "circo":
        result.semantic_aspects = [list(a or []) for a in _column(queries, "semantic_aspects", [[] for _ in range(n)])]
    return result


def evaluate_benchmark(model, processor, queries, gallery, protocol: str | None = None, *, batch_size: int = 32,
                       text_template: str = DEFAULT_TEXT_TEMPLATE, k_values=None, index: GalleryIndex | None = None,
                       accelerator=None, backend: str = "auto", show_progress: bool = True,
                       return_rankings: bool = False, num_workers: int = 0):
    """Embed a benchmark split, rank the right gallery, and compute the protocol's metrics.

    Args:
        model, processor: a `CoLLMModel` (eval mode is set for the call) and its `CoLLMProcessor`.
        queries: the split's `queries` (or `queries_refined`) table.
        gallery: the split's `gallery` table (`image_id`, `image`, Fashion-IQ: `category`); ignored if `index`.
        protocol: "cirr", "circo", "fashioniq", "standard", or None to infer it from the columns.
        batch_size: queries (and gallery images) per forward pass.
        text_template: query text from the columns; CIRCO default is the relative caption only.
        k_values: metric cut-offs (default per protocol).
        index: a prebuilt `GalleryIndex` of `gallery` (skips embedding it).
        accelerator: split gallery embedding across processes.
        backend: search backend.
        return_rankings: also return the `BenchmarkRankings` (for submissions and pictures).
        num_workers: image-decoding worker processes for the gallery.

    Returns:
        the metrics dict (percentages; empty on closed-label splits; Fashion-IQ adds `fashioniq_score` =
        (recall@10 + recall@50) / 2, the papers' "Avg", for `metric_for_best_model`), or (metrics, rankings).

    Example:
        >>> metrics = evaluate_benchmark(model, processor, queries, gallery, "cirr")  # doctest: +SKIP
        >>> metrics["cirr_score"]  # doctest: +SKIP
    """
    was_training = model.training
    model.eval()
    try:
        if index is None:
            index = embed_gallery(model, processor, gallery, batch_size=batch_size, accelerator=accelerator,
                                  show_progress=show_progress, num_workers=num_workers)
        query_embeds = embed_queries(model, processor, queries, batch_size=batch_size, text_template=text_template,
                                     index=index, show_progress=show_progress)
    finally:
        model.train(was_training)
    gallery_categories = None
    if gallery is not None and "category" in (gallery.column_names if hasattr(gallery, "column_names") else gallery):
        categories = {str(i): c for i, c in zip(gallery["image_id"], gallery["category"])}
        gallery_categories = [categories[i] for i in index.ids]
    rankings = rank_benchmark(queries, index, query_embeds, protocol, gallery_categories, backend=backend)
    metrics = rankings.metrics(k_values) if rankings.has_labels else {}
    if rankings.protocol == "fashioniq" and {"recall@10", "recall@50"} <= set(metrics):
        metrics["fashioniq_score"] = (metrics["recall@10"] + metrics["recall@50"]) / 2  # the papers' "Avg"
    if not rankings.has_labels and any(rankings.targets):
        raise ValueError("Some queries have target_ids and some do not: a split is either labelled or closed.")
    return (metrics, rankings) if return_rankings else metrics


def _load_config(path: str, config: str):
    """All splits of one config of a benchmark folder: Parquet + README `configs:` (what the builders write),
    or a `DatasetDict.save_to_disk` folder at `<path>/<config>`."""
    import datasets

    disk_folder = os.path.join(path, config)
    if os.path.isfile(os.path.join(disk_folder, "dataset_dict.json")):
        return datasets.load_from_disk(disk_folder)
    return datasets.load_dataset(path, config)


def available_configs(path: str) -> list[str]:
    """Config names of a benchmark folder (from its README `configs:` block, or its save_to_disk sub-folders)."""
    import datasets

    names = [name for name in ("queries", "queries_refined", "gallery")
             if os.path.isfile(os.path.join(path, name, "dataset_dict.json"))]
    if names:
        return names
    return list(datasets.get_dataset_config_names(path))


def load_benchmark(path: str, split: str | None = None, refined: bool = False):
    """The `queries` (or `queries_refined`) and the matching `gallery` of one split of a benchmark folder.

    The gallery split has the queries' split name, or is the only gallery split (CIRCO's `unlabeled2017`,
    shared by val and test). Fashion-IQ galleries carry `category`; `rank_benchmark` ranks within it.

    Args:
        path: a dataset folder (or hub id) in the contracts.md schema (configs `queries`, `gallery`, optional
            `queries_refined`).
        split: e.g. "val", "test1"; default: "val" / "validation" if present, else the first split.
        refined: use `queries_refined` (an error if the folder has none).

    Returns:
        (queries, gallery, split).
    """
    is_hub_id = path.count("/") == 1 and not path.startswith((".", "/")) and not os.path.exists(path)
    if not os.path.isdir(path) and not is_hub_id:
        raise FileNotFoundError(f"Benchmark folder {path!r} does not exist (nor is it a hub id 'org/name').")
    configs = available_configs(path)
    config = "queries_refined" if refined else "queries"
    for needed in (config, "gallery"):
        if needed not in configs:
            raise ValueError(f"{path} has no {needed!r} config (configs: {configs}).")
    queries_splits = _load_config(path, config)
    if split is None:
        split = next((s for s in ("val", "validation") if s in queries_splits), next(iter(queries_splits)))
    if split not in queries_splits:
        raise ValueError(f"{path} {config} has no split {split!r} (splits: {list(queries_splits)}).")
    gallery_splits = _load_config(path, "gallery")
    if split in gallery_splits:
        gallery = gallery_splits[split]
    elif len(gallery_splits) == 1:
        gallery = next(iter(gallery_splits.values()))
    else:
        raise ValueError(f"{path} gallery has no split {split!r} and several others {list(gallery_splits)}: "
                         "which gallery the queries rank over is ambiguous.")
    return queries_splits[split], gallery, split


def evaluate_folder(model, processor, path: str, split: str | None = None, *, refined: bool = False,
                    protocol: str | None = None, text_template: str = DEFAULT_TEXT_TEMPLATE, batch_size: int = 32,
                    max_queries: int | None = None, index_dir: str | None = None, submission_dir: str | None = None,
                    visualize_path: str | None = None, num_visualize: int = 8, output_json: str | None = None,
                    backend: str = "auto", images_dir: str | None = None, num_workers: int = 0,
                    show_progress: bool = True) -> dict:
    """Evaluate a model on one split of a benchmark folder, with optional submission files, picture and JSON.

    Args:
        model, processor: a `CoLLMModel` and its `CoLLMProcessor`.
        path, split, refined: as in `load_benchmark`.
        protocol, text_template, batch_size, backend: as in `evaluate_benchmark`.
        max_queries: evaluate only the first N queries (the gallery stays whole: the protocol needs it).
        index_dir: cache of the gallery index: loaded when present (its ids must match the gallery), else saved.
        submission_dir: write the CIRR / CIRCO test-server files there.
        visualize_path: write a PNG grid of the first `num_visualize` queries there.
        output_json: write the report there (atomically).
        images_dir: for annotation-only (`--no-images`) builds: the local image folder their paths are relative to.
        num_workers: image-decoding worker processes for the gallery.

    Returns:
        {"benchmark", "split", "protocol", "num_queries", "num_gallery", "text_template", "metrics", "files"}.
    """
    from .index import GalleryIndex as _Index
    from .submission import write_json_atomic, write_submission
    from .visualization import save_benchmark_grid

    queries, gallery, split = load_benchmark(path, split, refined)
    if images_dir is not None:
        from ..data.local_images import attach_images

        queries, gallery = attach_images(queries, images_dir), attach_images(gallery, images_dir)
    if max_queries is not None:
        queries = queries.select(range(min(max_queries, len(queries))))
    protocol = protocol or infer_protocol(queries.column_names)
    if index_dir is not None and os.path.isfile(os.path.join(index_dir, "gallery_ids.json")):
        index = _Index.load(index_dir)
        if index.ids != [str(i) for i in gallery["image_id"]]:
            raise ValueError(f"The gallery index in {index_dir} was built from another gallery (ids differ).")
    else:
        model.eval()
        index = embed_gallery(model, processor, gallery, batch_size=batch_size, show_progress=show_progress,
                              num_workers=num_workers)
        if index_dir is not None:
            index.save(index_dir)
    metrics, rankings = evaluate_benchmark(model, processor, queries, gallery, protocol, batch_size=batch_size,
                                           text_template=text_template, index=index, backend=backend,
                                           show_progress=show_progress, return_rankings=True)
    files = []
    if submission_dir is not None:
        files += write_submission(submission_dir, rankings, prefix=f"{protocol}_{split}")
    if visualize_path is not None:
        files.append(save_benchmark_grid(visualize_path, queries, rankings, gallery, num_queries=num_visualize))
    report = {"benchmark": os.path.basename(os.path.normpath(path)), "split": split, "protocol": protocol,
              "refined": refined, "num_queries": len(queries), "num_gallery": len(gallery),
              "text_template": text_template, "metrics": metrics, "files": files}
    if output_json is not None:
        write_json_atomic(output_json, report)
        report["files"].append(output_json)
    return report


def format_metrics_table(metrics: dict, title: str = "") -> str:
    """A two-column text table of metrics (2 decimals)."""
    if not metrics:
        return f"{title}: no labels (closed split)" if title else "no labels (closed split)"
    width = max(len(k) for k in metrics)
    lines = [title] if title else []
    lines += [f"{key:<{width}}  {value:6.2f}" for key, value in metrics.items()]
    return "\n".join(lines)


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


__all__ = [
    "BenchmarkRankings", "METRIC_PATH", "RetrievalEvalCallback", "add_retrieval_evaluation", "embed_gallery",
    "embed_queries", "evaluate_benchmark", "evaluate_folder", "format_metrics_table", "infer_protocol",
    "load_benchmark", "load_cir_metric", "query_texts", "rank_benchmark", "DEFAULT_TEXT_TEMPLATE",
    "SHARED_CONCEPT_TEMPLATE",
]
