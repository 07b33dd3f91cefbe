"""The sentence-transformers files of a saved CoLLM, so that the folder also loads as a `SentenceTransformer`.

`CoLLMModel.save_pretrained` writes them beside the weights (this file travels with the model's code, so a model
loaded with `trust_remote_code=True` and saved again writes them too). The stock sentence-transformers (>= 6)
`Transformer` module routes each input modality to a model method (`modality_config`):

    {"image": pil, "text": str}  -> get_query_embeds   (composed query: `encode_query`)
    pil image                    -> get_image_embeds   (gallery: `encode_document`)
    str                          -> get_query_embeds   (text-only query)

Both methods return L2-normalised embeddings, so no pooling module is needed and the embeddings equal the
transformers path exactly. Only three small JSON files are added (the weights and the model card are left alone).

Example:
    >>> model.save_pretrained("model"); processor.save_pretrained("model")  # doctest: +SKIP
    >>> st = SentenceTransformer("model", trust_remote_code=True)  # doctest: +SKIP
    >>> st.encode_query([{"image": reference, "text": "make it blue"}])  # doctest: +SKIP
"""

import json
import os
import tempfile
from pathlib import Path

# `Transformer` lives at this path from sentence-transformers 6.0 on (the package's pin says >= 6.0).
TRANSFORMER_MODULE = "sentence_transformers.base.modules.transformer.Transformer"
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
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": TRANSFORMER_MODULE}],
        "sentence_bert_config.json": {"transformer_task": "feature-extraction", "modality_config": MODALITY_CONFIG,
                                      "module_output_name": MODULE_OUTPUT_NAME},
        "config_sentence_transformers.json": {"model_type": "SentenceTransformer", "prompts": {"query": "", "document": ""},
                                              "default_prompt_name": None, "similarity_fn_name": "cosine"},
    }


def _write_atomically(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


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
        _write_atomically(model_dir / name, json.dumps(content, indent=2) + "\n")
        written.append(model_dir / name)
    return written


def load_sentence_transformer(model_dir: str | os.PathLike, **kwargs):
    """`SentenceTransformer(model_dir)`, adding the sentence-transformers files first to a folder saved without them."""
    try:  # optional: the model itself never needs sentence-transformers
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise ImportError("load_sentence_transformer needs sentence-transformers >= 6.0 "
                          "(pip install 'sentence-transformers>=6.0').") from error
    if not (Path(model_dir) / "modules.json").is_file():
        write_sentence_transformers_config(model_dir)
    return SentenceTransformer(str(model_dir), **kwargs)


__all__ = ["MODALITY_CONFIG", "load_sentence_transformer", "sentence_transformers_files",
           "write_sentence_transformers_config"]
