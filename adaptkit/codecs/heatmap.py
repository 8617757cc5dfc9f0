"""The ``heatmap`` codec: a map of values in [0, 1] on a colour ramp."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaptkit.codecs.base import Codec, _write_npy, as_image, register_codec
from adaptkit.codecs.helpers import _l1, _rgb_arg, _save_with_preview, _segment_projection, _unit_png_array

_RAMPS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "grey": ((0, 0, 0), (255, 255, 255)),
    "viridis": ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)),
    "magma": ((0, 0, 4), (81, 18, 124), (183, 55, 121), (252, 137, 97), (252, 253, 191)),
}


@register_codec
class HeatmapCodec(Codec):
    """A scalar map in [0, 1] as a colour ramp: grey (default) or a polyline of anchor colours (viridis-like).

    Anchors are evenly spaced in value and interpolated linearly. Decoding takes the nearest point of the ramp
    polyline (for grey that is exactly the mean of the channels), so colours pushed off the ramp by blur or
    compression still land on the closest value. ``colormap`` is "grey", "viridis", "magma" or a list of
    RGB anchors. Target: float32 (H, W) in [0, 1].
    """

    name = "heatmap"
    metric_table = "heatmap"
    resample = "bilinear"

    def __init__(self, colormap: str | Sequence[Sequence[int]] = "grey") -> None:
        if isinstance(colormap, str):
            if colormap not in _RAMPS:
                raise self._fail(
                    f"argument 'colormap' must be one of {', '.join(_RAMPS)} or RGB anchors, got {colormap!r}"
                )
            anchors = _RAMPS[colormap]
            self.colormap: str | list[list[int]] = colormap
        else:
            anchors = tuple(_rgb_arg(c, "colormap", self.name) for c in colormap)
            self.colormap = [list(c) for c in anchors]
            if len(anchors) < 2:
                raise self._fail("argument 'colormap' needs at least two anchor colours")
        self._anchors = np.asarray(anchors, np.float32) / 255
        if (np.linalg.norm(np.diff(self._anchors, axis=0), axis=1) == 0).any():
            raise self._fail("argument 'colormap' repeats an anchor colour in a row")

    def validate(self, target: Any) -> None:
        heat = self._array(target, 2, "a heatmap (H, W)")
        if not np.issubdtype(heat.dtype, np.floating):
            raise self._fail(
                f"target has dtype {heat.dtype}; expected floats in [0, 1] (load_target scales PNGs)"
            )
        if not np.isfinite(heat).all():
            raise self._fail("heatmap contains NaN or infinite values")
        if heat.min() < 0 or heat.max() > 1:
            raise self._fail(f"heatmap values must lie in [0, 1], got {heat.min():.4g}..{heat.max():.4g}")

    def _encode(self, target: np.ndarray) -> np.ndarray:
        stops = np.linspace(0, 1, len(self._anchors))
        return np.stack([np.interp(target, stops, self._anchors[:, c]) for c in range(3)], axis=2)

    def _decode(self, image: np.ndarray) -> np.ndarray:
        segment, along, _ = _segment_projection(image.reshape(-1, 3), self._anchors[:-1], self._anchors[1:])
        value = (segment + along) / (len(self._anchors) - 1)
        return value.reshape(image.shape[:2]).astype(np.float32)

    def save(self, target: np.ndarray, stem: str | Path) -> list[Path]:
        """``stem.npy``: the values (float32); ``stem.png``: the same as 16-bit grey."""
        return _save_with_preview(target, _unit_png_array(target), stem)

    def save_target(self, target: np.ndarray, stem: str | Path) -> Path:
        """``stem.npy`` alone: the exact values, without ``save``'s preview."""
        return _write_npy(target, Path(f"{stem}.npy"))

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L1 in colour space (for a grey ramp, L1 on the value itself)."""
        return _l1(pred, target)

    def _from_array(self, array: np.ndarray, path: Path) -> np.ndarray:
        """Grey 8/16-bit PNGs (scaled by their type's maximum), float TIFF / ``.npy``, or a colour image on
        this codec's ramp (decoded)."""
        if array.ndim == 3:
            return self.decode(array)
        if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
            return as_image(array, self.name)[..., 0]
        return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array
