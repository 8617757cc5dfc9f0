"""Properties of the synthetic perception world that pretraining and few-shot tasks rely on."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from adaptkit.synth import (
    FAR_DEPTH,
    HELDOUT_TASKS,
    PRETRAINING_TASKS,
    SEMANTIC_CLASSES,
    TASKS,
    SceneSample,
    read_pair,
    render_batch,
    render_scene,
    sample_point_prompt,
    write_dataset,
)

GROUND = SEMANTIC_CLASSES.index("ground")
BACKGROUND = SEMANTIC_CLASSES.index("background")
SEEDS = range(40)


@pytest.fixture(scope="module")
def samples() -> list[SceneSample]:
    return render_batch(SEEDS, 64)


def _fields(sample: SceneSample) -> dict[str, object]:
    return {f.name: getattr(sample, f.name) for f in dataclasses.fields(sample)}


def _assert_same(a: SceneSample, b: SceneSample) -> None:
    for name, value in _fields(a).items():
        np.testing.assert_array_equal(value, getattr(b, name), err_msg=name)


def test_same_seed_gives_identical_arrays() -> None:
    _assert_same(render_scene(123), render_scene(123))


def test_different_seeds_give_different_scenes(samples: list[SceneSample]) -> None:
    images = [s.image.tobytes() for s in samples]
    assert len(set(images)) == len(images)
    assert len({len(s.object_classes) for s in samples}) > 1  # object count varies too


def test_scene_content_does_not_depend_on_resolution() -> None:
    small, large = render_scene(5, 32), render_scene(5, 128)
    np.testing.assert_array_equal(small.object_classes, large.object_classes)
    assert small.fov == large.fov
    # Pixel (i, j) at 32 px and the 4x4 block it covers at 128 px see the same scene.
    coarse = large.image.reshape(32, 4, 32, 4, 3).mean((1, 3))
    assert np.abs(coarse - small.image).mean() < 0.05


@pytest.mark.parametrize("resolution", [32, 64, 256])
def test_shapes_and_dtypes(resolution: int) -> None:
    s = render_scene(3, resolution)
    hw = (resolution, resolution)
    expected = {
        "image": ((*hw, 3), np.float32),
        "depth": (hw, np.float32),
        "normals": ((*hw, 3), np.float32),
        "instances": (hw, np.int32),
        "semantic": (hw, np.int64),
        "shadow": (hw, np.bool_),
        "nearest": (hw, np.bool_),
        "boundaries": (hw, np.bool_),
    }
    for name, (shape, dtype) in expected.items():
        value = getattr(s, name)
        assert value.shape == shape and value.dtype == dtype, name
    assert s.object_classes.dtype == np.int64
    assert s.image.min() >= 0.0 and s.image.max() <= 1.0


def test_rejects_non_positive_resolution() -> None:
    with pytest.raises(ValueError):
        render_scene(0, 0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**63 - 1))
def test_labels_depth_and_normals_are_consistent(seed: int) -> None:
    s = render_scene(seed, 32)
    objects = s.instances > 0
    # Instance ids index object_classes, which agrees with the semantic map.
    assert s.object_classes[0] == BACKGROUND
    assert set(s.object_classes[1:]) <= {2, 3, 4}
    assert s.instances.max() < len(s.object_classes)
    np.testing.assert_array_equal(s.semantic[objects], s.object_classes[s.instances[objects]])
    assert set(np.unique(s.semantic[~objects])) <= {BACKGROUND, GROUND}
    # Sky is exactly FAR_DEPTH, geometry is nearer.
    sky = s.semantic == BACKGROUND
    assert np.all(s.depth[sky] == FAR_DEPTH)
    assert np.all((s.depth[~sky] > 0) & (s.depth[~sky] < FAR_DEPTH))
    # Normals are unit everywhere; sky holds the camera-facing (0, 0, 1).
    np.testing.assert_allclose(np.linalg.norm(s.normals, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(s.normals[sky], np.broadcast_to([0, 0, 1], s.normals[sky].shape))
    # Masks only mark the right kind of pixel.
    assert not np.any(s.shadow & sky)
    assert not np.any(s.nearest & ~objects)


def _camera_rays(s: SceneSample) -> np.ndarray:
    """Camera-frame view directions (x right, y up, -z forward) through the pixel centres."""
    res = s.depth.shape[0]
    ndc = ((np.arange(res) + 0.5) / res * 2 - 1) * np.tan(s.fov / 2)
    xs, ys = np.meshgrid(ndc, -ndc)
    return np.stack([xs, ys, -np.ones_like(xs)], axis=-1)


def test_visible_normals_face_the_camera(samples: list[SceneSample]) -> None:
    for s in samples:
        geometry = s.semantic != BACKGROUND
        facing = (s.normals * -_camera_rays(s)).sum(-1)
        assert np.all(facing[geometry] > -1e-3)
        # The ground's normal is world-up: in the camera frame it points up and tilts toward the camera.
        ground = s.normals[s.semantic == GROUND]
        assert np.all(ground[:, 1] > 0.8) and np.all(ground[:, 2] > 0) and np.allclose(ground[:, 0], 0)


def test_ground_gets_farther_toward_the_horizon(samples: list[SceneSample]) -> None:
    for s in samples:
        ground = s.semantic == GROUND
        rows = np.flatnonzero(ground.any(axis=1))
        # No camera roll: the ground depth is constant along a row ...
        row_depth = np.array([s.depth[r][ground[r]].max() for r in rows])
        for r, d in zip(rows, row_depth, strict=True):
            np.testing.assert_allclose(s.depth[r][ground[r]], d, rtol=1e-5)
        # ... and grows with every row closer to the horizon (the top).
        assert np.all(np.diff(row_depth) < 0)


def test_objects_are_nearer_than_the_ground_behind_them(samples: list[SceneSample]) -> None:
    checked = 0
    for s in samples:
        ground = s.semantic == GROUND
        for r in np.flatnonzero(ground.any(axis=1)):
            on_object = s.instances[r] > 0
            assert np.all(s.depth[r][on_object] < s.depth[r][ground[r]].min())
            checked += on_object.sum()
    assert checked > 1000


def test_shadowed_ground_is_darker_than_lit_ground(samples: list[SceneSample]) -> None:
    luminance_pairs = []
    for s in samples:
        ground = s.semantic == GROUND
        luminance = s.image.mean(-1)
        shadowed, lit = ground & s.shadow, ground & ~s.shadow
        if shadowed.sum() >= 5:
            luminance_pairs.append((luminance[shadowed].mean(), luminance[lit].mean()))
    assert len(luminance_pairs) > len(samples) // 2
    for dark, bright in luminance_pairs:
        assert dark < 0.8 * bright


def test_nearest_is_the_object_with_the_smallest_depth(samples: list[SceneSample]) -> None:
    for s in samples:
        ids = np.unique(s.instances[s.instances > 0])
        if not ids.size:
            assert not s.nearest.any()
            continue
        closest = ids[np.argmin(ndimage.minimum(s.depth, s.instances, ids))]
        np.testing.assert_array_equal(s.nearest, s.instances == closest)


def test_boundaries_are_thin_edges_between_instances(samples: list[SceneSample]) -> None:
    for s in samples:
        # Every boundary pixel has a 4-neighbour of another instance, so edges are at most 2 px wide.
        padded = np.pad(s.instances, 1, mode="edge")
        neighbours = [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
        changes = np.any([n != s.instances for n in neighbours], axis=0)
        assert not np.any(s.boundaries & ~changes)
        if (s.instances > 0).sum() > 20:
            assert s.boundaries.any()


def test_point_prompt_lies_on_the_returned_instance(samples: list[SceneSample]) -> None:
    rng = np.random.default_rng(0)
    counts = set()
    for s in samples:
        points, labels, mask = sample_point_prompt(s, rng, max_points=5)
        assert points.dtype == np.int64 and points.shape[1] == 2 and 1 <= len(points) <= 5
        np.testing.assert_array_equal(labels, np.ones(len(points)))
        assert len({tuple(p) for p in points}) == len(points)
        ids = np.unique(s.instances[mask])
        assert len(ids) == 1 and ids[0] > 0
        np.testing.assert_array_equal(mask, s.instances == ids[0])
        assert mask[points[:, 1], points[:, 0]].all()  # points are (x, y)
        counts.add(len(points))
    assert len(counts) > 1


def test_point_prompt_needs_a_visible_object() -> None:
    s = render_scene(0, 32)
    empty = dataclasses.replace(s, instances=np.zeros_like(s.instances))
    with pytest.raises(ValueError):
        sample_point_prompt(empty, np.random.default_rng(0))


def test_task_registry() -> None:
    assert set(PRETRAINING_TASKS) == {"depth", "normals", "entity", "semantic", "point_segmentation"}
    assert set(HELDOUT_TASKS) == {"shadow", "nearest", "boundaries", "cells", "lungs"}
    for task in TASKS.values():
        assert hasattr(task.render(0, 8), task.field), task.name
        assert task.codec in {"depth", "normals", "instances", "semantic", "binary_mask"}


@pytest.mark.parametrize(
    "task", ["shadow", "depth", "normals", "entity", "semantic", "point_segmentation", "cells", "lungs"]
)
def test_write_dataset_round_trips(tmp_path, task: str) -> None:
    stems = write_dataset(tmp_path / "a", n=3, seed=11, task=task, resolution=32)
    image_stems = sorted(p.stem for p in (tmp_path / "a" / "images").iterdir())
    mask_stems = sorted(p.stem for p in (tmp_path / "a" / "masks").iterdir())
    assert stems == image_stems == mask_stems
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["task"] == task and len(meta["scene_seeds"]) == 3

    spec = TASKS[task]
    for stem, seed in zip(stems, meta["scene_seeds"], strict=True):
        image, target = read_pair(tmp_path / "a", stem, task)
        sample = spec.render(seed, 32)
        np.testing.assert_array_equal(image, np.round(sample.image * 255) / np.float32(255))
        if spec.prompted:
            prompt = json.loads((tmp_path / "a" / "prompts" / f"{stem}.json").read_text())
            points = np.array(prompt["points"])
            assert target[points[:, 1], points[:, 0]].all()
            instance = sample.instances[points[0, 1], points[0, 0]]
            np.testing.assert_array_equal(target, sample.instances == instance)
        else:
            expected = getattr(sample, spec.field)
            assert target.dtype == expected.dtype
            np.testing.assert_array_equal(target, expected)

    # Deterministic, and a larger n extends rather than reshuffles.
    write_dataset(tmp_path / "b", n=4, seed=11, task=task, resolution=32)
    for stem in stems:
        for sub in ("images", "masks"):
            path = next((tmp_path / "a" / sub).glob(f"{stem}.*"))
            assert path.read_bytes() == (tmp_path / "b" / sub / path.name).read_bytes()
