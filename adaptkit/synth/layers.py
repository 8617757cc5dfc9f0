"""The `layers` family: flat 2D compositions that teach figure/ground, boundaries and parts, for pretraining.

The ray-cast `scenes` teach 3D geometry but only ever show shaded solids on a ground plane; real
few-shot targets (cells, organs, cracks, lesions) are blobs, rings, thin curves and nested regions in
grey-scale or colour, on textured, noisy backgrounds, at any contrast. Each sample stacks 1-8 such
objects in painter's order over a random background and derives every target from the same shapes.

Conventions (see :class:`LayerSample`): instance ids follow painter's order, so a larger id is drawn
later and lies in front; each layer sits at its own depth (front nearer), domed objects (blobs, cells,
nuclei) bulge toward the camera, and normals are the gradient of that bulge (flat elsewhere), in the
camera frame of `scenes` (x right, y up, z toward the camera). Content depends on the seed alone.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from adaptkit.synth import shapes

__all__ = ["LAYER_CLASSES", "LAYER_FAR_DEPTH", "LayerSample", "render_layers"]

LAYER_CLASSES: tuple[str, ...] = ("background", "blob", "ellipse", "ring", "curve", "cell", "nucleus", "polygon")
"""Semantic class names of `layers`; a class's index here is its value in ``LayerSample.semantic``."""

LAYER_FAR_DEPTH: float = 10.0
"""Depth of the background; every object lies nearer (in image-width units)."""

_BLOB, _ELLIPSE, _RING, _CURVE, _CELL, _NUCLEUS, _POLYGON = range(1, len(LAYER_CLASSES))
_KINDS = (_BLOB, _ELLIPSE, _RING, _CURVE, _CELL, _POLYGON)  # what a painter layer can be (a cell adds a nucleus)


@dataclass
class LayerSample:
    """One composition: the image and every target derived from the same shapes.

    ``semantic == object_classes[instances]`` wherever ``instances > 0``; instance 0 is the background.
    A nucleus is its own instance inside its cell's; a ring's hole shows what lies behind it.
    """

    CLASS_NAMES: ClassVar[tuple[str, ...]] = LAYER_CLASSES

    image: np.ndarray  # float32 (H, W, 3) in [0, 1]
    depth: np.ndarray  # float32 (H, W) > 0, nearer is smaller; background = LAYER_FAR_DEPTH
    normals: np.ndarray  # float32 (H, W, 3), unit, camera frame; flat = (0, 0, 1)
    instances: np.ndarray  # int32 (H, W), 0 = background, 1..N visible objects in painter's order
    semantic: np.ndarray  # int64 (H, W), indices into LAYER_CLASSES
    object_classes: np.ndarray  # int64 (N + 1,), class per instance id; [0] = background
    boundaries: np.ndarray  # bool (H, W), both sides of every instance change


@dataclass
class _Shape:
    """One painter layer: its class, signed distance field and (for domed shapes) bulge height field."""

    kind: int
    sdf: np.ndarray
    bulge: np.ndarray | None


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.05, 1.0)), np.float32)


def _pattern(rng: np.random.Generator, grid: shapes.Grid, kind: str) -> np.ndarray:
    """A [0, 1] field that mixes two colours: flat, linear gradient, smooth noise, stripes or fine grain."""
    if kind == "flat":
        return np.zeros_like(grid[0])
    if kind == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        return np.clip(0.5 + (float(np.cos(a)) * (grid[0] - 0.5) + float(np.sin(a)) * (grid[1] - 0.5)), 0.0, 1.0)
    if kind == "noise":
        return shapes.value_noise(rng, grid, int(rng.integers(2, 7)), octaves=3)
    if kind == "stripes":
        a, period = rng.uniform(0, np.pi), rng.uniform(0.04, 0.2)
        wave = np.sin(2 * np.pi * (float(np.cos(a)) * grid[0] + float(np.sin(a)) * grid[1]) / period
                      + rng.uniform(0, 2 * np.pi))
        return 0.5 + 0.5 * np.tanh(rng.uniform(0.5, 4.0) * wave)
    return shapes.value_noise(rng, grid, int(rng.integers(24, 48)))  # grain


def _paint(rng: np.random.Generator, grid: shapes.Grid, base: np.ndarray, contrast: float) -> np.ndarray:
    """A colour field (H, W, 3) around ``base`` (a background colour), ``contrast`` of the way to a new colour."""
    colour = base + contrast * (_random_colour(rng) - base)
    second = np.clip(colour * rng.uniform(0.4, 1.4) + rng.normal(0, 0.15, 3).astype(np.float32), 0.0, 1.0)
    kind = str(rng.choice(["flat", "gradient", "noise", "stripes", "grain"], p=[0.4, 0.2, 0.2, 0.1, 0.1]))
    mix = _pattern(rng, grid, kind)[..., None] * rng.uniform(0.2, 1.0)
    return colour + mix * (second - colour)


def _random_shapes(rng: np.random.Generator, grid: shapes.Grid) -> list[_Shape]:
    """1-8 painter layers; a cell is followed by its nucleus, one layer nearer."""
    layers: list[_Shape] = []
    for _ in range(rng.integers(1, 9)):
        kind = int(rng.choice(_KINDS, p=[0.22, 0.14, 0.14, 0.18, 0.16, 0.16]))
        centre = (float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.9)))
        radius = float(rng.uniform(0.06, 0.3))
        angle = float(rng.uniform(0, 2 * np.pi))
        if kind == _CURVE:
            width = float(rng.choice([rng.uniform(0.008, 0.02), rng.uniform(0.03, 0.08)]))
            curve = shapes.random_curve(rng, centre, float(rng.uniform(0.3, 1.0)), float(rng.uniform(0.05, 0.4)))
            layers.append(_Shape(kind, shapes.polyline_sdf(grid, curve, width), None))
        elif kind == _POLYGON:
            sides = int(rng.integers(3, 9))
            layers.append(_Shape(kind, shapes.polygon_sdf(grid, centre, radius, sides, angle), None))
        elif kind in (_ELLIPSE, _RING):
            outline = shapes.blob_sdf(grid, centre, radius, aspect=float(rng.uniform(0.35, 1.0)), angle=angle)
            if kind == _RING:
                outline = shapes.ring_sdf(outline, float(rng.uniform(0.1, 0.5)) * radius)
            layers.append(_Shape(kind, outline, None))
        else:  # blob or cell: domed, irregular outline
            harmonics = shapes.random_harmonics(rng, 5, float(rng.uniform(0.05, 0.5)))
            outline = shapes.blob_sdf(grid, centre, radius, harmonics, float(rng.uniform(0.6, 1.0)), angle)
            layers.append(_Shape(kind, outline, shapes.dome(outline, radius) * rng.uniform(0.3, 1.2) * radius))
            if kind == _CELL:
                offset = rng.uniform(-0.25, 0.25, 2) * radius
                n_centre = (centre[0] + float(offset[0]), centre[1] + float(offset[1]))
                n_radius = radius * float(rng.uniform(0.25, 0.45))
                nucleus = shapes.blob_sdf(grid, n_centre, n_radius, shapes.random_harmonics(rng, 3, 0.15),
                                          float(rng.uniform(0.7, 1.0)), angle)
                layers.append(_Shape(_NUCLEUS, nucleus, shapes.dome(nucleus, n_radius) * 0.5 * n_radius))
    return layers


def _normals(height: np.ndarray, resolution: int) -> np.ndarray:
    """Unit normals (H, W, 3) of the surface ``z = height(x, y)`` (z toward the camera, y up)."""
    d_row, d_col = np.gradient(height, 1.0 / resolution)
    n = np.stack([-d_col, d_row, np.ones_like(height)], axis=-1)  # rows grow downward, y grows up
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def render_layers(seed: int, resolution: int = 64) -> LayerSample:
    """Render the composition of ``seed`` as a ``resolution`` x ``resolution`` sample (bit-identical per seed)."""
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    rng = np.random.default_rng(seed)
    grid = shapes.pixel_grid(resolution)
    dark, bright = rng.random() < 0.25, rng.random() < 0.25
    bg_colour = _random_colour(rng) * (0.25 if dark else 1.0)
    bg_colour = bg_colour + (1.0 - bg_colour) * (0.7 if bright and not dark else 0.0)
    image = _paint(rng, grid, bg_colour, float(rng.uniform(0.0, 0.8)))
    layers = _random_shapes(rng, grid)

    light = rng.normal(size=3) * np.array([1.0, 1.0, 0.0]) + np.array([0.0, 0.0, 1.5])
    light /= np.linalg.norm(light)
    shading = float(rng.uniform(0.0, 1.0))
    spacing = (LAYER_FAR_DEPTH - 1.0) / (len(layers) + 1)
    shape = grid[0].shape
    depth = np.full(shape, LAYER_FAR_DEPTH)
    normals = np.zeros((*shape, 3))
    normals[..., 2] = 1.0
    ids = np.zeros(shape, np.int32)
    for k, layer in enumerate(layers, start=1):
        inside = layer.sdf < 0
        alpha = shapes.coverage(layer.sdf, resolution)[..., None]
        colour = _paint(rng, grid, bg_colour, float(rng.uniform(0.1, 1.0)))
        if layer.bulge is not None:
            bulge = np.minimum(layer.bulge, 0.8 * spacing)  # stays behind the next layer
            n = _normals(bulge, resolution)
            lambert = np.maximum((n * light).sum(-1), 0.0) / light[2]
            colour = colour * (1.0 - shading + shading * lambert)[..., None]
            normals[inside] = n[inside]
            depth[inside] = (LAYER_FAR_DEPTH - k * spacing - bulge)[inside]
        else:
            normals[inside] = (0.0, 0.0, 1.0)
            depth[inside] = LAYER_FAR_DEPTH - k * spacing
        if rng.random() < 0.3:  # an outline band just inside the edge
            band = shapes.coverage(-layer.sdf - float(rng.uniform(0.006, 0.025)), resolution)[..., None]
            colour = colour + band * (_random_colour(rng) - colour)
        image = image + alpha * (colour - image)
        ids[inside] = k

    post = np.random.default_rng([seed, 1])  # content above, appearance below: same draws at any size
    image = np.clip(image, 0.0, 1.0)
    if post.random() < 0.4:
        image = np.repeat((image @ np.array([0.299, 0.587, 0.114]))[..., None], 3, axis=-1)
    image = shapes.gaussian_blur(image, float(post.uniform(0.0, 1.5)) / 64)
    image = image ** float(np.exp(post.uniform(-0.5, 0.5)))
    image = np.clip(0.5 + float(post.uniform(0.6, 1.4)) * (image - 0.5), 0.0, 1.0)
    if post.random() < 0.15:
        image = 1.0 - image
    read = float(post.uniform(0.0, 0.06))
    image = shapes.sensor_noise(image, post, read)

    instances, kept = shapes.compact_ids(ids)
    object_classes = np.array([0] + [layers[i - 1].kind for i in kept], np.int64)
    return LayerSample(
        image=image.astype(np.float32),
        depth=depth.astype(np.float32),
        normals=normals.astype(np.float32),
        instances=instances.astype(np.int32),
        semantic=object_classes[instances],
        object_classes=object_classes,
        boundaries=shapes.instance_boundaries(instances),
    )
