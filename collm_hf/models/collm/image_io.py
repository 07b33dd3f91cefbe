"""Reading and normalising images at the package boundary.

Every image that enters the package (processor, dataset builders, index) passes through `to_rgb_image`,
which accepts any PIL mode (16-bit, CMYK, palette, LA, RGBA, ...) and applies EXIF rotation, or through
`open_image`, which also reports unreadable files with their name instead of a deep PIL traceback.

What each kind of bad input gives (the table is tested in tests/test_bad_inputs.py):

- a missing, zero-byte, truncated or corrupt file, or a text file named `.jpg` -> `ImageReadError` naming it;
- an image over `MAX_IMAGE_PIXELS` (a decompression bomb) -> `ImageReadError`, refused from the header,
  before any pixel is decoded, whatever `PIL.Image.MAX_IMAGE_PIXELS` says;
- a 0-pixel-wide or -high image -> `ImageReadError`;
- 16-bit and 32-bit grey (`I;16`, `I`), float (`F`), CMYK, YCbCr, LAB, HSV, palette, 1-bit -> converted to RGB;
- transparency (`RGBA`, `LA`, `PA`, `La`, `RGBa`, palette with transparency) -> composited on white;
- EXIF orientation -> applied (a broken EXIF block is ignored, the pixels are kept).

A truncated file decodes partially only if the caller set `PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True`.
"""

import io
import os
import warnings
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageOps

# Our own decompression-bomb guard (PIL's default, ~179 MP), independent of `PIL.Image.MAX_IMAGE_PIXELS`,
# which training scripts often set to None. Set this to None to accept any size.
MAX_IMAGE_PIXELS: int | None = 178_956_970
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


class ImageReadError(ValueError):
    """An image could not be read or decoded; the message names it."""


def _check_size(image: Image.Image, name: str) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageReadError(f"{name}: image has no pixels ({width}x{height})")
    if MAX_IMAGE_PIXELS is not None and width * height > MAX_IMAGE_PIXELS:
        raise ImageReadError(
            f"{name}: image is {width}x{height} = {width * height} pixels, over the limit of {MAX_IMAGE_PIXELS} "
            "(possible decompression bomb; raise collm_hf.models.collm.image_io.MAX_IMAGE_PIXELS if you trust it)"
        )


def _high_bit_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float grey -> 8-bit grey: 16-bit scales by 255/65535; floats in [0, 1] by 255."""
    array = np.asarray(image, dtype=np.float64)
    finite = array[np.isfinite(array)]
    hi = float(finite.max()) if finite.size else 0.0
    if image.mode.startswith("I;16") or 255 < hi <= 65535:
        scale = 255.0 / 65535.0
    elif hi > 65535:
        scale = 255.0 / hi
    elif image.mode == "F" and hi <= 1.0:
        scale = 255.0
    else:
        scale = 1.0
    return Image.fromarray(np.clip(np.nan_to_num(array * scale), 0, 255).astype(np.uint8))


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype == np.uint16 and array.ndim == 2:
        return Image.fromarray(array)  # I;16, scaled below
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageReadError(f"{name}: numpy images must be uint8 (H, W[, 1|3|4]) or uint16 (H, W); "
                             f"got {array.dtype} {array.shape}")
    return Image.fromarray(array)


def to_rgb_image(image, name: str = "image") -> Image.Image:
    """Return an RGB PIL image: EXIF rotation applied, any mode converted.

    Args:
        image: a PIL image; an (H, W), (H, W, 1|3|4) uint8 or (H, W) uint16 numpy array; encoded bytes; or a
            `{"bytes", "path"}` dict (a `datasets.Image(decode=False)` value). Paths: use `open_image`.
        name: how to call the image in error messages (e.g. "images[3]").

    Returns:
        An RGB `PIL.Image.Image`.

    Raises:
        ImageReadError: naming `name`, for anything that is not a decodable image of at least 1x1 pixel.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return open_image(io.BytesIO(bytes(image)), name)
    if isinstance(image, Mapping) and ("bytes" in image or "path" in image):
        if image.get("bytes") is not None:
            return open_image(io.BytesIO(image["bytes"]), f"{name} ({image.get('path') or 'bytes'})")
        if image.get("path"):
            return open_image(image["path"], f"{name} ({image['path']})")
        raise ImageReadError(f"{name}: image dict holds neither bytes nor a path")
    if isinstance(image, np.ndarray):
        image = _from_array(image, name)
    if not isinstance(image, Image.Image):
        hint = " (open files with collm_hf.models.collm.image_io.open_image)" if isinstance(image, (str, os.PathLike)) else ""
        raise ImageReadError(f"{name}: expected a PIL image, numpy array or encoded bytes; got {type(image).__name__}{hint}")
    _check_size(image, name)
    try:
        try:
            image = ImageOps.exif_transpose(image)
        except (SyntaxError, KeyError, TypeError, ValueError, ZeroDivisionError, IndexError, AttributeError):
            pass  # a broken EXIF block: keep the pixels unrotated (decoding errors surface below)
        if image.mode in _HIGH_BIT_MODES:
            image = _high_bit_to_8bit(image)
        if image.mode in ("La", "RGBa"):  # premultiplied alpha
            image = image.convert("LA" if image.mode == "La" else "RGBA")
        if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        return image.convert("RGB")
    except ImageReadError:
        raise
    except Exception as error:  # noqa: BLE001 - every decoder failure becomes one error naming the image
        raise ImageReadError(f"{name}: cannot decode image ({type(error).__name__}: {error})") from error


def open_image(path, name: str | None = None) -> Image.Image:
    """Open and fully decode an image file (a path or a binary file object) into RGB.

    The size is checked from the header before decoding (see `MAX_IMAGE_PIXELS`).

    Raises:
        ImageReadError: naming the file, if it is missing, not an image, truncated, corrupt or too large.
    """
    name = name or str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_size(image, name)
                image.load()
                return to_rgb_image(image, name)
    except ImageReadError:
        raise
    except Exception as error:  # noqa: BLE001 - missing, unidentified, truncated, bomb, plugin errors
        raise ImageReadError(f"{name}: cannot read image ({type(error).__name__}: {error})") from error
