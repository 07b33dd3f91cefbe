"""sentence-transformers glue: a saved CoLLM folder also loads as a `SentenceTransformer` (6.x multimodal inputs).

The stock `Transformer` module routes each input modality to a model method (`modality_config`):

    {"image": pil, "text": str}  -> get_query_embeds   (composed query: `encode_query`)
    pil image                    -> get_image_embeds   (gallery: `encode_document`)
    str                          -> get_query_embeds   (text-only query)

Both methods return L2-normalised embeddings, so no pooling module is needed and the embeddings equal the
transformers path exactly. Only three small JSON files are added beside the model's own files (the weights
and the model card are left untouched).

Example:
    >>> write_sentence_transformers_config("model")  # doctest: +SKIP
    >>> st = SentenceTransformer("model", trust_remote_code=True)  # doctest: +SKIP
    >>> st.encode_query([{"image": reference, "text": "make it blue"}])  # doctest: +SKIP
"""

import json
import os
from pathlib import Path

from .atomic import atomic_write_text

MODULE_OUTPUT_NAME = "sentence_embedding"
MODALITY_CONFIG = {
    "image+text": {"method": "get_query_embeds", "method_output_name": None},
    "image": {"method": "get_image_embeds", "method_output_name": None},
    "text": {"method": "get_query_embeds", "method_output_name": None},
}
FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def sentence_transformers_files() -> dict:
    """{file name: JSON content} that make a CoLLM folder a SentenceTransformer folder."""
    return {
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"}],
        "sentence_bert_config.json": {"transformer_task": "feature-extraction", "modality_config": MODALITY_CONFIG,
                                      "module_output_name": MODULE_OUTPUT_NAME},
        "config_sentence_transformers.json": {"model_type": "SentenceTransformer", "prompts": {"query": "", "document": ""},
                                              "default_prompt_name": None, "similarity_fn_name": "cosine"},
    }


def write_sentence_transformers_config(model_dir: str | os.PathLike) -> list[Path]:
    """Add the sentence-transformers files to a saved CoLLM folder (atomically, one file at a time).

    Returns:
        the paths written.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a saved model folder (no config.json).")
    written = []
    for name, content in sentence_transformers_files().items():
        written.append(atomic_write_text(model_dir / name, json.dumps(content, indent=2) + "\n"))
    return written


def load_sentence_transformer(model_dir: str | os.PathLike, **kwargs):
    """`SentenceTransformer(model_dir)`, adding the sentence-transformers files first if the folder lacks them."""
    from sentence_transformers import SentenceTransformer

    if not (Path(model_dir) / "modules.json").is_file():
        write_sentence_transformers_config(model_dir)
    return SentenceTransformer(str(model_dir), **kwargs)


__all__ = ["MODALITY_CONFIG", "load_sentence_transformer", "sentence_transformers_files",
           "write_sentence_transformers_config"]
