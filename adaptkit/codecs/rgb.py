"""The ``rgb`` codec: the identity, for image-to-image tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaptkit.codecs.base import Codec, _write_png, as_image, register_codec
from adaptkit.codecs.helpers import _l1


@register_codec
class RGBCodec(Codec):
    """Identity: the target is itself an image (image-to-image tasks such as enhancement or highlighting).

    DICEPTION's few-shot demonstrations include image-editing style tasks whose answer is simply a picture, so
    no encoding is needed: the generated image is the result. Target: float32 (H, W, 3) in [0, 1] (uint8
    accepted); decoding only clips to [0, 1]; the loss is L1.
    """

    name = "rgb"
    metric_table = "rgb"
    resample = "bilinear"

    def validate(self, target: Any) -> None:
        image = self._array(target, 3, "an RGB image (H, W, 3)")
        if image.shape[2] != 3:
            raise self._fail(f"target must have 3 channels, got {image.shape[2]}")
        if image.dtype == np.uint8:
            return
        if not np.issubdtype(image.dtype, np.floating):
            raise self._fail(f"target has dtype {image.dtype}; expected float in [0, 1] or uint8")
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise self._fail("float target values must be finite and in [0, 1]")

    def _encode(self, target: np.ndarray) -> np.ndarray:
        return as_image(target, self.name)

    def _decode(self, image: np.ndarray) -> np.ndarray:
        return image

    def save(self, target: np.ndarray, stem: str | Path) -> list[Path]:
        """``stem.png``: 8-bit RGB."""
        return [_write_png(np.rint(as_image(target, self.name) * 255).astype(np.uint8), Path(f"{stem}.png"))]

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L1."""
        return _l1(pred, target)

    def _from_array(self, array: np.ndarray, path: Path) -> np.ndarray:
        return as_image(array, self.name)
