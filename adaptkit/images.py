"""Image input and output: any file or array a user has becomes a float RGB array, and back.

Every part of adaptkit (the generalist, the data loaders, `predict`) reads pictures through
`to_rgb_array`, so that grey X-rays, 16-bit TIFFs, RGBA screenshots and palette PNGs are all
handled the same way, in one place.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from adaptkit.errors import FileError
from adaptkit.files import require_file

ImageLike = Image.Image | np.ndarray | str | Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


#: Larger images are refused before they are decoded (PIL's own guard would stop the whole run with a
#: DecompressionBombError); the environment variable ADAPTKIT_MAX_IMAGE_PIXELS or `--max-image-pixels` sets it.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000


def max_image_pixels() -> int:
    """The pixel limit in force: ADAPTKIT_MAX_IMAGE_PIXELS if set, else `DEFAULT_MAX_IMAGE_PIXELS`."""
    value = os.environ.get("ADAPTKIT_MAX_IMAGE_PIXELS", "")
    return int(value) if value.strip().isdigit() else DEFAULT_MAX_IMAGE_PIXELS


@contextlib.contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """`Image.open` behind adaptkit's file checks: regular files only, the pixel limit checked on the header
    before any decoding, and PIL's errors for corrupt or truncated files turned into a `FileError`."""
    path = require_file(path, "image")
    limit = max_image_pixels()
    previous = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = limit  # PIL refuses above twice its limit: ours is checked first below
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
    except Image.DecompressionBombError:
        opened = None
    except (OSError, ValueError, SyntaxError) as error:  # PIL raises all three for files that are not images
        raise FileError(path, f"not a readable image ({error})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    if opened is None or opened.width * opened.height > limit:
        size = f"{opened.width} x {opened.height} = {opened.width * opened.height:,} pixels" if opened else "too large"
        if opened is not None:
            opened.close()
        raise FileError(path, f"image is {size}, above the limit of {limit:,} pixels",
                        "downscale it, or raise the limit with --max-image-pixels / ADAPTKIT_MAX_IMAGE_PIXELS")
    with opened:
        yield opened


def _integer_scale(array: np.ndarray) -> float:
    """The full-scale value of an integer image. 8- and 16-bit types say their depth; a wider or signed type
    does not (an int64 array made from a list, PIL's 32-bit 'I' mode), so its values decide: the smallest of
    8 or 16 bits that holds them, else their maximum."""
    if array.dtype == np.uint8:
        return 255.0
    if array.dtype == np.uint16:
        return 65535.0
    top = float(array.max(initial=0))
    return 255.0 if top <= 255 else 65535.0 if top <= 65535 else top


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """Return `image` as float32 H x W x 3 in [0, 1]: the one normaliser for every picture adaptkit reads, a
    user's input as much as a model's output that a codec decodes.

    Grey images are repeated on three channels, alpha is dropped (DICEPTION sees RGB only),
    palette images are expanded, and 16-bit data keeps its full precision instead of being
    truncated to 8 bits as PIL's `convert("RGB")` would do. Integers are scaled by their depth
    (`_integer_scale`); floats are taken to be in [0, 1] (what models and decoders produce: an overshoot
    to 1.02 is clipped, not read as 8-bit data), NaN becomes 0 and infinities the nearest bound, so a
    decoder never sees a value it cannot handle. Raises ValueError for what is not a numeric image.
    """
    if isinstance(image, str | Path):
        with open_image(image) as opened:
            try:
                opened.load()
            except (OSError, ValueError, SyntaxError) as error:  # truncated or corrupt pixel data
                raise FileError(image, f"not a readable image ({error})") from None
            return to_rgb_array(opened)
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            return to_rgb_array(np.asarray(image))
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] in (2, 4):  # grey + alpha or RGBA
        array = array[..., :1] if array.shape[-1] == 2 else array[..., :3]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3 or 0 in array.shape:
        raise ValueError(f"expected an RGB image (H x W, H x W x 3 or H x W x 4), got shape {np.shape(image)}")
    if array.dtype == bool:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        return (array.astype(np.float32) / max(_integer_scale(array), 1.0)).clip(0.0, 1.0)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"expected a numeric image, got dtype {array.dtype}")
    return np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0)


def to_model_batch(images: Sequence[np.ndarray], resolution: int) -> torch.Tensor:
    """Stack float RGB arrays into a (B, 3, R, R) tensor in [-1, 1] at the model resolution.

    DICEPTION resizes to a square without keeping the aspect ratio; so do we, with
    anti-aliased bilinear resampling (`resize`), and the output is resized back to each input's size the same way.
    """
    tensors = [resize(torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1), resolution, resolution)
               for im in images]
    return torch.stack(tensors) * 2.0 - 1.0


def resize(image: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize a (C, H, W) float tensor; a no-op when the size already matches."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    if mode == "nearest":
        return F.interpolate(image[None], size=(height, width), mode="nearest-exact")[0]
    return F.interpolate(image[None], size=(height, width), mode=mode, antialias=True, align_corners=False)[0]


def to_pil(array: np.ndarray) -> Image.Image:
    """A float [0, 1] H x W x 3 (or H x W) array as an 8-bit PIL image, for PNG output and grids."""
    return Image.fromarray((np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
