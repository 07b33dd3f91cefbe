"""Command-line front end shared by `dataset_scripts/build_<name>.py` and `collm-hf build-dataset <name>`.

Every builder takes the same flags (`--source-dir`, `--images-dir`, `--output-dir`, `--push-to-hub`,
`--no-images`, `--allow-missing`, ...) plus its own (`--refined` for CIRR and Fashion-IQ, `--image-info`
for CIRCO). A failed build (missing or unreadable images, malformed annotations, an output folder in the way) is
a user error (`collm_hf.apps.cli`): one line naming every offending item, exit status 2; Ctrl-C or SIGTERM exits
with 130. Either way nothing is left at `--output-dir`.
"""

import argparse
import signal
import sys
import threading

from ..cli import require_path, run_script

BUILDERS = {
    "cirr": "CIRR (rc2): captions/ + image_splits/ -> queries, gallery (+ queries_refined)",
    "fashioniq": "Fashion-IQ: captions/ + image_splits/ -> queries, gallery (+ queries_refined)",
    "circo": "CIRCO: annotations/{val,test}.json + COCO unlabeled2017 -> queries, gallery",
    "mtcir": "MTCIR: mtcir.jsonl + LLaVA-Pretrain images -> triplets, images",
    "pairs": "image-caption pairs: captions .json/.jsonl/.csv/.tsv + images folder -> pairs",
}


def add_build_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Add the flags of builder `name` to `parser`."""
    source_help = {
        "mtcir": "mtcir.jsonl or the folder holding it",
        "pairs": "the captions file (.json LLaVA-558k shape, .jsonl, .csv, .tsv) or the folder holding it",
    }.get(name, "the folder with the official annotation files, in the official layout")
    parser.add_argument("--source-dir", "--captions", dest="source_dir", required=True, help=source_help)
    parser.add_argument("--images-dir", help="the images, laid out as the annotations reference them: a folder, or "
                        "a zip / tar archive read in place (optional with --no-images: if given, images are still "
                        "checked)")
    parser.add_argument("--output-dir", required=True, help="the dataset folder to create (written atomically)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the finished folder as this dataset repo")
    parser.add_argument("--no-images", action="store_true",
                        help="annotations only: store relative image paths, no bytes (see collm_hf.data.local_images)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="drop rows whose images are missing or unreadable (listed in the card) instead of failing")
    parser.add_argument("--splits", nargs="+", help="build only these splits (default: every split found)")
    parser.add_argument("--rows-per-shard", type=int, default=1000, help="rows per Parquet file")
    parser.add_argument("--check-workers", type=int, default=None, help="threads decoding images during validation")
    parser.add_argument("--no-decode-check", action="store_true",
                        help="only check that images exist (faster); by default every image is decoded")
    if name in ("cirr", "fashioniq"):
        parser.add_argument("--refined", metavar="PATH",
                            help="refined val file (CoLLM §4.2) -> config queries_refined, overlaid by pair id")
    if name == "circo":
        parser.add_argument("--image-info", metavar="PATH", help="COCO image_info_unlabeled2017.json "
                            "(default: looked up beside --images-dir, e.g. ../annotations/)")


def run_build(name: str, args: argparse.Namespace):
    """Run builder `name` with parsed `args`; return the finished folder (exceptions propagate)."""
    from ...data._build import DEFAULT_CHECK_WORKERS, BuildOptions

    options = BuildOptions(
        output_dir=args.output_dir, images_dir=args.images_dir, push_to_hub=args.push_to_hub,
        no_images=args.no_images, allow_missing=args.allow_missing, rows_per_shard=args.rows_per_shard,
        check_workers=args.check_workers or DEFAULT_CHECK_WORKERS, decode_check=not args.no_decode_check,
        splits=args.splits,
    )
    if name == "cirr":
        from ...data.cirr import build_cirr
        return build_cirr(args.source_dir, options, refined=args.refined)
    if name == "fashioniq":
        from ...data.fashioniq import build_fashioniq
        return build_fashioniq(args.source_dir, options, refined=args.refined)
    if name == "circo":
        from ...data.circo import build_circo
        return build_circo(args.source_dir, options, image_info=args.image_info)
    if name == "mtcir":
        from ...data.mtcir import build_mtcir
        return build_mtcir(args.source_dir, options)
    if name == "pairs":
        from ...data.pairs import build_pairs
        return build_pairs(args.source_dir, options)
    raise ValueError(f"unknown builder {name!r}; expected one of {sorted(BUILDERS)}")


def build_main(name: str, argv=None) -> int:
    """`main(argv)` of `dataset_scripts/build_<name>.py`: 0 on success; a failed build prints one line and raises
    `SystemExit(2)` (130 on Ctrl-C), leaving nothing at --output-dir."""
    return run_script(f"build_{name}.py", lambda parser: add_build_arguments(parser, name),
                      lambda args: _run(name, args), argv, BUILDERS[name])


def _run(name: str, args: argparse.Namespace) -> int:
    require_path(args.source_dir, "--source-dir")
    for option, value, kind in (("--images-dir", args.images_dir, None),  # a folder or an archive
                                ("--refined", getattr(args, "refined", None), "file"),
                                ("--image-info", getattr(args, "image_info", None), "file")):
        if value is not None:
            require_path(value, option, kind)
    previous = _terminate_as_interrupt()
    try:
        folder = run_build(name, args)
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(f"wrote {folder}" + (f" and pushed it to {args.push_to_hub}" if args.push_to_hub else ""))
    return 0


def _terminate_as_interrupt():
    """Make SIGTERM raise KeyboardInterrupt (as Ctrl-C does) so the writer removes its temporary folder."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


# `collm-hf build-dataset <name> ...` (an entry of `collm_hf.apps.cli.SUBCOMMANDS`)
def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="builder", required=True)
    for name, help_text in BUILDERS.items():
        add_build_arguments(sub.add_parser(name, help=help_text, description=help_text), name)


def run(args: argparse.Namespace) -> int:
    return _run(args.builder, args)
