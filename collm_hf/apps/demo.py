"""The web demo: pick or upload a reference image, type a modification, see the top-k gallery images.

    reference image (upload / sample) + modification text --GallerySearcher--> top-k --gr.Gallery (captions)

`build_demo` returns a `gradio.Blocks` (nothing is launched); `launch` serves it on localhost or a Space with
no network access (analytics off, no share link, bundled fonts). `examples/app.py` is the thin launcher.
Bad input (a file that is not an image, a query mode that needs text but got none) shows a warning toast and
a status line, never a traceback. The default gallery is the synthetic world's CIRR-style gallery (the one the
quickstart wrote beside its model, or rendered on the spot: nothing to download), with its queries as samples.
"""

import logging
import os
import time
from pathlib import Path

from ..models.collm.image_io import ImageReadError, open_image
from .search import DEFAULT_MODEL, GallerySearcher, SearchInputError, open_gallery, read_query_image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (after the analytics switch)

logger = logging.getLogger(__name__)

MODES = {"Image + text": "image+text", "Text only": "text", "Image only": "image"}
NUM_SAMPLES = 8
# Small gallery images (the synthetic world's are 48 px) are scaled up whole and sharp; captions may wrap.
CSS = """
#reference-image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
#results img { object-fit: contain !important; image-rendering: pixelated; box-sizing: border-box; padding-bottom: 1.8em; }
#results .caption-label { max-width: 100%; }
"""


def open_reference(image, name: str | None = None):
    """The reference image as a PIL image: a file path is decoded here, with the package's `open_image`.

    Args:
        image: a file path (an upload, a picked sample) or a PIL image.
        name: the file's name for messages (an upload's original name); default: the path's last part.

    Raises:
        ImageReadError: the file is not an image that can be read; the message names it, for the page.
    """
    if not isinstance(image, (str, os.PathLike)):
        return image
    name = repr(name or os.path.basename(str(image)))
    try:
        return open_image(image, name)
    except ImageReadError as error:  # one message for every decoder failure; the cause keeps the detail
        raise ImageReadError(f"{name} is not an image that can be read ({type(error.__cause__).__name__}). "
                             "Upload a PNG, JPEG or WebP file.") from error


# ----------------------------------------------------------------------------------------------------------
# Default gallery
# ----------------------------------------------------------------------------------------------------------
def synthetic_world_gallery(seed: int = 0, tiny: bool = False, num_samples: int = NUM_SAMPLES):
    """The synthetic world's CIRR-style gallery and a few of its queries as (reference image, text) samples.

    Args:
        seed: the world's seed (the quickstart's default is 0).
        tiny: the reduced world (`WorldConfig.tiny`), for tests.
        num_samples: how many sample queries to return.

    Returns:
        (`datasets.Dataset` with `image_id`, `image`; list of (PIL image, modification text)).
    """
    import datasets

    from ..data.synthetic_world import WorldConfig, cirr_rows

    config = WorldConfig.tiny(seed) if tiny else WorldConfig(seed=seed)
    queries, gallery = cirr_rows(config)
    features = datasets.Features({"image_id": datasets.Value("string"), "image": datasets.Image()})
    dataset = datasets.Dataset.from_list(gallery, features=features)
    samples = [(q["reference_image"], q["modification_text"]) for q in queries[:num_samples]]
    return dataset, samples


def default_gallery(model_path=None, seed: int = 0, num_samples: int = NUM_SAMPLES):
    """The synthetic world's CIRR-style gallery and sample queries: the world the quickstart wrote beside its model
    (`DIR/world/cirr` for `DIR/model`), else the world of `seed` rendered now.

    Returns:
        (`datasets.Dataset` with `image_id`, `image`; list of (PIL image, modification text)).
    """
    from ..data.synthetic_world import CIRR_SPLIT
    from ..evaluation.benchmarks import load_benchmark

    folder = Path(model_path).parent / "world" / "cirr" if model_path is not None else None
    if folder is not None and (folder / "README.md").is_file():
        try:
            bench = load_benchmark(folder, CIRR_SPLIT).head(num_samples)
            return bench.gallery, [(row["reference_image"], row["modification_text"]) for row in bench.queries]
        except (OSError, ValueError) as error:
            logger.warning("Could not read the quickstart's world at %s (%s); rendering the world instead.", folder, error)
    return synthetic_world_gallery(seed, num_samples=num_samples)


def _sample_rows(samples) -> list[list]:
    """gr.Examples rows [[reference image, text], ...] (PIL images are cached by gradio as PNG)."""
    rows = []
    for i, (image, text) in enumerate(samples):
        image = str(image) if isinstance(image, (str, os.PathLike)) else read_query_image(image, f"samples[{i}]")
        rows.append([image, text or ""])
    return rows


# ----------------------------------------------------------------------------------------------------------
# One search, as the UI runs it
# ----------------------------------------------------------------------------------------------------------
def _placeholder(image_id: str):
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (96, 96), (225, 225, 225))
    ImageDraw.Draw(canvas).text((6, 42), str(image_id)[:14], fill=(60, 60, 60))
    return canvas


def search_step(searcher: GallerySearcher, image, text, mode: str, k, exclude_reference: bool = True,
                image_name: str | None = None) -> tuple[list, str, str | None]:
    """Run one query from the UI's inputs.

    Args:
        searcher: the loaded model and gallery.
        image: the reference image input (file path, PIL image or None); a file is decoded here.
        text: the modification text box.
        mode: a key of `MODES` ("Image + text", "Text only", "Image only").
        k: number of results.
        exclude_reference: leave out gallery images identical to the reference (as CIRR does).
        image_name: the reference file's name for messages (an upload's original name).

    Returns:
        (gallery items [(PIL image, caption)], status Markdown, warning message or None).
    """
    text = (text or "").strip()
    mode_key = MODES.get(mode, mode)
    problem, start = None, time.perf_counter()
    if mode_key == "text":
        image = None  # a text-only query ignores the image input, readable or not
    elif image is None:
        problem = "Upload or pick a reference image first (or choose **Text only**)."
    else:
        try:
            image = open_reference(image, image_name)
        except ImageReadError as error:
            problem = str(error)
    if problem is None and mode_key != "image" and not text:
        problem = "Type a modification text first (or choose **Image only**)."
    if problem is None:
        try:
            hits = searcher.search(image=image, text=None if mode_key == "image" else text, k=int(k),
                                   exclude_reference=bool(exclude_reference))
            seconds = time.perf_counter() - start
        except (ImageReadError, SearchInputError) as error:
            problem = str(error)
    if problem is not None:
        return [], f"⚠️ {problem}", problem
    items = [(searcher.image(h.image_id) or _placeholder(h.image_id), f"#{h.rank} · {h.score:.3f} · {h.image_id}")
             for h in hits]
    label = next(name for name, key in MODES.items() if key == mode_key)
    status = f"**{label}** query: top {len(hits)} of {searcher.size} gallery images in {seconds * 1000:.0f} ms."
    return items, status, None


def _handler(searcher: GallerySearcher):
    """The search event's function. It runs with `preprocess=False`: gradio's image preprocessing would decode an
    upload itself and fail on a file that is not an image before any message could be shown, so `image` arrives
    as the raw file data of the cached upload (a dict with `path` and `orig_name`) and `search_step` decodes it."""

    def run(image, text, mode, k, exclude_reference):
        path, name = (image.get("path"), image.get("orig_name")) if isinstance(image, dict) else (image, None)
        try:
            items, status, warning = search_step(searcher, path, text, mode, k, exclude_reference, name)
        except Exception as error:  # a demo shows what went wrong; the server log keeps the traceback
            logger.exception("search failed")
            items, status, warning = [], f"⚠️ Search failed: {error}", f"Search failed: {error}"
        if warning:
            gr.Warning(warning)
        return items, status

    return run


# ----------------------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------------------
def build_demo(model_path: str | os.PathLike | None = DEFAULT_MODEL, index_or_dataset=None, *, images=None,
               samples=None, k: int = 8, device=None, searcher: GallerySearcher | None = None, seed: int = 0,
               title: str = "CoLLM composed image retrieval", rebuild_index: bool = False, **load_options) -> gr.Blocks:
    """Build the Gradio app (not launched).

    Args:
        model_path: saved CoLLM folder or hub id (default: the quickstart's `collm-quickstart/model`).
        index_or_dataset: a gallery dataset (path, hub id or `datasets.Dataset`), an index folder from
            `collm-hf index` (memory-mapped, searched with the approximate index saved in it, if any; one made by
            another model raises `IndexMismatchError`), or a `GalleryIndex`; None: the synthetic world's gallery
            (`default_gallery`).
        images: gallery dataset to show results from, when `index_or_dataset` is an index without one.
        samples: sample queries [(image or path, text)]; default: the synthetic world's queries, or a few
            gallery images (image-only) for another gallery.
        k: default number of results.
        device: "cpu", "cuda" or None (auto).
        searcher: an already loaded `GallerySearcher` (then `model_path` and the gallery are not read).
        seed: the synthetic world's seed for the default gallery.
        rebuild_index: re-embed an index folder made by another model, from the gallery it names.
        **load_options: `config` / `split` of the gallery dataset.

    Returns:
        a `gradio.Blocks`; serve it with `launch(demo)` (or `demo.launch()`).
    """
    if searcher is None:
        from .search import load_model_and_processor

        model, processor = load_model_and_processor(model_path, device)
        if index_or_dataset is None:
            index_or_dataset, world_samples = default_gallery(model_path, seed)
            samples = world_samples if samples is None else samples
        index, gallery = open_gallery(index_or_dataset, model, processor, images=images, rebuild=rebuild_index,
                                      **load_options)
        searcher = GallerySearcher(model, processor, index, gallery)
    if samples is None and searcher.gallery is not None:
        samples = [(searcher.image(i), "") for i in searcher.index.ids[:NUM_SAMPLES]]
    sample_rows = _sample_rows(samples or [])
    source = "its own" if searcher.gallery is not None else "no (results shown by id)"
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"# {title}\nPick or upload a **reference image**, say how the image you want differs from it, and "
            f"CoLLM ranks the gallery ({searcher.size} images, {source} pictures). Text-only and image-only queries "
            "work too."
        )
        with gr.Row():
            with gr.Column(scale=2, min_width=280):
                image = gr.Image(label="Reference image", type="filepath", format="png", height=240,
                                 sources=["upload", "clipboard"], elem_id="reference-image")
                text = gr.Textbox(label="Modification text", placeholder="e.g. make the circle blue and add a star",
                                  lines=2, elem_id="modification-text")
                mode = gr.Radio(list(MODES), value="Image + text", label="Query", elem_id="query-mode")
                with gr.Row():
                    top_k = gr.Slider(1, min(50, searcher.size), value=min(k, searcher.size), step=1, label="Results",
                                      scale=3)
                    hide_reference = gr.Checkbox(value=True, label="Leave out the reference itself", scale=2,
                                                 elem_id="exclude-reference")
                button = gr.Button("Search", variant="primary", elem_id="search-button")
                if sample_rows:
                    gr.Examples(sample_rows, inputs=[image, text], label="Sample queries", examples_per_page=NUM_SAMPLES)
            with gr.Column(scale=3, min_width=320):
                status = gr.Markdown("Results appear here.", elem_id="status")
                results = gr.Gallery(label="Top results (rank · cosine similarity · gallery id)", columns=4,
                                     height="auto", object_fit="contain", format="png", elem_id="results",
                                     preview=False)
        run = _handler(searcher)
        # One queue for both triggers: one query at a time through the model. The click is also the Space's API.
        for trigger, api_name in ((button.click, "search"), (text.submit, False)):
            trigger(run, [image, text, mode, top_k, hide_reference], [results, status], api_name=api_name,
                    concurrency_id="search", preprocess=False)
    demo.searcher, demo.samples = searcher, samples or []
    return demo


def launch(demo: gr.Blocks, host: str | None = None, port: int | None = None, block: bool = True, **kwargs):
    """Serve the demo with no outside network access (no share link, no analytics, no server-side rendering).

    Args:
        demo: from `build_demo`.
        host / port: where to listen (default: gradio's, i.e. 127.0.0.1 and 7860, or $GRADIO_SERVER_*).
        block: wait until interrupted (False returns at once, for tests).
        **kwargs: passed to `gr.Blocks.launch`.
    """
    options = dict(server_name=host, server_port=port, share=False, ssr_mode=False, css=CSS, show_error=True,
                   prevent_thread_lock=not block, quiet=not block)
    options.update(kwargs)
    return demo.launch(**options)


__all__ = ["DEFAULT_MODEL", "MODES", "build_demo", "default_gallery", "launch", "open_reference", "search_step",
           "synthetic_world_gallery"]
