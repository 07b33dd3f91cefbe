"""Tiny in-memory models, tokenizers and image processors for tests, examples and the quickstart.

Nothing here touches the network: the tokenizer is trained on the spot from a few sentences, the towers are
2-layer random configs (hidden 32), as transformers' ModelTester does.
"""

import copy

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import CLIPImageProcessor, PreTrainedTokenizerFast

from .models.collm.configuration_collm import CoLLMConfig
from .models.collm.modeling_collm import CoLLMModel
from .models.collm.processing_collm import CoLLMProcessor

DEFAULT_CORPUS = [
    "Instruct: Find the image that matches the query.\nQuery: Image: Text:",
    "a red circle on the left and a small blue square",
    "make it green, remove the triangle, add two yellow stars at the top",
    "show a large purple cross instead of a cyan ring on a white background",
    "the dog is sitting on a wooden bench next to a bicycle",
    "0123456789 , . ! ? ; : ' \" ( ) - _",
]

VISION_CONFIGS = {
    "clip": {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
             "num_attention_heads": 4, "image_size": 32, "patch_size": 8, "projection_dim": 24},
    "siglip": {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 37,
               "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
    "blip": {"model_type": "blip_vision_model", "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
             "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
    # Towers without a retrieval head (the "generic" family): transformers, CNNs, a hierarchical transformer.
    "vit": {"model_type": "vit", "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
    "dinov2": {"model_type": "dinov2", "hidden_size": 32, "mlp_ratio": 2, "num_hidden_layers": 2,
               "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
    "convnext": {"model_type": "convnext", "hidden_sizes": [16, 32], "depths": [1, 1], "num_stages": 2,
                 "image_size": 32},
    "resnet": {"model_type": "resnet", "embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1],
               "layer_type": "basic"},
    "mobilenet_v2": {"model_type": "mobilenet_v2", "depth_multiplier": 0.25, "finegrained_output": False,
                     "image_size": 32},
    "swin": {"model_type": "swin", "embed_dim": 16, "depths": [1, 1], "num_heads": [2, 2], "window_size": 2,
             "image_size": 32, "patch_size": 4},
}

TEXT_CONFIGS = {
    "llama": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512},
    "qwen2": {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512},
    "mistral": {"model_type": "mistral", "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
                "head_dim": 8},
    "bert": {"model_type": "bert", "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
             "num_attention_heads": 4, "max_position_embeddings": 512},
}


def tiny_tokenizer(corpus: list[str] | None = None, vocab_size: int = 400, bos: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus`, with `<s>`/`</s>` and **no pad token** (as Llama)."""
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus or DEFAULT_CORPUS, trainer=trainer)
    if bos:
        from tokenizers import processors

        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")


def tiny_image_processor(size: int = 32) -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def tiny_config(vision: str = "clip", llm: str = "llama", vocab_size: int = 400, **options) -> CoLLMConfig:
    text_config = dict(TEXT_CONFIGS[llm], vocab_size=vocab_size)
    return CoLLMConfig(vision_config=copy.deepcopy(VISION_CONFIGS[vision]), text_config=text_config, **options)


def tiny_model_and_processor(vision: str = "clip", llm: str = "llama", seed: int = 0, **options):
    """A random tiny CoLLM (eval mode, fp32) and a matching processor."""
    import torch

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = CoLLMModel(tiny_config(vision, llm, vocab_size=len(tokenizer), **options)).eval()
    processor = CoLLMProcessor.for_model(tiny_image_processor(), tokenizer, model.config)
    return model, processor
