"""Which training objective to pick when training time is what you have: flow matching, single-step, or
single-step with the pixel loss, each given the same wall-clock budget of training.

On held-out synthetic tasks (binary masks, IoU), each objective trains quickstart.yaml's LoRA adapter on the
base from 50 images for `--seconds` seconds of training batches (validation excluded; a callback sets
`trainer.should_stop` at the budget), validating on 20 images every `--val-every` steps. The lr stays at its
peak after warmup: the step cap that sets the cosine horizon is never reached within the budget, so all
objectives share the same (flat) schedule. The adapter `train()` keeps (best validation IoU) is then scored on
`--test` test images, a flow adapter at 1 and 8 Euler steps (guidance 1.0), and inference is timed in seconds
per image (VAE encode + sampling + decode, batch 32; the fastest of three passes over 64 test images, since
the CPU is shared with other jobs and the minimum is the least disturbed estimate). Run:

    python benchmarks/objectives.py [--base default] [--tasks shadow nearest] [--seconds 120]
    python benchmarks/objectives.py --base tiny --quick          # smoke test

Writes ``benchmarks/results/objectives.json`` and ``objectives.png`` (validation IoU vs training seconds;
``objectives_quick.*`` with --quick).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, print_table, write_report
from _fewshot_common import (
    TASK_PROMPTS,
    TrainClock,
    describe,
    fresh_base,
    load_adapter,
    quiet,
    task_recipe,
    test_samples,
)

from adaptkit.adapters import AdaptedModel
from adaptkit.data import Sample
from adaptkit.inference import evaluate
from adaptkit.training import train

#: objective -> (recipe overrides, sampling steps it is scored at). Flow validates at 8 steps during training.
OBJECTIVE_RUNS: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "flow": ({"train.objective": "flow", "inference.steps": 8}, (1, 8)),
    "single_step": ({"train.objective": "single_step"}, (1,)),
    "single_step+pixel_loss": ({"train.objective": "single_step", "train.pixel_loss": True}, (1,)),
}

#: `train.steps`, far beyond what any budget reaches: the clock, not the step count, ends every run.
STEP_CAP = 1_000_000


def seconds_per_image(model: AdaptedModel, test: list[Sample], steps: int, repeats: int = 3) -> float:
    """Inference cost per image at `steps` sampling steps: the fastest of `repeats` passes over 64 test images."""
    images = [s.image for s in test[:64]]
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict_encoded(images, steps=steps, guidance=1.0, progress=False)
        timings.append((time.perf_counter() - started) / len(images))
    return min(timings)


def run_objective(args: argparse.Namespace, task: str, objective: str, resolution: int,
                  ) -> tuple[list[dict[str, Any]], list[dict[str, float]]]:
    """Train one objective on one task for the time budget; its test rows and its validation curve."""
    overrides, eval_steps = OBJECTIVE_RUNS[objective]
    recipe = task_recipe(args.base, task, resolution, {
        **overrides, "data.train_shots": 50, "data.val_shots": args.val, "data.test_shots": args.test,
        "train.steps": STEP_CAP, "train.val_every": args.val_every})
    test = test_samples(recipe)
    clock = TrainClock(budget_s=args.seconds)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        result = train(recipe, out, generalist=fresh_base(args.base), progress=False, callbacks=[clock])
        model = load_adapter(result.adapter, args.base)
        for steps in eval_steps:
            metrics = evaluate(model, test, steps=steps, guidance=1.0, progress=False).metrics
            cost = seconds_per_image(model, test, steps)
            rows.append({"task": task, "objective": objective, "eval_steps": steps, **metrics,
                         "train_seconds": clock.seconds, "train_steps": clock.steps,
                         "best_step": result.metrics.get("step"), "s_per_image": cost})
            print(f"  {task:>10} {objective:<22} {steps} step(s): IoU {metrics['iou']:.4f} after "
                  f"{clock.steps} steps in {clock.seconds:.0f} s; {cost * 1e3:.1f} ms/image",
                  flush=True)
    return rows, clock.points


def plot(curves: dict[str, dict[str, list[dict[str, float]]]], path: Path) -> None:
    """Per task: validation IoU against training seconds, one line per objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 3.8), squeeze=False)
    for axis, (task, by_objective) in zip(axes[0], curves.items(), strict=True):
        for objective, points in by_objective.items():
            axis.plot([p["seconds"] for p in points], [p["iou"] for p in points], marker="o", ms=3, label=objective)
        axis.set(title=f"{task}: validation IoU vs training time", xlabel="training seconds (validation excluded)",
                 ylabel="validation IoU", ylim=(0, 1))
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="default", help="generalist to adapt (`tiny` for a smoke test)")
    parser.add_argument("--tasks", nargs="+", default=["shadow", "nearest"], choices=sorted(TASK_PROMPTS))
    parser.add_argument("--seconds", type=float, default=120.0, help="training seconds per objective")
    parser.add_argument("--val-every", type=int, default=25, help="validate every this many steps")
    parser.add_argument("--val", type=int, default=20, help="validation images")
    parser.add_argument("--test", type=int, default=200, help="test images per task")
    parser.add_argument("--quick", action="store_true", help="smoke settings: 5 s, 4 validation, 8 test images")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.val_every, args.val, args.test = 5.0, 5, 4, 8
    quiet()

    probe = fresh_base(args.base, text_encoders=False)
    resolution = probe.config.resolution
    print(f"base {args.base!r} ({resolution} px): {args.seconds:.0f} s of training per objective, 50 training, "
          f"{args.val} validation, {args.test} test images per task")
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, list[dict[str, float]]]] = {}
    for task in args.tasks:
        for objective in OBJECTIVE_RUNS:
            task_rows, points = run_objective(args, task, objective, resolution)
            rows += task_rows
            curves.setdefault(task, {})[objective] = points

    print()
    print_table(rows, [("task", "task", ""), ("objective", "objective", ""), ("eval_steps", "eval steps", "d"),
                       ("iou", "IoU", ".4f"), ("dice", "Dice", ".4f"), ("train_seconds", "train s", ".0f"),
                       ("train_steps", "train steps", "d"), ("best_step", "kept step", "d"),
                       ("s_per_image", "s/image", ".4f")])
    name = "objectives_quick" if args.quick else "objectives"
    settings = {k: v for k, v in vars(args).items() if k != "quick"} | {"resolution": resolution, **describe(probe)}
    write_report(name, {"settings": settings, "rows": rows, "curves": curves})
    plot(curves, RESULTS / f"{name}.png")
    print(f"wrote {RESULTS / f'{name}.png'}")


if __name__ == "__main__":
    main()
