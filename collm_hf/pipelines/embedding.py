"""Image embeddings for the data pipelines, from any vision tower the package knows.

`ImageEmbedder.from_pretrained(path)` accepts either a CoLLM folder (its gallery embedding
`CoLLMModel.get_image_embeds` is used) or a vision checkpoint (CLIP, SigLIP, BLIP, full or vision-only, or any other
transformers vision model, through `vision_families.load_pretrained_vision`). Both give the L2-normalised gallery
embedding of `collm_hf.models.collm.vision_families`, so similarity windows mean the same as in the paper for CLIP.
Its `identity` fingerprints the vision model as gallery indexes do (`evaluation.index.identity`).
"""

import hashlib
import json
import os
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..models.collm.image_io import to_rgb_image


class ImageEmbedder:
    """Batched, L2-normalised image embeddings.

    Args:
        embed_pixels: (batch, 3, H, W) pixel values -> (batch, dim) embeddings.
        image_processor: turns a list of PIL images into `pixel_values`.
        batch_size: images per forward pass.
        name: what the dataset card records.
        model: what makes the embeddings, for `identity`: a CoLLM (its vision tower and projection) or a plain vision
            tower. A custom `embed_pixels` given without one is known by `name` alone, so give each different
            function its own name.
        projection: a plain tower's retrieval projection (e.g. CLIP's `visual_projection`), part of `identity`.
        rule: how the embedding comes out of the modules (e.g. "clip:pooler+projection"), part of `identity`.

    Example:
        >>> embedder = ImageEmbedder.from_pretrained("openai/clip-vit-base-patch32")  # doctest: +SKIP
        >>> embedder.embed(images).shape  # doctest: +SKIP
        torch.Size([len(images), 512])
    """

    def __init__(self, embed_pixels: Callable, image_processor, batch_size: int = 32, name: str = "custom",
                 model: torch.nn.Module | None = None, projection: torch.nn.Module | None = None,
                 rule: str | None = None):
        self.embed_pixels, self.image_processor = embed_pixels, image_processor
        self.batch_size, self.name = batch_size, name
        self.model, self.projection, self.rule = model, projection, rule

    @property
    def identity(self) -> str:
        """sha256 of what decides the embeddings, which keys the pipelines' embedding caches: the vision weights
        (`weights_digest`, as a gallery index records them; `name` stands in without a model), the image processor's
        settings (`image_processor_digest`) and `rule`. The weights digest is cached on the model until its weights
        change."""
        from ..evaluation.index.identity import image_processor_digest, weights_digest

        weights = (weights_digest(self.model, projection=self.projection) if self.model is not None
                   else f"name:{self.name}")
        key = {"weights": weights, "image_processor": image_processor_digest(self.image_processor), "rule": self.rule}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_model(cls, model, processor, batch_size: int = 32, name: str | None = None) -> "ImageEmbedder":
        """Embed with a loaded `CoLLMModel` and its `CoLLMProcessor` (`get_image_embeds`)."""
        from ..models.collm.vision_families import gallery_embedding_rule

        return cls(model.get_image_embeds, processor.image_processor, batch_size,
                   name or getattr(model, "name_or_path", "") or "CoLLMModel",
                   model=model, rule=gallery_embedding_rule(model.config))

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, batch_size: int = 32, device: str | None = None) -> "ImageEmbedder":
        """Load a CoLLM folder or a vision checkpoint (model id or local path) with its image processor."""
        from transformers import AutoConfig, AutoImageProcessor

        from .. import CoLLMModel, CoLLMProcessor
        from ..models.collm.vision_families import load_pretrained_vision, pool_vision_output, vision_tower_outputs

        name_or_path = str(name_or_path)
        config = AutoConfig.from_pretrained(name_or_path)
        if config.model_type == "collm":
            model = CoLLMModel.from_pretrained(name_or_path).eval()
            if device:
                model.to(device)
            processor = CoLLMProcessor.from_pretrained(name_or_path)
            return cls.from_model(model, processor, batch_size, name_or_path)
        vision = load_pretrained_vision(name_or_path)
        tower, projection = vision.tower.eval(), vision.projection
        if device:
            tower.to(device)
            projection = projection.to(device) if projection is not None else None

        def embed_pixels(pixel_values: torch.Tensor) -> torch.Tensor:
            pooled = pool_vision_output(vision.pooling, vision_tower_outputs(tower, pixel_values))  # (batch, hidden)
            if projection is not None:
                pooled = projection(pooled)  # (batch, dim)
            return F.normalize(pooled, dim=-1)

        return cls(embed_pixels, AutoImageProcessor.from_pretrained(name_or_path), batch_size, name_or_path,
                   model=tower, projection=projection, rule=vision.rule)

    @torch.inference_mode()
    def embed(self, images: Iterable, total: int | None = None, progress: bool = False) -> torch.Tensor:
        """Embed images (PIL images, or anything `image_io.to_rgb_image` takes).

        Args:
            images: an iterable of images (streamed, `batch_size` at a time).
            total: the number of images, for the progress bar.
            progress: show a tqdm bar.

        Returns:
            (num_images, dim) float32 L2-normalised embeddings on the CPU.
        """
        chunks, batch = [], []
        bar = tqdm(total=total, desc="embedding images", unit="img", disable=not progress)

        def flush():
            pixel_values = self.image_processor(batch, return_tensors="pt")["pixel_values"]  # (batch, 3, H, W)
            chunks.append(self.embed_pixels(pixel_values).float().cpu())  # (batch, dim)
            bar.update(len(batch))
            batch.clear()

        for index, image in enumerate(images):
            batch.append(to_rgb_image(image, f"image {index}"))
            if len(batch) == self.batch_size:
                flush()
        if batch:
            flush()
        bar.close()
        if not chunks:
            raise ValueError("no images to embed")
        return torch.cat(chunks)
