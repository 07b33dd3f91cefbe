"""Publish a trained CoLLM: model + processor (+ code, + card, + sentence-transformers files) to the hub.

    saved model folder --AutoModel/AutoProcessor--> register_for_auto_class --save_pretrained--> upload folder
                       (+ README.md model card, + sentence-transformers files) --HfApi.upload_folder--> hub repo

`prepare_upload(model_dir, folder)` writes exactly what `push_model_to_hub` uploads, so a dry run shows it.
The code files travel with the weights (`auto_map`), so the repo loads with
`AutoModel.from_pretrained(repo_id, trust_remote_code=True)` on a machine without collm_hf.

Example:
    >>> prepare_upload("runs/qs/model", "upload", repo_id="me/collm-quickstart")  # doctest: +SKIP
    >>> push_model_to_hub("runs/qs/model", "me/collm-quickstart")  # doctest: +SKIP
"""

import os
import shutil
import tempfile
from pathlib import Path

import torch


def prepare_upload(model_dir: str | os.PathLike, output_dir: str | os.PathLike, *, repo_id: str | None = None,
                   metrics: dict | None = None, card_kwargs: dict | None = None) -> list[str]:
    """Write the files of a hub upload of the model saved in `model_dir` into `output_dir`.

    Args:
        model_dir: a folder written by `save_pretrained` (model and processor).
        output_dir: where the upload's files go (created; must be empty or absent).
        repo_id: the target repo id (used in the card's usage snippets).
        metrics: {benchmark: {metric: value}}: (re-)render the model card with this model-index. Without it,
            the folder's README.md is kept, or a card without results is rendered.
        card_kwargs: more `model_card.render_model_card` arguments (description, headline, comparison, ...).

    Returns:
        the relative paths written, sorted.
    """
    from transformers import AutoModel, AutoProcessor

    from .model_card import render_model_card

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a saved model folder (no config.json).")
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} is not empty; a dry run writes into an empty or new folder.")
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(model_dir)
    # Code + auto_map travel with the weights, as for any trust_remote_code repo.
    model.config.__class__.register_for_auto_class()
    model.__class__.register_for_auto_class("AutoModel")
    processor.__class__.register_for_auto_class("AutoProcessor")
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)  # safetensors, and the sentence-transformers files
    processor.save_pretrained(output_dir)
    name = (repo_id or model_dir.resolve().name).split("/")[-1]
    if metrics is not None or not (model_dir / "README.md").is_file():
        card = render_model_card(model.config, metrics or {}, model_name=name, repo_id=repo_id or name,
                                 **(card_kwargs or {}))
        card.save(output_dir / "README.md")
    else:
        text = (model_dir / "README.md").read_text(encoding="utf-8")
        if repo_id:  # point the usage snippets at the repo
            text = text.replace(f'from_pretrained("{model_dir.name}"', f'from_pretrained("{repo_id}"')
        (output_dir / "README.md").write_text(text, encoding="utf-8")
    return sorted(str(p.relative_to(output_dir)) for p in output_dir.rglob("*") if p.is_file())


def push_model_to_hub(model_dir: str | os.PathLike, repo_id: str, *, private: bool | None = None, token=None,
                      metrics: dict | None = None, card_kwargs: dict | None = None,
                      commit_message: str = "Upload CoLLM model", api=None) -> str:
    """Prepare the upload in a temporary folder and push it with `HfApi.upload_folder`; returns the repo URL."""
    from huggingface_hub import HfApi

    api = api or HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "upload"
        prepare_upload(model_dir, folder, repo_id=repo_id, metrics=metrics, card_kwargs=card_kwargs)
        api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=commit_message)
    return f"https://huggingface.co/{repo_id}"


def dry_run(model_dir: str | os.PathLike, output_dir: str | os.PathLike, **kwargs) -> list[str]:
    """`prepare_upload` into `output_dir` (replacing a previous dry run there), uploading nothing."""
    output_dir = Path(output_dir)
    if output_dir.exists() and (output_dir / "config.json").is_file():
        shutil.rmtree(output_dir)
    return prepare_upload(model_dir, output_dir, **kwargs)


__all__ = ["prepare_upload", "push_model_to_hub", "dry_run"]
