"""CoLLM's data side as tools (CoLLM §4): build an MTCIR-style triplet dataset for any domain (`mtcir`:
`grouping` of similar images + `generation` of modification texts by an instruct LLM), and refine a
benchmark with a judge against hard negatives (`refinement`). `embedding` embeds images with any tower."""

from .generation import TransformersGenerator, build_messages, parse_modifications
from .grouping import group_images, pairs_from_groups, pairs_in_group
from .mtcir import MTCIROptions, MTCIRReport, build_mtcir

__all__ = ["MTCIROptions", "MTCIRReport", "TransformersGenerator", "build_messages", "build_mtcir", "group_images",
           "pairs_from_groups", "pairs_in_group", "parse_modifications"]
