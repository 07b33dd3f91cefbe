"""`CoLLMModel.from_backbones`: a CoLLM composed from a pretrained vision checkpoint and a pretrained LLM.

The towers keep their pretrained weights bit for bit (the VisionTextDualEncoder pattern: each loaded with
`from_pretrained`, then placed into a shell built on the meta device, so nothing is initialised twice); only the
adapter, the projection and the logit scale are new.
"""

import torch
from transformers import AutoModel

from .configuration_collm import CoLLMConfig
from .vision_families import load_pretrained_vision


def compose_from_backbones(cls, vision_name_or_path: str, llm_name_or_path: str, dtype: torch.dtype | None,
                           vision_kwargs: dict | None, llm_kwargs: dict | None, options: dict):
    """The body of `CoLLMModel.from_backbones` (its docstring gives the arguments)."""
    dtype_kwargs = {"dtype": dtype} if dtype is not None else {"dtype": torch.float32}
    vision = load_pretrained_vision(vision_name_or_path, pooling=options.pop("vision_pooling", None),
                                    **dtype_kwargs, **(vision_kwargs or {}))
    llm_kwargs = {"use_safetensors": True, **(llm_kwargs or {})}  # pickle checkpoints can run code when loaded
    language_model = AutoModel.from_pretrained(llm_name_or_path, **dtype_kwargs, **llm_kwargs)
    config = CoLLMConfig(
        vision_config=vision.tower.config,
        text_config=language_model.config,
        vision_family=vision.family,
        vision_projection_dim=vision.projection_dim,
        vision_pooling=vision.pooling,
        vision_feature_dim=vision.feature_dim,
        **options,
    )
    with torch.device("meta"):  # no wasted random init of the two towers
        model = cls(config)
    model.vision_tower, model.vision_projection, model.language_model = vision.tower, vision.projection, language_model
    vision.tower.config, language_model.config = config.vision_config, config.text_config
    model._build_new_modules()
    for module in (model.adapter, model.projection):
        module.apply(model._init_weights)
    model.to(language_model.dtype)
    model.apply_vision_freezing()
    model.config.dtype = language_model.dtype
    return model
