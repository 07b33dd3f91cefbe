"""CoLLM's data side as tools (CoLLM §4): generate an MTCIR-style triplet dataset for any domain (`mtcir`:
`grouping` of similar images + `generation` of modification texts by an instruct LLM), and refine a
benchmark with a judge against hard negatives (`refinement`). `embedding` embeds images with any tower."""

from .embedding import ImageEmbedder
from .generation import TransformersGenerator, build_messages, parse_modifications
from .grouping import group_images, pairs_from_groups, pairs_in_group
from .mtcir import MTCIROptions, MTCIRReport, generate_mtcir
from .refine import RefineOptions, refine_benchmark
from .refinement import CoLLMProxyJudge, ImageTextToTextJudge, LLMTextRewriter, passes_rule

__all__ = ["CoLLMProxyJudge", "ImageEmbedder", "ImageTextToTextJudge", "LLMTextRewriter", "MTCIROptions", "MTCIRReport",
           "RefineOptions", "TransformersGenerator", "build_messages", "generate_mtcir", "group_images",
           "pairs_from_groups", "pairs_in_group", "parse_modifications", "passes_rule", "refine_benchmark"]
