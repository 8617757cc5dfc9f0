"""The metric tables and factories: every metric name per table (``METRICS``), the defaults, each name's
direction, and ``build_metrics`` / ``build_codec_metrics``, which build a ``MetricCollection`` for a codec.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

from torchmetrics import Metric, MetricCollection

from adaptkit.metrics.depth import AbsRel, Delta1
from adaptkit.metrics.image import MAE, PSNR, SSIM
from adaptkit.metrics.instances import MaskAP
from adaptkit.metrics.keypoints import PCK
from adaptkit.metrics.masks import BoundaryFScore, Dice, IoU, Precision, Recall
from adaptkit.metrics.normals import MeanAngle, MedianAngle, WithinAngle
from adaptkit.metrics.semantic import ClassIoU, MeanIoU, PixelAccuracy

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
