"""Colour and array helpers that several codecs share: well-spread palettes, colour-space geometry, PNG
depth choices and the colour-space losses.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree

from adaptkit.codecs.base import CodecError, _write_npy, _write_png

# Brightness (largest channel) below which a pixel counts as the black background: it keeps near-black noise
# out of the instance decoder's colour statistics and tells the keypoint loss which pixels are drawn.
_DARK = 0.15
@functools.lru_cache(maxsize=64)
def distinct_colors(count: int, bright: bool = False) -> np.ndarray:
    """``count`` colours (uint8, (count, 3)), each chosen greedily farthest (in RGB) from black and from the
    colours already chosen, over a regular grid of candidates. Deterministic, and every prefix is itself well
    spread, so codecs can take the first n colours. RGB distance is used because it is the space in which the
    VAE and sampler errors that decoding must tolerate are measured. ``bright`` restricts the candidates to
    colours with a channel at 255: then no colour is a darkened copy of another, which lets the instance
    decoder read a blurred, darkened edge as its own colour (see ``InstancesCodec``).
    """
    if count < 0:
        raise CodecError(f"distinct_colors: count must be >= 0, got {count}")
    levels = 16
    while True:
        axis = np.linspace(0, 255, levels)
        grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        if bright:
            grid = grid[grid.max(1) == 255]
        if len(grid) >= 3 * count:
            break
        levels *= 2
    nearest = np.linalg.norm(grid, axis=1)  # distance of each candidate to the chosen set, seeded with black
    chosen = np.empty((count, 3))
    for i in range(count):
        best = int(np.argmax(nearest))
        chosen[i] = grid[best]
        nearest = np.minimum(nearest, np.linalg.norm(grid - grid[best], axis=1))
    return np.rint(chosen).astype(np.uint8)


def _min_spacing(colours: np.ndarray) -> float:
    """Smallest pairwise distance between colours (rows), in the colours' own units."""
    if len(colours) < 2:
        return float(np.sqrt(3.0))
    return float(cKDTree(colours).query(colours, k=2)[0][:, 1].min())


def _absolute(value: float, reference: float) -> float:
    """Sizes below 1 are a fraction of ``reference`` (image area or side), otherwise absolute pixels; so one
    setting suits any resolution while an exact pixel count stays possible."""
    return value * reference if value < 1 else float(value)

def _save_with_preview(target: np.ndarray, preview: np.ndarray, stem: str | Path) -> list[Path]:
    """Exact values as ``stem.npy`` and a viewable ``stem.png``, for continuous targets."""
    return [_write_npy(target, Path(f"{stem}.npy")), _write_png(preview, Path(f"{stem}.png"))]


def _ids_png_array(labels: np.ndarray) -> np.ndarray:
    """Integer ids as 8-bit when they fit, else 16-bit, the PNG depths label tools read."""
    return labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)


def _unit_png_array(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as a 16-bit PNG array (0-65535), finer than 8 bits for continuous maps."""
    return np.rint(np.clip(values, 0, 1) * 65535).astype(np.uint16)


def _segment_projection(
    points: np.ndarray, starts: np.ndarray, ends: np.ndarray, chunk: int = 1 << 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each point (rows of ``points``), the nearest of the segments ``starts[s] -> ends[s]``: its index,
    the position t in [0, 1] along it and the distance. Vectorised with matrix products (no (N, S, 3)
    temporaries) and chunked over points, so memory stays bounded for a noise image with a million distinct
    colours."""
    # All in float64: squared lengths of float32 anchors lose ~1e-8, which the expanded distance below turns
    # into picking a neighbouring segment's clamped end for points within ~1e-4 (in value) of an anchor.
    starts, ends = starts.astype(np.float64), ends.astype(np.float64)
    seg = ends - starts
    seg_len2 = np.maximum((seg**2).sum(1), 1e-12)
    start_dot_seg = (starts * seg).sum(1)
    start_len2 = (starts**2).sum(1)
    index = np.empty(len(points), np.int64)
    position = np.empty(len(points), np.float32)
    distance = np.empty(len(points), np.float32)
    for lo in range(0, len(points), chunk):
        p = points[lo : lo + chunk].astype(np.float64)
        rel_dot_seg = p @ seg.T - start_dot_seg
        rel_len2 = (p**2).sum(1, keepdims=True) - 2 * p @ starts.T + start_len2
        t = np.clip(rel_dot_seg / seg_len2, 0.0, 1.0)
        d2 = np.maximum(rel_len2 - 2 * t * rel_dot_seg + t**2 * seg_len2, 0.0)
        best = d2.argmin(1)
        rows = np.arange(len(p))
        index[lo : lo + chunk] = best
        position[lo : lo + chunk] = t[rows, best]
        distance[lo : lo + chunk] = np.sqrt(d2[rows, best])
    return index, position, distance


def _unique_colours(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct 8-bit colours of an image (float (U, 3) in [0, 1]), the index of each pixel's colour and
    the pixel count per colour. Colour-space work then scales with the number of colours, not pixels: a clean
    encoding has a handful, a decoded 768 px map some tens of thousands."""
    q = np.rint(image * 255).astype(np.int32)
    packed = (q[..., 0] << 16) | (q[..., 1] << 8) | q[..., 2]
    values, inverse, counts = np.unique(packed.ravel(), return_inverse=True, return_counts=True)
    colours = np.stack([(values >> 16) & 255, (values >> 8) & 255, values & 255], 1).astype(np.float32) / 255
    return colours, inverse.ravel(), counts


def _rgb_arg(value: Any, arg: str, codec: str) -> tuple[int, int, int]:
    """Validate a constructor colour given as three 0-255 integers."""
    try:
        rgb = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb) or list(rgb) != [float(v) for v in value]:
        raise CodecError(f"{codec} codec: argument {arg!r} must be three integers in 0-255, got {value!r}")
    return rgb  # type: ignore[return-value]


def _rgb255(colour: np.ndarray) -> tuple[int, ...]:
    """A [0, 1] float colour as the 0-255 integer tuple PIL draws with."""
    return tuple(int(v) for v in np.rint(colour * 255))


def _integral(array: np.ndarray) -> bool:
    """Whether an array holds whole numbers (integer dtype, or floats that are all integral)."""
    if np.issubdtype(array.dtype, np.integer):
        return True
    return bool(
        np.issubdtype(array.dtype, np.floating)
        and np.isfinite(array).all()
        and (array == np.round(array)).all()
    )


def _list_values(values: np.ndarray, limit: int = 6) -> str:
    """A short, readable list of (unique) offending values for an error message."""
    values = np.unique(values)
    shown = ", ".join(str(v) for v in values[:limit].tolist())
    return shown + (f", ... ({len(values)} values)" if len(values) > limit else "")


def _l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


def _soft_dice(prob: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per image, averaged over images whose target has foreground: Dice is undefined on an
    empty target, and a smoothing constant would then charge a perfect prediction; the BCE term covers those
    images."""
    prob, truth = prob.flatten(1), truth.flatten(1)
    has_fg = truth.sum(1) > 0
    if not has_fg.any():
        return prob.sum() * 0
    overlap = (prob * truth).sum(1)[has_fg]
    total = (prob.sum(1) + truth.sum(1))[has_fg]
    return (1 - 2 * overlap / total.clamp_min(1e-6)).mean()


# ---------------------------------------------------------------------------------------------------------
# Base class and registry
# ---------------------------------------------------------------------------------------------------------
