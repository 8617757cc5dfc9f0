"""The `scans` family: grey-scale axial slices like chest CT, a HELD-OUT family (never pretrained on).

A second family unlike pretraining: one anatomy seen again and again at varying pose and contrast,
where what matters is a region's place in a layout rather than its colour. A slice is a tissue density
map, then windowed like a CT viewer: black air around a soft-tissue body ellipse with a brighter rim, two
dark irregular lungs holding small bright vessel dots, a bright spine near the bottom. The whole anatomy
is drawn in a body frame placed at a random scale, rotation and shift. The target is both lungs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adaptkit.synth import shapes

__all__ = ["ScanSample", "render_scan"]


@dataclass
class ScanSample:
    """One slice: the image and its anatomy (instances 1, 2 = left and right lung, 3 = spine)."""

    image: np.ndarray  # float32 (H, W, 3) in [0, 1], grey (three equal channels)
    instances: np.ndarray  # int32 (H, W), 0 = body and air, 1..2 lungs, 3 spine
    lungs: np.ndarray  # bool (H, W), both lungs (the `lungs` task's target)


def _paint(density: np.ndarray, sdf: np.ndarray, value: float | np.ndarray, resolution: int) -> np.ndarray:
    """Replace ``density`` by ``value`` inside ``sdf``, anti-aliased at the outline."""
    return density + shapes.coverage(sdf, resolution) * (value - density)


def render_scan(seed: int, resolution: int = 64) -> ScanSample:
    """Render the slice of ``seed`` (content independent of ``resolution``)."""
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    rng = np.random.default_rng(seed)
    pixels = shapes.pixel_grid(resolution)
    grid = shapes.similarity(pixels, (float(rng.uniform(0.42, 0.58)), float(rng.uniform(0.42, 0.58))),
                             float(rng.uniform(0.75, 1.1)), float(rng.uniform(-0.35, 0.35)))
    res = resolution  # outlines are anti-aliased over one pixel in image units; the body frame is close enough

    body_w, body_h = float(rng.uniform(0.36, 0.44)), float(rng.uniform(0.27, 0.34))
    body = shapes.blob_sdf(grid, (0.5, 0.5), body_w, shapes.random_harmonics(rng, 3, 0.06), body_h / body_w)
    tissue = 0.45 + 0.08 * (shapes.value_noise(rng, grid, int(rng.integers(6, 14)), octaves=2) - 0.5)
    density = _paint(np.full_like(pixels[0], -1.0), body, tissue, res)  # air: below any window
    rim = float(rng.uniform(0.012, 0.03))
    density = _paint(density, shapes.ring_sdf(body + rim / 2, rim), float(rng.uniform(0.6, 0.75)), res)

    ids = np.zeros(pixels[0].shape, np.int32)
    lungs = np.zeros(pixels[0].shape, bool)
    for k, side in enumerate((-1.0, 1.0), start=1):
        centre = (0.5 + side * body_w * float(rng.uniform(0.38, 0.5)), 0.5 - body_h * float(rng.uniform(0.0, 0.15)))
        width = body_w * float(rng.uniform(0.3, 0.4))
        lung = shapes.blob_sdf(grid, centre, width, shapes.random_harmonics(rng, 4, 0.25),
                               body_h * float(rng.uniform(0.65, 0.85)) / width, side * float(rng.uniform(0.0, 0.3)))
        density = _paint(density, lung, 0.05 + 0.05 * float(rng.random()), res)
        for _ in range(int(rng.integers(4, 14))):  # vessels: small bright dots inside the lung
            dot = (centre[0] + width * float(rng.uniform(-0.7, 0.7)), centre[1] + width * float(rng.uniform(-1, 1)))
            vessel = np.maximum(shapes.blob_sdf(grid, dot, float(rng.uniform(0.004, 0.012))), lung)
            density = _paint(density, vessel, float(rng.uniform(0.4, 0.7)), res)
        ids[lung < 0] = k
        lungs |= lung < 0
    spine_centre = (0.5 + float(rng.uniform(-0.02, 0.02)), 0.5 + body_h * float(rng.uniform(0.55, 0.7)))
    spine = shapes.blob_sdf(grid, spine_centre, body_h * float(rng.uniform(0.16, 0.22)),
                            shapes.random_harmonics(rng, 3, 0.2), float(rng.uniform(0.8, 1.1)))
    density = _paint(density, spine, float(rng.uniform(0.85, 1.0)), res)
    ids[spine < 0] = 3
    lungs &= spine >= 0

    post = np.random.default_rng([seed, 1])
    density = shapes.gaussian_blur(density, float(post.uniform(0.2, 1.2)) / 64)
    level, window = float(post.uniform(0.3, 0.5)), float(post.uniform(0.6, 1.3))  # the viewer's window
    grey = np.clip((density - level) / window + 0.5, 0.0, 1.0)
    grey = shapes.sensor_noise(grey, post, float(post.uniform(0.01, 0.05)))
    return ScanSample(
        image=np.repeat(grey[..., None], 3, axis=-1).astype(np.float32),
        instances=ids,
        lungs=lungs,
    )
