"""Colour codecs: how a perception target becomes an RGB image, and how a generated image becomes a result.

DICEPTION answers every task by generating an RGB image, so a task is defined by its colour encoding. A
generated image is never exact: the VAE blurs it, the sampler shifts colours, a saved JPEG adds blocks. Each
codec therefore pairs an encoding chosen to survive that (colours far apart, grey values read back as a mean)
with a decoder that accepts *any* RGB image without failing, plus what training and evaluation need to treat
tasks generically: file loading and validation, the target of a flipped image (joint augmentation), the
resampling rule for the encoded image and a differentiable task loss in colour space.

Codecs are registered by name in ``CODECS``; ``build_codec(codec.reference, codec.to_config())`` rebuilds a
codec recorded beside an adapter, and ``package.module:ClassName`` names a user's own codec.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import json
import math
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from adaptkit.errors import AdaptkitError, FileError
from adaptkit.images import open_image

__all__ = [
    "COCO_KEYPOINTS",
    "COCO_SKELETON",
    "CODECS",
    "BinaryMaskCodec",
    "Codec",
    "CodecError",
    "DepthCodec",
    "HeatmapCodec",
    "Instances",
    "InstancesCodec",
    "Keypoints",
    "KeypointsCodec",
    "NormalsCodec",
    "RGBCodec",
    "SemanticCodec",
    "TargetNote",
    "as_image",
    "build_codec",
    "distinct_colors",
    "list_codecs",
    "register_codec",
]

# Brightness (largest channel) below which a pixel counts as the black background: it keeps near-black noise
# out of the instance decoder's colour statistics and tells the keypoint loss which pixels are drawn.
_DARK = 0.15


class CodecError(AdaptkitError, ValueError):
    """A target, image, file, codec name or codec argument that a codec cannot use; the message names both."""


class TargetNote(UserWarning):
    """How a target file that could be read in more than one way was read (e.g. a mask in the alpha channel);
    data checks collect these per data set and report each kind once, naming the files."""


# ---------------------------------------------------------------------------------------------------------
# Target types
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Instances:
    """Instance masks: the target and the decoded result of the ``instances`` codec.

    ``masks`` is bool (N, H, W); ``scores`` float32 (N,) in [0, 1] (1.0 for ground truth, a colour-consistency
    confidence for decoded instances); ``labels`` optional int64 (N,) class ids, which the colour encoding
    does not carry (decoded instances have none).
    """

    masks: np.ndarray
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks)
        count = len(self.masks) if self.masks.ndim else 0
        self.scores = (
            np.ones(count, np.float32) if self.scores is None else np.asarray(self.scores, np.float32)
        )
        if self.labels is not None:
            self.labels = np.asarray(self.labels)

    def __len__(self) -> int:
        return len(self.masks)

    @classmethod
    def from_label_map(cls, label_map: np.ndarray) -> Instances:
        """One instance per non-zero id of an integer label map (0 is background), in increasing id order."""
        label_map = np.asarray(label_map)
        ids = np.unique(label_map)
        ids = ids[ids != 0]
        return cls(label_map[None] == ids[:, None, None])

    def to_label_map(self) -> np.ndarray:
        """int32 (H, W): 0 background, i + 1 where ``masks[i]`` is. Where masks overlap the smaller one wins,
        so a small object in front of a large one stays visible (the order the encoder paints in)."""
        label_map = np.zeros(self.masks.shape[1:], np.int32)
        areas = self.masks.sum((1, 2))
        for i in np.argsort(-areas, kind="stable"):
            label_map[self.masks[i]] = i + 1
        return label_map


@dataclass
class Keypoints:
    """Keypoints: the target and the decoded result of the ``keypoints`` codec.

    ``xy`` float32 (K, 2) pixel coordinates (x right, y down; (0, 0) is the centre of the top-left pixel);
    ``visible`` bool (K,) (COCO's v >= 1: labelled, drawn); ``confidence`` float32 (K,) in [0, 1] (1.0 for
    ground truth); ``image_size`` (H, W) of the image the coordinates refer to, needed to draw and to mirror
    them.
    """

    xy: np.ndarray
    visible: np.ndarray
    confidence: np.ndarray | None = None
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.xy = np.asarray(self.xy, np.float32)
        self.visible = np.asarray(self.visible)
        count = len(self.visible) if self.visible.ndim else 0
        self.confidence = (
            np.ones(count, np.float32) if self.confidence is None else np.asarray(self.confidence, np.float32)
        )
        if self.image_size is not None:
            self.image_size = (int(self.image_size[0]), int(self.image_size[1]))


# ---------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------


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


def as_image(image: Any, codec: str = "codec") -> np.ndarray:
    """float32 (H, W, 3) in [0, 1] from any RGB image a model or a file gives.

    Accepts uint8 / uint16 / bool / float arrays (and tensors or PIL images convertible to one) shaped
    (H, W, 3), (H, W, 4) (alpha dropped), (H, W, 1) or (H, W) (grey). NaN becomes 0 and values are clipped to
    [0, 1], so a decoder never sees a value it cannot handle.
    """
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape:
        raise CodecError(f"{codec} codec: expected an RGB image (H, W, 3), got shape {array.shape}")
    if array.shape[2] == 4:
        array = array[..., :3]
    if array.dtype == np.bool_:
        out = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.integer):  # 16-bit PNGs span 0-65535; other integers are 8-bit values
        out = array.astype(np.float32) / (65535.0 if array.dtype == np.uint16 else 255.0)
    elif np.issubdtype(array.dtype, np.floating):
        out = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    else:
        raise CodecError(f"{codec} codec: expected a numeric image, got dtype {array.dtype}")
    out = np.clip(out, 0.0, 1.0)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out)


def _image_array(image: Image.Image, palette_as_rgb: bool) -> np.ndarray:
    """The pixels of a PIL image in their own type: bool for 1-bit, palette indices for 'P' (colours when
    ``palette_as_rgb``), uint8 / uint16 / int32 / float32 grey, uint8 RGB (alpha, other modes converted)."""
    native = {"1", "L", "I", "F", "RGB"} | (set() if palette_as_rgb else {"P"})
    if image.mode not in native and not image.mode.startswith("I;16"):
        image = image.convert("RGB")
    return np.array(image)


def _write_png(array: np.ndarray, path: Path) -> Path:
    """Save a uint8 / uint16 grey or uint8 RGB array as PNG (creating the folder) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _write_npy(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return path


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


class Codec(ABC):
    """A task's colour encoding: ``encode`` a target to an RGB image, ``decode`` any RGB image to a target.

    Subclasses set ``name`` and ``resample``, keep every constructor argument as an attribute of the same name
    (``to_config`` reads them back) and implement ``validate``, ``loss`` and the private ``_encode``,
    ``_decode`` and ``_from_array`` (file contents to a target); they override ``hflip`` where a value depends
    on direction and ``save`` for targets that are not arrays.
    """

    name: ClassVar[str]
    resample: ClassVar[str]  # "nearest" for discrete encodings, "bilinear" for continuous ones
    #: How decoded outputs are scored: the ``adaptkit.metrics.METRICS`` table for this kind of target, and the
    #: metrics built when a recipe names none (empty: the table's defaults; the first is the headline metric
    #: that training monitors). A subclass of a built-in codec inherits both; a codec for a new kind of target
    #: names the table whose inputs its decoded outputs match (e.g. "heatmap" for an (H, W) map in [0, 1]).
    metric_table: ClassVar[str] = ""
    default_metrics: ClassVar[tuple[str, ...]] = ()
    #: Whether a deterministic single pass can learn the encoding; False where colours are drawn at random per
    #: encoding (instances), which only a sampler reproduces: a single pass predicts their blurred average.
    deterministic_ok: ClassVar[bool] = True

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring, for ``adaptkit codecs``."""
        return inspect.cleandoc(cls.__doc__).splitlines()[0] if cls.__doc__ else ""

    @property
    def reference(self) -> str:
        """What ``build_codec`` needs to find this class again: the registered name, else ``module:Class``."""
        if CODECS.get(self.name) is type(self):
            return self.name
        return f"{type(self).__module__}:{type(self).__qualname__}"

    def encode(self, target: Any) -> np.ndarray:
        """The colour encoding of a (validated) target: float32 (H, W, 3) in [0, 1]."""
        self.validate(target)
        return np.ascontiguousarray(np.clip(self._encode(target), 0.0, 1.0), dtype=np.float32)

    def decode(self, image: Any) -> Any:
        """The target read from any RGB image (float in [0, 1] or uint8, see ``as_image``); never fails on
        pixel values and never returns NaN."""
        return self._decode(as_image(image, self.name))

    def load_target(self, path: str | Path, image_size: tuple[int, int] | None = None) -> Any:
        """Read and validate a target file. ``image_size`` (H, W) of the paired image, when given, is checked
        against the target (and supplies the size for keypoint files that do not record it)."""
        path = Path(path)
        if not path.is_file():
            raise CodecError(f"{self.name} codec: no target file at {path}")
        return self._checked(self._load(path), image_size, str(path))

    def parse_target(
        self, value: Any, image_size: tuple[int, int] | None = None, source: str = "target"
    ) -> Any:
        """A validated target from an in-memory value, by the same rules as ``load_target``: a PIL image, an
        array or nested list, a target object, or (keypoints) the parsed JSON dict. ``source`` names it in
        errors; ``image_size`` as for ``load_target``. For dataset columns that hold targets directly."""
        return self._checked(self._from_value(value, source), image_size, source)

    def save(self, target: Any, stem: str | Path) -> list[Path]:
        """Write a (decoded) target as ``stem`` plus suffixes, in formats users open directly; returns the
        paths. This default stores an array as ``.npy``; the codecs here write images and JSON that
        ``load_target`` reads back where the target type allows."""
        if not isinstance(target, np.ndarray):
            raise self._fail(f"cannot save a {type(target).__name__}; override save() for this target type")
        return [_write_npy(target, Path(f"{stem}.npy"))]

    def metric_options(self) -> dict[str, Any]:
        """Metric constructor options that this codec's encoding implies (``build_codec_metrics`` passes each
        to the metrics that accept it): none by default."""
        return {}

    def to_config(self) -> dict[str, Any]:
        """The constructor arguments as JSON-serialisable values: ``build_codec(self.reference, config)``
        rebuilds an equal codec."""
        params = inspect.signature(type(self)).parameters.values()
        named = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        return {p: json.loads(json.dumps(getattr(self, p), default=_jsonable)) for p in named}

    @abstractmethod
    def validate(self, target: Any) -> None:
        """Raise ``CodecError`` naming this codec and the problem unless ``target`` can be encoded."""

    def check_set(self, targets: Sequence[Any]) -> str | None:
        """What is wrong with a whole set of valid targets that no single one shows (every mask empty, say),
        or None; data checks call it before anything trains on the set. This default finds nothing."""
        return None

    def hflip(self, target: Any) -> Any:
        """The target of the horizontally flipped image (for joint image / target augmentation); this default
        mirrors an (H, W, ...) array, which is right wherever values do not depend on direction."""
        return np.ascontiguousarray(target[:, ::-1])

    @abstractmethod
    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Differentiable scalar task loss between predicted and encoded-target colour images (B, 3, H, W)."""

    @abstractmethod
    def _encode(self, target: Any) -> np.ndarray: ...

    @abstractmethod
    def _decode(self, image: np.ndarray) -> Any: ...

    @abstractmethod
    def _from_array(self, array: np.ndarray, path: Path) -> Any:
        """The target held by a file's array (image pixels or ``.npy`` contents); ``validate`` runs after."""

    def _load(self, path: Path) -> Any:
        """A file's target: ``.npy`` arrays and images; codecs with other formats extend this."""
        try:
            if path.suffix.lower() == ".npy":
                return self._from_value(np.load(path, allow_pickle=False), str(path))
            with open_image(path) as image:
                image.load()
                return self._from_value(image, str(path))
        except (OSError, ValueError) as exc:
            if isinstance(exc, CodecError | FileError):
                raise
            raise self._fail(f"cannot read {path} ({exc})") from exc

    def _from_value(self, value: Any, source: str) -> Any:
        """A target from a file's contents or an in-memory value (before validation)."""
        if isinstance(value, Instances | Keypoints):
            return value
        if isinstance(value, Image.Image):
            value = _image_array(value, palette_as_rgb=self.resample == "bilinear")
        return self._from_array(np.asarray(value), Path(source))

    def _checked(self, target: Any, image_size: tuple[int, int] | None, source: str) -> Any:
        """Validate a parsed target and check it against its image's size (filling it in for keypoints)."""
        if isinstance(target, Keypoints) and target.image_size is None and image_size is not None:
            target.image_size = (int(image_size[0]), int(image_size[1]))
        self.validate(target)
        size = self._spatial_size(target)
        if image_size is not None and size is not None and tuple(size) != tuple(image_size):
            raise self._fail(
                f"target {source} is {size[0]}x{size[1]} (HxW) but its image is "
                f"{image_size[0]}x{image_size[1]}"
            )
        return target

    @staticmethod
    def _spatial_size(target: Any) -> tuple[int, int] | None:
        if isinstance(target, Instances):
            return target.masks.shape[1:3]
        if isinstance(target, Keypoints):
            return target.image_size
        return np.shape(target)[:2]

    def _fail(self, problem: str) -> CodecError:
        return CodecError(f"{self.name} codec: {problem}")

    def _array(self, target: Any, ndim: int, what: str) -> np.ndarray:
        """``target`` as an ndarray of ``ndim`` dimensions, else a CodecError describing what was expected."""
        if not isinstance(target, np.ndarray):
            raise self._fail(f"target must be a numpy array ({what}), got {type(target).__name__}")
        if target.ndim != ndim or 0 in target.shape:
            raise self._fail(f"target must be {what}, got shape {target.shape}")
        return target


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {value!r}")


CODECS: dict[str, type[Codec]] = {}


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Class decorator: add a codec to ``CODECS`` under its ``name`` (a different class under a taken name is
    an error, so two plugins cannot silently shadow each other)."""
    if not (isinstance(cls, type) and issubclass(cls, Codec)):
        raise CodecError(f"register_codec: {cls!r} is not a Codec subclass")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise CodecError(f"register_codec: {cls.__qualname__} has no 'name'")
    if getattr(cls, "resample", None) not in ("nearest", "bilinear"):
        raise CodecError(f"register_codec: {name} codec: 'resample' must be 'nearest' or 'bilinear'")
    if CODECS.get(name, cls) is not cls:
        raise CodecError(f"register_codec: the name {name!r} is already taken by {CODECS[name].__qualname__}")
    CODECS[name] = cls
    return cls


def _codec_class(name_or_path: str) -> type[Codec]:
    if ":" in name_or_path:
        module_name, _, attr = name_or_path.partition(":")
        try:
            found: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise CodecError(f"cannot import codec module {module_name!r} ({exc})") from exc
        for part in attr.split("."):
            found = getattr(found, part, None)
        if not (isinstance(found, type) and issubclass(found, Codec)):
            raise CodecError(f"{name_or_path!r} is not a Codec subclass")
        return found
    if name_or_path in CODECS:
        return CODECS[name_or_path]
    close = difflib.get_close_matches(name_or_path.lower().replace("-", "_"), CODECS, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise CodecError(f"unknown codec {name_or_path!r}{hint} (registered: {', '.join(sorted(CODECS))})")


def build_codec(name_or_path: str, args: dict[str, Any] | None = None) -> Codec:
    """A codec from a registered name or ``package.module:ClassName``, with constructor ``args``."""
    cls = _codec_class(name_or_path)
    args = dict(args or {})
    params = inspect.signature(cls).parameters
    label = getattr(cls, "name", cls.__qualname__)
    for arg in args:
        if arg not in params:
            close = difflib.get_close_matches(arg, params, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CodecError(
                f"{label} codec: unknown argument {arg!r}{hint}; it accepts: {', '.join(params) or 'none'}"
            )
    missing = [p.name for p in params.values() if p.default is p.empty and p.name not in args]
    if missing:
        raise CodecError(f"{label} codec: missing required argument {missing[0]!r}")
    try:
        return cls(**args)
    except CodecError:
        raise
    except (TypeError, ValueError) as exc:
        raise CodecError(f"{label} codec: bad arguments {args}: {exc}") from exc


def list_codecs() -> list[tuple[str, str]]:
    """(name, one-line summary) of every registered codec, sorted by name."""
    return [(name, CODECS[name].summary()) for name in sorted(CODECS)]


# ---------------------------------------------------------------------------------------------------------
# Codecs
# ---------------------------------------------------------------------------------------------------------


@register_codec
class BinaryMaskCodec(Codec):
    """Binary mask: the foreground in one colour (default white) on black, as DICEPTION's segmentation output.

    Two colours as far apart as possible make the read-back robust: a pixel is foreground when it is nearer to
    the foreground colour than to black (the midpoint of the segment between them), which blur, JPEG and
    colour drift move only at the mask's edge. ``probability`` is the soft version: the pixel's position along
    the segment from black to the foreground colour, clipped to [0, 1], which averages linearly across an
    ensemble just as colours do. Target: bool (H, W).
    """

    name = "binary_mask"
    metric_table = "binary_mask"
    resample = "nearest"
    _SHARPNESS = 10.0  # loss logit at exactly the foreground colour: BCE there is log(1 + e^-10) ~ 5e-5

    def __init__(self, color: Sequence[int] = (255, 255, 255)) -> None:
        self.color = _rgb_arg(color, "color", self.name)
        if self.color == (0, 0, 0):
            raise self._fail("argument 'color' must differ from the black background")
        self._fg = np.asarray(self.color, np.float32) / 255

    def probability(self, image: Any) -> np.ndarray:
        """Soft foreground probability float32 (H, W) of any RGB image (see the class docstring)."""
        return self._probability(as_image(image, self.name))

    def _probability(self, image: np.ndarray) -> np.ndarray:
        return np.clip(image @ self._fg / (self._fg @ self._fg), 0.0, 1.0).astype(np.float32)

    def validate(self, target: Any) -> None:
        mask = self._array(target, 2, "a bool mask (H, W)")
        if mask.dtype != np.bool_:
            raise self._fail(
                f"target has dtype {mask.dtype}; expected bool (convert with mask > 0, or load it "
                "with load_target)"
            )

    def _encode(self, target: np.ndarray) -> np.ndarray:
        return target[..., None] * self._fg

    def _decode(self, image: np.ndarray) -> np.ndarray:
        return self._probability(image) > 0.5

    def save(self, target: np.ndarray, stem: str | Path) -> list[Path]:
        """``stem.png``: 0/255 grey."""
        return [_write_png(target.astype(np.uint8) * 255, Path(f"{stem}.png"))]

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """BCE + soft Dice on the foreground probability sigmoid(k (2 t - 1)), t the position along black ->
        colour: the logit form keeps a useful gradient however wrong (or outside [0, 1]) the prediction is."""
        fg = torch.as_tensor(self._fg, dtype=pred.dtype, device=pred.device)

        def position(x: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bchw,c->bhw", x, fg) / fg.dot(fg)

        logits = self._SHARPNESS * (2 * position(pred) - 1)
        truth = (position(target) > 0.5).to(pred.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, truth)
        return bce + _soft_dice(torch.sigmoid(logits), truth)

    def check_set(self, targets: Sequence[Any]) -> str | None:
        if len(targets) > 1 and not any(mask.any() for mask in targets):
            return (f"every one of the {len(targets)} masks is empty (no foreground pixel): nothing to learn; check "
                    "that the masks folder holds the masks and that task.codec_args.color is their foreground")
        if len(targets) > 1 and all(mask.all() for mask in targets):
            return f"every one of the {len(targets)} masks is all foreground: nothing to learn; check the masks folder"
        return None

    def _from_value(self, value: Any, source: str) -> Any:
        if isinstance(value, Image.Image):
            value = self._shown(value, source)
        return super()._from_value(value, source)

    def _shown(self, image: Image.Image, source: str) -> Image.Image | np.ndarray:
        """The mask a picture shows: a palette by its colours (not its index order), alpha when only alpha varies.

        A palette whose index 0 is white shows its foreground where the indices are 0, and a mask stored as
        the alpha channel of a constant colour shows nothing in RGB; both are read as they look, with a note.
        A picture whose colours and alpha both vary and disagree is ambiguous and refused.
        """
        if image.mode in ("P", "PA"):
            indices = np.asarray(image) if image.mode == "P" else None
            image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
            if indices is not None and image.mode == "RGB":
                shown = self._from_array(np.asarray(image), Path(source))
                if len(np.unique(indices)) <= 2 and ((indices != 0) != (shown != 0)).any():
                    warnings.warn("palette mask whose index order differs from its colours: read by the colours "
                                  "it shows (foreground = not black)", TargetNote, stacklevel=2)
                return shown.astype(np.uint8) * 255
        if image.mode not in ("RGBA", "LA"):
            return image
        array = np.asarray(image)
        colour, alpha = array[..., :-1].max(2), array[..., -1]
        if alpha.min() == alpha.max():
            return colour
        if colour.min() == colour.max():
            warnings.warn("mask read from the alpha channel (its colour is constant): opaque = foreground",
                          TargetNote, stacklevel=2)
            return alpha
        if np.array_equal(colour > colour.min(), alpha > alpha.min()):
            return colour
        raise self._fail(f"{source}: both its colours and its alpha channel vary, and they disagree on the "
                         "foreground; save the mask without alpha (0 background, 255 foreground)")

    def _from_array(self, array: np.ndarray, path: Path) -> np.ndarray:
        """Masks as users store them: bool, 0/1, 0/255 (any two values 0 and v), grey RGB; an 8-bit mask saved
        lossily (JPEG: many distinct values, nearly all within 64 of 0 or 255) is cut at 128, with a note.

        A few distinct values (a label map 0/1/2, a mask with some 128s) are refused with their pixel counts:
        no rule can tell which of them is foreground.
        """
        if array.ndim == 3 and array.shape[2] in (3, 4):
            colours = np.unique(array[..., :3].reshape(-1, 3), axis=0)
            if 2 < len(colours) <= 8:  # a few flat colours: a colour-coded label map, not one mask
                shown = ", ".join(str(tuple(c)) for c in colours.tolist())
                raise self._fail(f"{path} shows {len(colours)} colours ({shown}); a mask shows black and one "
                                 "foreground colour: use the semantic codec for a label map")
            array = array[..., :3].max(2)
        if array.ndim != 2 or array.dtype == np.bool_:
            return array
        values, counts = np.unique(array, return_counts=True)
        if len(values) == 1 or (len(values) == 2 and values[0] == 0):
            return array != 0
        near_extremes = np.minimum(array, 255 - array) < 64
        if (array.dtype == np.uint8 and len(values) > 8 and values[0] < 64 and values[-1] > 191
                and near_extremes.mean() > 0.95):
            warnings.warn("mask with values between 0 and 255 (lossy compression): cut at 128", TargetNote,
                          stacklevel=2)
            return array > 127
        listed = ", ".join(f"{v} ({c} px)" for v, c in zip(values[:6].tolist(), counts[:6].tolist(), strict=True))
        more = f" and {len(values) - 6} more values" if len(values) > 6 else ""
        hint = ("it looks like a label map: use the semantic or instances codec, or save the foreground as 255"
                if values[-1] < 32 else "set every pixel to 0 (background) or one foreground value")
        raise self._fail(
            f"{path} holds values {_list_values(values)} ({listed}{more}); a mask must be 0 and one foreground "
            f"value (0/1, 0/255 or bool): {hint}"
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


@register_codec
class InstancesCodec(Codec):
    """Instances: each instance a random, well-separated bright colour on black, as DICEPTION's entity output.

    Encode: colours are drawn (a seeded generator, advanced on every call, so repeated encodings of one target
    vary like the random colours DICEPTION was trained with) from the first ``max_instances`` colours of
    ``distinct_colors(bright=True)``: all have a channel at 255, so they are far from black and from each
    other, and none is a darkened copy of another. Overlapping masks are painted largest first (small ones
    stay visible); empty masks are skipped.

    Decode, vectorised over the image's distinct colours rather than its pixels where it can be:
    1. each colour splits into brightness (largest channel) and chroma (colour / brightness): blur toward the
       black background and a globally dimmed prediction change only the brightness, so an instance keeps one
       chroma. Foreground = brighter than half the typical brightness (90th percentile of non-dark pixels),
       the binary mask's midpoint rule;
    2. chroma centres: a 32^3 histogram of the chroma of solid pixels (>= 3/4 of the typical brightness;
       pixels next to the background count 1/4, since JPEG's subsampled chroma bleeds there) is smoothed
       (Gaussian, 1 bin); its local maxima holding at least half of ``min_area`` pixels, strongest first, are
       centred on the mean chroma around them, skipping any within R (half the palette spacing) of one taken;
    3. every foreground pixel takes the nearest centre (distance d, confidence exp(-(d / R)^2 / 2));
    4. a 3x3 opening of each centre's region removes the thin strips that mixed colours form where instances
       touch (pixels exactly on a centre's colour are exempt, so a clean encoding stays exact);
    5. 8-connected components (``scipy.ndimage.label``) split each region into parts;
    6. parts within 2 px of each other whose mean chromas are closer than 0.8 of the palette spacing join
       (JPEG can split one instance's chroma in two; distinct palette colours are never that close);
    7. parts below ``min_area`` are dropped; removed pixels go back to the only instance in their region
       before the opening, else to the nearest instance within 3 px.
    Score = mean pixel confidence. A clean encoding decodes exactly for connected instances, except thin
    (no 3x3 block) ones smaller than 2 x ``min_area``. Colours that differ only in brightness count as one.
    Target: ``Instances`` (or an int label map, 0 = background); decoded instances are sorted by area.
    """

    name = "instances"
    metric_table = "instances"
    deterministic_ok = False
    resample = "nearest"
    _BINS = 32
    _EDGE_WEIGHT = 0.25  # histogram weight of pixels next to the background, whose chroma JPEG blurs
    _EXACT = 1.5 / 255  # chroma this close to a centre is an exact (clean) colour, kept without opening
    _FILL_PX = 3.0

    def __init__(self, seed: int = 0, min_area: float = 0.001, max_instances: int = 64) -> None:
        if not isinstance(max_instances, int | np.integer) or max_instances < 1:
            raise self._fail(f"argument 'max_instances' must be a positive integer, got {max_instances!r}")
        if not min_area >= 0:
            raise self._fail(
                f"argument 'min_area' must be >= 0 (a fraction of the image if < 1, else pixels), "
                f"got {min_area!r}"
            )
        self.seed, self.min_area, self.max_instances = seed, min_area, int(max_instances)
        self._pool = distinct_colors(max_instances, bright=True).astype(np.float32) / 255
        self._radius = 0.5 * _min_spacing(self._pool)
        self._rng = np.random.default_rng(seed)

    def validate(self, target: Any) -> None:
        if isinstance(target, Instances):
            masks = target.masks
            if masks.dtype != np.bool_ or masks.ndim != 3 or 0 in masks.shape[1:]:
                raise self._fail(f"masks must be bool (N, H, W), got dtype {masks.dtype} shape {masks.shape}")
            count = len(masks)
            if target.scores.shape != (count,) or not np.isfinite(target.scores).all():
                raise self._fail(f"scores must be {count} finite values, got shape {target.scores.shape}")
            if target.labels is not None and (
                target.labels.shape != (count,) or not np.issubdtype(target.labels.dtype, np.integer)
            ):
                raise self._fail(
                    f"labels must be {count} integers, got {target.labels.dtype} {target.labels.shape}"
                )
            count = int(masks.any((1, 2)).sum())
        else:
            label_map = self._array(target, 2, "Instances or an integer label map (H, W)")
            if not np.issubdtype(label_map.dtype, np.integer):
                raise self._fail(f"label map has dtype {label_map.dtype}; expected integer instance ids")
            if label_map.min() < 0:
                raise self._fail(f"label map has negative ids {_list_values(label_map[label_map < 0])}")
            count = len(np.unique(label_map[label_map > 0]))
        if count > self.max_instances:
            raise self._fail(f"{count} instances exceed max_instances={self.max_instances}; raise it")

    def _encode(self, target: Instances | np.ndarray) -> np.ndarray:
        label_map = target.to_label_map() if isinstance(target, Instances) else target
        ids = np.unique(label_map)
        ids = ids[ids > 0]
        lut = np.zeros((int(label_map.max()) + 1, 3), np.float32)
        lut[ids] = self._pool[self._rng.choice(len(self._pool), size=len(ids), replace=False)]
        return lut[label_map]

    def _decode(self, image: np.ndarray) -> Instances:
        height, width = image.shape[:2]
        empty = Instances(np.zeros((0, height, width), bool))
        min_pixels = max(1.0, _absolute(self.min_area, height * width))
        colours, inverse, counts = _unique_colours(image)
        brightness = colours.max(1)
        lit = brightness > _DARK
        if not lit.any():
            return empty
        typical = _weighted_quantile(brightness[lit], counts[lit], 0.9)
        solid = lit & (brightness >= 0.75 * typical)
        chroma = colours / np.maximum(brightness, _DARK)[:, None]

        def per_pixel(values: np.ndarray) -> np.ndarray:
            return values[inverse].reshape(height, width, *values.shape[1:])

        foreground = per_pixel(lit & (brightness > 0.5 * typical))
        interior = ndimage.minimum_filter(foreground, 3, mode="nearest").ravel()
        weight = np.bincount(inverse, np.where(interior, 1.0, self._EDGE_WEIGHT), len(colours))
        centres = self._chroma_centres(chroma[solid], weight[solid], min_pixels)
        if not len(centres):
            return empty
        distance, nearest = cKDTree(centres).query(chroma)
        cluster = np.where(foreground, per_pixel(nearest + 1), 0)
        exact = per_pixel(distance <= self._EXACT)
        parts = _split_components(np.where(exact, cluster, _open_labels(cluster)))
        parts = self._merge_similar_neighbours(parts, per_pixel(chroma), per_pixel(solid))
        label_map = self._restore(_relabel(parts, np.bincount(parts.ravel()) >= min_pixels), cluster)
        confidence = per_pixel(np.exp(-0.5 * (distance / self._radius) ** 2))
        areas = np.bincount(label_map.ravel())[1:]
        scores = np.bincount(label_map.ravel(), weights=confidence.ravel())[1:] / np.maximum(areas, 1)
        order = np.argsort(-areas, kind="stable")[: self.max_instances]
        order = order[areas[order] > 0]
        masks = label_map[None] == (order + 1)[:, None, None]
        return Instances(masks, np.clip(scores[order], 0, 1).astype(np.float32))

    def _chroma_centres(self, chroma: np.ndarray, weights: np.ndarray, min_pixels: float) -> np.ndarray:
        """Step 2 of the decoder: the instance chromas present, strongest first (float (K, 3))."""
        bins = self._BINS
        cell = np.minimum((chroma * bins).astype(np.int64), bins - 1)
        flat = np.ravel_multi_index(cell.T, (bins,) * 3)

        def around(values: np.ndarray) -> np.ndarray:
            """Per bin, the sum of ``values`` over its 3x3x3 neighbourhood."""
            volume = np.bincount(flat, weights=values, minlength=bins**3).reshape((bins,) * 3)
            return ndimage.uniform_filter(volume, 3, mode="constant") * 27

        hist = np.bincount(flat, weights=weights, minlength=bins**3).reshape((bins,) * 3)
        smooth = ndimage.gaussian_filter(hist, 1.0, mode="constant")
        mass = around(weights)
        peaks = (smooth == ndimage.maximum_filter(smooth, 3, mode="constant")) & (smooth > 0)
        peaks &= mass >= min_pixels / 2
        means = np.stack([around(weights * channel)[peaks] for channel in chroma.T], 1) / mass[peaks][:, None]
        centres: list[np.ndarray] = []
        for mean in means[np.argsort(-mass[peaks], kind="stable")][: 2 * self.max_instances]:
            if not centres or np.linalg.norm(np.asarray(centres) - mean, axis=1).min() >= self._radius:
                centres.append(mean)
        return np.asarray(centres, np.float32).reshape(-1, 3)

    def _restore(self, label_map: np.ndarray, cluster: np.ndarray) -> np.ndarray:
        """Step 7: give back the foreground pixels that steps 4-6 removed. A pixel whose colour region (before
        the opening) holds exactly one kept instance joins it, so thin parts of an instance come back exactly;
        any other joins the nearest kept instance within ``_FILL_PX``, so mixed-colour strips and specks are
        absorbed by their surroundings."""
        orphans = (cluster > 0) & (label_map == 0)
        if not orphans.any() or not label_map.any():
            return label_map
        regions = _split_components(cluster)
        labelled = label_map > 0
        pairs = _unique_pairs(regions[labelled], label_map[labelled])
        region_ids, first, count = np.unique(pairs[:, 0], return_index=True, return_counts=True)
        owner = np.zeros(int(regions.max()) + 1, np.int32)
        owner[region_ids[count == 1]] = pairs[first[count == 1], 1]
        label_map = np.where(orphans, owner[regions], label_map)
        orphans &= label_map == 0
        if orphans.any():
            gap, (rows, cols) = ndimage.distance_transform_edt(label_map == 0, return_indices=True)
            fill = orphans & (gap <= self._FILL_PX)
            label_map[fill] = label_map[rows[fill], cols[fill]]
        return label_map

    def _merge_similar_neighbours(
        self, parts: np.ndarray, chroma: np.ndarray, solid: np.ndarray
    ) -> np.ndarray:
        """Step 6: join components within 2 px of each other whose mean chromas (over solid pixels) are
        closer than 0.8 of the palette spacing, which two distinct palette colours never are: JPEG blocks can
        shift the chroma of one instance's parts far enough apart to form two centres."""
        count = int(parts.max())
        if count < 2:
            return parts
        weight = np.where(solid, 1.0, 1e-3).ravel()  # edges only where a part has no solid pixel
        total = np.bincount(parts.ravel(), weights=weight, minlength=count + 1)
        sums = [np.bincount(parts.ravel(), weight * chroma[..., c].ravel(), count + 1) for c in range(3)]
        means = np.stack(sums, 1) / np.maximum(total, 1e-12)[:, None]
        pairs = _neighbour_pairs(parts, reach=2)
        close = np.linalg.norm(means[pairs[:, 0]] - means[pairs[:, 1]], axis=1) < 1.6 * self._radius
        graph = coo_matrix((np.ones(int(close.sum())), tuple(pairs[close].T)), shape=(count + 1, count + 1))
        group = connected_components(graph, directed=False)[1]
        return np.where(parts > 0, group[parts] + 1, 0)

    def save(self, target: Instances, stem: str | Path) -> list[Path]:
        """``stem.png``: instance ids (i + 1 for ``masks[i]``, 8- or 16-bit grey); ``stem.json``: their
        scores."""
        scores = Path(f"{stem}.json")
        ids = _write_png(_ids_png_array(target.to_label_map()), Path(f"{stem}.png"))
        scores.write_text(json.dumps({"scores": [round(float(v), 6) for v in target.scores]}) + "\n")
        return [ids, scores]

    def hflip(self, target: Instances | np.ndarray) -> Instances | np.ndarray:
        if isinstance(target, Instances):
            return Instances(
                target.masks[:, :, ::-1].copy(),
                target.scores.copy(),
                None if target.labels is None else target.labels.copy(),
            )
        return target[:, ::-1].copy()

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L1 to the target's colours. The colours are random per encoding, so there are no fixed classes for
        a cross-entropy; a permutation-invariant loss (pairwise pixel affinities) would be exact but costs
        O(pixels^2). L1 works because decoding only needs each instance's colour to be consistent inside it
        and distinct from its neighbours, which reproducing the sampled colours achieves."""
        return _l1(pred, target)

    def _from_array(self, array: np.ndarray, path: Path) -> Instances | np.ndarray:
        """Label maps (8/16-bit grey or 'P' PNG, integral ``.npy``), bool ``.npy`` masks (N, H, W), or an RGB
        image with one exact colour per instance (black = background)."""
        if array.ndim == 3 and array.dtype == np.bool_:
            return Instances(array)
        if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8:
            colours, inverse, _ = _unique_colours(array / 255.0)
            if len(colours) > self.max_instances + 1:
                raise self._fail(
                    f"{path} has {len(colours)} distinct colours, more than max_instances; a lossy or "
                    "blurred colour map is a prediction (use decode); keep ground truth in 8/16-bit id PNGs"
                )
            ids = np.cumsum(colours.any(1)) * colours.any(1)  # black -> 0, each other colour -> 1..N
            return ids[inverse].reshape(array.shape[:2]).astype(np.int64)
        if not _integral(array):
            raise self._fail(f"{path} holds non-integer values (dtype {array.dtype}); expected instance ids")
        return array.astype(np.int64)


def _split_components(cluster: np.ndarray) -> np.ndarray:
    """An int32 id per 8-connected component of each cluster id of a label map (0 = none)."""
    components = np.zeros(cluster.shape, np.int32)
    total = 0
    for k, box in enumerate(ndimage.find_objects(cluster), start=1):
        if box is None:
            continue
        parts, count = ndimage.label(cluster[box] == k, structure=np.ones((3, 3)))
        view = components[box]
        view[parts > 0] = parts[parts > 0] + total
        total += count
    return components


def _relabel(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Drop the ids where ``keep`` (indexed by id) is False and number the rest 1..n (0 stays none)."""
    keep = keep.copy()
    keep[0] = False
    new_ids = np.zeros(len(keep), np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1)
    return new_ids[labels]


def _neighbour_pairs(labels: np.ndarray, reach: int) -> np.ndarray:
    """(P, 2) distinct pairs of non-zero ids that come within ``reach`` pixels of each other (found through
    the largest and smallest id around each pixel, so where three ids meet one pair may be seen elsewhere)."""
    size = 2 * reach + 1
    big = np.iinfo(labels.dtype).max
    high = ndimage.maximum_filter(labels, size)
    low = ndimage.minimum_filter(np.where(labels > 0, labels, big), size)
    inside = labels > 0
    masks = [inside & (other != labels) & (other != big) for other in (high, low)]
    first = np.concatenate([labels[m] for m in masks])
    second = np.concatenate([other[m] for other, m in zip((high, low), masks, strict=True)])
    return _unique_pairs(np.minimum(first, second), np.maximum(first, second))


def _unique_pairs(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The distinct (first, second) pairs of two non-negative integer arrays, as (P, 2) int64, sorted; one
    packed int64 sort instead of the much slower row-wise ``np.unique(axis=0)``."""
    base = int(second.max(initial=0)) + 1
    packed = np.unique(first.astype(np.int64) * base + second)
    return np.stack([packed // base, packed % base], 1)


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, q * cumulative[-1])])


def _open_labels(labels: np.ndarray) -> np.ndarray:
    """Morphological 3x3 opening of every label of a label map at once: a pixel keeps its label when some 3x3
    window containing it is entirely that label (the erosion's survivors, dilated back within the label)."""
    low = ndimage.minimum_filter(labels, 3, mode="nearest")
    high = ndimage.maximum_filter(labels, 3, mode="nearest")
    core = np.where(low == high, labels, 0)
    big = np.iinfo(labels.dtype).max
    near_high = ndimage.maximum_filter(core, 3, mode="constant")
    near_low = ndimage.minimum_filter(np.where(core > 0, core, big), 3, mode="constant", cval=big)
    keep = (labels > 0) & ((near_high == labels) | (near_low == labels))
    return np.where(keep, labels, 0)


@register_codec
class DepthCodec(Codec):
    """Depth as grey: clip to quantiles, 1/d (default, as DICEPTION) or log or linear, min-max to [0, 1].

    Every mode puts *near* at white, the orientation the frozen model already produces, so a new mode starts
    from its prior instead of fighting it ("linear" is 1 - normalised depth, "log" 1 - normalised log depth).
    Depth values 0 and non-finite ones (NaN, inf) are invalid: allowed, and painted black, the far end, which
    is right for sky, their usual cause; metrics must take validity from the target itself. A target with no
    valid pixel, or negative depth, is an error. The encoding is affine-invariant (units and the clip range
    are lost), so decode returns the relative value (mean of the channels, float32 (H, W) in [0, 1], near = 1)
    and metrics align scale and shift (least squares) before comparing. Target: float (H, W) depth.
    """

    name = "depth"
    metric_table = "depth"
    resample = "bilinear"
    _MODES: ClassVar[dict[str, Callable[[np.ndarray], np.ndarray]]] = {
        "inverse": lambda d: 1.0 / d,
        "log": lambda d: -np.log(d),
        "linear": lambda d: -d,
    }

    def __init__(self, mode: str = "inverse", low_q: float = 0.02, high_q: float = 0.98) -> None:
        if mode not in self._MODES:
            raise self._fail(f"argument 'mode' must be one of {', '.join(self._MODES)}, got {mode!r}")
        if not 0 <= low_q < high_q <= 1:
            raise self._fail(
                f"arguments 'low_q' and 'high_q' need 0 <= low_q < high_q <= 1, got {low_q}, {high_q}"
            )
        self.mode, self.low_q, self.high_q = mode, low_q, high_q

    def validate(self, target: Any) -> None:
        depth = self._array(target, 2, "a depth map (H, W)")
        if not (np.issubdtype(depth.dtype, np.floating) or np.issubdtype(depth.dtype, np.integer)):
            raise self._fail(f"target has dtype {depth.dtype}; expected float (or integer) depth")
        finite = np.isfinite(depth)
        if (depth[finite] < 0).any():
            raise self._fail(
                "depth has negative values (is it disparity or signed data?); invalid pixels are 0 or NaN"
            )
        if not (depth[finite] > 0).any():
            raise self._fail("depth has no valid pixel (every value is 0, NaN or infinite)")

    def check_set(self, targets: Sequence[Any]) -> str | None:
        if targets and all(len(np.unique(depth[np.isfinite(depth)])) <= 2 for depth in targets):
            return (f"every one of the {len(targets)} depth targets holds at most two values (e.g. 0 and 255): "
                    "they look like masks, not depth maps; use the binary_mask codec for masks")
        return None

    def relative(self, depth: np.ndarray) -> np.ndarray:
        """The encoded grey value of each pixel, float32 (H, W) in [0, 1], near = 1, invalid = 0: what
        ``decode`` returns for a perfect prediction, to compare decoded maps with ground truth."""
        depth = np.asarray(depth, np.float64)
        valid = np.isfinite(depth) & (depth > 0)
        low, high = np.quantile(depth[valid], [self.low_q, self.high_q])
        value = self._MODES[self.mode](np.clip(np.where(valid, depth, high), low, high))
        lo, hi = value[valid].min(), value[valid].max()
        scaled = (value - lo) / (hi - lo) if hi > lo else np.full_like(value, 0.5)
        return np.where(valid, scaled, 0.0).astype(np.float32)

    #: The metric space that matches each mode: metrics align scale and shift where the encoding is affine.
    _METRIC_SPACES: ClassVar[dict[str, str]] = {"inverse": "disparity", "linear": "depth", "log": "log"}

    def metric_options(self) -> dict[str, Any]:
        """The space in which depth metrics align the prediction (DICEPTION's inverse depth: disparity)."""
        return {"space": self._METRIC_SPACES[self.mode]}

    def _encode(self, target: np.ndarray) -> np.ndarray:
        return np.repeat(self.relative(target)[..., None], 3, axis=2)

    def _decode(self, image: np.ndarray) -> np.ndarray:
        return image.mean(2)

    def save(self, target: np.ndarray, stem: str | Path) -> list[Path]:
        """``stem.npy``: the relative value (float32); ``stem.png``: the same as 16-bit grey, near = white."""
        return _save_with_preview(target, _unit_png_array(target), stem)

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scale-and-shift-invariant L1 on the grey value: per image, least-squares align the prediction to
        the target, then L1; plus max(0, -correlation), since a negative scale would align an inverted map
        perfectly (clamping the scale at 0 instead would leave such a prediction without a gradient)."""
        grey_pred, grey_target = pred.mean(1).flatten(1), target.mean(1).flatten(1)
        centred_pred = grey_pred - grey_pred.mean(1, keepdim=True)
        centred_target = grey_target - grey_target.mean(1, keepdim=True)
        covariance = (centred_pred * centred_target).mean(1)
        pred_var, target_var = (centred_pred**2).mean(1), (centred_target**2).mean(1)
        scale = (covariance / (pred_var + 1e-8))[:, None]
        aligned = _l1(scale * centred_pred, centred_target)
        correlation = covariance / torch.sqrt(pred_var * target_var + 1e-12)
        return aligned + F.relu(-correlation).mean()

    def _from_array(self, array: np.ndarray, path: Path) -> np.ndarray:
        """Depth from 16-bit (or 8-bit) grey PNGs, float TIFF and ``.npy``; units do not matter (relative)."""
        if array.ndim == 3:
            if array.shape[2] < 3 or (array[..., :3] != array[..., :1]).any():
                raise self._fail(
                    f"{path} is a colour image; depth must be one channel (grey PNG, TIFF or .npy)"
                )
            array = array[..., 0]
        if array.dtype == np.bool_:
            raise self._fail(f"{path} is a 1-bit image, not depth")
        return array.astype(np.float32)


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


COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
    "left_ankle", "right_ankle",
)  # fmt: skip
# COCO's 19 limbs (its 1-based "skeleton", as 0-based joint indices).
COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
    (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip


@register_codec
class KeypointsCodec(Codec):
    """Keypoints: limbs as coloured lines and joints as coloured discs on black, every colour distinct.

    Joints take the first K colours of ``distinct_colors`` and limbs the next ones, so a joint is found by its
    own colour. Decoding builds each joint's colour-similarity map exp(-|x - c|^2 / 2 sigma^2) (sigma a
    quarter of the colour spacing), averages it over a window of the disc's radius, and takes the peak: the
    peak value is the confidence (about 1 for a clean disc), and the similarity-weighted centroid around it
    the sub-pixel position; a joint whose confidence is below ``threshold`` is absent (``visible`` False).
    ``radius`` and ``thickness`` below 1 are fractions of the image's shorter side. A horizontal flip mirrors
    x (x -> W - 1 - x) and swaps left/right names. Target: ``Keypoints``; default names and skeleton are
    COCO's 17 joints.
    """

    name = "keypoints"
    metric_table = "keypoints"
    resample = "nearest"

    def __init__(
        self,
        names: Sequence[str] = COCO_KEYPOINTS,
        skeleton: Sequence[Sequence[int]] = COCO_SKELETON,
        radius: float = 0.01,
        thickness: float = 0.005,
        threshold: float = 0.3,
    ) -> None:
        self.names = [str(n) for n in names]
        self.skeleton = [[int(a), int(b)] for a, b in skeleton]
        if not self.names or len(set(self.names)) != len(self.names):
            raise self._fail("argument 'names' must be non-empty and unique")
        if any(not (0 <= i < len(self.names)) for pair in self.skeleton for i in pair):
            raise self._fail(f"argument 'skeleton' indexes joints outside 0..{len(self.names) - 1}")
        if not (radius > 0 and thickness > 0 and 0 < threshold < 1):
            raise self._fail("arguments 'radius' and 'thickness' must be > 0 and 'threshold' in (0, 1)")
        self.radius, self.thickness, self.threshold = radius, thickness, threshold
        colours = distinct_colors(len(self.names) + len(self.skeleton)).astype(np.float32) / 255
        self._joint_colours, self._limb_colours = colours[: len(self.names)], colours[len(self.names) :]
        self._sigma = _min_spacing(colours) / 4
        swap = {"left": "right", "right": "left", "Left": "Right", "Right": "Left"}
        mirrored = [re.sub("left|right|Left|Right", lambda m: swap[m.group()], n) for n in self.names]
        self._mirror = np.array(
            [self.names.index(m) if m in self.names else i for i, m in enumerate(mirrored)]
        )

    def validate(self, target: Any) -> None:
        if not isinstance(target, Keypoints):
            raise self._fail(f"target must be Keypoints, got {type(target).__name__}")
        count = len(self.names)
        if (
            target.xy.shape != (count, 2)
            or target.visible.shape != (count,)
            or target.confidence.shape != (count,)
        ):
            raise self._fail(
                f"expected {count} keypoints ({count}x2 xy, {count} visible, {count} confidence), got "
                f"{target.xy.shape}, {target.visible.shape}, {target.confidence.shape}"
            )
        if target.visible.dtype != np.bool_:
            raise self._fail(f"visible has dtype {target.visible.dtype}; expected bool")
        if not np.isfinite(target.xy[target.visible]).all():
            raise self._fail("a visible keypoint has a NaN or infinite coordinate")
        if target.image_size is None or min(target.image_size) < 1:
            raise self._fail(
                "keypoints need image_size (H, W): give 'width' and 'height' in the JSON, or pass "
                "image_size to load_target"
            )

    def _pixels(self, value: float, size: tuple[int, int], floor: float) -> float:
        return max(floor, _absolute(value, min(size)))

    def _encode(self, target: Keypoints) -> np.ndarray:
        height, width = target.image_size
        canvas = Image.new("RGB", (width, height))
        draw = ImageDraw.Draw(canvas)
        line_width = round(self._pixels(self.thickness, target.image_size, 1.0))
        for (a, b), colour in zip(self.skeleton, self._limb_colours, strict=True):
            if target.visible[a] and target.visible[b]:
                draw.line([tuple(target.xy[a]), tuple(target.xy[b])], fill=_rgb255(colour), width=line_width)
        r = self._pixels(self.radius, target.image_size, 2.0)
        for (x, y), shown, colour in zip(target.xy, target.visible, self._joint_colours, strict=True):
            if shown:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=_rgb255(colour))
        return np.asarray(canvas, np.float32) / 255

    def _decode(self, image: np.ndarray) -> Keypoints:
        height, width = image.shape[:2]
        count = len(self.names)
        colours, inverse, _ = _unique_colours(image)
        distance, nearest = cKDTree(self._joint_colours).query(colours)
        similarity = np.exp(-(distance**2) / (2 * self._sigma**2))
        similarity = np.where(similarity > 0.01, similarity, 0)[inverse].reshape(height, width)
        owner = np.where(similarity > 0, nearest[inverse].reshape(height, width) + 1, 0)
        radius = self._pixels(self.radius, (height, width), 2.0)
        window, margin = max(1, round(radius)), math.ceil(radius)
        xy = np.zeros((count, 2), np.float32)
        confidence = np.zeros(count, np.float32)
        # A joint's similarity map is non-zero only where its colour is the nearest, so each joint is searched
        # within the bounding box of those pixels (plus a margin) instead of over the whole image.
        for k, box in enumerate(ndimage.find_objects(owner, max_label=count)):
            if box is None:
                continue
            rows = slice(max(0, box[0].start - margin), min(height, box[0].stop + margin))
            cols = slice(max(0, box[1].start - margin), min(width, box[1].stop + margin))
            local = np.where(owner[rows, cols] == k + 1, similarity[rows, cols], 0)
            smooth = ndimage.uniform_filter(local, window, mode="constant")
            y, x = np.unravel_index(smooth.argmax(), smooth.shape)
            confidence[k] = smooth[y, x]
            near = tuple(
                slice(max(0, at - margin), min(side, at + margin + 1))
                for at, side in zip((y, x), local.shape, strict=True)
            )
            weight = local[near]
            ys, xs = np.mgrid[near]
            xy[k] = ((weight * xs).sum(), (weight * ys).sum()) / max(weight.sum(), 1e-12)
            xy[k] += (cols.start, rows.start)
        confidence = np.clip(confidence, 0, 1)
        return Keypoints(xy, confidence >= self.threshold, confidence, (height, width))

    def hflip(self, target: Keypoints) -> Keypoints:
        xy = target.xy[self._mirror].copy()
        if target.image_size is None:
            raise self._fail("cannot mirror keypoints without image_size")
        xy[:, 0] = target.image_size[1] - 1 - xy[:, 0]
        return Keypoints(
            xy, target.visible[self._mirror].copy(), target.confidence[self._mirror].copy(), target.image_size
        )

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L1 weighted 20x on the drawn (non-black) target pixels: joints and limbs cover ~1% of the image,
        and plain L1 would be satisfied by an all-black prediction."""
        weight = 1 + 20 * (target.amax(1, keepdim=True) > _DARK).to(pred.dtype)
        return (weight * (pred - target).abs()).sum() / (weight.sum() * pred.shape[1])

    def save(self, target: Keypoints, stem: str | Path) -> list[Path]:
        """``stem.json``: ``{"keypoints": [[x, y, v], ...]}`` (v = 2 visible, 0 absent, as COCO) with
        "confidence", "names", "width" and "height"; ``load_target`` reads it back."""
        path = Path(f"{stem}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [
            [float(x), float(y), 2 if shown else 0]
            for (x, y), shown in zip(target.xy, target.visible, strict=True)
        ]
        height, width = target.image_size or (None, None)
        record = {
            "keypoints": rows,
            "confidence": target.confidence.tolist(),
            "names": self.names,
            "width": width,
            "height": height,
        }
        path.write_text(json.dumps(record) + "\n")
        return [path]

    def _load(self, path: Path) -> Keypoints:
        """``.json`` files (see ``_from_value``) and ``.npy`` (K, 3) rows."""
        if path.suffix.lower() == ".json":
            try:
                return self._from_value(json.loads(path.read_text()), str(path))
            except (OSError, ValueError) as exc:
                if isinstance(exc, CodecError):
                    raise
                raise self._fail(f"cannot read {path} as JSON ({exc})") from exc
        if path.suffix.lower() != ".npy":
            raise self._fail(f"{path}: keypoints are read from .json or .npy files")
        return super()._load(path)

    def _from_value(self, value: Any, source: str) -> Keypoints:
        """Also the JSON form ``{"keypoints": [[x, y, v], ...]}`` (or COCO's flat [x1, y1, v1, ...]) with
        optional "width" and "height". v >= 1 (COCO: labelled) means visible."""
        if not isinstance(value, dict):
            return super()._from_value(value, source)
        try:
            rows = np.asarray(value["keypoints"], np.float32).reshape(-1, 3)
        except (KeyError, ValueError, TypeError) as exc:
            raise self._fail(f"{source} is not {{'keypoints': [[x, y, v], ...]}} ({exc!r})") from exc
        keypoints = self._from_array(rows, Path(source))
        if value.get("width") and value.get("height"):
            keypoints.image_size = (int(value["height"]), int(value["width"]))
        return keypoints

    def _from_array(self, array: np.ndarray, path: Path) -> Keypoints:
        if array.ndim != 2 or array.shape[1] != 3 or not np.issubdtype(array.dtype, np.number):
            raise self._fail(f"{path} must hold (K, 3) rows of x, y, v, got shape {array.shape}")
        return Keypoints(array[:, :2], array[:, 2] >= 1)


_RAMPS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "grey": ((0, 0, 0), (255, 255, 255)),
    "viridis": ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)),
    "magma": ((0, 0, 4), (81, 18, 124), (183, 55, 121), (252, 137, 97), (252, 253, 191)),
}


@register_codec
class HeatmapCodec(Codec):
    """A scalar map in [0, 1] as a colour ramp: grey (default) or a polyline of anchor colours (viridis-like).

    Anchors are evenly spaced in value and interpolated linearly. Decoding takes the nearest point of the ramp
    polyline (for grey that is exactly the mean of the channels), so colours pushed off the ramp by blur or
    compression still land on the closest value. ``colormap`` is "grey", "viridis", "magma" or a list of
    RGB anchors. Target: float32 (H, W) in [0, 1].
    """

    name = "heatmap"
    metric_table = "heatmap"
    resample = "bilinear"

    def __init__(self, colormap: str | Sequence[Sequence[int]] = "grey") -> None:
        if isinstance(colormap, str):
            if colormap not in _RAMPS:
                raise self._fail(
                    f"argument 'colormap' must be one of {', '.join(_RAMPS)} or RGB anchors, got {colormap!r}"
                )
            anchors = _RAMPS[colormap]
            self.colormap: str | list[list[int]] = colormap
        else:
            anchors = tuple(_rgb_arg(c, "colormap", self.name) for c in colormap)
            self.colormap = [list(c) for c in anchors]
            if len(anchors) < 2:
                raise self._fail("argument 'colormap' needs at least two anchor colours")
        self._anchors = np.asarray(anchors, np.float32) / 255
        if (np.linalg.norm(np.diff(self._anchors, axis=0), axis=1) == 0).any():
            raise self._fail("argument 'colormap' repeats an anchor colour in a row")

    def validate(self, target: Any) -> None:
        heat = self._array(target, 2, "a heatmap (H, W)")
        if not np.issubdtype(heat.dtype, np.floating):
            raise self._fail(
                f"target has dtype {heat.dtype}; expected floats in [0, 1] (load_target scales PNGs)"
            )
        if not np.isfinite(heat).all():
            raise self._fail("heatmap contains NaN or infinite values")
        if heat.min() < 0 or heat.max() > 1:
            raise self._fail(f"heatmap values must lie in [0, 1], got {heat.min():.4g}..{heat.max():.4g}")

    def _encode(self, target: np.ndarray) -> np.ndarray:
        stops = np.linspace(0, 1, len(self._anchors))
        return np.stack([np.interp(target, stops, self._anchors[:, c]) for c in range(3)], axis=2)

    def _decode(self, image: np.ndarray) -> np.ndarray:
        segment, along, _ = _segment_projection(image.reshape(-1, 3), self._anchors[:-1], self._anchors[1:])
        value = (segment + along) / (len(self._anchors) - 1)
        return value.reshape(image.shape[:2]).astype(np.float32)

    def save(self, target: np.ndarray, stem: str | Path) -> list[Path]:
        """``stem.npy``: the values (float32); ``stem.png``: the same as 16-bit grey."""
        return _save_with_preview(target, _unit_png_array(target), stem)

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L1 in colour space (for a grey ramp, L1 on the value itself)."""
        return _l1(pred, target)

    def _from_array(self, array: np.ndarray, path: Path) -> np.ndarray:
        """Grey 8/16-bit PNGs (scaled by their type's maximum), float TIFF / ``.npy``, or a colour image on
        this codec's ramp (decoded)."""
        if array.ndim == 3:
            return self.decode(array)
        if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
            return as_image(array, self.name)[..., 0]
        return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array


@register_codec
class RGBCodec(Codec):
    """Identity: the target is itself an image (image-to-image tasks such as enhancement or highlighting).

    DICEPTION's few-shot demonstrations include image-editing style tasks whose answer is simply a picture, so
    no encoding is needed: the generated image is the result. Target: float32 (H, W, 3) in [0, 1] (uint8
    accepted); decoding only clips to [0, 1]; the loss is L1.
    """

    name = "rgb"
    metric_table = "rgb"
    resample = "bilinear"

    def validate(self, target: Any) -> None:
        image = self._array(target, 3, "an RGB image (H, W, 3)")
        if image.shape[2] != 3:
            raise self._fail(f"target must have 3 channels, got {image.shape[2]}")
        if image.dtype == np.uint8:
            return
        if not np.issubdtype(image.dtype, np.floating):
            raise self._fail(f"target has dtype {image.dtype}; expected float in [0, 1] or uint8")
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise self._fail("float target values must be finite and in [0, 1]")

    def _encode(self, target: np.ndarray) -> np.ndarray:
        return as_image(target, self.name)

    def _decode(self, image: np.ndarray) -> np.ndarray:
        return image

    def save(self, target: np.ndarray, stem: str | Path) -> list[Path]:
        """``stem.png``: 8-bit RGB."""
        return [_write_png(np.rint(as_image(target, self.name) * 255).astype(np.uint8), Path(f"{stem}.png"))]

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L1."""
        return _l1(pred, target)

    def _from_array(self, array: np.ndarray, path: Path) -> np.ndarray:
        return as_image(array, self.name)
