"""The ``normals`` codec: unit surface normals as RGB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from adaptkit.codecs.base import Codec, _write_npy, register_codec
from adaptkit.codecs.helpers import _list_values, _save_with_preview


@register_codec
class NormalsCodec(Codec):
    """Surface normals: unit vector n as colour (n + 1) / 2, as DICEPTION.

    Axis convention (camera frame): x right, y up, z toward the viewer, so a surface facing the camera is
    (0, 0, 1), the familiar lavender (0.5, 0.5, 1.0). DICEPTION's release does not state its convention (it
    only loads PNGs / 255); check a few decoded normals against real data before trusting one. Zero vectors
    mark invalid pixels (encoded mid-grey); decoding renormalises and turns (near-)zero vectors into
    (0, 0, 1). A horizontal flip mirrors the pixels and negates x. Target: float32 (H, W, 3) unit (or zero)
    vectors.
    """

    name = "normals"
    metric_table = "normals"
    resample = "bilinear"
    _FACING = np.array([0.0, 0.0, 1.0], np.float32)
    _UNIT_TOLERANCE = 0.05

    def validate(self, target: Any) -> None:
        normals = self._array(target, 3, "normals (H, W, 3)")
        if normals.shape[2] != 3:
            raise self._fail(f"normals need 3 channels (x, y, z), got {normals.shape[2]}")
        if not np.issubdtype(normals.dtype, np.floating):
            raise self._fail(
                f"target has dtype {normals.dtype}; expected float vectors (load PNGs with load_target)"
            )
        if not np.isfinite(normals).all():
            raise self._fail("normals contain NaN or infinite values (use zero vectors for invalid pixels)")
        norm = np.linalg.norm(normals, axis=2)
        bad = (np.abs(norm - 1) > self._UNIT_TOLERANCE) & (norm > 1e-6)
        if bad.any():
            raise self._fail(
                f"{int(bad.sum())} normals are not unit vectors (norms {_list_values(norm[bad].round(3))})"
            )

    def _encode(self, target: np.ndarray) -> np.ndarray:
        return (target + 1) / 2

    def _decode(self, image: np.ndarray) -> np.ndarray:
        vectors = image * 2 - 1
        norm = np.linalg.norm(vectors, axis=2, keepdims=True)
        return np.where(norm > 1e-3, vectors / np.maximum(norm, 1e-3), self._FACING).astype(np.float32)

    def hflip(self, target: np.ndarray) -> np.ndarray:
        flipped = target[:, ::-1].copy()
        flipped[..., 0] *= -1
        return flipped

    def save(self, target: np.ndarray, stem: str | Path) -> list[Path]:
        """``stem.npy``: the vectors (float32); ``stem.png``: their 8-bit colour encoding (``load_target``
        reads either)."""
        return _save_with_preview(target, np.rint(self._encode(target) * 255).astype(np.uint8), stem)

    def save_target(self, target: np.ndarray, stem: str | Path) -> Path:
        """``stem.npy`` alone: the exact values, without ``save``'s preview."""
        return _write_npy(target, Path(f"{stem}.npy"))

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean 1 - cosine between predicted and target vectors over valid (non-zero) target pixels: 0 when
        perfect, 2 for a reversed field."""
        target_vectors = target * 2 - 1
        valid = target_vectors.norm(dim=1) > 0.5
        if not valid.any():
            return pred.sum() * 0
        cosine = (F.normalize(pred * 2 - 1, dim=1, eps=1e-6) * F.normalize(target_vectors, dim=1)).sum(1)
        return (1 - cosine.clamp(-1, 1))[valid].mean()

    def _from_array(self, array: np.ndarray, path: Path) -> np.ndarray:
        """8/16-bit RGB PNGs are colour-encoded normals (read like a prediction, renormalised); ``.npy`` and
        float TIFFs hold the vectors themselves."""
        if np.issubdtype(array.dtype, np.integer) and array.ndim == 3:
            return self.decode(array)
        return np.asarray(array, np.float32) if np.issubdtype(array.dtype, np.floating) else array
