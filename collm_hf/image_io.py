"""Reading and normalising images at the package boundary.

Every image that enters the package (processor, dataset builders, index) passes through `to_rgb_image`,
which accepts any PIL mode (16-bit, CMYK, palette, LA, RGBA, ...) and applies EXIF rotation, or through
`open_image`, which also reports unreadable files with their name instead of a deep PIL traceback.
"""

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# PIL's own guard against decompression bombs (~179 MP by default) stays on; its warning becomes an error.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS


class ImageReadError(ValueError):
    """An image could not be read or decoded; the message names it."""


def to_rgb_image(image, name: str = "image") -> Image.Image:
    """Return an RGB PIL image: EXIF rotation applied, any mode converted.

    Args:
        image: a PIL image, or an (H, W), (H, W, 3) or (H, W, 4) uint8 numpy array.
        name: how to call the image in error messages (e.g. "images[3]").
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
            raise ImageReadError(f"{name}: numpy images must be uint8 (H, W[, 1|3|4]); got {image.dtype} {image.shape}")
        image = Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image)
    if not isinstance(image, Image.Image):
        raise ImageReadError(f"{name}: expected a PIL image, got {type(image).__name__}")
    try:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            array = np.asarray(image, dtype=np.float64)
            hi = array.max() if array.size else 0.0
            scale = 255.0 / 65535.0 if image.mode.startswith("I;16") or hi > 255 else 1.0
            image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8))
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"{name}: cannot decode image ({error})") from error


def open_image(path: str | os.PathLike, name: str | None = None) -> Image.Image:
    """Open and fully decode an image file into RGB; raise `ImageReadError` naming the file if it cannot."""
    name = name or str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return to_rgb_image(image, name)
    except ImageReadError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        raise ImageReadError(f"{name}: cannot read image ({type(error).__name__}: {error})") from error
