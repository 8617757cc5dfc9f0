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

The package holds one module per family (``masks``, ``semantic``, ``instances``, ``depth``, ``normals``,
``keypoints``, ``image``) over the shared ``base``, and ``registry``, the tables and factories.
"""

from adaptkit.metrics.base import Average
from adaptkit.metrics.depth import AbsRel, Delta1
from adaptkit.metrics.image import MAE, PSNR, SSIM
from adaptkit.metrics.instances import MaskAP
from adaptkit.metrics.keypoints import PCK
from adaptkit.metrics.masks import BoundaryFScore, Dice, IoU, Precision, Recall
from adaptkit.metrics.normals import MeanAngle, MedianAngle, WithinAngle
from adaptkit.metrics.registry import (
    DEFAULT_METRICS,
    HIGHER_IS_BETTER,
    METRICS,
    build_codec_metrics,
    build_metrics,
    default_metric_names,
)
from adaptkit.metrics.semantic import ClassIoU, MeanIoU, PixelAccuracy

__all__ = [
    "DEFAULT_METRICS",
    "HIGHER_IS_BETTER",
    "MAE",
    "METRICS",
    "PCK",
    "PSNR",
    "SSIM",
    "AbsRel",
    "Average",
    "BoundaryFScore",
    "ClassIoU",
    "Delta1",
    "Dice",
    "IoU",
    "MaskAP",
    "MeanAngle",
    "MeanIoU",
    "MedianAngle",
    "PixelAccuracy",
    "Precision",
    "Recall",
    "WithinAngle",
    "build_codec_metrics",
    "build_metrics",
    "default_metric_names",
]
