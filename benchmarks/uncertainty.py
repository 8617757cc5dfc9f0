"""Which uncertainty estimator to trust: how well each ranks wrong pixels, and what it costs.

On the held-out synthetic tasks (binary masks the default never saw), an adapter is trained per task and
objective through `adaptkit.training.train` (quickstart.yaml, `--shots` images, `--steps` steps): a
single-step one, as the quickstart trains, and a flow one sampled in `--flow-steps` steps with an ensemble of
`--ensemble`. Each is evaluated on the same `--test` images with every estimator it can use
(`adaptkit.uncertainty`: margin and flips for both; samples for the flow one), through `evaluate(...,
uncertainty=...)` as `adaptkit eval --uncertainty` runs it. Reported per row: `error_auroc` (AUROC of the map
for the wrong pixels: 0.5 is chance), the test IoU (the prediction does not depend on the estimator) and the
cost as seconds per image over the same evaluation without a map, measured in the same run. Run:

    python benchmarks/uncertainty.py [--tasks cells lungs nearest shadow] [--steps 150]
    python benchmarks/uncertainty.py --base tiny --quick      # smoke test: tiny random base, a few steps

Writes ``benchmarks/results/{--name}.json`` (default ``uncertainty``; ``uncertainty_quick`` with --quick).
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

from _common import print_table, write_report
from _fewshot_common import TASK_PROMPTS, describe, fresh_base, load_adapter, quiet, task_recipe

from adaptkit.data import load_splits
from adaptkit.inference import evaluate
from adaptkit.training import train
from adaptkit.uncertainty import ESTIMATORS, UncertaintyError

HELD_OUT = ("cells", "lungs", "nearest", "shadow")


def objective_overrides(args: argparse.Namespace, objective: str) -> dict[str, Any]:
    if objective == "single_step":
        return {"train.objective": "single_step"}
    return {"train.objective": "flow", "inference.steps": args.flow_steps, "inference.ensemble": args.ensemble}


def measure(args: argparse.Namespace, task: str, objective: str) -> list[dict[str, Any]]:
    """One adapter trained, then evaluated without a map and with each estimator it can use."""
    recipe = task_recipe(args.base, task, args.resolution, {
        "data.train_shots": args.shots, "data.val_shots": 0, "data.test_shots": args.test,
        "train.steps": args.steps, "train.val_every": args.steps, "train.seed": args.seed,
        "data.seed": args.seed, **objective_overrides(args, objective)})
    with tempfile.TemporaryDirectory() as out:
        result = train(recipe, out, generalist=fresh_base(args.base), progress=False)
        model = load_adapter(result.adapter, args.base)
    source, splits = load_splits(recipe.data, model.codec)
    plain = evaluate(model, source, ids=splits.test, progress=False)
    rows = []
    for estimator in ESTIMATORS:
        try:
            report = evaluate(model, source, ids=splits.test, progress=False, uncertainty=estimator)
        except UncertaintyError as error:  # e.g. samples for a single-step adapter: recorded as not applicable
            rows.append({"task": task, "objective": objective, "estimator": estimator, "refused": str(error)})
            continue
        rows.append({"task": task, "objective": objective, "estimator": estimator,
                     "error_auroc": report.metrics["error_auroc"], "iou": report.metrics["iou"],
                     "seconds_per_image": report.seconds_per_image,
                     "cost": report.seconds_per_image / plain.seconds_per_image})
        print(f"{task:8s} {objective:11s} {estimator:8s} AUROC {report.metrics['error_auroc']:.3f}  "
              f"IoU {report.metrics['iou']:.3f}  cost x{rows[-1]['cost']:.2f}", flush=True)
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean AUROC and cost per objective and estimator over the tasks."""
    summary = []
    for objective in dict.fromkeys(r["objective"] for r in rows):
        for estimator in ESTIMATORS:
            mine = [r for r in rows if (r["objective"], r["estimator"]) == (objective, estimator) and "cost" in r]
            if mine:
                summary.append({"task": "mean", "objective": objective, "estimator": estimator,
                                "error_auroc": sum(r["error_auroc"] for r in mine) / len(mine),
                                "iou": sum(r["iou"] for r in mine) / len(mine),
                                "cost": sum(r["cost"] for r in mine) / len(mine)})
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="default")
    parser.add_argument("--tasks", nargs="+", default=list(HELD_OUT), choices=sorted(TASK_PROMPTS))
    parser.add_argument("--shots", type=int, default=20)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--flow-steps", type=int, default=4)
    parser.add_argument("--ensemble", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps and images: checks the script runs")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    if args.quick:
        args.shots, args.test, args.steps, args.flow_steps, args.ensemble = 4, 4, 2, 2, 2
    quiet()
    rows = [row for task in args.tasks for objective in ("single_step", "flow")
            for row in measure(args, task, objective)]
    summary = summarise(rows)
    print_table([r for r in rows + summary if "cost" in r],
                [("task", "task", "s"), ("objective", "objective", "s"), ("estimator", "estimator", "s"),
                 ("error_auroc", "AUROC", ".3f"), ("iou", "IoU", ".3f"), ("cost", "cost x", ".2f")])
    settings = {k: v for k, v in vars(args).items() if k != "name"}
    write_report(args.name or ("uncertainty_quick" if args.quick else "uncertainty"),
                 {"settings": settings, **describe(fresh_base(args.base, text_encoders=False)), "rows": rows,
                  "summary": summary})


if __name__ == "__main__":
    main()
