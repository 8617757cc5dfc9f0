"""The ``keypoints`` codec: keypoints drawn as coloured discs (and limbs) on black."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import cKDTree

from adaptkit.codecs.base import Codec, CodecError, Keypoints, register_codec
from adaptkit.codecs.helpers import _DARK, _absolute, _min_spacing, _rgb255, _unique_colours, distinct_colors

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
