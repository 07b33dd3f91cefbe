"""Evaluation: a benchmark split -> query and gallery embeddings -> rankings -> the benchmark's metrics.

    benchmarks.py     the one loader of benchmark folders, the split rule and the protocol rule
    embedding.py      query embeddings; the gallery's index, embedded or loaded from an index folder made by the
                      same model from the same gallery
    index/            `GalleryIndex`: what made it (identity), memory-mapped shards, exact and FAISS search
    scoring.py        each query ranked over its benchmark's gallery; `evaluate_benchmark` runs it all
    cir_metric.py     the metrics (a self-contained `evaluate` module)
    submission.py     CIRR / CIRCO test-server files
    visualization.py  the retrieval picture
    report.py         the JSON report, and the steps composed as `collm-hf evaluate` runs them
    callback.py       retrieval metrics inside `Trainer.evaluate`
"""
