"""Binary-mask metrics: Dice, IoU, precision, recall (torchmetrics' stat scores) and the boundary F-score."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torchmetrics.classification import BinaryStatScores
from torchmetrics.utilities import dim_zero_cat

from adaptkit.metrics.base import _NAN, Average, _check_average, _PerImage, _ratio, _TensorInput


class _BinaryMaskMetric(_TensorInput, BinaryStatScores):
    """Shared TP/FP/FN counts (torchmetrics' states and sync); subclasses only differ in the formula.

    ``average="micro"`` (default) sums TP/FP/FN over all pixels of the dataset, so an image where
    prediction and target are both empty adds nothing.  ``average="image"`` scores every image and
    takes the mean; an image whose denominator is 0 (for Dice/IoU: both masks empty) scores
    ``zero_division`` (default 1: there was nothing to get wrong).  Sharing one state layout lets a
    ``MetricCollection`` put Dice/IoU/precision/recall in one compute group (one update for all).
    """

    higher_is_better: ClassVar[bool] = True

    def __init__(self, average: Average = "micro", zero_division: float = 1.0, **kwargs: Any) -> None:
        _check_average(average)
        super().__init__(multidim_average="global" if average == "micro" else "samplewise", **kwargs)
        self.average = average
        self.zero_division = zero_division

    def _prepare(self, x: Any) -> Tensor:
        return torch.as_tensor(x, device=self.device).reshape(1, -1)

    def compute(self) -> Tensor:
        if isinstance(self.tp, list) and not self.tp:
            return torch.tensor(_NAN)
        tp, fp, fn = (dim_zero_cat(s).double() for s in (self.tp, self.fp, self.fn))
        return self._score(tp, fp, fn).mean().float()

    def _score(self, tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
        raise NotImplementedError


class Dice(_BinaryMaskMetric):
    """Dice = F1 = 2TP / (2TP + FP + FN)."""

    def _score(self, tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
        return _ratio(2 * tp, 2 * tp + fp + fn, self.zero_division)


class IoU(_BinaryMaskMetric):
    """Jaccard index TP / (TP + FP + FN) of the foreground."""

    def _score(self, tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
        return _ratio(tp, tp + fp + fn, self.zero_division)


class Precision(_BinaryMaskMetric):
    """TP / (TP + FP); an empty prediction has no false positive, hence ``zero_division``=1."""

    def _score(self, tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
        return _ratio(tp, tp + fp, self.zero_division)


class Recall(_BinaryMaskMetric):
    """TP / (TP + FN); an empty target has nothing to miss, hence ``zero_division``=1."""

    def _score(self, tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
        return _ratio(tp, tp + fn, self.zero_division)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask; the image border is not an object boundary."""
    return mask & ~ndimage.binary_erosion(mask, border_value=1)


def _near(boundary: np.ndarray, other: np.ndarray, tolerance: float) -> int:
    """Number of ``boundary`` pixels within ``tolerance`` px (Euclidean) of a pixel of ``other``."""
    if not other.any():
        return 0
    return int((ndimage.distance_transform_edt(~other)[boundary] <= tolerance).sum())


def _boundary_f(pred_hit: Tensor, pred_total: Tensor, gt_hit: Tensor, gt_total: Tensor) -> Tensor:
    """F-measure of boundary precision and recall: 1 if both boundaries are empty, 0 if only one is."""
    precision = _ratio(pred_hit, pred_total, 0.0)
    recall = _ratio(gt_hit, gt_total, 0.0)
    f = _ratio(2 * precision * recall, precision + recall, 0.0)
    return torch.where((pred_total == 0) & (gt_total == 0), 1.0, f)


class BoundaryFScore(_PerImage):
    """Boundary F-score (DAVIS "F"): contours must match within a tolerance, not just overlap.

    ``tolerance`` >= 1 is in pixels; below 1 it is a fraction of the image diagonal, rounded up to
    whole pixels -- DAVIS's convention (default 0.75% of the diagonal: 2 px at 128x128, 3 at 256x256).
    ``average="image"`` (default, as DAVIS) is the mean of per-image F; ``"micro"`` pools the
    matched/total boundary pixel counts of the dataset before taking precision and recall.
    Computed on CPU with scipy's exact Euclidean distance transform.
    """

    higher_is_better: ClassVar[bool] = True

    def __init__(self, tolerance: float = 0.0075, average: Average = "image", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_average(average)
        self.tolerance = tolerance
        self.average = average
        for name in ("pred_hit", "pred_total", "gt_hit", "gt_total", "images"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("f_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _update_image(self, pred: Any, target: Any) -> None:
        pred_b = _boundary(np.asarray(torch.as_tensor(pred).cpu(), dtype=bool))
        gt_b = _boundary(np.asarray(torch.as_tensor(target).cpu(), dtype=bool))
        tol = self.tolerance if self.tolerance >= 1 else math.ceil(self.tolerance * math.hypot(*gt_b.shape))
        counts = [_near(pred_b, gt_b, tol), int(pred_b.sum()), _near(gt_b, pred_b, tol), int(gt_b.sum())]
        self.pred_hit += counts[0]
        self.pred_total += counts[1]
        self.gt_hit += counts[2]
        self.gt_total += counts[3]
        self.f_sum += _boundary_f(*torch.tensor(counts, dtype=torch.float64)).to(self.f_sum.device)
        self.images += 1

    def compute(self) -> Tensor:
        if self.average == "image":
            return (self.f_sum / self.images).float()
        counts = (self.pred_hit, self.pred_total, self.gt_hit, self.gt_total)
        return _boundary_f(*(c.double() for c in counts)).float()
