"""Properties of the 2D families of the synthetic world (`layers` for pretraining; `cells` and `scans`, held out).

What pretraining and the few-shot evidence rely on: a sample is a function of its seed (bit for bit), its
content does not change with the resolution it is drawn at, its targets agree with each other and with the
image, and the held-out targets are neither empty nor everything (an all-background mask would make IoU
meaningless). The ray-cast `scenes` family has its own tests in test_synth.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from adaptkit.synth import (
    LAYER_CLASSES,
    LAYER_FAR_DEPTH,
    PRETRAINING_FAMILIES,
    RENDERERS,
    TASKS,
    render_cells,
    render_layers,
    render_scan,
)
from adaptkit.synth.shapes import instance_boundaries

FAMILIES_2D = ("layers", "cells", "scans")
SEEDS = range(24)


def _fields(sample: object) -> dict[str, np.ndarray]:
    return {f.name: getattr(sample, f.name) for f in dataclasses.fields(sample)}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list]:
    return {family: [RENDERERS[family](seed, 64) for seed in SEEDS] for family in FAMILIES_2D}


@pytest.mark.parametrize("family", FAMILIES_2D)
def test_same_seed_same_arrays_and_seeds_differ(family: str, rendered: dict[str, list]) -> None:
    again = RENDERERS[family](3, 64)
    for name, value in _fields(rendered[family][3]).items():
        np.testing.assert_array_equal(value, getattr(again, name), err_msg=name)
    images = {s.image.tobytes() for s in rendered[family]}
    assert len(images) == len(SEEDS)


@pytest.mark.parametrize("family", FAMILIES_2D)
def test_image_and_instances_have_the_documented_types(family: str, rendered: dict[str, list]) -> None:
    for sample in rendered[family]:
        assert sample.image.shape == (64, 64, 3) and sample.image.dtype == np.float32
        assert sample.image.min() >= 0.0 and sample.image.max() <= 1.0
        assert sample.instances.shape == (64, 64) and sample.instances.dtype == np.int32
        assert sample.instances.min() >= 0
    with pytest.raises(ValueError, match="resolution must be positive"):
        RENDERERS[family](0, 0)


@pytest.mark.parametrize("family", FAMILIES_2D)
def test_content_does_not_depend_on_resolution(family: str) -> None:
    """Pixel (i, j) at 32 px and the 4 x 4 block it covers at 128 px see the same picture and the same objects.

    The sensor noise is resampled per pixel, so the comparison is of block means, with a tolerance above
    the noise but far below the difference between two seeds."""
    for seed in (0, 1, 2):
        small, large = RENDERERS[family](seed, 32), RENDERERS[family](seed, 128)
        coarse = large.image.reshape(32, 4, 32, 4, 3).mean((1, 3))
        other = RENDERERS[family](seed + 100, 32).image
        assert np.abs(coarse - small.image).mean() < 0.5 * np.abs(other - small.image).mean()
        objects = large.instances.reshape(32, 4, 32, 4).max((1, 3)) > 0
        assert ((small.instances > 0) <= objects).mean() > 0.97  # an object at 32 px is there at 128 px


def test_layers_targets_agree(rendered: dict[str, list]) -> None:
    for sample in rendered["layers"]:
        assert sample.semantic.dtype == np.int64 and sample.semantic.max() < len(LAYER_CLASSES)
        np.testing.assert_array_equal(sample.semantic, sample.object_classes[sample.instances])
        assert len(sample.object_classes) == sample.instances.max() + 1  # ids are compact: 1..N all visible
        background = sample.instances == 0
        assert (sample.semantic[background] == 0).all()
        np.testing.assert_array_equal(sample.depth[background], LAYER_FAR_DEPTH)
        assert (sample.depth[~background] < LAYER_FAR_DEPTH).all() and (sample.depth > 0).all()
        np.testing.assert_allclose(np.linalg.norm(sample.normals, axis=-1), 1.0, atol=1e-5)
        assert (sample.normals[..., 2] > 0).all()  # every visible surface faces the camera
        np.testing.assert_array_equal(sample.boundaries, instance_boundaries(sample.instances))


def test_layers_painter_order_is_depth_order(rendered: dict[str, list]) -> None:
    """A later layer (a larger id) is drawn in front, so wherever two instances touch the larger one is nearer."""
    for sample in rendered["layers"]:
        ids, depth = sample.instances, sample.depth
        for a, b, da, db in ((ids[:, :-1], ids[:, 1:], depth[:, :-1], depth[:, 1:]),
                             (ids[:-1], ids[1:], depth[:-1], depth[1:])):
            touching = (a != b) & (a > 0) & (b > 0)
            front_a = a > b
            nearer_a = da < db
            assert (front_a[touching] == nearer_a[touching]).all()


def test_layers_show_every_kind_of_object() -> None:
    seen = set()
    for seed in range(60):
        seen |= set(np.unique(render_layers(seed, 32).semantic).tolist())
    assert seen == set(range(len(LAYER_CLASSES)))
    nucleus, cell = LAYER_CLASSES.index("nucleus"), LAYER_CLASSES.index("cell")
    for seed in range(60):  # a nucleus sits inside its cell: each nucleus instance touches the cell before it
        sample = render_layers(seed, 64)
        for k in np.flatnonzero(sample.object_classes == nucleus):
            if sample.object_classes[k - 1] == cell:
                grown = np.zeros_like(sample.instances, bool)
                grown[1:] |= sample.instances[:-1] == k
                grown[:-1] |= sample.instances[1:] == k
                assert (sample.instances[grown] == k - 1).any()


def test_cells_foreground_is_the_cells_and_is_brighter(rendered: dict[str, list]) -> None:
    fractions = []
    for sample in rendered["cells"]:
        np.testing.assert_array_equal(sample.foreground, sample.instances > 0)
        fractions.append(float(sample.foreground.mean()))
        grey = sample.image.max(-1)  # the one fluorescence channel, whatever colour it is shown in
        assert grey[sample.foreground].mean() > grey[~sample.foreground].mean() + 0.05
    assert min(fractions) > 0.03 and max(fractions) < 0.6
    assert max(fractions) - min(fractions) > 0.15  # density varies from field to field
    counts = [s.instances.max() for s in rendered["cells"]]
    assert min(counts) >= 1 and max(counts) > 10


def test_scans_lungs_are_two_dark_regions_inside_the_body(rendered: dict[str, list]) -> None:
    for sample in rendered["scans"]:
        np.testing.assert_array_equal(sample.lungs, np.isin(sample.instances, (1, 2)))
        assert set(np.unique(sample.instances)) == {0, 1, 2, 3}  # both lungs and the spine are in view
        assert 0.05 < sample.lungs.mean() < 0.4
        grey = sample.image[..., 0]
        np.testing.assert_array_equal(grey, sample.image[..., 2])  # grey-scale
        spine = sample.instances == 3
        assert grey[sample.lungs].mean() < grey[spine].mean() - 0.2
        # Left lung (1) lies left of the right lung (2) in the body frame (rotation stays under 20 degrees).
        cols = np.arange(64)[None, :]
        left = (cols * (sample.instances == 1)).sum() / (sample.instances == 1).sum()
        right = (cols * (sample.instances == 2)).sum() / (sample.instances == 2).sum()
        assert left < right


def test_held_out_renderers_are_not_pretraining_families() -> None:
    assert {TASKS["cells"].family, TASKS["lungs"].family}.isdisjoint(PRETRAINING_FAMILIES)
    assert RENDERERS["cells"] is render_cells and RENDERERS["scans"] is render_scan
