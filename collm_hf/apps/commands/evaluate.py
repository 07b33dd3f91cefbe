"""`collm-hf evaluate` (and `examples/evaluate_collm.py`): a model on a benchmark folder -> metrics table,
JSON report, optional test-server submission files and a retrieval picture. Heavy imports stay inside `run`."""

import json


def add_arguments(parser):
    """The command-line options (shared by `collm-hf evaluate` and `examples/evaluate_collm.py`)."""
    parser.add_argument("model", help="a saved CoLLM folder (model + processor), or a hub id")
    parser.add_argument("dataset", help="benchmark dataset folder (configs queries / gallery)")
    parser.add_argument("--split", default=None, help="queries split (default: val / validation / the first one)")
    parser.add_argument("--protocol", choices=["cirr", "circo", "fashioniq", "standard"], default=None,
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
    parser.add_argument("--index-dir", default=None, help="gallery index cache folder (loaded if present, else saved)")
    parser.add_argument("--output-json", default=None, help="write the report here")
    parser.add_argument("--submission-dir", default=None, help="write CIRR / CIRCO test-server files here")
    parser.add_argument("--visualize", default=None, help="write a PNG grid of queries and their top results here")
    parser.add_argument("--num-visualize", type=int, default=8)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def evaluate_from_args(args) -> dict:
    """Load the model, evaluate, print the table; return the report (see `evaluation.evaluate_folder`)."""
    import torch
    from transformers import AutoModel, AutoProcessor

    import collm_hf  # noqa: F401  (registers the Auto classes)

    from ...evaluation.benchmarks import DEFAULT_TEXT_TEMPLATE, SHARED_CONCEPT_TEMPLATE, evaluate_folder, format_metrics_table

    if args.text_template and args.with_shared_concept:
        raise ValueError("--text-template and --with-shared-concept are exclusive.")
    template = args.text_template or (SHARED_CONCEPT_TEMPLATE if args.with_shared_concept else DEFAULT_TEXT_TEMPLATE)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModel.from_pretrained(args.model, dtype=torch.float32).to(device).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    report = evaluate_folder(
        model, processor, args.dataset, args.split, refined=args.refined, protocol=args.protocol,
        text_template=template, batch_size=args.batch_size, max_queries=args.max_queries, index_dir=args.index_dir,
        submission_dir=args.submission_dir, visualize_path=args.visualize, num_visualize=args.num_visualize,
        output_json=args.output_json, backend=args.backend, images_dir=args.images_dir, num_workers=args.num_workers,
        show_progress=not args.no_progress,
    )
    title = (f"{report['benchmark']} / {report['split']} ({report['protocol']}, {report['num_queries']} queries, "
             f"{report['num_gallery']} gallery images)")
    print(format_metrics_table(report["metrics"], title))
    for path in report["files"]:
        print(f"wrote {path}")
    if not args.output_json:
        print(json.dumps(report["metrics"]))
    return report


def run(args) -> int:
    evaluate_from_args(args)
    return 0
