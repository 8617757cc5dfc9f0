"""Each metric against an independent numpy computation on hand-made or random cases, plus the
properties training relies on: exact merging of per-process states, per-image routing in a collection,
helpful errors for unknown names."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from adaptkit.metrics import (
    DEFAULT_METRICS,
    HIGHER_IS_BETTER,
    METRICS,
    PCK,
    PSNR,
    SSIM,
    AbsRel,
    BoundaryFScore,
    ClassIoU,
    Delta1,
    Dice,
    IoU,
    MeanAngle,
    MeanIoU,
    MedianAngle,
    PixelAccuracy,
    Precision,
    Recall,
    WithinAngle,
    build_metrics,
)

BINARY = {"dice": Dice, "iou": IoU, "precision": Precision, "recall": Recall}


def _update(metric: Any, preds: list[Any], targets: list[Any]) -> None:
    for pred, target in zip(preds, targets, strict=True):
        metric.update(pred, target)


def _run(metric: Any, preds: list[Any], targets: list[Any]) -> Any:
    _update(metric, preds, targets)
    return metric.compute()


def _as_floats(result: Any) -> dict[str, float] | float:
    if isinstance(result, dict):
        return {k: float(v) for k, v in result.items()}
    return float(result)


def _blob(rng: np.random.Generator, size: int = 24) -> np.ndarray:
    """A random smooth-ish mask: union of a few discs."""
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), bool)
    for _ in range(3):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2, size / 3)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    return mask


# --------------------------------------------------------------------------- binary masks


def _binary_reference(preds: list[np.ndarray], targets: list[np.ndarray], average: str) -> dict[str, float]:
    def scores(tp: float, fp: float, fn: float) -> dict[str, float]:
        def ratio(num: float, den: float) -> float:
            return num / den if den else 1.0

        return {
            "dice": ratio(2 * tp, 2 * tp + fp + fn),
            "iou": ratio(tp, tp + fp + fn),
            "precision": ratio(tp, tp + fp),
            "recall": ratio(tp, tp + fn),
        }

    counts = [((p & t).sum(), (p & ~t).sum(), (~p & t).sum()) for p, t in zip(preds, targets, strict=True)]
    if average == "micro":
        return scores(*np.sum(counts, axis=0))
    per_image = [scores(*c) for c in counts]
    return {k: float(np.mean([s[k] for s in per_image])) for k in per_image[0]}


@pytest.mark.parametrize("average", ["micro", "image"])
def test_binary_metrics_match_numpy_counts(average: str) -> None:
    rng = np.random.default_rng(1)
    preds = [_blob(rng) for _ in range(5)] + [np.zeros((9, 7), bool), np.zeros((8, 8), bool)]
    targets = [_blob(rng) for _ in range(5)] + [np.zeros((9, 7), bool), np.ones((8, 8), bool)]
    expected = _binary_reference(preds, targets, average)
    for name, cls in BINARY.items():
        assert float(_run(cls(average=average), preds, targets)) == pytest.approx(expected[name], abs=1e-6)


def test_binary_empty_and_perfect_conventions() -> None:
    empty = np.zeros((6, 6), bool)
    full = np.ones((6, 6), bool)
    for cls in BINARY.values():  # nothing to find, nothing found: perfect in both modes
        assert float(_run(cls(), [empty], [empty])) == 1.0
        assert float(_run(cls(average="image"), [empty], [empty])) == 1.0
    missed = {name: float(_run(cls(), [empty], [full])) for name, cls in BINARY.items()}
    assert missed == {"dice": 0.0, "iou": 0.0, "precision": 1.0, "recall": 0.0}
    mask = _blob(np.random.default_rng(2))
    assert float(_run(Dice(), [torch.from_numpy(mask)], [mask])) == 1.0


def _reference_boundary(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, constant_values=True)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _reference_boundary_counts(pred: np.ndarray, target: np.ndarray, tolerance: float) -> np.ndarray:
    """(matched pred, pred total, matched target, target total) by brute-force pairwise distances."""
    pb = np.argwhere(_reference_boundary(pred)).astype(float)
    gb = np.argwhere(_reference_boundary(target)).astype(float)
    if len(pb) == 0 or len(gb) == 0:
        return np.array([0, len(pb), 0, len(gb)], float)
    dist = np.linalg.norm(pb[:, None] - gb[None], axis=-1)
    return np.array([(dist.min(1) <= tolerance).sum(), len(pb), (dist.min(0) <= tolerance).sum(), len(gb)])


def _f_from_counts(counts: np.ndarray) -> float:
    pred_hit, pred_total, gt_hit, gt_total = counts
    if pred_total == 0 and gt_total == 0:
        return 1.0
    if pred_total == 0 or gt_total == 0 or pred_hit + gt_hit == 0:
        return 0.0
    precision, recall = pred_hit / pred_total, gt_hit / gt_total
    return 2 * precision * recall / (precision + recall)


def test_boundary_fscore_matches_brute_force() -> None:
    square = np.zeros((20, 20), bool)
    square[5:13, 5:13] = True
    shifted = np.roll(square, 1, axis=1)
    assert float(_run(BoundaryFScore(tolerance=1), [shifted], [square])) == 1.0
    far = np.roll(square, 4, axis=0)
    expected = _f_from_counts(_reference_boundary_counts(far, square, 1))
    assert 0 < expected < 1
    assert float(_run(BoundaryFScore(tolerance=1), [far], [square])) == pytest.approx(expected)

    rng = np.random.default_rng(3)
    preds, targets = [_blob(rng, 40) for _ in range(4)], [_blob(rng, 40) for _ in range(4)]
    preds.append(np.zeros((40, 40), bool))
    targets.append(np.zeros((40, 40), bool))
    # 0.02 of the 40x40 diagonal (56.6 px) rounds up to 2 px, as DAVIS does.
    counts = [_reference_boundary_counts(p, t, 2) for p, t in zip(preds, targets, strict=True)]
    per_image = np.mean([_f_from_counts(c) for c in counts])
    assert float(_run(BoundaryFScore(tolerance=0.02), preds, targets)) == pytest.approx(per_image)
    micro = _f_from_counts(np.sum(counts, axis=0))
    assert float(_run(BoundaryFScore(tolerance=2, average="micro"), preds, targets)) == pytest.approx(micro)


# --------------------------------------------------------------------------- semantic


def _semantic_reference(preds: list[np.ndarray], targets: list[np.ndarray], k: int, ignore: int) -> dict:
    confusion = np.zeros((k, k))
    for p, t in zip(preds, targets, strict=True):
        keep = t != ignore
        np.add.at(confusion, (t[keep], p[keep]), 1)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    present = union > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(present, inter / union, np.nan)
    return {
        "miou": per_class[present].mean() if present.any() else np.nan,
        "pixel_accuracy": inter.sum() / confusion.sum(),
        **{f"iou/class_{c}": per_class[c] for c in range(k)},
    }


def test_semantic_collection_matches_reference_and_ignores_ignored_images() -> None:
    rng = np.random.default_rng(4)
    k, ignore = 5, 255
    preds = [rng.integers(0, 3, (12, 10)) for _ in range(3)] + [np.full((4, 4), 4)]  # class 4: only predicted
    targets = [rng.integers(0, 3, (12, 10)) for _ in range(3)] + [np.full((4, 4), 1)]
    targets[0][:3] = ignore
    expected = _semantic_reference(preds, targets, k, ignore)
    assert math.isnan(expected["iou/class_3"]) and expected["iou/class_4"] == 0.0
    metrics = build_metrics("semantic", ["miou", "class_iou", "pixel_accuracy"], num_classes=k, ignore_index=ignore)
    # An all-ignore image, of another size, changes nothing.
    metrics.update([*preds, np.zeros((3, 3), np.int64)], [*targets, np.full((3, 3), ignore)])
    result = _as_floats(metrics.compute())
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, nan_ok=True), key


def test_semantic_all_ignored_and_perfect() -> None:
    ignored = np.full((4, 4), 255)
    assert math.isnan(float(_run(MeanIoU(3, ignore_index=255), [np.zeros((4, 4), np.int64)], [ignored])))
    labels = np.random.default_rng(5).integers(0, 3, (8, 8))
    assert float(_run(MeanIoU(3), [labels], [labels])) == 1.0
    assert float(_run(PixelAccuracy(3), [labels], [labels])) == 1.0
    # An in-range ignore index is left out of the per-class results.
    assert "iou/class_0" not in _run(ClassIoU(3, ignore_index=0), [labels], [labels])


# --------------------------------------------------------------------------- instances


@dataclass
class _Instances:
    """Stand-in for the codec's decoded ``Instances`` record (attributes, not a dict)."""

    masks: np.ndarray
    scores: np.ndarray
    labels: np.ndarray | None = None


def _box_mask(size: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _ap(pred: Any, target: Any) -> dict[str, float]:
    return {name: float(_run(METRICS["instances"][name](), [pred], [target])) for name in ("map", "map50", "map75")}


def test_mask_ap_known_cases() -> None:
    gt = _box_mask(32, 4, 14, 4, 14)[None]  # one 10x10 instance
    far = _box_mask(32, 20, 30, 20, 30)
    assert _ap({"masks": gt, "scores": np.array([0.9])}, gt) == {"map": 1.0, "map50": 1.0, "map75": 1.0}

    # Ranked first, the true positive reaches recall 1 at precision 1; ranked after the false positive,
    # recall 1 comes at precision 1/2 and the interpolated precision is 1/2 at every recall level.
    ranked = _Instances(np.stack([gt[0], far]), np.array([0.9, 0.3]))
    swapped = _Instances(np.stack([gt[0], far]), np.array([0.3, 0.9]))
    assert _ap(ranked, {"masks": gt})["map"] == pytest.approx(1.0)
    assert _ap(swapped, {"masks": gt}) == pytest.approx({"map": 0.5, "map50": 0.5, "map75": 0.5})

    # An 8x8 mask inside the 10x10 one has IoU 0.64: a hit at IoU thresholds 0.50, 0.55, 0.60 of 0.50:0.95.
    inner = _box_mask(32, 5, 13, 5, 13)[None]
    assert _ap({"masks": inner, "scores": np.array([0.8])}, gt) == pytest.approx(
        {"map": 0.3, "map50": 1.0, "map75": 0.0}
    )

    # Classes must match; no prediction scores 0; no target instance is COCO's -1.
    wrong_class = {"masks": gt, "scores": np.array([0.9]), "labels": np.array([1])}
    assert _ap(wrong_class, {"masks": gt, "labels": np.array([0])})["map"] == 0.0
    assert _ap({"masks": np.zeros((0, 32, 32), bool), "scores": np.zeros(0)}, gt)["map"] == 0.0
    assert _ap({"masks": gt, "scores": np.array([0.9])}, np.zeros((0, 32, 32), bool))["map"] == -1.0


# --------------------------------------------------------------------------- depth


def _depth_reference(pred: np.ndarray, gt: np.ndarray, space: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel AbsRel and delta1 over valid pixels, aligning with numpy's lstsq."""
    valid = np.isfinite(gt) & (gt > 0)
    g, p = gt[valid], pred[valid]
    target = {"disparity": 1 / g, "depth": g, "log": np.log(g)}[space]
    (scale, shift), *_ = np.linalg.lstsq(np.stack([p, np.ones_like(p)], 1), target, rcond=None)
    fitted = scale * p + shift
    if space == "disparity":
        depth = 1 / np.maximum(fitted, 1 / g.max())
    elif space == "log":
        depth = np.exp(fitted)
    else:
        depth = fitted
    depth = np.clip(depth, g.min(), g.max())
    return np.abs(depth - g) / g, np.maximum(depth / g, g / depth) < 1.25


def _depth_scene(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    gt = rng.uniform(0.5, 10.0, size)
    gt[0, :3] = [0.0, np.nan, np.inf]  # invalid pixels
    return gt


def _encoded(gt: np.ndarray, space: str) -> np.ndarray:
    """The GT in the space the prediction is fitted in, 1 at invalid pixels."""
    safe = np.where(np.isfinite(gt) & (gt > 0), gt, 1.0)
    return {"disparity": 1 / safe, "depth": safe, "log": np.log(safe)}[space]


@pytest.mark.parametrize("space", ["disparity", "depth", "log"])
def test_depth_exact_up_to_scale_and_shift(space: str) -> None:
    gt = _depth_scene(np.random.default_rng(6), (10, 12))
    pred = -3.0 * _encoded(gt, space) + 7.0
    pred[0, :3] = 123.0  # garbage at the invalid pixels
    assert float(_run(AbsRel(space=space), [pred], [gt])) == pytest.approx(0.0, abs=1e-9)
    assert float(_run(Delta1(space=space), [pred], [gt])) == 1.0


@pytest.mark.parametrize("space", ["disparity", "depth", "log"])
@pytest.mark.parametrize("average", ["image", "micro"])
def test_depth_matches_lstsq_reference(space: str, average: str) -> None:
    rng = np.random.default_rng(7)
    gts = [_depth_scene(rng, (8, 9)), _depth_scene(rng, (5, 5)), _depth_scene(rng, (12, 4))]
    # Noise, a noisy prediction, and one with outliers whose aligned depth falls outside the GT range.
    preds = [rng.normal(size=g.shape) for g in gts]
    preds[1] += _encoded(gts[1], space)
    preds[2] = _encoded(gts[2], space)
    low, high = preds[2][1:].min(), preds[2][1:].max()
    preds[2][5, :2] = [2 * low - high, 2 * high - low]
    errors = [_depth_reference(p, g, space) for p, g in zip(preds, gts, strict=True)]
    if average == "image":
        expected = [np.mean([e[k].mean() for e in errors]) for k in range(2)]
    else:
        expected = [np.concatenate([e[k] for e in errors]).mean() for k in range(2)]
    no_valid = np.zeros((3, 3))  # skipped, whatever the prediction
    preds, gts = [*preds, np.ones((3, 3))], [*gts, no_valid]
    assert float(_run(AbsRel(space=space, average=average), preds, gts)) == pytest.approx(expected[0])
    assert float(_run(Delta1(space=space, average=average), preds, gts)) == pytest.approx(expected[1])


# --------------------------------------------------------------------------- normals


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_normals_match_numpy_angles() -> None:
    rng = np.random.default_rng(8)
    gts = [_unit(rng.normal(size=(16, 12, 3))), _unit(rng.normal(size=(7, 9, 3)))]
    preds = [g + rng.normal(scale=0.4, size=g.shape) for g in gts]
    gts[0][:2] = 0.0  # invalid pixels
    angles = np.concatenate(
        [
            np.degrees(np.arccos(np.clip((_unit(p) * g).sum(-1), -1, 1)))[np.linalg.norm(g, axis=-1) > 0]
            for p, g in zip(preds, gts, strict=True)
        ]
    )
    assert float(_run(MeanAngle(), preds, gts)) == pytest.approx(angles.mean(), abs=1e-4)
    # The median is read from a 0.01-degree histogram: within a bin of numpy's.
    assert float(_run(MedianAngle(), preds, gts)) == pytest.approx(np.median(angles), abs=0.01)
    for threshold in (11.25, 22.5, 30.0):
        within = _run(WithinAngle(threshold), preds, gts)
        assert float(within[f"within_{threshold:g}"]) == pytest.approx((angles < threshold).mean())


def test_normals_perfect_prediction() -> None:
    normals = _unit(np.random.default_rng(9).normal(size=(6, 6, 3)))
    assert float(_run(MeanAngle(), [normals], [normals])) == pytest.approx(0.0, abs=1e-4)
    assert float(_run(MedianAngle(), [normals], [normals])) <= 0.005  # centre of the first bin
    assert float(_run(WithinAngle(11.25), [normals], [normals])["within_11.25"]) == 1.0
    with pytest.raises(ValueError, match="multiple of bin_width"):
        WithinAngle(11.255, bin_width=0.01)


# --------------------------------------------------------------------------- keypoints


@dataclass
class _Keypoints:
    """Stand-in for the codec's ``Keypoints`` record, which carries no bounding box."""

    xy: np.ndarray
    visible: np.ndarray


def test_pck_hand_made() -> None:
    target_xy = np.array([[10.0, 10.0], [40.0, 20.0], [60.0, 30.0], [80.0, 40.0]])
    pred_xy = target_xy + np.array([[3.0, 4.0], [9.0, 12.0], [50.0, 50.0], [0.0, 0.0]])  # 5, 15, far, exact
    visible = np.array([True, True, False, True])
    pred = {"xy": pred_xy, "visible": np.array([True, True, True, False])}  # last: exact but not predicted
    # Size 100 -> 10 px: joint 0 hits, joint 1 misses, joint 2 is not labelled, joint 3 is missed.
    boxed = {"xy": target_xy, "visible": visible, "bbox": [0, 0, 100, 50]}
    sized = {"xy": target_xy, "visible": visible, "size": 100.0}
    for target in (boxed, sized):
        assert float(_run(PCK(), [pred], [target])) == pytest.approx(1 / 3)
    # No box: the visible joints span 70 px -> 7 px; a plain array prediction is all visible (joint 3 hits).
    assert float(_run(PCK(), [pred_xy], [_Keypoints(target_xy, visible)])) == pytest.approx(2 / 3)
    assert float(_run(PCK(), [target_xy], [_Keypoints(target_xy, visible)])) == 1.0


# --------------------------------------------------------------------------- rgb / heatmap


def test_image_metrics_match_numpy() -> None:
    rng = np.random.default_rng(10)
    targets = [rng.random((16, 16, 3)), rng.random((24, 20, 3))]
    preds = [np.clip(t + rng.normal(scale=s, size=t.shape), 0, 1) for t, s in zip(targets, (0.05, 0.2), strict=True)]
    psnr = np.mean([10 * np.log10(1 / np.mean((p - t) ** 2)) for p, t in zip(preds, targets, strict=True)])
    mae = np.concatenate([np.abs(p - t).ravel() for p, t in zip(preds, targets, strict=True)]).mean()
    metrics = build_metrics("rgb")
    metrics.update(preds, targets)
    result = _as_floats(metrics.compute())
    assert result["psnr"] == pytest.approx(psnr, rel=1e-4)
    assert result["mae"] == pytest.approx(mae, rel=1e-4)

    def channels_first(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).float().permute(2, 0, 1)[None]

    ssim = np.mean(
        [
            float(structural_similarity_index_measure(channels_first(p), channels_first(t), data_range=1.0))
            for p, t in zip(preds, targets, strict=True)
        ]
    )
    assert result["ssim"] == pytest.approx(ssim, rel=1e-4)


def test_heatmap_uint8_and_perfect() -> None:
    heat = (np.random.default_rng(11).random((12, 12)) * 255).astype(np.uint8)
    result = _as_floats(_run(build_metrics("heatmap"), [heat], [heat.astype(np.float32) / 255]))
    assert result["mae"] == pytest.approx(0.0, abs=1e-6)
    assert result["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert float(_run(PSNR(), [heat], [heat])) == math.inf
    assert float(_run(SSIM(), [heat], [heat])) == pytest.approx(1.0)


# --------------------------------------------------------------------------- distributed merging


def _data(codec: str, rng: np.random.Generator) -> tuple[list[Any], list[Any]]:
    """Six images of decoded predictions and targets per codec, of varying sizes."""
    sizes = [(12, 10), (9, 9), (16, 8), (10, 14), (8, 8), (11, 13)]
    if codec == "binary_mask":
        return [rng.random(s) > 0.5 for s in sizes], [rng.random(s) > 0.4 for s in sizes]
    if codec == "semantic":
        targets = [np.where(rng.random(s) < 0.1, 255, rng.integers(0, 4, s)) for s in sizes]
        return [rng.integers(0, 4, s) for s in sizes], targets
    if codec == "instances":
        gts = [np.stack([_box_mask(16, 2, 8, 2, 8), _box_mask(16, 9, 15, 5, 12)]) for _ in sizes]
        jitter = [np.roll(g, rng.integers(-2, 3), axis=2) for g in gts]
        return [{"masks": j, "scores": rng.random(2)} for j in jitter], gts
    if codec == "depth":
        gts = [rng.uniform(1, 5, s) for s in sizes]
        return [1 / g + rng.normal(scale=0.05, size=s) for g, s in zip(gts, sizes, strict=True)], gts
    if codec == "normals":
        gts = [_unit(rng.normal(size=(*s, 3))) for s in sizes]
        return [g + rng.normal(scale=0.3, size=g.shape) for g in gts], gts
    if codec == "keypoints":
        gts = [{"xy": rng.uniform(0, 50, (5, 2)), "visible": rng.random(5) > 0.2, "size": 50.0} for _ in sizes]
        return [g["xy"] + rng.normal(scale=4, size=(5, 2)) for g in gts], gts
    channels = 3 if codec == "rgb" else 1
    targets = [rng.random((*s, channels)).squeeze() for s in sizes]
    return [np.clip(t + rng.normal(scale=0.1, size=t.shape), 0, 1) for t in targets], targets


_OPTIONS: dict[str, dict[str, Any]] = {"semantic": {"num_classes": 4, "ignore_index": 255}}
_ALL_METRICS = [(codec, name) for codec, table in METRICS.items() for name in table]


@pytest.mark.parametrize(("codec", "name"), _ALL_METRICS)
def test_merging_per_process_states_equals_one_process(codec: str, name: str) -> None:
    """What a DDP sync does: two ranks see half the images each; their merged state is the full one."""
    preds, targets = _data(codec, np.random.default_rng(12))
    factory: Callable[..., Any] = METRICS[codec][name]
    full, rank0, rank1 = (factory(**_OPTIONS.get(codec, {})) for _ in range(3))
    expected = _as_floats(_run(full, preds, targets))
    _update(rank0, preds[:2], targets[:2])
    _update(rank1, preds[2:], targets[2:])
    rank0.merge_state(rank1)
    merged = _as_floats(rank0.compute())
    assert merged == pytest.approx(expected, nan_ok=True)


# --------------------------------------------------------------------------- factory


def test_collection_routes_images_and_returns_flat_names() -> None:
    preds, targets = _data("normals", np.random.default_rng(13))
    collection = build_metrics("normals")
    collection.update(preds[:3], targets[:3])  # a list: several images
    for pred, target in zip(preds[3:], targets[3:], strict=True):
        collection.update(pred, target)  # one image
    result = _as_floats(collection.compute())
    assert list(result) == DEFAULT_METRICS["normals"]
    assert result["mean_angle"] == pytest.approx(float(_run(MeanAngle(), preds, targets)))
    assert len(collection.compute_groups) == 1  # the normals family shares one histogram


def test_build_metrics_options_and_errors() -> None:
    assert build_metrics("depth", space="depth")["absrel"].space == "depth"
    assert build_metrics("binary_mask", ["dice", "boundary_f"], average="micro")["boundary_f"].average == "micro"
    with pytest.raises(ValueError, match=r"unknown metric 'dise'.*did you mean 'dice'\?.*valid: dice, iou"):
        build_metrics("binary_mask", ["dise"])
    with pytest.raises(ValueError, match="did you mean 'depth'"):
        build_metrics("depht")
    with pytest.raises(TypeError, match="did you mean 'space'"):
        build_metrics("depth", spcae="depth")


def test_every_default_metric_exists_with_a_direction() -> None:
    for codec, names in DEFAULT_METRICS.items():
        assert set(names) <= set(METRICS[codec])
    assert set(HIGHER_IS_BETTER) == {name for table in METRICS.values() for name in table}
    lower = {name for name, higher in HIGHER_IS_BETTER.items() if not higher}
    assert lower == {"absrel", "mean_angle", "median_angle", "mae"}
