"""Refine a benchmark (our schema: `queries` + `gallery`) with a judge against the 3 hardest negatives.

    python dataset_scripts/refine_benchmark.py --benchmark data/cirr --split val --judge runs/collm \
        --output-dir data/cirr_refined                                   # a CoLLM as a cheap proxy judge
    python dataset_scripts/refine_benchmark.py --benchmark data/cirr --split val \
        --judge HuggingFaceTB/SmolVLM-Instruct --vision openai/clip-vit-large-patch14 \
        --rewriter Qwen/Qwen2.5-7B-Instruct --output-dir data/cirr_refined   # a VLM judge, LLM rewrites

The logic lives in `collm_hf.pipelines.refine` / `collm_hf.pipelines.refinement`.
"""

import json

from collm_hf.apps.cli import UsageError, require_dataset, require_model, run_script


def add_arguments(parser):
    from collm_hf.pipelines.refine import RefineOptions

    defaults = RefineOptions()
    parser.add_argument("--benchmark", required=True, help="benchmark folder or hub id (configs queries, gallery)")
    parser.add_argument("--split", required=True, help="queries split, e.g. val")
    parser.add_argument("--gallery-split", default=None, help="gallery split (default: the one named as --split, else the only one)")
    parser.add_argument("--judge", required=True, help="CoLLM folder (proxy judge) or image-text-to-text model")
    parser.add_argument("--vision", default=None,
                        help="tower for mining negatives (CoLLM folder or vision checkpoint; default: a CoLLM judge)")
    parser.add_argument("--rewriter", default=None, help="instruct LLM that rewrites ambiguous texts (optional)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--num-negatives", type=int, default=defaults.num_negatives)
    parser.add_argument("--trials", type=int, default=defaults.trials)
    parser.add_argument("--min-passes", type=int, default=defaults.min_passes)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None)


def refine(args) -> dict:
    from transformers import AutoConfig

    from collm_hf import CoLLMModel, CoLLMProcessor
    from collm_hf.pipelines.embedding import ImageEmbedder
    from collm_hf.pipelines.generation import TransformersGenerator
    from collm_hf.pipelines.refine import RefineOptions, refine_benchmark
    from collm_hf.pipelines.refinement import (
        CoLLMProxyJudge,
        ImageTextToTextJudge,
        LLMTextRewriter,
    )

    require_dataset(args.benchmark, "--benchmark", ("queries", "gallery"))
    for option, value in (("--judge", args.judge), ("--vision", args.vision), ("--rewriter", args.rewriter)):
        if value is not None:
            require_model(value, option)
    is_collm = AutoConfig.from_pretrained(args.judge).model_type == "collm"
    if args.vision is None and not is_collm:
        raise UsageError("--vision is needed to mine negatives when the judge is not a CoLLM folder")
    if is_collm:
        model = CoLLMModel.from_pretrained(args.judge).eval()
        if args.device:
            model.to(args.device)
        processor = CoLLMProcessor.from_pretrained(args.judge)
        judge = CoLLMProxyJudge(model, processor, batch_size=args.batch_size)
    else:
        judge = ImageTextToTextJudge.from_pretrained(args.judge, images=None)
        if args.device:
            judge.model.to(args.device)
    share = args.vision is None or args.vision == args.judge
    embedder = (ImageEmbedder.from_model(model, processor, args.batch_size, args.judge) if share and is_collm
                else ImageEmbedder.from_pretrained(args.vision, args.batch_size, args.device))
    rewriter = None
    if args.rewriter:  # the reply is made to start as the JSON the rewriter reads
        rewriter = LLMTextRewriter(TransformersGenerator(args.rewriter, device=args.device, max_new_tokens=48,
                                                         response_prefix='{"text": "'))
    options = RefineOptions(num_negatives=args.num_negatives, trials=args.trials, min_passes=args.min_passes,
                            seed=args.seed)
    summary = refine_benchmark(args.benchmark, args.split, judge, embedder, args.output_dir, rewriter, options,
                               gallery_split=args.gallery_split, share_gallery_embeds=share and is_collm, progress=True)
    print(json.dumps(summary, indent=1))
    return summary


def main(argv=None) -> dict:
    """The refinement summary; a user error prints one line and exits with status 2."""
    return run_script("refine_benchmark.py", add_arguments, refine, argv, __doc__)


if __name__ == "__main__":
    main()
