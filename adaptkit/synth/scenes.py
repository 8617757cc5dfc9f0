"""The `scenes` family of the synthetic world: seeded, vectorised ray casting of small 3D scenes.

Every scene is a pinhole camera above a ground plane with 1-6 spheres,
(y-rotated) boxes and vertical cylinders, lit by a directional sun with Lambertian + ambient shading and
cast shadows, textured (checker / stripes / smooth noise) and framed by a sky gradient with distance fog.

Conventions (shared by every consumer of :class:`SceneSample`):

* Image coordinates: row 0 is the top of the image, points are ``(x, y)`` = (column, row).
* ``depth`` is camera-space z (distance along the optical axis, not along the ray), so nearer is
  smaller. Geometry is only rendered up to :data:`FAR_DEPTH`; sky pixels hold exactly ``FAR_DEPTH``
  (finite, so min/max normalisation and losses never see inf) and ``depth < FAR_DEPTH`` is the
  geometry mask. Fog fades the ground into the horizon colour before that cut, so it is invisible.
* ``normals`` are unit vectors in camera coordinates: x right, y up, z toward the camera (OpenGL), so
  visible surfaces have z > 0 on average. Sky pixels hold ``(0, 0, 1)``, which keeps every normal unit
  length and encodes to the usual flat normal-map blue.
* The camera has no roll, so the ground's depth is constant along an image row and grows toward the
  horizon.
* A scene depends only on its seed, never on the resolution: the same seed at 64 and 256 px shows the
  same objects, camera and light.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import ndimage

__all__ = ["FAR_DEPTH", "SEMANTIC_CLASSES", "SceneSample", "render_batch", "render_scene"]

SEMANTIC_CLASSES: tuple[str, ...] = ("background", "ground", "sphere", "box", "cylinder")
"""Semantic class names; a class's index in this tuple is its value in ``SceneSample.semantic``."""

FAR_DEPTH: float = 50.0
"""Depth of sky pixels and the distance beyond which the ground is not rendered (scene units)."""

_BACKGROUND, _GROUND, _SPHERE, _BOX, _CYLINDER = range(len(SEMANTIC_CLASSES))
_EPS = 1e-6
# Relative depth jump between neighbouring pixels of different instances that counts as an occlusion
# edge: small enough for objects standing close together, large enough to skip ground contact lines.
_BOUNDARY_REL_JUMP = 0.05


@dataclass
class SceneSample:
    """One rendered scene: the RGB image and every target derived from the same ray casts.

    ``instances``/``semantic``/``object_classes`` satisfy ``semantic == object_classes[instances]``
    wherever ``instances > 0``; instance 0 is everything that is not an object (ground and sky).
    ``shadow``, ``nearest`` and ``boundaries`` are kept out of pretraining and serve as few-shot tasks.
    """

    CLASS_NAMES: ClassVar[tuple[str, ...]] = SEMANTIC_CLASSES

    image: np.ndarray  # float32 (H, W, 3) in [0, 1]
    depth: np.ndarray  # float32 (H, W), camera-space z; sky = FAR_DEPTH
    normals: np.ndarray  # float32 (H, W, 3), unit, camera frame (x right, y up, z toward camera)
    instances: np.ndarray  # int32 (H, W), 0 = ground & sky, 1..N objects
    semantic: np.ndarray  # int64 (H, W), indices into SEMANTIC_CLASSES
    shadow: np.ndarray  # bool (H, W), light-facing surface points whose sun ray another object blocks
    nearest: np.ndarray  # bool (H, W), the visible object with the smallest depth
    boundaries: np.ndarray  # bool (H, W), both sides of depth discontinuities between instances
    object_classes: np.ndarray  # int64 (N + 1,), class index per instance id; [0] = background
    fov: float  # full field of view in radians (square image, principal point at the centre)


# --------------------------------------------------------------------------------------------- geometry
# Rays are origin o (3,) or (P, 3) plus direction d (3,) or (P, 3), broadcast against each other; every
# primitive returns the nearest hit distance t > 0 in units of |d| (np.inf for a miss). Primary rays have
# unit forward component, so their t is camera-space depth without any conversion.


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1)


def _nearest_positive(t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """Pick the smaller positive root of an ordered pair (t0 <= t1), inf where neither is positive."""
    return np.where(t0 > _EPS, t0, np.where(t1 > _EPS, t1, np.inf))


@dataclass(frozen=True)
class _Solid:
    """A convex object standing on the ground; ``local`` maps world points into its texture frame."""

    center: np.ndarray

    def local(self, p: np.ndarray) -> np.ndarray:
        return p - self.center


@dataclass(frozen=True)
class _Sphere(_Solid):
    """A sphere resting on the ground."""

    radius: float
    semantic: ClassVar[int] = _SPHERE

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        oc = o - self.center
        a = _dot(d, d)
        b = _dot(oc, d)
        disc = b * b - a * (_dot(oc, oc) - self.radius**2)
        root = np.sqrt(np.maximum(disc, 0.0))
        t = _nearest_positive((-b - root) / a, (-b + root) / a)
        return np.where(disc >= 0, t, np.inf)

    def normal(self, p: np.ndarray) -> np.ndarray:
        return self.local(p) / self.radius

    @property
    def footprint(self) -> float:
        return self.radius


@dataclass(frozen=True)
class _Box(_Solid):
    """A box standing on the ground, rotated by ``angle`` about the vertical axis."""

    half: np.ndarray  # half extents along the box's own x, y, z
    angle: float
    semantic: ClassVar[int] = _BOX

    @property
    def rotation(self) -> np.ndarray:
        """Columns are the box axes in world coordinates; ``world @ rotation`` maps into the box frame."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        o_l = self.local(o)
        d_l = d @ self.rotation
        d_l = np.where(np.abs(d_l) < 1e-12, 1e-12, d_l)  # slab test needs finite 1/d
        t1 = (-self.half - o_l) / d_l
        t2 = (self.half - o_l) / d_l
        t_near = np.minimum(t1, t2).max(-1)
        t_far = np.maximum(t1, t2).min(-1)
        t = _nearest_positive(t_near, t_far)
        return np.where(t_near <= t_far, t, np.inf)

    def normal(self, p: np.ndarray) -> np.ndarray:
        q = self.local(p) / self.half  # the face hit is the axis where |q| reaches 1
        axis = np.abs(q).argmax(-1)
        n_l = np.zeros_like(q)
        n_l[np.arange(len(q)), axis] = np.sign(q[np.arange(len(q)), axis])
        return n_l @ self.rotation.T

    def local(self, p: np.ndarray) -> np.ndarray:
        return (p - self.center) @ self.rotation

    @property
    def footprint(self) -> float:
        return float(np.hypot(self.half[0], self.half[2]))


@dataclass(frozen=True)
class _Cylinder(_Solid):
    """A vertical cylinder standing on the ground (``center`` at half its height), capped on top.

    It has no bottom cap: the ground hides it from the camera and from the sun.
    """

    radius: float
    height: float
    semantic: ClassVar[int] = _CYLINDER

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        oc = o - self.center
        ox, oy, oz = oc[..., 0], o[..., 1], oc[..., 2]
        dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
        a = np.maximum(dx * dx + dz * dz, 1e-12)
        b = ox * dx + oz * dz
        disc = b * b - a * (ox * ox + oz * oz - self.radius**2)
        root = np.sqrt(np.maximum(disc, 0.0))
        side = []
        for t in ((-b - root) / a, (-b + root) / a):
            y = oy + t * dy
            side.append(np.where((disc >= 0) & (t > _EPS) & (y >= 0) & (y <= self.height), t, np.inf))
        with np.errstate(divide="ignore", invalid="ignore"):
            t_cap = (self.height - oy) / dy
        on_cap = (ox + t_cap * dx) ** 2 + (oz + t_cap * dz) ** 2 <= self.radius**2
        cap = np.where(on_cap & (t_cap > _EPS), t_cap, np.inf)
        return np.minimum(np.minimum(side[0], side[1]), cap)

    def normal(self, p: np.ndarray) -> np.ndarray:
        radial = self.local(p) * np.array([1.0, 0.0, 1.0])
        distance = np.linalg.norm(radial, axis=-1)
        # Whichever surface equation the point satisfies more exactly is the one the ray hit.
        on_cap = np.abs(p[:, 1] - self.height) < np.abs(distance - self.radius)
        return np.where(on_cap[:, None], np.array([0.0, 1.0, 0.0]), radial / distance[:, None])

    @property
    def footprint(self) -> float:
        return self.radius


_Primitive = _Sphere | _Box | _Cylinder


# ------------------------------------------------------------------------------------------- appearance


@dataclass(frozen=True)
class _Material:
    """A two-colour procedural texture evaluated on points in the surface's own frame."""

    kind: str  # "plain" | "checker" | "stripes" | "noise"
    colour_a: np.ndarray
    colour_b: np.ndarray
    scale: float
    waves: np.ndarray  # (3, 3) wave vectors: the stripes' normal is waves[0], noise sums all three
    phases: np.ndarray  # (3,)

    def albedo(self, p: np.ndarray) -> np.ndarray:
        if self.kind == "plain":
            pattern = np.zeros(len(p))
        elif self.kind == "checker":
            pattern = np.floor(p / self.scale).sum(-1) % 2
        elif self.kind == "stripes":
            pattern = np.floor(p @ self.waves[0] / self.scale) % 2
        else:
            pattern = 0.5 + 0.5 * np.sin(p @ self.waves.T / self.scale + self.phases).mean(-1)
        return self.colour_a + pattern[:, None] * (self.colour_b - self.colour_a)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _random_material(rng: np.random.Generator, colour: np.ndarray, scale: float) -> _Material:
    """A texture around ``colour``; the second colour is a darker, hue-shifted variant of the first."""
    h, s, v = colorsys.rgb_to_hsv(*colour)
    waves = rng.normal(size=(3, 3))
    waves /= np.linalg.norm(waves, axis=1, keepdims=True)
    return _Material(
        kind=str(rng.choice(["plain", "checker", "stripes", "noise"], p=[0.3, 0.25, 0.2, 0.25])),
        colour_a=colour,
        colour_b=_hsv(h + rng.uniform(-0.08, 0.08), s, v * rng.uniform(0.45, 0.75)),
        scale=scale * rng.uniform(0.6, 1.6),
        waves=waves * np.array([[1.0], [2.0], [3.0]]),
        phases=rng.uniform(0, 2 * np.pi, size=3),
    )


# ---------------------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class _Scene:
    """Everything random about a scene; rendering it is a pure function of this and the resolution."""

    cam_height: float
    pitch: float  # radians below the horizontal
    fov: float  # full field of view, radians
    light: np.ndarray  # unit vector toward the sun
    sun: float
    ambient: float
    sky_zenith: np.ndarray
    sky_horizon: np.ndarray
    ground: _Material
    objects: list[_Primitive]
    materials: list[_Material]


def _random_object(rng: np.random.Generator, x: float, z: float) -> _Primitive:
    size = rng.uniform(0.35, 1.0)
    kind = rng.integers(3)
    if kind == 0:
        return _Sphere(np.array([x, size, z]), size)
    if kind == 1:
        half = size * rng.uniform(0.6, 1.2, size=3)
        angle = 0.0 if rng.random() < 0.3 else rng.uniform(0, np.pi / 2)
        return _Box(np.array([x, half[1], z]), half, angle)
    radius, height = size * rng.uniform(0.5, 0.9), size * rng.uniform(1.2, 3.2)
    return _Cylinder(np.array([x, height / 2, z]), radius, height)


def _random_scene(rng: np.random.Generator) -> _Scene:
    fov = np.deg2rad(rng.uniform(45, 60))
    elevation, azimuth = np.deg2rad(rng.uniform(25, 65)), rng.uniform(0, 2 * np.pi)
    sky_hue = rng.uniform(0.52, 0.66)
    objects: list[_Primitive] = []
    for _ in range(rng.integers(1, 7)):
        # Rejection-sample a footprint inside the view that does not overlap earlier objects; a
        # crowded scene simply ends up with fewer objects.
        for _attempt in range(30):
            dist = rng.uniform(2.5, 9.0)
            x = rng.uniform(-0.75, 0.75) * dist * np.tan(fov / 2)
            obj = _random_object(rng, x, -dist)
            if all(
                np.hypot(*(obj.center - other.center)[[0, 2]]) > obj.footprint + other.footprint + 0.05
                for other in objects
            ):
                objects.append(obj)
                break
    ground_colour = _hsv(rng.uniform(0.05, 0.4), rng.uniform(0.1, 0.5), rng.uniform(0.45, 0.8))
    return _Scene(
        cam_height=rng.uniform(1.0, 2.5),
        pitch=np.deg2rad(rng.uniform(8, 25)),
        fov=fov,
        light=np.array(
            [np.cos(elevation) * np.sin(azimuth), np.sin(elevation), np.cos(elevation) * np.cos(azimuth)]
        ),
        sun=rng.uniform(0.75, 0.95),
        ambient=rng.uniform(0.22, 0.38),
        sky_zenith=_hsv(sky_hue, rng.uniform(0.45, 0.75), rng.uniform(0.65, 0.9)),
        sky_horizon=_hsv(sky_hue, rng.uniform(0.05, 0.2), rng.uniform(0.85, 1.0)),
        ground=_random_material(rng, ground_colour, scale=rng.uniform(0.5, 1.5)),
        objects=objects,
        materials=[
            _random_material(
                rng, _hsv(rng.random(), rng.uniform(0.35, 0.9), rng.uniform(0.55, 1.0)), scale=0.3
            )
            for _ in objects
        ],
    )


def _camera_basis(pitch: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right, up and forward world vectors of a camera looking along -z, pitched down by ``pitch``."""
    s, c = np.sin(pitch), np.cos(pitch)
    return np.array([1.0, 0.0, 0.0]), np.array([0.0, c, -s]), np.array([0.0, -s, -c])


def _occlusion_boundaries(instances: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Mark both pixels of every 4-neighbour pair that changes instance across a depth jump.

    Requiring a depth jump leaves out contact lines (an object meeting the ground at the same depth);
    requiring an instance change leaves out the horizon, where the fogged ground meets the sky.
    """
    edges = np.zeros(instances.shape, bool)
    for axis in (0, 1):
        head = [slice(None)] * 2
        tail = [slice(None)] * 2
        head[axis], tail[axis] = slice(None, -1), slice(1, None)
        i0, i1 = instances[tuple(head)], instances[tuple(tail)]
        d0, d1 = depth[tuple(head)], depth[tuple(tail)]
        jump = (i0 != i1) & (np.abs(d0 - d1) > _BOUNDARY_REL_JUMP * np.minimum(d0, d1))
        edges[tuple(head)] |= jump
        edges[tuple(tail)] |= jump
    return edges


def _render(scene: _Scene, resolution: int) -> SceneSample:
    right, up, forward = _camera_basis(scene.pitch)
    ndc = ((np.arange(resolution) + 0.5) / resolution * 2 - 1) * np.tan(scene.fov / 2)
    xs, ys = np.meshgrid(ndc, -ndc)  # row 0 looks up
    rays = xs.reshape(-1, 1) * right + ys.reshape(-1, 1) * up + forward  # forward component 1: t = depth
    origin = np.array([0.0, scene.cam_height, 0.0])

    # Primary visibility: owner -1 = sky, 0 = ground, k = object k.
    with np.errstate(divide="ignore"):
        t = np.where(rays[:, 1] < 0, -scene.cam_height / rays[:, 1], np.inf)
    t = np.where(t < FAR_DEPTH, t, np.inf)
    owner = np.where(np.isfinite(t), 0, -1)
    for k, obj in enumerate(scene.objects, start=1):
        t_k = obj.intersect(origin, rays)
        closer = t_k < t
        t = np.where(closer, t_k, t)
        owner = np.where(closer, k, owner)

    hit = owner >= 0
    points = origin + t[hit, None] * rays[hit]
    owner_hit = owner[hit]
    normals = np.tile(np.array([0.0, 1.0, 0.0]), (len(points), 1))
    albedo = scene.ground.albedo(points * np.array([1.0, 0.0, 1.0]))
    for k, (obj, material) in enumerate(zip(scene.objects, scene.materials, strict=True), start=1):
        mine = owner_hit == k
        normals[mine] = obj.normal(points[mine])
        albedo[mine] = material.albedo(obj.local(points[mine]))

    # Cast shadows: a light-facing point is shadowed when another object blocks its sun ray. Objects
    # are convex, so they never shadow themselves there, and the ground shadows nothing.
    facing = _dot(normals, scene.light)
    lit = np.maximum(facing, 0.0)
    shadow_hit = np.zeros(len(points), bool)
    candidates = facing > 0
    for k, obj in enumerate(scene.objects, start=1):
        test = candidates & (owner_hit != k) & ~shadow_hit
        shadow_hit[test] = np.isfinite(obj.intersect(points[test], scene.light))
    lit[shadow_hit] = 0.0

    # Hemispherical ambient (brighter facing the sky) + sun; fog blends distant ground into the horizon.
    irradiance = scene.ambient * (0.7 + 0.3 * normals[:, 1]) + scene.sun * lit
    colour_hit = albedo * irradiance[:, None]
    fog = (t[hit] / FAR_DEPTH) ** 1.5
    colour_hit = colour_hit + fog[:, None] * (scene.sky_horizon - colour_hit)
    elevation = np.clip(rays[:, 1] / np.linalg.norm(rays, axis=1), 0.0, 1.0)
    image = scene.sky_horizon + np.sqrt(elevation)[:, None] * (scene.sky_zenith - scene.sky_horizon)
    image[hit] = colour_hit

    # Targets, in camera coordinates / image layout.
    shape = (resolution, resolution)
    cam_normals = np.tile(np.array([0.0, 0.0, 1.0]), (len(rays), 1))
    cam_normals[hit] = normals @ np.stack([right, up, -forward], axis=1)
    cam_normals /= np.linalg.norm(cam_normals, axis=1, keepdims=True)
    depth = np.where(hit, t, FAR_DEPTH).reshape(shape)
    instances = np.maximum(owner, 0).reshape(shape)
    object_classes = np.array([_BACKGROUND] + [obj.semantic for obj in scene.objects], np.int64)
    semantic = np.where(owner == 0, _GROUND, object_classes[np.maximum(owner, 0)]).reshape(shape)
    shadow = np.zeros(len(rays), bool)
    shadow[hit] = shadow_hit

    nearest = np.zeros(shape, bool)
    visible = np.unique(instances[instances > 0])
    if visible.size:
        closest = ndimage.minimum(depth, instances, visible)
        nearest = instances == visible[int(np.argmin(closest))]

    return SceneSample(
        image=np.clip(image, 0.0, 1.0).reshape(*shape, 3).astype(np.float32),
        depth=depth.astype(np.float32),
        normals=cam_normals.reshape(*shape, 3).astype(np.float32),
        instances=instances.astype(np.int32),
        semantic=semantic.astype(np.int64),
        shadow=shadow.reshape(shape),
        nearest=nearest,
        boundaries=_occlusion_boundaries(instances, depth),
        object_classes=object_classes,
        fov=float(scene.fov),
    )


def render_scene(seed: int, resolution: int = 64) -> SceneSample:
    """Render the scene of ``seed`` (a non-negative int) as a ``resolution`` x ``resolution`` sample.

    Deterministic: the same seed gives bit-identical arrays, and the scene content does not depend on
    the resolution.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    return _render(_random_scene(np.random.default_rng(seed)), resolution)


def render_batch(seeds: Iterable[int], resolution: int = 64) -> list[SceneSample]:
    """Render several scenes; one scene at a time is already vectorised over its pixels.

    Batching scenes into one array program would need padding to the largest object count and gains
    little at these sizes, so this is a plain loop kept for a batch-shaped call site.
    """
    return [render_scene(seed, resolution) for seed in seeds]
