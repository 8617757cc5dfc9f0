"""Vectorised 2D drawing helpers shared by the flat image families (`layers`, `cells`, `scans`).

Every shape is a signed distance field (negative inside, in image-width units) evaluated at the pixel
centres of a continuous ``[0, 1]^2`` grid, and every random pattern is drawn from a lattice whose size is
fixed by its parameters, never by the pixel count. A sample therefore depends on its seed alone: the same
objects appear at 32 and at 256 px, and only the rasterisation differs. Families pass transformed grids
(:func:`similarity`) to place a whole drawing at a random scale, rotation and shift.

Conventions: ``x`` grows to the right (columns), ``y`` grows downward (rows), both in ``[0, 1]``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

Grid = tuple[np.ndarray, np.ndarray]
"""Pixel-centre coordinates ``(x, y)``, each float (H, W), in image-width units."""


def pixel_grid(resolution: int) -> Grid:
    """The pixel centres of a square ``resolution`` x ``resolution`` image in ``[0, 1]^2``."""
    centres = ((np.arange(resolution) + 0.5) / resolution).astype(np.float32)  # float32 halves the drawing time
    x, y = np.meshgrid(centres, centres)
    return x, y


def similarity(grid: Grid, centre: tuple[float, float], scale: float, angle: float) -> Grid:
    """Coordinates of ``grid`` in a frame placed at ``centre``, rotated by ``angle`` and ``scale`` times larger.

    Drawing shapes in the returned frame (around ``(0.5, 0.5)``) shows them scaled, rotated and moved.
    """
    c, s = float(np.cos(angle)), float(np.sin(angle))
    dx, dy = grid[0] - centre[0], grid[1] - centre[1]
    return 0.5 + (c * dx + s * dy) / scale, 0.5 + (-s * dx + c * dy) / scale


# ------------------------------------------------------------------------------------------- noise
def value_noise(rng: np.random.Generator, grid: Grid, cells: int, octaves: int = 1) -> np.ndarray:
    """Smooth random field in ``[0, 1]``: lattice values (``cells`` per image width) blended by smoothstep.

    With ``octaves`` > 1 finer lattices (2x, 4x, ... cells) are added at halving amplitude (fractal noise).
    Points outside ``[0, 1]^2`` wrap around the lattice, so transformed grids stay defined.
    """
    total, weight = np.zeros_like(grid[0]), 0.0
    for octave in range(octaves):
        n = cells * 2**octave
        lattice = rng.random((n, n)).astype(grid[0].dtype).ravel()
        gx, gy = grid[0] * n, grid[1] * n
        x0, y0 = np.floor(gx), np.floor(gy)
        fx, fy = gx - x0, gy - y0
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        i0, j0 = x0.astype(np.int64) % n, (y0.astype(np.int64) % n) * n
        i1, j1 = (i0 + 1) % n, (j0 + n) % (n * n)
        v00, v01 = lattice.take(j0 + i0), lattice.take(j0 + i1)
        v10, v11 = lattice.take(j1 + i0), lattice.take(j1 + i1)
        top = v00 + fx * (v01 - v00)
        bottom = v10 + fx * (v11 - v10)
        amplitude = 0.5**octave
        total += amplitude * (top + fy * (bottom - top))
        weight += amplitude
    return total / weight


# ------------------------------------------------------------------------------------------ shapes
def random_harmonics(rng: np.random.Generator, order: int, roughness: float) -> np.ndarray:
    """Amplitudes and phases (``order``, 2) of an outline's radius series; amplitude ``k`` ~ roughness / k."""
    k = np.arange(1, order + 1)
    amplitudes = rng.uniform(0.0, roughness, order) / k
    return np.stack([amplitudes, rng.uniform(0, 2 * np.pi, order)], axis=1)


def blob_sdf(
    grid: Grid,
    centre: tuple[float, float],
    radius: float,
    harmonics: np.ndarray | None = None,
    aspect: float = 1.0,
    angle: float = 0.0,
) -> np.ndarray:
    """Approximate signed distance to a star-shaped outline: ``r(theta) = radius (1 + sum a_k cos(k theta + p_k))``.

    ``harmonics`` (K, 2) holds ``(a_k, p_k)``; without it the outline is an ellipse with semi-axes
    ``radius`` and ``radius * aspect``, turned by ``angle``. Negative inside; exact for circles.
    """
    c, s = float(np.cos(angle)), float(np.sin(angle))
    dx, dy = grid[0] - centre[0], grid[1] - centre[1]
    u, v = c * dx + s * dy, (-s * dx + c * dy) / aspect
    r = np.hypot(u, v)
    outline = np.full_like(r, radius)
    if harmonics is not None:  # cos(k theta) and sin(k theta) by the angle-addition recurrence: no trig per pixel
        c1 = u / np.maximum(r, 1e-9)
        s1 = v / np.maximum(r, 1e-9)
        ck, sk = c1, s1
        for a, p in harmonics:
            outline += float(radius * a * np.cos(p)) * ck - float(radius * a * np.sin(p)) * sk
            ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
    return (r - outline) * min(aspect, 1.0)


def ring_sdf(outline: np.ndarray, width: float) -> np.ndarray:
    """An annulus of ``width`` centred on the outline of any signed distance field (hollow inside)."""
    return np.abs(outline) - width / 2


def random_curve(
    rng: np.random.Generator, start: tuple[float, float], length: float, bend: float, points: int = 24
) -> np.ndarray:
    """A smooth random curve (``points``, 2) from ``start``: its heading turns by a smoothed random walk."""
    turns = np.convolve(rng.normal(0.0, bend, points + 4), np.ones(5) / 5, mode="valid")[:points - 1]
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(turns)
    steps = np.stack([np.cos(heading), np.sin(heading)], axis=1) * length / (points - 1)
    return np.concatenate([[start], start + np.cumsum(steps, axis=0)])


def polyline_sdf(grid: Grid, vertices: np.ndarray, width: float, reach: float = 0.1) -> np.ndarray:
    """Signed distance to a stroke of ``width`` along the polyline ``vertices`` (M, 2), round-capped.

    The polyline is resampled every 0.002 image widths and each pixel measured to its nearest sample (a
    k-d tree: a few milliseconds where exact segment distances took ten); distances are exact to that
    spacing near the stroke and capped at ``reach`` beyond its edge.
    """
    steps = np.linalg.norm(np.diff(vertices, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    along = np.linspace(0.0, arc[-1], max(int(arc[-1] / 0.002), 2))
    dense = np.stack([np.interp(along, arc, vertices[:, 0]), np.interp(along, arc, vertices[:, 1])], axis=1)
    cap = width / 2 + reach
    sdf = np.full(grid[0].shape, cap - width / 2, grid[0].dtype)
    near = ((grid[0] > dense[:, 0].min() - cap) & (grid[0] < dense[:, 0].max() + cap)
            & (grid[1] > dense[:, 1].min() - cap) & (grid[1] < dense[:, 1].max() + cap))
    distance, _ = cKDTree(dense).query(np.stack([grid[0][near], grid[1][near]], axis=1), distance_upper_bound=cap)
    sdf[near] = np.minimum(distance, cap) - width / 2
    return sdf


def polygon_sdf(grid: Grid, centre: tuple[float, float], radius: float, sides: int, angle: float) -> np.ndarray:
    """Signed distance (exact inside, a bound outside) to a regular convex polygon of circumradius ``radius``."""
    sdf = np.full_like(grid[0], -np.inf)
    for i in range(sides):
        theta = angle + 2 * np.pi * i / sides
        vx, vy = centre[0] + radius * float(np.cos(theta)), centre[1] + radius * float(np.sin(theta))
        nx, ny = float(np.cos(theta + np.pi / sides)), float(np.sin(theta + np.pi / sides))
        sdf = np.maximum(sdf, nx * (grid[0] - vx) + ny * (grid[1] - vy))
    return sdf


def coverage(sdf: np.ndarray, resolution: int) -> np.ndarray:
    """Anti-aliased fill fraction of each pixel (a one-pixel ramp across the outline)."""
    return np.clip(0.5 - sdf * resolution, 0.0, 1.0)


def dome(sdf: np.ndarray, radius: float) -> np.ndarray:
    """A smooth bump inside a shape, 0 on its outline and 1 at depth ``radius``, flat-topped at the core."""
    s = np.clip(-sdf / radius, 0.0, 1.0)
    return 1.0 - (1.0 - s) ** 2


# ----------------------------------------------------------------------------------------- imaging
def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Blur (H, W) or (H, W, C) by ``sigma`` in image-width units (so equally at every resolution)."""
    sigma_px = sigma * image.shape[0]
    if sigma_px < 0.05:
        return image
    return ndimage.gaussian_filter(image, (sigma_px, sigma_px, 0)[: image.ndim], mode="nearest")


def sensor_noise(
    image: np.ndarray, rng: np.random.Generator, read: float, photons: float | None = None
) -> np.ndarray:
    """Camera noise on an image in ``[0, 1]``: shot noise of ``photons`` at full scale, then Gaussian read noise.

    Pixel noise is the one draw that depends on the resolution, so families take it from its own
    generator, after every content draw.
    """
    if photons is not None:
        image = rng.poisson(np.clip(image, 0.0, None) * photons) / photons
    return np.clip(image + rng.normal(0.0, read, image.shape), 0.0, 1.0)


def instance_boundaries(instances: np.ndarray) -> np.ndarray:
    """Both pixels of every 4-neighbour pair whose instance ids differ."""
    edges = np.zeros(instances.shape, bool)
    for axis in (0, 1):
        change = np.diff(instances, axis=axis) != 0
        head = [slice(None)] * 2
        tail = [slice(None)] * 2
        head[axis], tail[axis] = slice(None, -1), slice(1, None)
        edges[tuple(head)] |= change
        edges[tuple(tail)] |= change
    return edges


def compact_ids(instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the visible ids of ``instances`` to 1..N keeping their order; also the kept old ids (N,)."""
    kept = np.unique(instances[instances > 0])
    lookup = np.zeros(int(instances.max()) + 1, np.int32)
    lookup[kept] = np.arange(1, len(kept) + 1)
    return lookup[instances], kept
