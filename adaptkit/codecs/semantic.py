"""The ``semantic`` codec: a class-id label map, one well-spread colour per class."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from adaptkit.codecs.base import Codec, _write_png, register_codec
from adaptkit.codecs.helpers import (
    _ids_png_array,
    _integral,
    _list_values,
    _min_spacing,
    _rgb_arg,
    _unique_colours,
    distinct_colors,
)


@register_codec
class SemanticCodec(Codec):
    """Semantic labels: each class a fixed colour of a maximally distinct palette, class ``background`` black.

    The default palette is greedy farthest-point selection in RGB from black (``distinct_colors``), so every
    class colour is as far as possible from black and from the others (``colors``, one RGB per class,
    replaces it, and ``background`` then has no effect); decoding takes the nearest palette colour. Ignored
    pixels (``ignore_index``) encode as black: with the default ``background=0`` that is class 0's colour,
    so the image alone no longer marks them, and metrics skip them through the target label map (``loss``
    does too when given the label map; given only the encoded image it can skip black pixels only when black
    is not a class, i.e. ``background=None``). Target: int64 (H, W) in [0, num_classes) or ignore_index.
    """

    name = "semantic"
    metric_table = "semantic"
    resample = "nearest"
    _SHARPNESS = 10.0  # logit gap between the true class and its nearest palette neighbour at a perfect pixel

    def __init__(
        self,
        num_classes: int,
        colors: Sequence[Sequence[int]] | None = None,
        ignore_index: int = 255,
        background: int | None = 0,
    ) -> None:
        if not isinstance(num_classes, int | np.integer) or num_classes < 1:
            raise self._fail(f"argument 'num_classes' must be a positive integer, got {num_classes!r}")
        if 0 <= ignore_index < num_classes:
            raise self._fail(
                f"argument 'ignore_index' ({ignore_index}) must lie outside the classes 0..{num_classes - 1}"
            )
        if background is not None and not 0 <= background < num_classes:
            raise self._fail(
                f"argument 'background' must be a class in 0..{num_classes - 1} or None, got {background}"
            )
        self.num_classes, self.ignore_index, self.background = int(num_classes), ignore_index, background
        if colors is None:
            self.colors = None
            palette = distinct_colors(num_classes - (background is not None)).astype(np.float32)
            if background is not None:
                palette = np.insert(palette, background, 0.0, axis=0)
        else:
            self.colors = [list(_rgb_arg(c, "colors", self.name)) for c in colors]
            if len(self.colors) != num_classes:
                raise self._fail(
                    f"argument 'colors' has {len(self.colors)} colours for {num_classes} classes"
                )
            palette = np.asarray(self.colors, np.float32)
            if len(np.unique(palette, axis=0)) < num_classes:
                raise self._fail("argument 'colors' repeats a colour, so those classes cannot be told apart")
        self.palette = palette / 255  # float32 (K, 3) in [0, 1]
        self._spacing = _min_spacing(self.palette)
        self._tree = cKDTree(self.palette)

    def validate(self, target: Any) -> None:
        labels = self._array(target, 2, "an integer label map (H, W)")
        if not np.issubdtype(labels.dtype, np.integer):
            raise self._fail(f"target has dtype {labels.dtype}; expected integer class ids")
        bad = ((labels < 0) | (labels >= self.num_classes)) & (labels != self.ignore_index)
        if bad.any():
            raise self._fail(
                f"label values {_list_values(labels[bad])} are out of range: classes are "
                f"0..{self.num_classes - 1} and ignore_index is {self.ignore_index}"
            )

    def metric_options(self) -> dict[str, Any]:
        """The class count and the ignore index."""
        return {"num_classes": self.num_classes, "ignore_index": self.ignore_index}

    def _encode(self, target: np.ndarray) -> np.ndarray:
        lut = np.concatenate([self.palette, np.zeros((1, 3), np.float32)])  # last row: ignore -> black
        return lut[np.where(target == self.ignore_index, self.num_classes, target)]

    def _decode(self, image: np.ndarray) -> np.ndarray:
        colours, inverse, _ = _unique_colours(image)
        nearest = self._tree.query(colours)[1]
        return nearest[inverse].reshape(image.shape[:2]).astype(np.int64)

    def save(self, target: np.ndarray, stem: str | Path) -> list[Path]:
        """``stem.png``: class ids as 8-bit grey (16-bit beyond 255 classes)."""
        return [_write_png(_ids_png_array(target), Path(f"{stem}.png"))]

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over logits -|pred - colour_k|^2 / tau (tau set so that the nearest wrong class
        trails by ``_SHARPNESS`` at a perfect pixel). ``target`` is the encoded image (classes by nearest
        palette colour; pixels far from every colour, e.g. black when black is no class, are ignored) or the
        int label map (B, H, W), which honours ``ignore_index`` exactly."""
        palette = torch.as_tensor(self.palette, dtype=pred.dtype, device=pred.device)

        def sq_distance(x: torch.Tensor) -> torch.Tensor:
            cross = torch.einsum("bchw,kc->bkhw", x, palette)
            return (x**2).sum(1, keepdim=True) - 2 * cross + (palette**2).sum(1)[None, :, None, None]

        if target.dim() == 3:
            labels = target.long()
        else:
            nearest_d2, labels = sq_distance(target).min(1)
            labels = labels.masked_fill(nearest_d2 > self._spacing**2 / 4, self.ignore_index)
        if not (labels != self.ignore_index).any():
            return pred.sum() * 0
        logits = -sq_distance(pred) * (self._SHARPNESS / self._spacing**2)
        return F.cross_entropy(logits, labels, ignore_index=self.ignore_index)

    def _from_array(self, array: np.ndarray, path: Path) -> np.ndarray:
        """Class ids from 8/16-bit grey or 'P' PNGs and integral ``.npy`` arrays; an RGB image is read through
        this codec's palette (exact colours only; black is ignore_index when black is no class)."""
        if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8:
            return self._labels_from_colours(array, path)
        if not _integral(array):
            raise self._fail(f"{path} holds non-integer values (dtype {array.dtype}); expected class ids")
        return array.astype(np.int64)

    def _labels_from_colours(self, array: np.ndarray, path: Path) -> np.ndarray:
        colours, inverse, _ = _unique_colours(array / 255.0)
        distance, nearest = self._tree.query(colours)
        black = ~colours.any(1)
        unknown = (distance > 0.5 / 255) & ~black
        if unknown.any():
            raise self._fail(
                f"{path} has {int(unknown.sum())} colours outside the palette (e.g. "
                f"{np.rint(colours[unknown][0] * 255).astype(int).tolist()}); save class ids as a grey or "
                "'P' PNG, or pass the dataset's palette as 'colors'"
            )
        nearest = np.where(black & (distance > 0.5 / 255), self.ignore_index, nearest)
        return nearest[inverse].reshape(array.shape[:2]).astype(np.int64)
