"""The ``depth`` codec: relative depth as a grey value."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from adaptkit.codecs.base import Codec, _write_npy, register_codec
from adaptkit.codecs.helpers import _l1, _save_with_preview, _unit_png_array


@register_codec
class DepthCodec(Codec):
    """Depth as grey: clip to quantiles, 1/d (default, as DICEPTION) or log or linear, min-max to [0, 1].

    Every mode puts *near* at white, the orientation the frozen model already produces, so a new mode starts
    from its prior instead of fighting it ("linear" is 1 - normalised depth, "log" 1 - normalised log depth).
    Depth values 0 and non-finite ones (NaN, inf) are invalid: allowed, and painted black, the far end, which
    is right for sky, their usual cause; metrics must take validity from the target itself. A target with no
    valid pixel, or negative depth, is an error. The encoding is affine-invariant (units and the clip range
    are lost), so decode returns the relative value (mean of the channels, float32 (H, W) in [0, 1], near = 1)
    and metrics align scale and shift (least squares) before comparing. Target: float (H, W) depth.
    """

    name = "depth"
    metric_table = "depth"
    resample = "bilinear"
    _MODES: ClassVar[dict[str, Callable[[np.ndarray], np.ndarray]]] = {
        "inverse": lambda d: 1.0 / d,
        "log": lambda d: -np.log(d),
        "linear": lambda d: -d,
    }

    def __init__(self, mode: str = "inverse", low_q: float = 0.02, high_q: float = 0.98) -> None:
        if mode not in self._MODES:
            raise self._fail(f"argument 'mode' must be one of {', '.join(self._MODES)}, got {mode!r}")
        if not 0 <= low_q < high_q <= 1:
            raise self._fail(
                f"arguments 'low_q' and 'high_q' need 0 <= low_q < high_q <= 1, got {low_q}, {high_q}"
            )
        self.mode, self.low_q, self.high_q = mode, low_q, high_q

    def validate(self, target: Any) -> None:
        depth = self._array(target, 2, "a depth map (H, W)")
        if not (np.issubdtype(depth.dtype, np.floating) or np.issubdtype(depth.dtype, np.integer)):
            raise self._fail(f"target has dtype {depth.dtype}; expected float (or integer) depth")
        finite = np.isfinite(depth)
        if (depth[finite] < 0).any():
            raise self._fail(
                "depth has negative values (is it disparity or signed data?); invalid pixels are 0 or NaN"
            )
        if not (depth[finite] > 0).any():
            raise self._fail("depth has no valid pixel (every value is 0, NaN or infinite)")

    def check_set(self, targets: Sequence[Any]) -> str | None:
        if targets and all(len(np.unique(depth[np.isfinite(depth)])) <= 2 for depth in targets):
            return (f"every one of the {len(targets)} depth targets holds at most two values (e.g. 0 and 255): "
                    "they look like masks, not depth maps; use the binary_mask codec for masks")
        return None

    def relative(self, depth: np.ndarray) -> np.ndarray:
        """The encoded grey value of each pixel, float32 (H, W) in [0, 1], near = 1, invalid = 0: what
        ``decode`` returns for a perfect prediction, to compare decoded maps with ground truth."""
        depth = np.asarray(depth, np.float64)
        valid = np.isfinite(depth) & (depth > 0)
        low, high = np.quantile(depth[valid], [self.low_q, self.high_q])
        value = self._MODES[self.mode](np.clip(np.where(valid, depth, high), low, high))
        lo, hi = value[valid].min(), value[valid].max()
        scaled = (value - lo) / (hi - lo) if hi > lo else np.full_like(value, 0.5)
        return np.where(valid, scaled, 0.0).astype(np.float32)

    #: The metric space that matches each mode: metrics align scale and shift where the encoding is affine.
    _METRIC_SPACES: ClassVar[dict[str, str]] = {"inverse": "disparity", "linear": "depth", "log": "log"}

    def metric_options(self) -> dict[str, Any]:
        """The space in which depth metrics align the prediction (DICEPTION's inverse depth: disparity)."""
        return {"space": self._METRIC_SPACES[self.mode]}

    def _encode(self, target: np.ndarray) -> np.ndarray:
        return np.repeat(self.relative(target)[..., None], 3, axis=2)

    def _decode(self, image: np.ndarray) -> np.ndarray:
        return image.mean(2)

    def save(self, target: np.ndarray, stem: str | Path) -> list[Path]:
        """``stem.npy``: the relative value (float32); ``stem.png``: the same as 16-bit grey, near = white."""
        return _save_with_preview(target, _unit_png_array(target), stem)

    def save_target(self, target: np.ndarray, stem: str | Path) -> Path:
        """``stem.npy`` alone: the exact values, without ``save``'s preview."""
        return _write_npy(target, Path(f"{stem}.npy"))

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scale-and-shift-invariant L1 on the grey value: per image, least-squares align the prediction to
        the target, then L1; plus max(0, -correlation), since a negative scale would align an inverted map
        perfectly (clamping the scale at 0 instead would leave such a prediction without a gradient)."""
        grey_pred, grey_target = pred.mean(1).flatten(1), target.mean(1).flatten(1)
        centred_pred = grey_pred - grey_pred.mean(1, keepdim=True)
        centred_target = grey_target - grey_target.mean(1, keepdim=True)
        covariance = (centred_pred * centred_target).mean(1)
        pred_var, target_var = (centred_pred**2).mean(1), (centred_target**2).mean(1)
        scale = (covariance / (pred_var + 1e-8))[:, None]
        aligned = _l1(scale * centred_pred, centred_target)
        correlation = covariance / torch.sqrt(pred_var * target_var + 1e-12)
        return aligned + F.relu(-correlation).mean()

    def _from_array(self, array: np.ndarray, path: Path) -> np.ndarray:
        """Depth from 16-bit (or 8-bit) grey PNGs, float TIFF and ``.npy``; units do not matter (relative)."""
        if array.ndim == 3:
            if array.shape[2] < 3 or (array[..., :3] != array[..., :1]).any():
                raise self._fail(
                    f"{path} is a colour image; depth must be one channel (grey PNG, TIFF or .npy)"
                )
            array = array[..., 0]
        if array.dtype == np.bool_:
            raise self._fail(f"{path} is a 1-bit image, not depth")
        return array.astype(np.float32)
