"""collm-hf: CoLLM (CVPR 2025) composed image retrieval as a Hugging Face model.

Importing the package registers `CoLLMConfig`, `CoLLMModel` and `CoLLMProcessor` with `AutoConfig`,
`AutoModel` and `AutoProcessor`, so `AutoModel.from_pretrained(folder)` works without
`trust_remote_code`. Saved checkpoints also carry the code files (`register_for_auto_class`), so a
fresh Python without this package loads them with `trust_remote_code=True`, as from the hub.
"""

from transformers import AutoConfig, AutoModel, AutoProcessor

from .models.collm.configuration_collm import DEFAULT_INSTRUCTION, CoLLMConfig
from .models.collm.modeling_collm import CoLLMModel, CoLLMOutput, CoLLMPreTrainedModel
from .models.collm.processing_collm import CoLLMProcessor
from .models.collm.query_encoder import CoLLMQueryEncoder  # the fast query path (same embeddings, instruction prefix cached)

__version__ = "0.1.0"

AutoConfig.register(CoLLMConfig.model_type, CoLLMConfig, exist_ok=True)
AutoModel.register(CoLLMConfig, CoLLMModel, exist_ok=True)
AutoProcessor.register(CoLLMConfig, CoLLMProcessor, exist_ok=True)

# Saved checkpoints carry their code and an `auto_map`, as hub repos do.
CoLLMConfig.register_for_auto_class()
CoLLMModel.register_for_auto_class("AutoModel")
CoLLMProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "CoLLMConfig", "CoLLMModel", "CoLLMOutput", "CoLLMPreTrainedModel", "CoLLMProcessor", "CoLLMQueryEncoder",
    "DEFAULT_INSTRUCTION",
]
