"""Keypoint metrics: PCK."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from adaptkit.metrics.base import _field, _is_array, _PerImage


class PCK(_PerImage):
    """Percentage of Correct Keypoints: a joint is correct if within ``alpha`` x the reference size.

    The reference size is the target's ``size``, else the longer side of its ``bbox`` (x0, y0, x1, y1),
    else -- the codec's ``Keypoints`` carries no box -- the longer side of the box spanned by the
    visible target joints.  Pooled over all visible target joints of the dataset.  A target joint that
    the prediction marks not visible counts as missed; predicted joints with an invisible target are
    ignored; a confidence is not used.  OKS-based AP is not implemented.
    """

    higher_is_better: ClassVar[bool] = True

    def __init__(self, alpha: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alpha = alpha
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _joints(self, record: Any) -> tuple[Tensor, Tensor]:
        """(xy, visible) of a keypoint set given as an (K, 2) array or a record; all visible by default."""
        xy = record if _is_array(record) else _field(record, "xy")
        xy = torch.as_tensor(xy, device=self.device, dtype=torch.float64).reshape(-1, 2)
        visible = None if _is_array(record) else _field(record, "visible")
        if visible is None:
            return xy, torch.ones(len(xy), dtype=torch.bool, device=self.device)
        return xy, torch.as_tensor(visible, device=self.device).bool().reshape(-1)

    def _update_image(self, pred: Any, target: Any) -> None:
        pred_xy, pred_visible = self._joints(pred)
        gt_xy, gt_visible = self._joints(target)
        size, bbox = _field(target, "size"), _field(target, "bbox")
        if size is None and bbox is not None:
            size = max(float(bbox[2]) - float(bbox[0]), float(bbox[3]) - float(bbox[1]))
        elif size is None and gt_visible.any():
            size = (gt_xy[gt_visible].amax(dim=0) - gt_xy[gt_visible].amin(dim=0)).max().item()
        hit = ((pred_xy - gt_xy).norm(dim=1) <= self.alpha * float(size or 0.0)) & pred_visible & gt_visible
        self.correct += hit.sum()
        self.total += gt_visible.sum()

    def compute(self) -> Tensor:
        return (self.correct / self.total).float()
