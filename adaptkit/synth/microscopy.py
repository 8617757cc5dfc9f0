"""The `cells` family: fluorescence-microscopy-like fields of cells, a HELD-OUT family (never pretrained on).

Few-shot evidence about transfer needs images unlike anything the generalist was pretrained on. Unlike
`layers` (opaque objects composited over textured backgrounds), fluorescence is additive light on a
near-black field: dim cytoplasm with a brighter nucleus, touching and overlapping cells whose signal sums,
low-frequency background haze, optical blur and photon (shot) noise, one channel shown as grey, green or
magenta. The target is the foreground: every pixel inside any cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adaptkit.synth import shapes

__all__ = ["CellSample", "render_cells"]

_CHANNELS = {  # how the single fluorescence channel is shown
    "grey": np.array([1.0, 1.0, 1.0], np.float32),
    "green": np.array([0.1, 1.0, 0.2], np.float32),
    "magenta": np.array([1.0, 0.15, 1.0], np.float32),
}


@dataclass
class CellSample:
    """One microscopy field: the image, the cells as instances (a later cell on top where two overlap)."""

    image: np.ndarray  # float32 (H, W, 3) in [0, 1]
    instances: np.ndarray  # int32 (H, W), 0 = background, 1..N visible cells
    foreground: np.ndarray  # bool (H, W), inside any cell (the `cells` task's target)


def render_cells(seed: int, resolution: int = 64) -> CellSample:
    """Render the microscopy field of ``seed`` (content independent of ``resolution``)."""
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    rng = np.random.default_rng(seed)
    grid = shapes.pixel_grid(resolution)
    count = int(rng.integers(5, 41))
    # Size follows count so the field is neither empty nor full: cells cover 8-45 % before overlap.
    radius = float(np.sqrt(rng.uniform(0.08, 0.45) / (count * np.pi)))
    signal = 0.03 + 0.08 * shapes.value_noise(rng, grid, int(rng.integers(1, 4)), octaves=2)  # haze
    ids = np.zeros(grid[0].shape, np.int32)
    cytoplasm, nucleus_level = float(rng.uniform(0.12, 0.35)), float(rng.uniform(0.5, 0.9))
    for k in range(1, count + 1):
        centre = (float(rng.uniform(0.03, 0.97)), float(rng.uniform(0.03, 0.97)))
        r = radius * float(rng.uniform(0.7, 1.3))
        angle = float(rng.uniform(0, 2 * np.pi))
        cell = shapes.blob_sdf(grid, centre, r, shapes.random_harmonics(rng, 4, float(rng.uniform(0.1, 0.45))),
                               float(rng.uniform(0.55, 1.0)), angle)
        offset = rng.uniform(-0.3, 0.3, 2) * r
        nucleus = shapes.blob_sdf(grid, (centre[0] + float(offset[0]), centre[1] + float(offset[1])),
                                  r * float(rng.uniform(0.3, 0.55)), shapes.random_harmonics(rng, 2, 0.15),
                                  float(rng.uniform(0.7, 1.0)), angle)
        brightness = float(rng.lognormal(0.0, 0.35))  # cells differ in expression
        texture = 0.75 + 0.5 * shapes.value_noise(rng, grid, int(rng.integers(20, 40)))
        signal = signal + brightness * texture * (
            cytoplasm * shapes.coverage(cell, resolution) * (0.6 + 0.4 * shapes.dome(cell, r))
            + nucleus_level * shapes.coverage(nucleus, resolution)
        )
        ids[cell < 0] = k

    post = np.random.default_rng([seed, 1])
    signal = shapes.gaussian_blur(signal, float(post.uniform(0.3, 1.5)) / 64)
    gain = float(post.uniform(0.6, 1.0)) / max(float(np.quantile(signal, 0.995)), 1e-6)
    channel = _CHANNELS[str(post.choice(list(_CHANNELS)))]
    photons = float(post.uniform(15.0, 200.0))
    grey = shapes.sensor_noise(np.clip(signal * gain, 0.0, 1.0), post, float(post.uniform(0.005, 0.03)), photons)
    instances, _ = shapes.compact_ids(ids)
    return CellSample(
        image=(grey[..., None] * channel).astype(np.float32),
        instances=instances.astype(np.int32),
        foreground=instances > 0,
    )
