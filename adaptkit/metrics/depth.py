"""Relative-depth metrics (AbsRel, delta1) after the per-image alignment relative depth needs."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from adaptkit.metrics.base import Average, _check_average, _PerImage


def _affine_fit(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares s, t minimising ||s*x + t - y||^2; a constant x gets s = 0 (t = mean y)."""
    x_mean, y_mean = x.mean(), y.mean()
    var = ((x - x_mean) ** 2).mean()
    scale = torch.where(var > 0, ((x - x_mean) * (y - y_mean)).mean() / torch.where(var > 0, var, 1), 0.0)
    return scale, y_mean - scale * x_mean


_DEPTH_SPACES: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "disparity": (torch.reciprocal, lambda disparity: torch.where(disparity > 0, disparity.reciprocal(), math.inf)),
    "depth": (lambda depth: depth, lambda depth: depth),
    "log": (torch.log, torch.exp),
}
"""Per space: GT depth -> the space the prediction is fitted in, and fitted value -> depth (a non-positive
disparity is infinitely far, then clipped to the far end)."""


class _DepthMetric(_PerImage):
    """Affine-invariant depth evaluation: align the prediction to the GT per image, then score.

    The prediction is relative (unknown scale and shift), so per image we fit scale and shift by
    least squares on valid pixels (GT finite and > 0) *in the space the codec encodes*:

    - ``space="disparity"`` (default; DICEPTION encodes inverse depth): fit the prediction to 1/GT
      and invert the fitted disparity (a non-positive one is infinitely far);
    - ``space="depth"``: fit the prediction to GT directly;
    - ``space="log"``: fit the prediction to log GT and exponentiate.

    (The depth codec's modes "inverse", "linear" and "log" map to these three spaces.)

    The aligned depth is then clipped to ``[min_depth, max_depth]``, which default to the image's
    valid GT range (as benchmarks clip to the dataset's range), so a few outliers of the fit cannot
    blow the mean up.  ``average="image"`` (default, the Marigold/DICEPTION
    protocol) averages per-image scores; ``"micro"`` pools all valid pixels of the dataset.
    Images without a valid pixel are skipped.  AbsRel and delta1 share this state (one compute group).
    """

    def __init__(
        self,
        space: Literal["disparity", "depth", "log"] = "disparity",
        average: Average = "image",
        min_depth: float | None = None,
        max_depth: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if space not in _DEPTH_SPACES:
            raise ValueError(f"space must be one of {list(_DEPTH_SPACES)}, got {space!r}")
        _check_average(average)
        self.space, self.average, self.min_depth, self.max_depth = space, average, min_depth, max_depth
        for name in ("absrel_sum", "delta1_sum", "count"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _update_image(self, pred: Any, target: Any) -> None:
        gt = torch.as_tensor(target, device=self.device, dtype=torch.float64)
        valid = torch.isfinite(gt) & (gt > 0)
        if not valid.any():
            return
        gt = gt[valid]
        pred = torch.as_tensor(pred, device=self.device, dtype=torch.float64)[valid]
        lo = gt.min().item() if self.min_depth is None else self.min_depth
        hi = gt.max().item() if self.max_depth is None else self.max_depth
        to_space, to_depth = _DEPTH_SPACES[self.space]
        scale, shift = _affine_fit(pred, to_space(gt))
        aligned = to_depth(scale * pred + shift).clamp(lo, hi)
        absrel = (aligned - gt).abs() / gt
        delta1 = (torch.maximum(aligned / gt, gt / aligned) < 1.25).double()
        reduce = torch.mean if self.average == "image" else torch.sum
        self.absrel_sum += reduce(absrel)
        self.delta1_sum += reduce(delta1)
        self.count += 1 if self.average == "image" else gt.numel()


class AbsRel(_DepthMetric):
    """Mean |d - g| / g of the aligned depth d against GT g."""

    higher_is_better: ClassVar[bool] = False

    def compute(self) -> Tensor:
        return (self.absrel_sum / self.count).float()


class Delta1(_DepthMetric):
    """Fraction of valid pixels with max(d/g, g/d) < 1.25."""

    higher_is_better: ClassVar[bool] = True

    def compute(self) -> Tensor:
        return (self.delta1_sum / self.count).float()
