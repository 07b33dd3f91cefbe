"""A picture of retrieval: one row per query (reference image + modification text), then its top-k results.

Ground-truth results get a thick green frame and a check mark, others a thin grey frame; a ground truth
outside the top-k is noted at the end of the row. PIL only; the PNG is written atomically.

    | reference | -> | #1 | #2 | #3 | ...          "make it blue"   target at rank 2
"""

import os
import textwrap
from collections.abc import Callable, Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..models.collm.image_io import open_image, to_rgb_image
from ..utils.atomic import atomic_write
from ._tables import column_names

GREEN, GREY, RED, BLACK, WHITE = (22, 163, 74), (170, 170, 170), (200, 40, 40), (20, 20, 20), (255, 255, 255)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _thumbnail(image, size: int, name: str) -> Image.Image:
    if image is None:
        tile = Image.new("RGB", (size, size), (235, 235, 235))
        ImageDraw.Draw(tile).text((6, size // 2 - 6), "no image", fill=RED, font=_font(12))
        return tile
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image, name)
    elif isinstance(image, dict):  # an undecoded datasets Image value
        import io

        image = open_image(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"], name)
    image = ImageOps.contain(to_rgb_image(image, name), (size, size))  # fit the tile, up- or down-scaled
    tile = Image.new("RGB", (size, size), WHITE)
    tile.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return tile


def gallery_lookup(gallery, id_column: str = "image_id", image_column: str = "image") -> Callable[[str], object]:
    """A function id -> image over a gallery table (`datasets.Dataset` rows decoded on demand, or a dict of lists)."""
    ids = [str(i) for i in gallery[id_column]]
    position = {image_id: i for i, image_id in enumerate(ids)}

    def lookup(image_id):
        row = position.get(str(image_id))
        if row is None:
            return None
        return gallery[image_column][row] if isinstance(gallery, dict) else gallery[row][image_column]

    return lookup


def retrieval_grid(reference_images: Sequence, texts: Sequence[str], rankings: Sequence[Sequence[str]],
                   gallery: Mapping | Callable, targets: Sequence[Sequence[str]] | None = None, k: int = 5,
                   thumb_size: int = 128, title: str | None = None) -> Image.Image:
    """Draw queries and their top-k results as one image.

    Args:
        reference_images: one image per query (PIL, numpy, path, or None for text-only queries).
        texts: the modification text of each query.
        rankings: per query, gallery ids best first.
        gallery: id -> image, as a mapping or a function (see `gallery_lookup`).
        targets: per query, the ground-truth ids (marked in green); None when unknown.
        k: results shown per query.
        thumb_size: tile side in pixels.
        title: optional caption at the top.

    Returns:
        the RGB grid image: (rows = queries) x (reference + k results).
    """
    n = len(rankings)
    if not (len(reference_images) == len(texts) == n) or (targets is not None and len(targets) != n):
        raise ValueError(f"Got {len(reference_images)} reference images, {len(texts)} texts, {n} rankings"
                         + ("" if targets is None else f", {len(targets)} target lists") + "; need one per query.")
    if n == 0 or k < 1:
        raise ValueError("Need at least one query and k >= 1.")
    get = gallery if callable(gallery) else (lambda image_id: gallery.get(image_id))
    pad, text_h, arrow_w = 8, 46, 28
    label_font, text_font, title_font = _font(12), _font(13), _font(16)
    title_h = 30 if title else 0
    cell = thumb_size + 2 * pad
    width = cell + arrow_w + k * cell + pad
    row_h = thumb_size + text_h + 2 * pad
    canvas = Image.new("RGB", (width, title_h + n * row_h), WHITE)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 7), title, fill=BLACK, font=title_font)
    chars = max(12, int(thumb_size / 6.5))  # characters per text line under the reference
    for row in range(n):
        y = title_h + row * row_h + pad
        canvas.paste(_thumbnail(reference_images[row], thumb_size, f"reference image of query {row}"), (pad, y))
        draw.rectangle([pad - 1, y - 1, pad + thumb_size, y + thumb_size], outline=BLACK, width=1)
        lines = textwrap.wrap(str(texts[row]), width=chars)[:3]
        draw.multiline_text((pad, y + thumb_size + 3), "\n".join(lines), fill=BLACK, font=text_font, spacing=1)
        draw.text((cell + 4, y + thumb_size // 2 - 8), "->", fill=BLACK, font=title_font)
        wanted = set(str(t) for t in (targets[row] if targets is not None else []))
        shown = [str(i) for i in rankings[row][:k]]
        for col, image_id in enumerate(shown):
            x = cell + arrow_w + col * cell + pad
            canvas.paste(_thumbnail(get(image_id), thumb_size, f"gallery image {image_id!r}"), (x, y))
            hit = image_id in wanted
            frame = 5 if hit else 1
            draw.rectangle([x - frame, y - frame, x + thumb_size + frame - 1, y + thumb_size + frame - 1],
                           outline=GREEN if hit else GREY, width=frame)
            label = f"#{col + 1} {'TARGET ' if hit else ''}{image_id}"
            while len(label) > 4 and draw.textlength(label, font=label_font) > thumb_size:
                label = label[:-2] + "."
            draw.text((x, y + thumb_size + 6), label, fill=GREEN if hit else BLACK, font=label_font)
        if wanted and not wanted & set(shown):
            ranked = [str(i) for i in rankings[row]]
            ranks = sorted(ranked.index(t) + 1 for t in wanted if t in ranked)
            note = f"target at rank {ranks[0]}" if ranks else "target not retrieved"
            draw.text((cell + arrow_w + pad, y + thumb_size + 24), note, fill=RED, font=label_font)
    return canvas


def save_retrieval_grid(path: str, *args, **kwargs) -> str:
    """Draw `retrieval_grid(*args, **kwargs)` and write it as a PNG atomically (temp file, then os.replace)."""
    image = retrieval_grid(*args, **kwargs)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return path


def save_benchmark_grid(path: str, queries, rankings, gallery, num_queries: int = 8, k: int = 5, **kwargs) -> str:
    """Draw `benchmark_grid(...)` and write it as a PNG atomically (temp file, then os.replace)."""
    image = benchmark_grid(queries, rankings, gallery, num_queries=num_queries, k=k, **kwargs)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return path


def benchmark_grid(queries, rankings, gallery, num_queries: int = 8, k: int = 5, **kwargs) -> Image.Image:
    """The grid (a PIL image) for the first `num_queries` of a benchmark split.

    Args:
        queries: the `queries` table (`reference_image`, `modification_text`).
        rankings: a `collm_hf.evaluation.scoring.BenchmarkRankings` of those queries.
        gallery: the `gallery` table (`image_id`, `image`).
    """
    rows = list(range(min(num_queries, len(rankings.rankings))))
    names = column_names(queries)
    subset = queries.select(rows) if hasattr(queries, "select") else {c: queries[c][: len(rows)] for c in names}
    images = list(subset["reference_image"]) if "reference_image" in names else [None] * len(rows)
    texts = list(subset["modification_text"])
    targets = [rankings.targets[i] for i in rows] if rankings.has_labels else None
    ranked = [rankings.rankings[i] for i in rows]
    if rankings.protocol == "cirr":  # show what the metric scores: the ranking without the reference
        ranked = [[x for x in r if x != rankings.reference_ids[i]] for i, r in zip(rows, ranked)]
    return retrieval_grid(images, texts, ranked, gallery_lookup(gallery), targets, k=k, **kwargs)


__all__ = ["retrieval_grid", "save_retrieval_grid", "benchmark_grid", "save_benchmark_grid", "gallery_lookup"]
