"""Tasks of the synthetic world: where each task's target comes from, and writing them as data sets.

A task names its family (the renderer that draws its images, `RENDERERS`), the field of the rendered
sample that holds its target, the codec that colours it and its split: ``pretraining`` for the tasks
the embedded default learns, ``heldout`` for the few-shot tasks it never sees.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from adaptkit.codecs import Codec, build_codec
from adaptkit.images import to_rgb_array
from adaptkit.synth.layers import render_layers
from adaptkit.synth.microscopy import render_cells
from adaptkit.synth.scans import render_scan
from adaptkit.synth.scenes import SEMANTIC_CLASSES, render_scene
from adaptkit.tasks import BUILTIN_TASKS

#: Each family's renderer: `render(seed, resolution)` gives a sample (a dataclass of arrays with at least
#: `image` and `instances`) that depends on the seed alone, whatever the resolution.
RENDERERS: dict[str, Callable[[int, int], Any]] = {
    "scenes": render_scene, "layers": render_layers, "cells": render_cells, "scans": render_scan,
}
#: The families the embedded default may be pretrained on; every other family (`cells`, `scans`) is held out
#: whole: its images are never seen in pretraining, so few-shot results on it measure transfer, not memory.
PRETRAINING_FAMILIES: tuple[str, ...] = ("scenes", "layers")


# --------------------------------------------------------------------------------------- point prompts


def sample_point_prompt(
    sample: Any, rng: np.random.Generator, max_points: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick one visible object and 1..``max_points`` distinct pixels on it (point-prompted segmentation).

    Points come from the object's interior (its mask eroded by one pixel), so a prompt never sits on an
    ambiguous edge pixel, and objects whose visible part is a sliver without interior are only chosen
    when nothing else is visible.

    Returns ``points`` int64 (k, 2) as (x, y) pixel coordinates, ``labels`` int64 (k,) all 1 (positive
    clicks), and the chosen object's ``mask`` bool (H, W).
    """
    ids = np.unique(sample.instances[sample.instances > 0])
    if not ids.size:
        raise ValueError("the scene has no visible object to prompt")
    interior = {i: ndimage.binary_erosion(sample.instances == i) for i in ids}
    choices = [i for i in ids if interior[i].any()] or list(ids)
    chosen = choices[rng.integers(len(choices))]
    mask = sample.instances == chosen
    pool = interior[chosen] if interior[chosen].any() else mask
    ys, xs = np.nonzero(pool)
    k = min(int(rng.integers(1, max_points + 1)), len(xs))
    pick = rng.choice(len(xs), size=k, replace=False)
    points = np.stack([xs[pick], ys[pick]], axis=1).astype(np.int64)
    return points, np.ones(k, np.int64), mask


# ----------------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class SynthTask:
    """A perception task of the synthetic world: where its target comes from and how it is coloured.

    ``codec`` names the colour encoding in ``adaptkit.codecs``. ``split`` is ``"pretraining"`` for tasks
    the generalist learns, ``"heldout"`` for the few-shot tasks it never sees. A ``prompted`` task's
    target is the mask of one instance chosen by :func:`sample_point_prompt`.
    """

    name: str
    field: str
    codec: str
    split: str
    prompted: bool = False
    family: str = "scenes"

    def render(self, seed: int, resolution: int) -> Any:
        """The sample of scene `seed` from this task's family."""
        return RENDERERS[self.family](seed, resolution)

    def target(self, sample: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """The target array of ``sample``, plus the (x, y) prompt points for a prompted task."""
        if self.prompted:
            points, _, mask = sample_point_prompt(sample, rng)
            return mask, points
        return getattr(sample, self.field), None


#: Where each of the generalist's built-in tasks (`adaptkit.tasks`) finds its target in a ``SceneSample``.
_SCENE_FIELDS = {"depth": "depth", "normals": "normals", "entity": "instances", "semantic": "semantic",
                 "point_segmentation": "instances"}
#: A data set stores ``semantic`` as the whole label map (the ``semantic`` codec, every class at once), which
#: the generalist answers one class per prompt (its built-in task's ``binary_mask``).
_STORED_CODECS = {"semantic": "semantic"}

TASKS: dict[str, SynthTask] = {
    task.name: task
    for task in (
        *(SynthTask(name, _SCENE_FIELDS[name], _STORED_CODECS.get(name, builtin.codec), "pretraining",
                    prompted=builtin.point_prompted) for name, builtin in BUILTIN_TASKS.items()),
        SynthTask("shadow", "shadow", "binary_mask", "heldout"),
        SynthTask("nearest", "nearest", "binary_mask", "heldout"),
        SynthTask("boundaries", "boundaries", "binary_mask", "heldout"),
        SynthTask("cells", "foreground", "binary_mask", "heldout", family="cells"),
        SynthTask("lungs", "lungs", "binary_mask", "heldout", family="scans"),
    )
}
PRETRAINING_TASKS: tuple[str, ...] = tuple(n for n, t in TASKS.items() if t.split == "pretraining")
HELDOUT_TASKS: tuple[str, ...] = tuple(n for n, t in TASKS.items() if t.split == "heldout")


# -------------------------------------------------------------------------------------------- datasets
def _target_codec(name: str) -> Codec:
    """The codec that writes and reads a task's target files, losslessly (``Codec.save_target``): masks as
    0/255 PNG, semantic labels and instance ids as 8/16-bit id PNG, depth and normals as float32 ``.npy`` (a
    PNG would quantise them). Semantic ids index ``SEMANTIC_CLASSES``."""
    return build_codec(name, {"num_classes": len(SEMANTIC_CLASSES)} if name == "semantic" else {})


def write_dataset(folder: str | Path, n: int, seed: int, task: str, resolution: int = 64) -> list[str]:
    """Write ``n`` scenes of ``task`` as a plain folder of image/target pairs with matching stems.

    Layout: ``images/{stem}.png`` (RGB), ``masks/{stem}.png|.npy`` (see ``_target_codec``), for prompted
    tasks ``prompts/{stem}.json`` (``{"points": [[x, y], ...], "labels": [1, ...]}``), and ``meta.json``
    describing the task and the scene seed behind every stem (for :func:`render_scene`). Item ``i``
    depends only on ``(seed, i)``, so a larger ``n`` extends a smaller dataset instead of reshuffling
    it. Returns the stems in order.
    """
    spec = TASKS[task]
    codec = _target_codec(spec.codec)
    root = Path(folder)
    subdirs = ["images", "masks"] + (["prompts"] if spec.prompted else [])
    for sub in subdirs:
        (root / sub).mkdir(parents=True, exist_ok=True)
    stems, scene_seeds = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        scene_seeds.append(int(rng.integers(2**62)))
        sample = spec.render(scene_seeds[-1], resolution)
        target, points = spec.target(sample, rng)
        stem = f"{i:05d}"
        Image.fromarray(np.round(sample.image * 255).astype(np.uint8)).save(root / "images" / f"{stem}.png")
        target_ext = codec.save_target(target, root / "masks" / stem).suffix
        if points is not None:
            prompt = {"points": points.tolist(), "labels": [1] * len(points)}
            (root / "prompts" / f"{stem}.json").write_text(json.dumps(prompt))
        stems.append(stem)
    meta = {
        "task": task,
        "field": spec.field,
        "codec": spec.codec,
        "split": spec.split,
        "family": spec.family,
        "n": n,
        "seed": seed,
        "resolution": resolution,
        "target_ext": target_ext if n else None,
        "scene_seeds": scene_seeds,
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=2))
    return stems


def read_pair(folder: str | Path, stem: str, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one pair written by :func:`write_dataset`: float32 image in [0, 1] and the target array.

    Targets come back with the dtypes of :class:`SceneSample` (bool masks, int64 semantic, int32
    instances, float32 depth/normals), bit-identical to what was written.
    """
    codec = _target_codec(TASKS[task].codec)
    root = Path(folder)
    image = to_rgb_array(root / "images" / f"{stem}.png")
    target_ext = json.loads((root / "meta.json").read_text())["target_ext"]
    target = codec.load_target(root / "masks" / f"{stem}{target_ext}", image.shape[:2])
    return image, target.astype(np.int32) if codec.name == "instances" else target  # the codec reads ids as int64
