"""collm-hf: CoLLM (CVPR 2025) composed image retrieval as a Hugging Face model.

Importing the package registers `CoLLMConfig`, `CoLLMModel` and `CoLLMProcessor` with `AutoConfig`,
`AutoModel` and `AutoProcessor`, so `AutoModel.from_pretrained(folder)` works without
`trust_remote_code`. Saved checkpoints also carry the code files (`register_for_auto_class`), so a
fresh Python without this package loads them with `trust_remote_code=True`, as from the hub.

The folders follow the pipeline:

    models/collm/  configuration, modeling, processing, query encoder and what they import (a checkpoint's code)
    training/      collators (on-the-fly synthesis), Trainer subclasses, gradient cache, LoRA, LLM-written texts
    evaluation/    benchmark folders, embedding, gallery index, ranking, the metric, submissions, pictures
    data/          dataset schema, writer, builders of the official sets, the synthetic world
    pipelines/     MTCIR generation for a new domain, benchmark refinement
    apps/          the `collm-hf` command, quickstart, search, demo, benchmark: fronts over the library
    utils/         atomic writes, archives, hub upload, model cards, GGUF conversion

The model classes load with the package; the other public names below load on first use.
"""

import importlib

from transformers import AutoConfig, AutoModel, AutoProcessor

from .models.collm.configuration_collm import DEFAULT_INSTRUCTION, CoLLMConfig
from .models.collm.losses import ContrastiveLossConfig
from .models.collm.modeling_collm import CoLLMModel, CoLLMOutput, CoLLMPreTrainedModel
from .models.collm.processing_collm import CoLLMProcessor
from .models.collm.query_encoder import CoLLMQueryEncoder  # the fast query path (same embeddings, prefix cached)

__version__ = "0.2.0"

AutoConfig.register(CoLLMConfig.model_type, CoLLMConfig, exist_ok=True)
AutoModel.register(CoLLMConfig, CoLLMModel, exist_ok=True)
AutoProcessor.register(CoLLMConfig, CoLLMProcessor, exist_ok=True)

# Saved checkpoints carry their code and an `auto_map`, as hub repos do.
CoLLMConfig.register_for_auto_class()
CoLLMModel.register_for_auto_class("AutoModel")
CoLLMProcessor.register_for_auto_class("AutoProcessor")

# Public names from the other folders, imported when first used (training and evaluation pull in heavier
# libraries: accelerate, datasets, evaluate).
_LAZY = {
    "CoLLMPairCollator": "training.collators",
    "CoLLMTripletCollator": "training.collators",
    "ImageTable": "training.collators",
    "ParquetImageTable": "training.collators",
    "CoLLMTrainer": "training.trainer",
    "GradCacheTrainer": "training.gradient_cache",
    "LLMModificationWriter": "training.llm_synthesis",
    "GalleryIndex": "evaluation.index",
    "load_benchmark": "evaluation.benchmarks",
    "evaluate_benchmark": "evaluation.scoring",
    "add_retrieval_evaluation": "evaluation.callback",
    "write_dataset": "data.writer",
    "generate_mtcir": "pipelines.mtcir",
    "refine_benchmark": "pipelines.refine",
}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CoLLMConfig", "CoLLMModel", "CoLLMOutput", "CoLLMPreTrainedModel", "CoLLMProcessor", "CoLLMQueryEncoder",
    "ContrastiveLossConfig", "DEFAULT_INSTRUCTION", *_LAZY,
]
