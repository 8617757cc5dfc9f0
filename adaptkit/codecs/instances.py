"""The ``instances`` codec: instance masks, each painted in its own bright colour, read back by clustering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from adaptkit.codecs.base import Codec, Instances, _write_png, register_codec
from adaptkit.codecs.helpers import (
    _DARK,
    _absolute,
    _ids_png_array,
    _integral,
    _l1,
    _list_values,
    _min_spacing,
    _unique_colours,
    distinct_colors,
)


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
        ids = self.save_target(target, stem)
        scores.write_text(json.dumps({"scores": [round(float(v), 6) for v in target.scores]}) + "\n")
        return [ids, scores]

    def save_target(self, target: Instances | np.ndarray, stem: str | Path) -> Path:
        """``stem.png`` alone: instance ids of a record (as ``save``) or of a label map, 8- or 16-bit grey."""
        labels = target.to_label_map() if isinstance(target, Instances) else np.asarray(target)
        return _write_png(_ids_png_array(labels), Path(f"{stem}.png"))

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
