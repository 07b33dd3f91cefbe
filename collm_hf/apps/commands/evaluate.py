"""`collm-hf evaluate` (also `examples/evaluate_collm.py`): a model on a benchmark folder -> metrics table, JSON
report, optional test-server submission files and a retrieval picture.

    collm-hf evaluate --model M --dataset data/cirr --split val --output-json cirr_val.json --visualize cirr.png
    collm-hf evaluate --model M --dataset data/cirr --split test1 --submission-dir submissions/

It runs the steps shown in `collm_hf.evaluation.report`. Heavy imports stay inside `run`.
"""

import contextlib
import json

PROTOCOLS = ("cirr", "circo", "fashioniq", "standard")
SUBMISSION_PROTOCOLS = ("cirr", "circo")  # the benchmarks with a test server


def add_arguments(parser):
    """The command-line options of `collm-hf evaluate`."""
    parser.add_argument("--model", required=True, help="a saved CoLLM folder (model + processor), or a hub id")
    parser.add_argument("--dataset", required=True,
                        help="benchmark dataset folder or hub id (configs queries / gallery)")
    parser.add_argument("--split", default=None, help="queries split (default: val / validation / test / the first one)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=None,
                        help="metric protocol (default: inferred from the queries' columns)")
    parser.add_argument("--refined", action="store_true", help="use the `queries_refined` config")
    parser.add_argument("--with-shared-concept", action="store_true",
                        help="CIRCO: query text '<shared concept> but <relative caption>' (default: the relative "
                             "caption only, as the official baseline)")
    parser.add_argument("--text-template", default=None, help="query text from columns, e.g. '{modification_text}'")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0, help="image-decoding worker processes for the gallery")
    parser.add_argument("--max-queries", type=int, default=None, help="only the first N queries (quick checks)")
    parser.add_argument("--device", default=None, help="e.g. cuda, cpu (default: cuda when available)")
    parser.add_argument("--backend", choices=["auto", "torch", "faiss"], default="auto", help="search backend")
    parser.add_argument("--images-dir", default=None,
                        help="local image folder for annotation-only (--no-images) dataset builds")
    parser.add_argument("--index-dir", default=None,
                        help="gallery index folder: reused when this model made it from this gallery, else written")
    parser.add_argument("--rebuild-index", action="store_true",
                        help="replace an --index-dir index made by another model or from another gallery")
    parser.add_argument("--output-json", default=None, help="write the report here")
    parser.add_argument("--submission-dir", default=None, help="write CIRR / CIRCO test-server files here")
    parser.add_argument("--visualize", default=None, help="write a PNG grid of queries and their top results here")
    parser.add_argument("--num-visualize", type=int, default=8)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _text_template(args) -> str:
    from ...evaluation.embedding import DEFAULT_TEXT_TEMPLATE, SHARED_CONCEPT_TEMPLATE
    from ..cli import UsageError

    if args.text_template and args.with_shared_concept:
        raise UsageError("--text-template and --with-shared-concept are exclusive.")
    template = args.text_template or (SHARED_CONCEPT_TEMPLATE if args.with_shared_concept else DEFAULT_TEXT_TEMPLATE)
    if "{modification_text}" not in template:
        raise UsageError(f"--text-template must contain {{modification_text}}, got {template!r}.")
    return template


@contextlib.contextmanager
def _datasets_progress(show: bool):
    """`datasets` progress bars off inside, when `show` is False (--no-progress)."""
    import datasets

    hide = not show and datasets.is_progress_bar_enabled()
    if hide:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if hide:
            datasets.enable_progress_bars()


def evaluate_from_args(args) -> dict:
    """Evaluate, print the metrics table and the files written, and return the report (`benchmark_report`)."""
    from ...evaluation.benchmarks import load_benchmark
    from ...evaluation.embedding import load_or_embed_gallery
    from ...evaluation.report import benchmark_report, format_metrics_table, write_report
    from ...evaluation.scoring import evaluate_benchmark
    from ...evaluation.submission import write_submission
    from ...evaluation.visualization import save_benchmark_grid
    from ..cli import UsageError
    from ..search import load_model_and_processor

    template = _text_template(args)
    for option, value in (("--batch-size", args.batch_size), ("--max-queries", args.max_queries)):
        if value is not None and value < 1:
            raise UsageError(f"{option} must be a positive integer, got {value}.")
    show_progress = not args.no_progress
    # A folder that is not a benchmark, a cache built from another gallery or missing images are user errors
    # (`collm_hf.apps.cli.user_error_types`): one line, exit status 2.
    with _datasets_progress(show_progress):  # loading a folder the first time shows `datasets` bars
        bench = load_benchmark(args.dataset, args.split, args.refined)
        protocol = args.protocol or bench.protocol
        if args.submission_dir is not None and protocol not in SUBMISSION_PROTOCOLS:
            raise UsageError(f"--submission-dir: {protocol} has no test-server format (only cirr and circo).")
        if args.images_dir is not None:
            bench = bench.with_images(args.images_dir)
    bench = bench.head(args.max_queries)
    model, processor = load_model_and_processor(args.model, args.device)
    index = load_or_embed_gallery(model, processor, bench.gallery, args.index_dir, batch_size=args.batch_size,
                                  num_workers=args.num_workers, show_progress=show_progress, rebuild=args.rebuild_index)
    metrics, rankings = evaluate_benchmark(model, processor, bench.queries, bench.gallery, protocol,
                                           batch_size=args.batch_size, text_template=template, index=index,
                                           backend=args.backend, show_progress=show_progress, return_rankings=True)
    files = []
    if args.submission_dir is not None:
        files += write_submission(args.submission_dir, rankings, prefix=f"{protocol}_{bench.split}")
    if args.visualize is not None:
        files.append(save_benchmark_grid(args.visualize, bench.queries, rankings, bench.gallery,
                                         num_queries=args.num_visualize))
    report = benchmark_report(bench, rankings, metrics, template, files)
    if args.output_json is not None:
        report["files"].append(write_report(args.output_json, report))
    print(format_metrics_table(metrics, f"{bench.name} / {bench.split} ({protocol}, {len(bench.queries)} queries, "
                                        f"{len(bench.gallery)} gallery images)"))
    for path in report["files"]:
        print(f"wrote {path}")
    if args.output_json is None:
        print(json.dumps(metrics))
    return report


def run(args) -> int:
    """`collm-hf evaluate`; user errors end as one line with exit status 2 (`collm_hf.apps.cli`)."""
    evaluate_from_args(args)
    return 0


__all__ = ["add_arguments", "evaluate_from_args", "run"]
