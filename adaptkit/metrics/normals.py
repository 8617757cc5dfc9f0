"""Surface-normal metrics: mean / median angular error and the fraction within a threshold."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from adaptkit.metrics.base import _NAN, _PerImage


class _AngularError(_PerImage):
    """Angular error between unit normals, pooled over all valid pixels of the dataset.

    The state is a histogram of errors (``bin_width`` degrees over [0, 180], default 0.01 deg ->
    18000 bins) plus an exact error sum and pixel count, so DDP sync is a sum and the median needs no
    per-pixel storage.  The median is read off the histogram as the centre of the bin holding the
    50% rank: quantised to +-``bin_width``/2 (+-0.005 deg by default).  ``within_t`` is exact as long
    as t is a multiple of ``bin_width``.  Both vectors are normalised first; a zero predicted vector
    scores 90 deg.  Valid pixels: target vector finite and non-zero.
    """

    def __init__(self, bin_width: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bin_width = bin_width
        self.num_bins = math.ceil(180.0 / bin_width)
        self.add_state("angle_hist", default=torch.zeros(self.num_bins, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("angle_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pixel_count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _update_image(self, pred: Any, target: Any) -> None:
        gt = torch.as_tensor(target, device=self.device, dtype=torch.float64).reshape(-1, 3)
        pred = torch.as_tensor(pred, device=self.device, dtype=torch.float64).reshape(-1, 3)
        valid = torch.isfinite(gt).all(dim=1) & (gt.norm(dim=1) > 0)
        cos = (F.normalize(pred[valid], dim=1) * F.normalize(gt[valid], dim=1)).sum(dim=1)
        error = torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))
        bins = (error / self.bin_width).long().clamp(max=self.num_bins - 1)
        self.angle_hist += torch.bincount(bins, minlength=self.num_bins)
        self.angle_sum += error.sum()
        self.pixel_count += error.numel()


class MeanAngle(_AngularError):
    """Mean angular error in degrees (exact, from the error sum)."""

    higher_is_better: ClassVar[bool] = False

    def compute(self) -> Tensor:
        return (self.angle_sum / self.pixel_count).float()


class MedianAngle(_AngularError):
    """Median angular error in degrees, from the histogram (see ``_AngularError``)."""

    higher_is_better: ClassVar[bool] = False

    def compute(self) -> Tensor:
        if self.pixel_count == 0:
            return torch.tensor(_NAN)
        rank = torch.searchsorted(self.angle_hist.cumsum(0), self.pixel_count / 2)
        return ((rank + 0.5) * self.bin_width).float()


class WithinAngle(_AngularError):
    """Fraction of pixels with angular error < ``threshold`` degrees.

    ``compute`` returns ``{"within_<threshold>": value}``: the dotted name (e.g. ``within_11.25``)
    cannot be a ``MetricCollection`` key, which is a torch module name, but a dict result keeps it.
    """

    higher_is_better: ClassVar[bool] = True

    def __init__(self, threshold: float, bin_width: float = 0.01, **kwargs: Any) -> None:
        super().__init__(bin_width=bin_width, **kwargs)
        self.threshold_bins = round(threshold / bin_width)
        if not math.isclose(self.threshold_bins * bin_width, threshold):
            raise ValueError(f"threshold {threshold} is not a multiple of bin_width {bin_width}")
        self.threshold = threshold

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        within = self.angle_hist[: self.threshold_bins].sum().double() / self.pixel_count
        return {f"within_{self.threshold:g}": within.float()}
