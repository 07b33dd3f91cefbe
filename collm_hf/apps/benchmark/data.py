"""`gallery_pipeline_efficiency` (images from files against the tower alone) and `builder_memory_growth` (peak
RSS of a dataset build at two sizes)."""

import tempfile

import torch

from .harness import interleaved_medians


def _write_gallery_files(folder, n: int, seed: int = 0) -> list[str]:
    """`n` photo-like JPEGs (smooth random content, 320x240, as COCO-sized images compress) in `folder`."""
    import numpy as np
    from PIL import Image

    rng, paths = np.random.default_rng(seed), []
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
        path = f"{folder}/{i:06d}.jpg"
        small.resize((320, 240), Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def gallery_pipeline_benchmark(model, processor, num_images: int = 128, batch_size: int = 32, repeats: int = 3) -> dict:
    """`gallery_pipeline_efficiency`: images/s of `GalleryIndex.from_dataset` on JPEG files (decode + preprocess +
    encode) over images/s of `get_image_embeds` on the same images preloaded as pixel tensors."""
    from datasets import Dataset, Image

    from ...evaluation.index import GalleryIndex

    with tempfile.TemporaryDirectory() as folder:
        paths = _write_gallery_files(folder, num_images)
        dataset = Dataset.from_dict({"image_id": [str(i) for i in range(num_images)], "image": paths})
        dataset = dataset.cast_column("image", Image())
        pixels = [processor(images=dataset[i:i + batch_size]["image"])["pixel_values"]
                  for i in range(0, num_images, batch_size)]

        def from_files():
            GalleryIndex.from_dataset(dataset, model, processor, batch_size=batch_size, show_progress=False)

        def encoder_only():
            with torch.inference_mode():
                for chunk in pixels:
                    model.get_image_embeds(chunk)

        seconds = interleaved_medians({"files": from_files, "encoder": encoder_only}, repeats)
    return {"gallery_pipeline_efficiency": seconds["encoder"] / seconds["files"],
            "gallery_images_per_s_files": num_images / seconds["files"],
            "gallery_images_per_s_encoder": num_images / seconds["encoder"]}


def builder_memory_benchmark(small: int = 2000, large: int = 8000) -> dict:
    """`builder_memory_growth`: peak RSS of an MTCIR-shaped dataset build at `large` images over `small`
    (`collm_hf.data.benchmark_builder_memory`, each build in its own subprocess)."""
    from ...data.benchmark import benchmark_builder_memory

    with tempfile.TemporaryDirectory() as workdir:
        peaks = {n: benchmark_builder_memory(n, workdir) for n in (small, large)}
    return {"builder_memory_growth": peaks[large] / peaks[small], "builder_peak_rss_mib_small": peaks[small] / 2**20,
            "builder_peak_rss_mib_large": peaks[large] / 2**20}
