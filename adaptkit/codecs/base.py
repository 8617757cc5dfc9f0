"""The codec contract: the ``Codec`` base class, its error and note types, the ``Instances`` / ``Keypoints``
target records, the image normalisation every decoder starts from, and the registry (``register_codec``,
``build_codec``, ``list_codecs``; ``package.module:ClassName`` names a user's own codec).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from adaptkit.errors import AdaptkitError, FileError
from adaptkit.images import open_image, to_rgb_array


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


def as_image(image: Any, codec: str = "codec") -> np.ndarray:
    """float32 (H, W, 3) in [0, 1] from any RGB image a model or a file gives.

    Accepts bool / integer / float arrays (and tensors or PIL images convertible to one) shaped (H, W, 3),
    (H, W, 4) (alpha dropped), (H, W, 1) or (H, W) (grey), scaled by ``adaptkit.images.to_rgb_array``, the
    normaliser the model's inputs go through too (so a codec reads an image as the model sees it); its
    errors are worded as this codec's.
    """
    try:
        return to_rgb_array(image if isinstance(image, Image.Image) else np.asarray(image))
    except ValueError as exc:
        raise CodecError(f"{codec} codec: {exc}") from exc


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

    def save_target(self, target: Any, stem: str | Path) -> Path:
        """Write a ground-truth target as the one lossless file that ``load_target`` reads back unchanged:
        what a data folder holds, one file per stem so that pairing by stem stays unambiguous
        (``synth.write_dataset`` writes its folders with it). This default is ``save``'s file where that is
        the only one; codecs whose ``save`` adds a preview or scores override it."""
        paths = self.save(target, stem)
        if len(paths) != 1:
            raise self._fail(f"save() wrote {len(paths)} files; override save_target() to write the lossless one")
        return paths[0]

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

    def combine(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """One colour image from an ensemble's samples: their mean for a continuous encoding, a per-pixel vote
        for a discrete one (``resample`` says which).

        The vote is the medoid colour per pixel (the sample's colour closest to the others'), which keeps
        decoded labels crisp where a mean would blend two classes' colours into a third.
        """
        stack = np.stack(images)
        if len(stack) == 1:
            return stack[0]
        if self.resample == "bilinear":
            return stack.mean(axis=0)
        distances = np.abs(stack[:, None] - stack[None]).sum(axis=(1, -1))  # (K, H, W)
        best = distances.argmin(axis=0)
        return np.take_along_axis(stack, best[None, ..., None], axis=0)[0]

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
        except Exception as exc:  # the plugin's own code failed as it ran: its error, not adaptkit's
            raise CodecError(f"codec plugin {name_or_path!r}: importing {module_name!r} raised "
                             f"{type(exc).__name__}: {exc}; fix the plugin") from exc
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
    except Exception as exc:
        if ":" not in name_or_path:
            raise  # a built-in codec that fails to build is adaptkit's bug
        raise CodecError(f"codec plugin {name_or_path!r} raised {type(exc).__name__} while it was built: {exc}; "
                         "fix the plugin") from exc


def list_codecs() -> list[tuple[str, str]]:
    """(name, one-line summary) of every registered codec, sorted by name."""
    return [(name, CODECS[name].summary()) for name in sorted(CODECS)]
