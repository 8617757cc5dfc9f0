"""Evaluation metrics on *decoded* predictions, one ``torchmetrics.Metric`` per measure.

Why torchmetrics: training runs under Lightning/DDP, and a metric that averages per-process means
is wrong whenever ranks hold different numbers of pixels or images.  Every metric here keeps
additive states (sums, counts, histograms, concatenated per-image records) registered with
``add_state`` so that a distributed sync -- or ``merge_state`` -- is exact.  Where torchmetrics
already implements a measure we subclass it and only adapt the input format.

Update interface (all metrics): ``metric.update(pred, target)`` takes ONE image's decoded prediction
and target, or a ``list``/``tuple`` of them (a batch of images; sizes may differ between images, so
images are never stacked).  A ``list``/``tuple`` always means "several images"; a single image is an
array, a tensor or a record.  Arrays may be numpy or torch; a record is a dict or any object with the
named attributes (so the codec module's ``Instances`` and ``Keypoints`` dataclasses work as they are).
Decoded types per codec:

- ``binary_mask``: bool ``(H, W)`` pred and target.
- ``semantic``: int ``(H, W)`` label maps; target pixels equal to ``ignore_index`` are skipped.
- ``instances``: pred record ``masks`` bool (N, H, W), ``scores`` float (N,), ``labels`` int (N,)
  (optional); target bool ``(M, H, W)`` array, integer ``(H, W)`` label map (0 = background) or a
  record with ``masks`` (and optional ``labels``); missing labels are all 0.
- ``depth``: float ``(H, W)`` relative prediction (the codec's grey value) and ground-truth depth;
  GT pixels that are finite and > 0 are valid.
- ``normals``: float ``(H, W, 3)`` (channels last); GT pixels with a non-zero finite vector are valid.
- ``keypoints``: pred ``(K, 2)`` xy array or a record with ``xy`` and optional ``visible`` bool (K,)
  (a ``confidence`` is ignored); target record with ``xy``, optional ``visible``, and optional ``bbox``
  (x0, y0, x1, y1) or ``size`` for the PCK reference length.
- ``rgb`` / ``heatmap``: ``(H, W)`` or channels-last ``(H, W, C)`` images; uint8 is scaled to [0, 1],
  floats are taken as they are (``data_range`` defaults to 1).

``build_metrics`` assembles a ``MetricCollection`` for a codec; its ``compute()`` returns a flat dict
keyed by metric name (``"dice"``, ``"within_11.25"``, ``"iou/class_3"``...).  All ratios are fractions
in [0, 1] (multiply by 100 for the percentages papers print); angles are in degrees.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import io
import itertools
import math
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import BinaryStatScores, MulticlassAccuracy, MulticlassJaccardIndex
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchmetrics.regression import MeanAbsoluteError
from torchmetrics.utilities import dim_zero_cat

Average = Literal["micro", "image"]
_NAN = float("nan")


def _pairs(pred: Any, target: Any) -> Iterator[tuple[Any, Any]]:
    """Yield (pred, target) per image: decoders emit images one by one and sizes may differ."""
    if not isinstance(pred, list | tuple):
        yield pred, target
        return
    if not isinstance(target, list | tuple) or len(pred) != len(target):
        raise ValueError("a list of predictions needs a list of targets of the same length")
    yield from zip(pred, target, strict=True)


def _field(record: Any, name: str) -> Any:
    """A field of a decoded record, given as a dict or as an object with attributes (the codec dataclasses
    ``Instances``/``Keypoints``): duck typing keeps this module independent of the codec module."""
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray | Tensor)


def _ratio(num: Tensor, den: Tensor, zero_division: float) -> Tensor:
    """num / den, with ``zero_division`` where nothing was counted (e.g. both masks empty)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, 1), zero_division)


def _check_average(average: str) -> None:
    if average not in ("micro", "image"):
        raise ValueError(f"average must be 'micro' or 'image', got {average!r}")


class _TensorInput:
    """Mixin for torchmetrics subclasses: per-image decoded inputs -> the tensors their update wants."""

    device: torch.device

    def update(self, pred: Any, target: Any) -> None:
        for p, t in _pairs(pred, target):
            super().update(self._prepare(p), self._prepare(t))  # type: ignore[misc]

    def _prepare(self, x: Any) -> Tensor:
        return torch.as_tensor(x, device=self.device)


class _PerImage(Metric):
    """Base for metrics written here: ``update`` loops over images, subclasses score one image."""

    full_state_update: ClassVar[bool] = False

    def update(self, pred: Any, target: Any) -> None:
        for p, t in _pairs(pred, target):
            self._update_image(p, t)

    def _update_image(self, pred: Any, target: Any) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- binary masks


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


# --------------------------------------------------------------------------- semantic


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


# --------------------------------------------------------------------------- instances


def _instance_masks(record: Any) -> Tensor:
    """bool (N, H, W) masks of an instance record, a bool (N, H, W) array or an integer (H, W) label map
    (0 = background, one instance per other id: the form instance targets are stored in)."""
    masks = torch.as_tensor(record if _is_array(record) else _field(record, "masks"))
    if masks.ndim == 2:
        ids = masks.unique()
        return masks[None] == ids[ids != 0][:, None, None]
    return masks.bool()


def _rle_counts(masks: Tensor) -> list[bytes]:
    """COCO RLE strings of (N, H, W) masks: compact per-image records to keep until compute."""
    from pycocotools import mask as mask_utils

    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.cpu().numpy().transpose(1, 2, 0).astype(np.uint8)))
    return [rle["counts"] for rle in rles]


class MaskAP(_PerImage):
    """COCO mask AP (mean over IoU 0.50:0.95), or AP at one IoU threshold (0.5 or 0.75).

    Scored by pycocotools' ``COCOeval(iouType="segm")`` -- the reference implementation that
    torchmetrics' ``MeanAveragePrecision(iou_type="segm")`` also delegates to.  We do not subclass
    the latter because it imports torchvision even for masks, and no torchvision build matching a
    CPU-only torch is available to us.  Masks are kept as RLE bytes in flat ``cat`` states (plus
    per-image counts to cut them apart again), so DDP sync and ``merge_state`` are ordinary
    concatenations.  Without any target instance the result is -1 (COCO's convention); with targets
    but no prediction it is 0.  At most 100 detections per image count (COCO's maxDets).
    """

    higher_is_better: ClassVar[bool] = True
    _STATS_INDEX: ClassVar[dict[float | None, int]] = {None: 0, 0.5: 1, 0.75: 2}
    _STATES = (
        "image_size",
        "det_count",
        "det_score",
        "det_label",
        "det_rle_len",
        "det_rle",
        "gt_count",
        "gt_label",
        "gt_rle_len",
        "gt_rle",
    )

    def __init__(self, iou_threshold: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if iou_threshold not in self._STATS_INDEX:
            raise ValueError(f"iou_threshold must be one of {list(self._STATS_INDEX)}, got {iou_threshold}")
        self.iou_threshold = iou_threshold
        for name in self._STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def _update_image(self, pred: Any, target: Any) -> None:
        pred_masks = _instance_masks(pred)
        gt_masks = _instance_masks(target)
        if pred_masks.shape[1:] != gt_masks.shape[1:]:
            raise ValueError(f"mask sizes differ: {tuple(pred_masks.shape)} vs {tuple(gt_masks.shape)}")
        records = {
            "image_size": torch.tensor([list(gt_masks.shape[1:])]),
            "det_score": torch.as_tensor(_field(pred, "scores"), dtype=torch.float64).reshape(-1),
            "det_label": self._labels(pred, len(pred_masks)),
            "gt_label": self._labels(None if _is_array(target) else target, len(gt_masks)),
        }
        for prefix, masks in (("det", pred_masks), ("gt", gt_masks)):
            counts = _rle_counts(masks)
            records[f"{prefix}_count"] = torch.tensor([len(counts)])
            records[f"{prefix}_rle_len"] = torch.tensor([len(c) for c in counts], dtype=torch.long)
            records[f"{prefix}_rle"] = torch.from_numpy(np.frombuffer(b"".join(counts), dtype=np.uint8).copy())
        for name, value in records.items():
            getattr(self, name).append(value.to(self.device))

    @staticmethod
    def _labels(record: Any, n: int) -> Tensor:
        """Class ids of a record's instances; all 0 when it has none (decoded instances carry no class)."""
        labels = None if record is None else _field(record, "labels")
        return torch.zeros(n, dtype=torch.long) if labels is None else torch.as_tensor(labels).long().reshape(-1)

    def _state_list(self, name: str) -> list[Any]:
        return dim_zero_cat(getattr(self, name)).cpu().tolist()

    def _annotations(self, prefix: str, sizes: list[list[int]]) -> list[dict[str, Any]]:
        """COCO annotations of the "det" or "gt" instances, cut back out of the flat states."""
        offsets = [0, *itertools.accumulate(int(n) for n in self._state_list(f"{prefix}_rle_len"))]
        data = dim_zero_cat(getattr(self, f"{prefix}_rle")).to(torch.uint8).cpu().numpy().tobytes()
        image_ids = [i for i, n in enumerate(self._state_list(f"{prefix}_count")) for _ in range(int(n))]
        labels = self._state_list(f"{prefix}_label")
        return [
            {"image_id": i, "category_id": int(label), "segmentation": {"size": sizes[i], "counts": data[a:b]}}
            for i, label, a, b in zip(image_ids, labels, offsets[:-1], offsets[1:], strict=True)
        ]

    def compute(self) -> Tensor:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        if len(self.image_size) == 0:
            return torch.tensor(-1.0)
        sizes = dim_zero_cat(self.image_size).long().reshape(-1, 2).tolist()
        gts = self._annotations("gt", sizes)
        dets = self._annotations("det", sizes)
        if not gts:
            return torch.tensor(-1.0)
        if not dets:
            return torch.tensor(0.0)
        for k, gt in enumerate(gts):
            gt.update(id=k + 1, iscrowd=0, area=float(mask_utils.area(gt["segmentation"])))
        for det, score in zip(dets, self._state_list("det_score"), strict=True):
            det["score"] = float(score)
        categories = [{"id": c} for c in sorted({a["category_id"] for a in gts + dets})]
        images = [{"id": i, "height": h, "width": w} for i, (h, w) in enumerate(sizes)]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco_gt = COCO()
            coco_gt.dataset = {"images": images, "annotations": gts, "categories": categories}
            coco_gt.createIndex()
            evaluator = COCOeval(coco_gt, coco_gt.loadRes(dets), iouType="segm")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return torch.tensor(float(evaluator.stats[self._STATS_INDEX[self.iou_threshold]]))


# --------------------------------------------------------------------------- depth


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


# --------------------------------------------------------------------------- normals


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


# --------------------------------------------------------------------------- keypoints


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


# --------------------------------------------------------------------------- rgb / heatmap


class _ImageInput(_TensorInput):
    """(H, W) or channels-last (H, W, C) image -> (1, C, H, W) float; uint8 is scaled to [0, 1]."""

    def _prepare(self, x: Any) -> Tensor:
        image = torch.as_tensor(x, device=self.device)
        image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
        return image[None, None] if image.ndim == 2 else image.permute(2, 0, 1)[None].contiguous()


class PSNR(_ImageInput, PeakSignalNoiseRatio):
    """Mean over images of per-image PSNR (dB); inf for a perfect image."""

    def __init__(self, data_range: float = 1.0, **kwargs: Any) -> None:
        super().__init__(data_range=data_range, dim=(1, 2, 3), **kwargs)


class SSIM(_ImageInput, StructuralSimilarityIndexMeasure):
    """Mean over images of SSIM (torchmetrics' Gaussian 11x11 window)."""

    def __init__(self, data_range: float = 1.0, **kwargs: Any) -> None:
        super().__init__(data_range=data_range, **kwargs)


class MAE(_ImageInput, MeanAbsoluteError):
    """Mean absolute error over all pixels and channels of the dataset."""


# --------------------------------------------------------------------------- factory

_Factory = Callable[..., Metric]
_IMAGE_METRICS: dict[str, _Factory] = {"psnr": PSNR, "ssim": SSIM, "mae": MAE}
METRICS: dict[str, dict[str, _Factory]] = {
    "binary_mask": {"dice": Dice, "iou": IoU, "precision": Precision, "recall": Recall, "boundary_f": BoundaryFScore},
    "semantic": {"miou": MeanIoU, "class_iou": ClassIoU, "pixel_accuracy": PixelAccuracy},
    "instances": {
        "map": MaskAP,
        "map50": partial(MaskAP, iou_threshold=0.5),
        "map75": partial(MaskAP, iou_threshold=0.75),
    },
    "depth": {"absrel": AbsRel, "delta1": Delta1},
    "normals": {
        "mean_angle": MeanAngle,
        "median_angle": MedianAngle,
        **{f"within_{t:g}": partial(WithinAngle, threshold=t) for t in (11.25, 22.5, 30.0)},
    },
    "keypoints": {"pck": PCK},
    "heatmap": _IMAGE_METRICS,
    "rgb": _IMAGE_METRICS,
}
"""Every metric name available per codec name."""

DEFAULT_METRICS: dict[str, list[str]] = {
    "binary_mask": ["dice", "iou", "precision", "recall"],
    "semantic": ["miou", "pixel_accuracy"],
    "instances": ["map", "map50", "map75"],
    "depth": ["absrel", "delta1"],
    "normals": ["mean_angle", "median_angle", "within_11.25", "within_22.5", "within_30"],
    "keypoints": ["pck"],
    "heatmap": ["mae", "psnr", "ssim"],
    "rgb": ["psnr", "ssim", "mae"],
}
"""Metrics built when ``names`` is None; the first one is the codec's headline metric."""


def _metric_class(factory: _Factory) -> type[Metric]:
    return factory.func if isinstance(factory, partial) else factory  # type: ignore[return-value]


HIGHER_IS_BETTER: dict[str, bool] = {
    name: bool(_metric_class(factory).higher_is_better) for table in METRICS.values() for name, factory in table.items()
}
"""Direction of every metric name (from the classes' ``higher_is_better``), for checkpoint selection."""

_BASE_OPTIONS = frozenset(
    {
        "compute_on_cpu",
        "dist_sync_on_step",
        "process_group",
        "dist_sync_fn",
        "distributed_available_fn",
        "sync_on_compute",
        "compute_with_cache",
    }
)


def _options(factory: _Factory) -> set[str]:
    """Keyword options a registry entry accepts: its own parameters plus torchmetrics' base options."""
    fixed = set(factory.keywords) if isinstance(factory, partial) else set()
    params = inspect.signature(factory).parameters.values()
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return (named | _BASE_OPTIONS) - fixed


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f"{f'; did you mean {close[0]!r}?' if close else ''} (valid: {', '.join(valid)})"


def build_metrics(codec_name: str, names: list[str] | None = None, **kwargs: Any) -> MetricCollection:
    """Metrics for a codec's decoded outputs, as one ``MetricCollection``.

    ``names`` defaults to ``DEFAULT_METRICS[codec_name]``.  Each keyword option goes to every selected
    metric whose constructor accepts it (e.g. ``num_classes``/``ignore_index`` for semantic,
    ``space`` for depth, ``average``, or torchmetrics' ``sync_on_compute``); an option that no
    selected metric accepts raises ``TypeError`` so typos do not pass silently.  Metrics sharing a
    state layout (Dice/IoU/..., the normals family, the AP variants) are grouped by torchmetrics'
    compute groups and updated once.  ``update(pred, target)`` is routed to every metric;
    ``compute()`` returns a flat dict keyed by metric name.
    """
    if codec_name not in METRICS:
        raise ValueError(f"unknown codec {codec_name!r}{_suggest(codec_name, list(METRICS))}")
    table = METRICS[codec_name]
    names = DEFAULT_METRICS[codec_name] if names is None else names
    for name in names:
        if name not in table:
            raise ValueError(f"unknown metric {name!r} for codec {codec_name!r}{_suggest(name, list(table))}")
    options = {name: _options(table[name]) for name in names}
    accepted = sorted(set().union(*options.values()))
    for option in kwargs:
        if option not in accepted:
            raise TypeError(f"option {option!r} is accepted by none of {names}{_suggest(option, accepted)}")
    metrics = {
        name.replace(".", "_"): table[name](**{k: v for k, v in kwargs.items() if k in options[name]}) for name in names
    }
    return MetricCollection(metrics)


def default_metric_names(codec: Any) -> list[str]:
    """The metrics a codec is scored with when a recipe names none: its own ``default_metrics``, else its
    table's; the first is the headline metric that training monitors."""
    return list(getattr(codec, "default_metrics", ()) or DEFAULT_METRICS.get(_codec_table(codec), ()))


def _codec_table(codec: Any) -> str:
    table = getattr(codec, "metric_table", "")
    if table not in METRICS:
        raise ValueError(
            f"codec {getattr(codec, 'reference', codec.name)!r} names metric table {table!r}, which does not "
            f"exist: set its class attribute metric_table to the table whose inputs its decoded outputs match "
            f"(one of {', '.join(METRICS)}), or subclass the built-in codec of that kind")
    return table


def build_codec_metrics(codec: Any, names: list[str] | None = None) -> MetricCollection:
    """``build_metrics`` for a codec: the table it declares (``metric_table``), its default metrics, and the
    options its encoding implies (``metric_options()``: a semantic codec fixes the number of classes and the
    ignore index, a depth codec the space in which predictions are aligned). Asking the codec, not a table
    keyed by its name, is what lets a user codec (a subclass, or a new kind) be scored; this module still
    needs nothing from the codec module.
    """
    table = _codec_table(codec)
    chosen = default_metric_names(codec) if names is None else list(names)
    accepted = set().union(*(_options(METRICS[table][n]) for n in chosen if n in METRICS[table]))
    options = {k: v for k, v in codec.metric_options().items() if k in accepted}
    return build_metrics(table, chosen, **options)
