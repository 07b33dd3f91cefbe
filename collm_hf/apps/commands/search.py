"""`collm-hf search` and `collm-hf index`: composed image retrieval from the terminal.

    collm-hf index  --model M --dataset D --output-dir I [--kind ivf-pq]   # embed a gallery once (progress bar)
    collm-hf search --model M --index I --image ref.png --text "make it blue" [-k 10] [--json]

`--index` takes the folder `collm-hf index` wrote (searched with the approximate index saved in it, if any), or a
gallery dataset directly (embedded on the fly). Either of `--image` / `--text` may be left out for an image-only
or text-only query. Bad input (a missing or unreadable image, a query with neither part, an index made by
another model or from another gallery) is a user error (`collm_hf.apps.cli`): one line naming it, exit status 2;
`--rebuild-index` re-embeds such an index instead. `commands/index.py` registers `index`.
"""

import argparse
import json
import os

from ..cli import UsageError, require_dataset, require_path

DEFAULT_MODEL = os.path.join("collm-quickstart", "model")  # = collm_hf.apps.search.DEFAULT_MODEL (not imported: heavy)
INDEX_KINDS = ("flat", "ivf-flat", "ivf-pq", "hnsw")  # = collm_hf.apps.search.INDEX_KINDS


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"saved CoLLM folder or hub id (default: the quickstart's, {DEFAULT_MODEL})")
    parser.add_argument("--config", default="gallery", help="dataset config holding the gallery (default: gallery)")
    parser.add_argument("--split", default=None, help="dataset split (default: the only one, else test)")
    parser.add_argument("--batch-size", type=int, default=64, help="gallery images per forward pass")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `collm-hf search`."""
    _add_common(parser)
    parser.add_argument("--index", required=True, help="index folder written by `collm-hf index`, or a gallery dataset")
    parser.add_argument("--image", default=None, help="reference image file (leave out for a text-only query)")
    parser.add_argument("--text", default=None, help="modification text (leave out for an image-only query)")
    parser.add_argument("-k", "--top-k", dest="k", type=int, default=10, help="number of results (default: 10)")
    parser.add_argument("--exclude", nargs="*", default=[], metavar="ID", help="gallery ids never returned")
    parser.add_argument("--exclude-reference", action="store_true",
                        help="leave out gallery images identical to the reference image (as CIRR does)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--kind", choices=("auto", "exact", *INDEX_KINDS[1:]), default="auto",
                        help="search with: the approximate index saved in --index (auto, the default; exact when "
                             "there is none), exact search, or an approximate kind (built in memory if not saved)")
    parser.add_argument("--rebuild-index", action="store_true",
                        help="re-embed an --index folder made by another model, from the gallery it names")


def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `collm-hf index`."""
    _add_common(parser)
    parser.add_argument("--dataset", required=True, help="gallery dataset (`image_id`, `image`): folder, Parquet or hub id")
    parser.add_argument("--output-dir", required=True, help="index folder to write")
    parser.add_argument("--kind", choices=INDEX_KINDS, default="flat",
                        help="flat: exact search over the stored embeddings (default); ivf-flat, ivf-pq, hnsw: also "
                             "train and save that FAISS index, which `collm-hf search` then uses")
    parser.add_argument("--append", action="store_true",
                        help="add the images of --dataset that the index in --output-dir lacks, as a new shard")
    parser.add_argument("--rebuild-index", action="store_true",
                        help="replace an index in --output-dir made by another model or from another gallery")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Run `collm-hf search`: print the top-k gallery ids with their scores (a table, or JSON)."""
    from ..search import GallerySearcher, query_mode, read_query_image

    text = args.text if args.text is not None and args.text.strip() else None
    if args.text is not None and text is None and args.image is None:
        raise UsageError("--text is empty and no --image is given: nothing to search for.")
    mode = query_mode(args.image is not None, text is not None)
    if args.k < 1:
        raise UsageError(f"-k must be a positive integer, got {args.k}.")
    image = None
    if args.image is not None:  # read before the model loads: a bad file is reported at once
        require_path(args.image, "--image", "file")
        image = read_query_image(args.image)
    require_dataset(args.index, "--index")
    approximate = {"auto": "auto", "exact": None}.get(args.kind, args.kind)
    searcher = GallerySearcher.from_pretrained(args.model, args.index, device=args.device, batch_size=args.batch_size,
                                               show_progress=not args.json, rebuild=args.rebuild_index,
                                               approximate=approximate, config=args.config, split=args.split)
    hits = searcher.search(image=image, text=text, k=args.k, exclude_ids=args.exclude,
                           exclude_reference=args.exclude_reference)
    if args.json:
        print(json.dumps({
            "query": {"image": args.image, "text": text, "mode": mode},
            "model": args.model, "index": args.index, "gallery_size": searcher.size,
            "search": searcher.approximate or "exact",
            "results": [{"rank": h.rank, "image_id": h.image_id, "score": round(h.score, 6)} for h in hits],
        }, indent=2))
    else:
        print(f"{mode} query over {searcher.size} gallery images; top {len(hits)}:")
        print(f"{'rank':>4}  {'score':>8}  image_id")
        for hit in hits:
            print(f"{hit.rank:>4}  {hit.score:>8.4f}  {hit.image_id}")
    return 0


def run_index(args: argparse.Namespace) -> int:
    """Run `collm-hf index`: embed the gallery with the model's vision side and save the index folder."""
    from ..search import build_gallery_index, load_gallery, load_model_and_processor

    if args.append and args.rebuild_index:
        raise UsageError("--append and --rebuild-index are exclusive.")
    require_dataset(args.dataset, "--dataset")
    gallery = load_gallery(args.dataset, config=args.config, split=args.split)
    model, processor = load_model_and_processor(args.model, args.device)
    local = os.path.exists(args.dataset)
    source = {"dataset": os.path.abspath(args.dataset) if local else args.dataset, "config": args.config,
              "split": args.split,
              "model": os.path.abspath(args.model) if os.path.exists(args.model) else args.model}
    index = build_gallery_index(model, processor, gallery, args.output_dir, kind=args.kind, source=source,
                                batch_size=args.batch_size, show_progress=not args.no_progress,
                                rebuild=args.rebuild_index, append=args.append)
    search = ", ".join(index.saved_approximate) or "exact"
    print(f"Indexed {len(index)} gallery images ({index.dim}-d) into {args.output_dir} ({index.num_shards} shard(s); "
          f"search: {search})")
    return 0


__all__ = ["add_arguments", "add_index_arguments", "run", "run_index"]
