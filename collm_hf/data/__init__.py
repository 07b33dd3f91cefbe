"""Datasets for CoLLM: one schema (`schema`), one streaming atomic writer (`writer`), builders from the
official raw files (`cirr`, `fashioniq`, `circo`, `mtcir`, `pairs`, with `refined` overlays) and a helper
that attaches a local image folder to an annotation-only build (`local_images`).

Example:
    >>> from collm_hf.data import BuildOptions, build_cirr
    >>> build_cirr("cirr", BuildOptions(output_dir="data/cirr", images_dir="nlvr2/images"))  # doctest: +SKIP
"""

from ._build import BuildOptions, DatasetBuildError, MissingImagesError
from .benchmark import benchmark_builder_memory
from .circo import build_circo
from .cirr import build_cirr
from .fashioniq import build_fashioniq
from .local_images import attach_images
from .mtcir import build_mtcir
from .pairs import build_pairs
from .schema import (
    GALLERY_FEATURES,
    IMAGES_FEATURES,
    PAIRS_FEATURES,
    TRIPLETS_FEATURES,
    benchmark_features,
    gallery_features,
    queries_features,
    queries_refined_features,
    triplet_features,
)
from .writer import DatasetWriteError, push_folder_to_hub, write_dataset

__all__ = [
    "BuildOptions", "DatasetBuildError", "DatasetWriteError", "MissingImagesError",
    "GALLERY_FEATURES", "IMAGES_FEATURES", "PAIRS_FEATURES", "TRIPLETS_FEATURES",
    "attach_images", "benchmark_builder_memory", "benchmark_features", "build_circo", "build_cirr",
    "build_fashioniq", "build_mtcir", "build_pairs", "gallery_features", "push_folder_to_hub",
    "queries_features", "queries_refined_features", "triplet_features", "write_dataset",
]
