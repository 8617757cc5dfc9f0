"""Every kind of task, adapted: each codec's synthetic task on the embedded default, zero-shot vs adapted from
50 images, scored with the codec's own headline metric on the same held-out test images.

The tasks come from the synthetic world (`adaptkit.synth`): masks of the nearest object (`binary_mask`, a task
the default never saw), depth (`depth`, AbsRel after disparity alignment), surface normals (`normals`, mean
angle), semantic labels as a palette map (`semantic`, mIoU: the default saw semantic segmentation only as one
class mask per prompt) and entities (`instances`, mask AP50, trained with `flow`: random per-instance colours
are what a single deterministic pass cannot learn, and recipe validation refuses `single_step` for them).
Keypoints, heatmaps and RGB have no synthetic task; the test suite's codec matrix trains them end to end.

* `zero-shot`: the default as it is (no adapter, one deterministic step, its pretraining objective) answering
  the task's prompt;
* `adapted`: a rank-4 LoRA (~1.4% of the transformer) trained by `adaptkit.training.train` on 50 images (with
  flips) for `--steps` steps, the best of its validations on 20 more images kept (step 0, the zero-shot point,
  included), reloaded from its folder and scored by `adaptkit.inference.evaluate`.

    OMP_NUM_THREADS=1 python benchmarks/tasks.py [--steps 250] [--test 100]
    OMP_NUM_THREADS=1 python benchmarks/tasks.py --base tiny --steps 2 --test 4 --shots 4   # smoke test

Writes ``benchmarks/results/tasks.json`` (``tasks_<base>.json`` for another base).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import print_table, write_report
from _fewshot_common import describe, fresh_base, load_adapter, quiet, test_samples

from adaptkit.adapters import AdaptedModel
from adaptkit.codecs import build_codec
from adaptkit.inference import evaluate
from adaptkit.metrics import HIGHER_IS_BETTER
from adaptkit.recipe import Recipe, load_recipe
from adaptkit.training import train

#: (row name, codec, synthetic task, prompt, codec arguments, objective, headline metric). Depth and normals
#: run twice: with the default's own prompt (can 50 images add to what pretraining taught?) and with a prompt
#: it never saw (the task taught from 50 images, as a user's new depth or normal task would be).
TASKS: list[tuple[str, str, str, str, dict[str, Any], str, str]] = [
    ("masks", "binary_mask", "nearest", "[[image2nearest]]", {}, "single_step", "iou"),
    ("depth", "depth", "depth", "[[image2depth]]", {}, "single_step", "absrel"),
    ("depth, new prompt", "depth", "depth", "[[image2far]]", {}, "single_step", "absrel"),
    ("normals", "normals", "normals", "[[image2normal]]", {}, "single_step", "mean_angle"),
    ("normals, new prompt", "normals", "normals", "[[image2tilt]]", {}, "single_step", "mean_angle"),
    ("semantic", "semantic", "semantic", "[[image2semantic]]", {"num_classes": 5}, "single_step", "miou"),
    ("entities", "instances", "entity", "[[image2entity]]", {}, "flow", "map50"),
]
ROWS = {row[0]: row for row in TASKS}
#: Flow adapters are sampled in several Euler steps (guidance 1.0: see benchmarks/inference.py).
FLOW_STEPS = 8


def task_recipe(args: argparse.Namespace, row: str, resolution: int) -> Recipe:
    _, codec, task, prompt, codec_args, objective, metric = ROWS[row]
    steps = FLOW_STEPS if objective == "flow" else 1
    return load_recipe("quickstart", {
        "name": f"{codec}-{task}", "task.prompt": prompt, "task.codec": codec, "task.codec_args": codec_args,
        "base.generalist": args.base, "data.synth_task": task, "data.synth_resolution": resolution,
        "data.train_shots": args.shots, "data.val_shots": args.val, "data.test_shots": args.test,
        "train.objective": objective, "train.steps": args.steps, "train.val_every": max(1, args.steps // 5),
        "inference.steps": steps, "eval.metrics": [metric]})


def run_task(args: argparse.Namespace, row_name: str, resolution: int, folder: Path) -> dict[str, Any]:
    recipe = task_recipe(args, row_name, resolution)
    metric = recipe.eval.metrics[0]
    samples = test_samples(recipe)
    codec = build_codec(recipe.task.codec, recipe.task.codec_args)
    base = fresh_base(args.base)
    zero_shot = AdaptedModel(base, codec, recipe.task.prompt, base.config.objective,
                             {"steps": 1, "guidance": 1.0, "batch_size": 32})
    before = evaluate(zero_shot, samples, metrics=[metric], progress=False).metrics[metric]
    started = time.perf_counter()
    out = folder / f"run{len(list(folder.iterdir()))}"
    result = train(recipe, out, generalist=fresh_base(args.base), progress=False)
    seconds = time.perf_counter() - started
    after = evaluate(load_adapter(result.adapter, args.base), samples, metrics=[metric], progress=False)
    row = {"row": row_name, "codec": recipe.task.codec, "task": recipe.data.synth_task, "prompt": recipe.task.prompt,
           "objective": recipe.train.objective, "inference_steps": recipe.inference.steps, "metric": metric,
           "higher_is_better": HIGHER_IS_BETTER[metric], "zero_shot": before, "adapted": after.metrics[metric],
           "train_seconds": seconds, "steps": recipe.train.steps, "best_step": result.metrics.get("step")}
    print(f"{row_name}: {metric} {before:.3f} -> {row['adapted']:.3f} ({seconds:.0f} s)", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="default")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--shots", type=int, default=50)
    parser.add_argument("--val", type=int, default=20)
    parser.add_argument("--test", type=int, default=100)
    args = parser.parse_args()
    quiet()
    base = fresh_base(args.base, text_encoders=False)
    resolution = base.config.resolution
    with tempfile.TemporaryDirectory() as folder:
        rows = [run_task(args, row, resolution, Path(folder)) for row in args.rows]
    print_table(rows, [("row", "row", ""), ("codec", "codec", ""), ("prompt", "prompt", ""),
                       ("task", "task", ""), ("objective", "objective", ""),
                       ("metric", "metric", ""), ("zero_shot", "zero-shot", ".3f"), ("adapted", "adapted", ".3f"),
                       ("train_seconds", "train s", ".0f")])
    name = "tasks" if args.base == "default" else f"tasks_{Path(args.base).name}"
    write_report(name, {**describe(base), "settings": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
