"""Semantic-segmentation metrics on label maps: mean IoU, per-class IoU and pixel accuracy."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from adaptkit.metrics.base import _NAN, _TensorInput


class _LabelMapIoU(_TensorInput, MulticlassJaccardIndex):
    """IoU from torchmetrics' confusion matrix; ``ignore_index`` target pixels are dropped before
    counting.  Mean and per-class IoU share the confusion-matrix state (one compute group)."""

    _average: ClassVar[str | None]
    _zero_division: ClassVar[float]

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs: Any) -> None:
        super().__init__(
            num_classes=num_classes,
            ignore_index=ignore_index,
            average=self._average,
            zero_division=self._zero_division,
            **kwargs,
        )


class MeanIoU(_LabelMapIoU):
    """mIoU over the classes present (in target or prediction) anywhere in the dataset.

    torchmetrics' ``average="macro"`` gives zero weight to classes whose union is empty and to an
    in-range ``ignore_index`` class; NaN if no class is present at all (e.g. only ignored pixels).
    """

    _average = "macro"
    _zero_division = 0.0


class ClassIoU(_LabelMapIoU):
    """Per-class IoU as ``{"iou/class_<k>": value}``; NaN for classes absent from the whole dataset."""

    _average = None
    _zero_division = _NAN

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        values = super().compute()
        return {f"iou/class_{k}": v for k, v in enumerate(values) if k != self.ignore_index}


class PixelAccuracy(_TensorInput, MulticlassAccuracy):
    """Share of non-ignored pixels labelled correctly (torchmetrics' micro accuracy).

    A dataset with only ignored pixels scores 0 (torchmetrics' convention)."""

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, average="micro", **kwargs)
