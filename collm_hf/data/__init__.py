"""Datasets for CoLLM: one schema (`schema`), one streaming atomic writer (`writer`), builders from the
official raw files (`cirr`, `fashioniq`, `circo`, `mtcir`, `pairs`, `refined`) and a helper that attaches
a local image folder to an annotation-only build (`local_images`)."""

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
from ._build import BuildOptions, DatasetBuildError, MissingImagesError
from .benchmark import benchmark_builder_memory
from .writer import DatasetWriteError, push_folder_to_hub, write_dataset

__all__ = [
    "BuildOptions", "DatasetBuildError", "MissingImagesError", "GALLERY_FEATURES", "IMAGES_FEATURES", "PAIRS_FEATURES", "TRIPLETS_FEATURES", "DatasetWriteError",
    "benchmark_builder_memory", "benchmark_features", "gallery_features", "push_folder_to_hub", "queries_features",
    "queries_refined_features", "triplet_features", "write_dataset",
]
