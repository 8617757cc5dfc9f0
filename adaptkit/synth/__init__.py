"""The procedural perception world: seeded renderers of image families and the tasks drawn from them.

No real images or weights can be downloaded where adaptkit is developed and tested, so the small
generalist is pretrained on images rendered here, and the few-shot tasks it is adapted to are held-out
targets (and held-out families) of the same world. One module per family (`scenes`: ray-cast 3D scenes;
`layers`: flat compositions of blobs, rings, curves, cells and polygons, both pretrained on; `microscopy`
(family `cells`) and `scans`: held out, never pretrained on), `shapes`: the 2D drawing helpers they share,
and `tasks`: which task reads which field of which family, and writing tasks as plain data-set folders.
"""

from adaptkit.synth.layers import LAYER_CLASSES, LAYER_FAR_DEPTH, LayerSample, render_layers
from adaptkit.synth.microscopy import CellSample, render_cells
from adaptkit.synth.scans import ScanSample, render_scan
from adaptkit.synth.scenes import FAR_DEPTH, SEMANTIC_CLASSES, SceneSample, render_batch, render_scene
from adaptkit.synth.tasks import (
    HELDOUT_TASKS,
    PRETRAINING_FAMILIES,
    PRETRAINING_TASKS,
    RENDERERS,
    TASKS,
    SynthTask,
    read_pair,
    sample_point_prompt,
    write_dataset,
)

__all__ = [
    "FAR_DEPTH",
    "HELDOUT_TASKS",
    "LAYER_CLASSES",
    "LAYER_FAR_DEPTH",
    "PRETRAINING_FAMILIES",
    "PRETRAINING_TASKS",
    "RENDERERS",
    "SEMANTIC_CLASSES",
    "TASKS",
    "CellSample",
    "LayerSample",
    "ScanSample",
    "SceneSample",
    "SynthTask",
    "read_pair",
    "render_batch",
    "render_cells",
    "render_layers",
    "render_scan",
    "render_scene",
    "sample_point_prompt",
    "write_dataset",
]
