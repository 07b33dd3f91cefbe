"""Generate an MTCIR-style triplet dataset from image-caption pairs, with any vision tower and any instruct LLM.

    python dataset_scripts/generate_mtcir.py --pairs data/pairs --vision openai/clip-vit-base-patch32 \
        --generator HuggingFaceTB/SmolLM2-1.7B-Instruct --output-dir data/mtcir

A killed run continues where it stopped when run again with the same arguments (work in `<output-dir>.work`).
Several GPUs: start one process per GPU with the same arguments plus `--num-workers N --worker-index K
--device cuda:K`; the last one to finish writes the dataset. The logic lives in
`collm_hf.pipelines.mtcir.generate_mtcir` (`dataset_scripts/build_mtcir.py` builds the official MTCIR instead).
"""

import json
from dataclasses import asdict

from collm_hf.apps.cli import UsageError, require_dataset, require_model, run_script

DEFAULT_RESPONSE_PREFIX = '{"modifications": [{"category": "'


def add_arguments(parser):
    from collm_hf.pipelines.mtcir import MTCIROptions

    defaults = MTCIROptions()
    parser.add_argument("--pairs", required=True, help="pairs dataset (folder or hub id; image_id, image, caption)")
    parser.add_argument("--pairs-config", default="pairs", help="its config name")
    parser.add_argument("--split", default="train", help="its split")
    parser.add_argument("--vision", required=True, help="CoLLM folder or CLIP/SigLIP/BLIP checkpoint to embed images")
    parser.add_argument("--generator", required=True, help="instruct LLM (model id or local path) writing the texts")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--work-dir", default=None, help="resumable work (default: <output-dir>.work)")
    parser.add_argument("--group-size", type=int, default=defaults.group_size)
    parser.add_argument("--low", type=float, default=defaults.low, help="similarity window to the group's first image")
    parser.add_argument("--high", type=float, default=defaults.high)
    parser.add_argument("--num-candidates", type=int, default=defaults.num_candidates)
    parser.add_argument("--shard-size", type=int, default=defaults.shard_size, help="pairs per resumable shard")
    parser.add_argument("--max-retries", type=int, default=defaults.max_retries)
    parser.add_argument("--word-limit", type=int, default=defaults.word_limit)
    parser.add_argument("--no-privacy-filter", action="store_true", help="keep texts about people's attributes")
    parser.add_argument("--max-pairs", type=int, default=None, help="describe only the first N pairs (a trial)")
    parser.add_argument("--batch-size", type=int, default=8, help="conversations per generate call")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--response-prefix", default=DEFAULT_RESPONSE_PREFIX,
                        help="the start every reply is forced to (keeps small models to the JSON form); '' for none")
    parser.add_argument("--embed-batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="e.g. cuda")
    parser.add_argument("--push-to-hub", default=None, help="dataset repo id to upload the result to")
    parser.add_argument("--num-workers", type=int, default=1,
                        help="processes sharing the generation (e.g. one per GPU), each run with its --worker-index")
    parser.add_argument("--worker-index", type=int, default=0)


def generate(args) -> dict:
    from datasets import load_dataset

    from collm_hf.pipelines.embedding import ImageEmbedder
    from collm_hf.pipelines.generation import TransformersGenerator
    from collm_hf.pipelines.mtcir import MTCIROptions, generate_mtcir

    if not 0 <= args.worker_index < args.num_workers:
        raise UsageError(f"--worker-index {args.worker_index} is not in [0, --num-workers {args.num_workers})")
    require_dataset(args.pairs, "--pairs", (args.pairs_config,))
    require_model(args.vision, "--vision")
    require_model(args.generator, "--generator")
    options = MTCIROptions(group_size=args.group_size, low=args.low, high=args.high, num_candidates=args.num_candidates,
                           shard_size=args.shard_size, max_retries=args.max_retries, word_limit=args.word_limit,
                           privacy_filter=not args.no_privacy_filter, max_pairs=args.max_pairs)
    pairs = load_dataset(args.pairs, args.pairs_config, split=args.split)
    embedder = ImageEmbedder.from_pretrained(args.vision, batch_size=args.embed_batch_size, device=args.device)
    generator = TransformersGenerator(args.generator, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                      device=args.device, response_prefix=args.response_prefix)
    report = generate_mtcir(pairs, embedder, generator, args.output_dir, args.work_dir, options, progress=True,
                            push_to_hub=args.push_to_hub, worker=(args.worker_index, args.num_workers))
    print(json.dumps(asdict(report), indent=1))
    return asdict(report)


def main(argv=None) -> dict:
    """The report (`MTCIRReport` as a dict); a user error prints one line and exits with status 2."""
    return run_script("generate_mtcir.py", add_arguments, generate, argv, __doc__)


if __name__ == "__main__":
    main()
