"""Every codec end to end, as a user runs it: a tiny folder in the codec's native format, `adaptkit check`,
`adaptkit train` (a few steps on the tiny generalist, with validations), the best adapter reloaded, `adaptkit
eval` and `adaptkit predict` to native files that load back as targets; a user codec defined here; the `hf` and
`coco` sources; both objectives and the pixel loss; `--resume`; and every bundled recipe on a folder laid out as
its comments say.

The runs are tiny (32 px, 2-4 steps, 3 training images) and share module-scoped folders and scenes: what is
tested is that each path runs and produces finite metrics and the promised files, not that it learns.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from adaptkit import synth
from adaptkit.adapters import AdaptedModel
from adaptkit.cli import main
from adaptkit.codecs import Codec, build_codec
from adaptkit.data import check_all, open_source
from adaptkit.inference import evaluate
from adaptkit.metrics import HIGHER_IS_BETTER, default_metric_names
from adaptkit.recipe import RecipeError, bundled_recipe_dir, load_recipe
from adaptkit.training import TrainingInterrupted, train

SIZE = 32  # the tiny generalist's resolution
SCENES = 5  # 3 train + 2 val
JOINTS = {"names": ["left_eye", "right_eye", "nose"], "skeleton": [[0, 2], [1, 2]]}


class RedChannelCodec(Codec):
    """A user codec of a new kind: a map in [0, 1] in the red channel (green and blue stay 0)."""

    name = "red_channel"
    resample = "bilinear"
    metric_table = "heatmap"  # its decoded (H, W) maps in [0, 1] are what heatmap metrics score

    def __init__(self, gain: float = 1.0) -> None:
        self.gain = gain

    def validate(self, target: Any) -> None:
        array = self._array(target, 2, "a map (H, W)")
        if not (np.issubdtype(array.dtype, np.floating) and array.min() >= 0 and array.max() <= 1):
            raise self._fail("expected floats in [0, 1]")

    def _encode(self, target: np.ndarray) -> np.ndarray:
        return np.stack([target * self.gain, 0 * target, 0 * target], axis=2)

    def _decode(self, image: np.ndarray) -> np.ndarray:
        return np.clip(image[..., 0] / self.gain, 0, 1).astype(np.float32)

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).abs().mean()

    def _from_array(self, array: np.ndarray, path: Path) -> np.ndarray:
        return array.astype(np.float32)


class UnscoredCodec(RedChannelCodec):
    """A new kind of codec that forgot to say how it is scored."""

    metric_table = ""


USER_CODEC = f"{__name__}:RedChannelCodec"


# ------------------------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def scenes() -> list[synth.SceneSample]:
    return synth.render_batch(range(SCENES), SIZE)


def _png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _rgb8(image: np.ndarray) -> np.ndarray:
    return np.rint(image * 255).astype(np.uint8)


def _joints(scene: synth.SceneSample, index: int) -> list[list[float]]:
    """Three keypoints per scene (deterministic, inside the image), COCO's [x, y, v] rows."""
    rng = np.random.default_rng(index)
    return [[float(x), float(y), 2] for x, y in rng.uniform(4, SIZE - 5, (3, 2))]


#: How each codec's targets are stored, in the formats users have: file name suffix -> writer.
def _write_target(codec: str, scene: synth.SceneSample, index: int, stem: Path) -> None:
    if codec == "binary_mask":
        _png(scene.nearest.astype(np.uint8) * 255, stem.with_suffix(".png"))
    elif codec == "semantic":
        _png(scene.semantic.astype(np.uint8), stem.with_suffix(".png"))  # 8-bit class ids
    elif codec == "instances":
        _png(scene.instances.astype(np.uint16), stem.with_suffix(".png"))  # 16-bit instance ids
    elif codec == "depth":
        np.save(stem.with_suffix(".npy"), scene.depth)
    elif codec == "depth_png":  # 16-bit PNG depth in millimetres, as sensors write it
        _png(np.rint(scene.depth * 1000).astype(np.uint16), stem.with_suffix(".png"))
    elif codec == "normals":
        _png(_rgb8((scene.normals + 1) / 2), stem.with_suffix(".png"))  # 8-bit colour-encoded normals
    elif codec == "keypoints":
        record = {"keypoints": _joints(scene, index), "width": SIZE, "height": SIZE}
        stem.with_suffix(".json").write_text(json.dumps(record))
    elif codec == "heatmap":
        heat = 1.0 - scene.depth / scene.depth.max()
        _png(np.rint(heat * 65535).astype(np.uint16), stem.with_suffix(".png"))  # 16-bit grey
    elif codec == "rgb":
        _png(_rgb8(1.0 - scene.image), stem.with_suffix(".png"))
    elif codec == "user":
        np.save(stem.with_suffix(".npy"), (1.0 - scene.depth / scene.depth.max()).astype(np.float32))
    else:
        raise AssertionError(codec)


def write_folder(root: Path, scenes: list[synth.SceneSample], kind: str, targets: str = "masks",
                 grey_images: bool = False, points: bool = False) -> Path:
    """`root/images/` and `root/{targets}/` with matching stems; with `points`, `root/prompts/` point prompts."""
    for index, scene in enumerate(scenes):
        if points:
            (root / "prompts").mkdir(parents=True, exist_ok=True)
            point = [[float(x), float(y)] for x, y in np.random.default_rng(index).uniform(0, SIZE - 1, (2, 2))]
            (root / "prompts" / f"{index:03d}.json").write_text(json.dumps({"points": point}))
        image = _rgb8(scene.image)
        if grey_images:  # 16-bit grey images (X-rays)
            image = np.rint(scene.image.mean(2) * 65535).astype(np.uint16)
        _png(image, root / "images" / f"{index:03d}.png")
        (root / targets).mkdir(parents=True, exist_ok=True)
        _write_target(kind, scene, index, root / targets / f"{index:03d}")
    return root


# ----------------------------------------------------------------------------------------- the matrix
@dataclass
class Case:
    """One end-to-end run: a codec, how its data is stored, and the training variant it exercises."""

    codec: str
    args: dict[str, Any] = field(default_factory=dict)
    data: str = ""  # the folder layout written by write_folder (default: the codec's own name)
    objective: str = "single_step"
    pixel_loss: bool = False
    #: what `predict` writes per image (suffixes), each loaded back with the codec's `load_target`
    outputs: tuple[str, ...] = (".png",)
    points: bool = False  # point prompts beside the images (validation and eval must both use them)


CASES = {
    "binary_mask": Case("binary_mask", objective="flow", points=True),
    "semantic": Case("semantic", {"num_classes": 5}, pixel_loss=True),
    "instances": Case("instances", objective="flow", outputs=(".png", ".json")),
    "depth": Case("depth", pixel_loss=True, outputs=(".npy", ".png")),
    "depth_png": Case("depth", {"mode": "log"}, data="depth_png", objective="flow", outputs=(".npy", ".png")),
    "normals": Case("normals", pixel_loss=True, outputs=(".npy", ".png")),
    "keypoints": Case("keypoints", JOINTS, pixel_loss=True, outputs=(".json",)),
    "heatmap": Case("heatmap", {"colormap": "viridis"}, outputs=(".npy", ".png")),
    "rgb": Case("rgb", objective="flow"),
    "user": Case(USER_CODEC, {"gain": 0.8}, data="user", outputs=(".npy",)),  # Codec.save's default
}


def case_recipe(case: Case, path: Path, **extra: Any) -> dict[str, Any]:
    flow = case.objective == "flow"
    return {
        "name": re.sub(r"[^\w.-]", "-", f"matrix-{case.data or case.codec}"),  # a user codec's path has ':'
        "task": {"prompt": "[[image2mask]]", "codec": case.codec, "codec_args": case.args},
        "base": {"generalist": "tiny"},
        "data": {"source": "folder", "path": str(path), "train_shots": 3, "val_shots": 2, **extra},
        "adapter": {"rank": 2, "alpha": 2},
        "train": {"objective": case.objective, "pixel_loss": case.pixel_loss, "steps": 2, "batch_size": 2,
                  "val_every": 1, "warmup": 0, "lr": 1e-3},
        "inference": {"steps": 2 if flow else 1, "guidance": 1.0, "batch_size": 4},
    }


def run_cli(*argv: str) -> None:
    code = main(list(argv))
    assert code == 0, f"adaptkit {' '.join(argv)} exited with {code}"


def _finite(values: dict[str, float]) -> bool:
    return all(math.isfinite(v) for k, v in values.items() if k != "step")


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, scenes) -> dict[str, Path]:
    """Every case checked and trained through the CLI; returns each run folder."""
    runs = {}
    for name, case in CASES.items():
        root = tmp_path_factory.mktemp(name)
        folder = write_folder(root / "data", scenes, case.data or case.codec, points=case.points)
        recipe = root / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(case_recipe(case, folder)))
        run_cli("check", str(recipe))
        run_cli("train", str(recipe), "--out", str(root / "run"))
        runs[name] = root / "run"
    return runs


@pytest.mark.parametrize("name", list(CASES))
def test_every_codec_trains_validates_reloads_evaluates_and_predicts(name, matrix, tmp_path):
    case, run = CASES[name], matrix[name]
    adapter = run / "adapter"
    for file in ("adapter_config.json", "adapter_model.safetensors", "adaptkit.json", "prompt_embeds.safetensors"):
        assert (adapter / file).is_file(), file
    meta = json.loads((adapter / "adaptkit.json").read_text())
    assert meta["codec"] == case.codec and meta["objective"] == case.objective  # rebuildable: name or module path
    record = json.loads((run / "metrics.json").read_text())
    model = AdaptedModel.from_pretrained(adapter)
    expected = default_metric_names(model.codec)
    assert [row["step"] for row in record["history"]] == [0, 1, 2]  # zero-shot, then every step
    for row in record["history"]:
        assert set(expected) <= set(row) and _finite(row), row
    best = max if HIGHER_IS_BETTER[expected[0]] else min
    headline = [row[expected[0]] for row in record["history"]]
    assert record["best"][expected[0]] == best(headline)  # the best validation's adapter is the one kept
    # eval through the CLI on the recorded validation images; the reloaded adapter reproduces validation
    run_cli("eval", str(adapter), "--split", "val", "--out", str(tmp_path / "eval"))
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["images"] == 2 and _finite(report["metrics"])
    for metric in expected:
        assert report["metrics"][metric] == pytest.approx(record["best"][metric], rel=1e-4, abs=1e-5), metric
    assert (tmp_path / "eval" / "grid.png").is_file()
    # predict to native files that read back as targets of the codec
    images = sorted((run.parent / "data" / "images").iterdir())[:2]
    run_cli("predict", str(adapter), *map(str, images), "--out", str(tmp_path / "pred"))
    for image in images:
        for suffix in case.outputs:
            written = tmp_path / "pred" / f"{image.stem}{suffix}"
            assert written.is_file(), written
        model.codec.load_target(tmp_path / "pred" / f"{image.stem}{case.outputs[0]}", (SIZE, SIZE))


def test_python_api_evaluates_a_reloaded_adapter_like_validation(matrix):
    """`AdaptedModel.from_pretrained` + `evaluate` (the API) agree with the CLI's validation for a user codec."""
    model = AdaptedModel.from_pretrained(matrix["user"] / "adapter")
    assert isinstance(model.codec, RedChannelCodec) and model.codec.gain == 0.8
    samples = check_all(open_source(load_recipe(model.meta.recipe).data, model.codec), model.meta.samples["val"])
    report = evaluate(model, samples, progress=False)
    assert report.metrics["mae"] == pytest.approx(model.meta.metrics["mae"], rel=1e-4, abs=1e-6)
    decoded = model.predict([samples[0].image], progress=False)[0]
    assert decoded.shape == (SIZE, SIZE) and decoded.dtype == np.float32


class _Interrupt(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 1:  # between validations: the resumed run must still validate at 2 and 4
            raise KeyboardInterrupt


def test_an_interrupted_depth_run_resumes_through_the_cli(tmp_path, scenes):
    case = CASES["depth"]
    folder = write_folder(tmp_path / "data", scenes, "depth")
    settings = case_recipe(case, folder)
    settings["train"].update(steps=4, val_every=2)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(TrainingInterrupted, match="--resume"):  # Ctrl-C: a checkpoint and how to resume
        train(load_recipe(path), tmp_path / "run", progress=False, callbacks=[_Interrupt()])
    run_cli("train", str(path), "--out", str(tmp_path / "run"), "--resume")
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [row["step"] for row in history] == [0, 2, 4]  # the whole record, before and after the interruption
    assert all(_finite(row) for row in history)
    AdaptedModel.from_pretrained(tmp_path / "run" / "adapter")


# -------------------------------------------------------------------------------- hf and coco sources
def _hf_dataset(path: Path, scenes: list[synth.SceneSample], targets: Callable[[int, synth.SceneSample], Any]) -> Path:
    import datasets

    rows = {"image": [Image.fromarray(_rgb8(s.image)) for s in scenes],
            "mask": [targets(i, s) for i, s in enumerate(scenes)]}
    datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image()).save_to_disk(str(path))
    return path


def test_hf_source_for_every_target_kind_and_training_from_it(tmp_path, scenes):
    """A `datasets` dataset holds targets as images or arrays: each codec parses them as it parses its files."""
    columns: dict[str, tuple[dict[str, Any], Callable[[int, synth.SceneSample], Any]]] = {
        "binary_mask": ({}, lambda i, s: Image.fromarray(s.nearest.astype(np.uint8) * 255)),
        "semantic": ({"num_classes": 5}, lambda i, s: Image.fromarray(s.semantic.astype(np.uint8))),
        "instances": ({}, lambda i, s: s.instances.astype(np.int32).tolist()),
        "depth": ({}, lambda i, s: s.depth.tolist()),
        "normals": ({}, lambda i, s: Image.fromarray(_rgb8((s.normals + 1) / 2))),
        "keypoints": (JOINTS, lambda i, s: _joints(s, i)),
        "heatmap": ({}, lambda i, s: (1.0 - s.depth / s.depth.max()).tolist()),
        "rgb": ({}, lambda i, s: Image.fromarray(_rgb8(1.0 - s.image))),
    }
    for codec, (args, target) in columns.items():
        path = _hf_dataset(tmp_path / codec, scenes, target)
        objective = "flow" if codec == "instances" else "single_step"
        recipe = load_recipe(case_recipe(Case(codec, args, objective=objective), path, source="hf"))
        source = open_source(recipe.data, build_codec(codec, args))
        samples = check_all(source, source.ids())
        assert len(samples) == SCENES, codec
    recipe = load_recipe(case_recipe(Case("semantic", {"num_classes": 5}), tmp_path / "semantic", source="hf"))
    result = train(recipe, tmp_path / "run", progress=False)
    assert _finite(result.metrics) and "miou" in result.metrics


PERSON = 9  # the category of the keypoint annotations; the other codecs choose the scene's classes
OBJECTS = list(synth.SEMANTIC_CLASSES[1:])


def _coco(root: Path, scenes: list[synth.SceneSample]) -> Path:
    """A COCO json of the scenes' objects: one box polygon per instance (category = its synthetic class), and a
    person annotation with the scene's keypoints."""
    images, annotations = [], []
    for index, scene in enumerate(scenes):
        _png(_rgb8(scene.image), root / "images" / f"{index}.png")
        images.append({"id": index, "file_name": f"{index}.png", "height": SIZE, "width": SIZE})
        for instance in range(1, int(scene.instances.max()) + 1):
            rows, cols = np.nonzero(scene.instances == instance)
            if not len(rows):
                continue
            x0, y0, x1, y1 = float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)
            annotations.append({"id": len(annotations) + 1, "image_id": index, "iscrowd": 0,
                                "category_id": int(scene.object_classes[instance]),
                                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
        annotations.append({"id": len(annotations) + 1, "image_id": index, "category_id": PERSON, "iscrowd": 0,
                            "segmentation": [[0, 0, 1, 0, 1, 1]], "num_keypoints": 3,
                            "keypoints": [v for row in _joints(scene, index) for v in row]})
    categories = [{"id": k, "name": name} for k, name in enumerate(synth.SEMANTIC_CLASSES) if k > 0]
    categories.append({"id": PERSON, "name": "person"})
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_coco_source_for_every_codec_it_supports_and_training_instances_from_it(tmp_path, scenes):
    path = _coco(tmp_path, scenes)
    for codec, args in (("binary_mask", {}), ("semantic", {"num_classes": 5}), ("instances", {}),
                        ("keypoints", JOINTS)):
        objective = "flow" if codec == "instances" else "single_step"
        recipe = load_recipe(case_recipe(Case(codec, args, objective=objective), path, source="coco",
                                         categories=OBJECTS))
        samples = check_all(open_source(recipe.data, build_codec(codec, args)), [str(i) for i in range(SCENES)])
        assert len(samples) == SCENES, codec
    recipe = load_recipe(case_recipe(Case("instances", objective="flow"), path, source="coco", categories=OBJECTS))
    result = train(recipe, tmp_path / "run", progress=False)
    assert _finite(result.metrics) and {"map", "map50", "map75"} <= set(result.metrics)


# -------------------------------------------------------------------------------- recipe validation
def test_single_step_instances_are_refused_with_the_objective_that_can(tmp_path, scenes):
    folder = write_folder(tmp_path / "data", scenes, "instances")
    with pytest.raises(RecipeError, match=r"instances .* random .* single_step .* train\.objective=flow"):
        load_recipe(case_recipe(Case("instances"), folder))
    with pytest.raises(RecipeError, match=r"eval\.metrics: unknown metric 'dice' for codec 'depth'"):
        load_recipe({**case_recipe(Case("depth"), folder), "eval": {"metrics": ["dice"]}})
    with pytest.raises(RecipeError, match=r"task\.codec: codec .*UnscoredCodec' names metric table '', .*heatmap"):
        load_recipe(case_recipe(Case(f"{__name__}:UnscoredCodec"), folder))
    with pytest.raises(RecipeError, match=r"pixel_loss .* single_step"):
        load_recipe(case_recipe(Case("depth", objective="flow", pixel_loss=True), folder))


# -------------------------------------------------------------------------------- bundled recipes
#: Per bundled recipe, the folder its comments describe: (target layout, target folder, grey 16-bit images).
LAYOUTS = {
    "crack-concrete": ("binary_mask", "masks", False),
    "custom-depth": ("depth", "depth", False),
    "image-highlight": ("rgb", "targets", False),
    "lung-xray": ("binary_mask", "masks", True),
    "tumour-ultrasound": ("binary_mask", "masks", False),
}


def test_the_layouts_cover_every_bundled_recipe():
    assert set(LAYOUTS) | {"quickstart"} == {p.stem for p in bundled_recipe_dir().glob("*.yaml")}


@pytest.mark.parametrize("name", [*LAYOUTS, "quickstart"])
def test_bundled_recipe_trains_two_steps(name, tmp_path, scenes):
    overrides = ["base.generalist=tiny", f"base.resolution={SIZE}", "train.steps=2", "train.val_every=2",
                 "train.batch_size=2", "data.train_shots=3", "data.val_shots=2"]
    if name == "quickstart":
        overrides += [f"data.synth_resolution={SIZE}", "data.test_shots=0"]
    else:
        kind, targets, grey = LAYOUTS[name]
        write_folder(tmp_path / "data", scenes, kind, targets, grey)
        overrides.append(f"data.path={tmp_path / 'data'}")
    run_cli("check", name, *overrides)
    recipe = load_recipe(name, overrides)
    result = train(recipe, tmp_path / "run", progress=False)
    assert (result.adapter / "adapter_model.safetensors").is_file()
    assert _finite(result.metrics) and set(recipe.eval.metrics) <= set(result.metrics)


@pytest.mark.parametrize("task, kind", [("normals", "normals"), ("point_segmentation", "binary_mask")])
def test_eval_of_a_builtin_task_by_its_synthetic_name(task, kind, tmp_path, scenes):
    """`adaptkit eval --task` takes the synthetic world's task names too; point prompts come from prompts/."""
    folder = write_folder(tmp_path / "data", scenes, kind, points=True)
    run_cli("eval", "--task", task, "--base", "tiny", "--data", str(folder), "--out", str(tmp_path / "eval"))
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["images"] == SCENES and _finite(report["metrics"])
