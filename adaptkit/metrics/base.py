"""What every metric here shares: per-image input pairing, record field access and the two base classes
(``_TensorInput`` adapts torchmetrics subclasses, ``_PerImage`` is the base of metrics written here).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

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
