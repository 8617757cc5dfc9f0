"""Does labelling the suggested images beat labelling random ones? 10 labelled + 15 suggested against 10 + 15
random, on the held-out synthetic tasks.

Per task and seed: a pool of `--pool` training images and `--test` test images are drawn (quickstart.yaml,
`data.seed` = the seed). An adapter is trained on the pool's first `--labelled` images; `adaptkit.suggest`
ranks the rest of the pool (written out as PNG files, as a user's unlabelled folder) and picks `--suggested`;
a seeded random draw picks as many. One adapter is trained on each enlarged set with the same recipe, steps
and seed, and both are scored on the same test images (IoU over the test pixels, through `evaluate`). Reported
per task: mean IoU of each choice over the seeds, and the mean gain of suggested over random with a 95%
t-interval over the seeds (and over every task and seed at the end). A gain whose interval covers 0 is no
evidence that suggestion helps. Run:

    python benchmarks/suggest.py [--tasks cells lungs nearest shadow] [--seeds 0 1 2] [--steps 100]
                                 [--uncertainty flips]
    python benchmarks/suggest.py --base tiny --quick      # smoke test: tiny random base, a few steps

Writes ``benchmarks/results/{--name}.json`` (default ``suggest``; ``suggest_quick`` with --quick).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from _common import print_table, write_report
from _fewshot_common import TASK_PROMPTS, describe, fresh_base, quiet, task_recipe
from scipy import stats

from adaptkit.adapters import AdaptedModel
from adaptkit.codecs import build_codec
from adaptkit.data import Splits, load_splits
from adaptkit.generalist import Generalist
from adaptkit.images import to_pil
from adaptkit.inference import evaluate
from adaptkit.recipe import Recipe
from adaptkit.suggest import suggest_labels
from adaptkit.training import lend, train
from adaptkit.uncertainty import DEFAULT_ESTIMATOR, ESTIMATORS

HELD_OUT = ("cells", "lungs", "nearest", "shadow")


def fit(base: Generalist, recipe: Recipe, train_ids: list[str], test_ids: list[str], out: Path) -> Path:
    """An adapter trained on exactly `train_ids` on the lent base; its folder."""
    train(recipe, out, generalist=base, progress=False, splits=Splits(list(train_ids), [], list(test_ids)))
    return out / "adapter"


def test_iou(base: Generalist, adapter: Path, recipe: Recipe, test_ids: list[str]) -> float:
    with lend(base):
        model = AdaptedModel.from_pretrained(adapter, generalist=base)
        source, _ = load_splits(recipe.data, model.codec)
        return evaluate(model, source, ids=test_ids, progress=False).metrics["iou"]


def run(args: argparse.Namespace, task: str, seed: int, base: Generalist) -> dict[str, Any]:
    recipe = task_recipe(args.base, task, args.resolution, {
        "data.train_shots": args.pool, "data.val_shots": 0, "data.test_shots": args.test, "data.seed": seed,
        "train.steps": args.steps, "train.val_every": args.steps, "train.seed": seed})
    source, splits = load_splits(recipe.data, build_codec(recipe.task.codec, recipe.task.codec_args))
    labelled, unlabelled = splits.train[:args.labelled], splits.train[args.labelled:]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        first = fit(base, recipe, labelled, splits.test, scratch / "first")
        folder = scratch / "unlabelled"
        folder.mkdir()
        for id in unlabelled:  # the pool as a user's folder of unlabelled images
            to_pil(source.load(id).image).save(folder / f"{id}.png")
        with lend(base):
            model = AdaptedModel.from_pretrained(first, generalist=base)
            report = suggest_labels(model, [str(folder)], args.suggested, scratch / "suggest",
                                    uncertainty=args.uncertainty, progress=False)
        picked = [Path(s.source).stem for s in report.suggested]
        drawn = list(np.random.default_rng(seed).choice(unlabelled, args.suggested, replace=False))
        row = {"task": task, "seed": seed, "first": test_iou(base, first, recipe, splits.test),
               "suggested_ids": picked, "random_ids": drawn}
        for name, extra in (("suggested", picked), ("random", drawn)):
            adapter = fit(base, recipe, labelled + extra, splits.test, scratch / name)
            row[name] = test_iou(base, adapter, recipe, splits.test)
    row["gain"] = row["suggested"] - row["random"]
    print(f"{task:8s} seed {seed}: IoU {args.labelled} labelled {row['first']:.3f}; +{args.suggested} suggested "
          f"{row['suggested']:.3f}, +{args.suggested} random {row['random']:.3f} (gain {row['gain']:+.3f})",
          flush=True)
    return row


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval (the mean alone, twice, for a single value)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups = {task: [r for r in rows if r["task"] == task] for task in dict.fromkeys(r["task"] for r in rows)}
    groups["all"] = rows
    summary = []
    for task, mine in groups.items():
        gain, low, high = interval([r["gain"] for r in mine])
        summary.append({"task": task, "runs": len(mine), "first": float(np.mean([r["first"] for r in mine])),
                        "suggested": float(np.mean([r["suggested"] for r in mine])),
                        "random": float(np.mean([r["random"] for r in mine])), "gain": gain, "low": low,
                        "high": high, "verdict": "one run: no interval" if len(mine) < 2 else
                        "suggested better" if low > 0 else "random better" if high < 0 else "no difference shown"})
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="default")
    parser.add_argument("--tasks", nargs="+", default=list(HELD_OUT), choices=sorted(TASK_PROMPTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labelled", type=int, default=10)
    parser.add_argument("--suggested", type=int, default=15)
    parser.add_argument("--pool", type=int, default=70, help="training pool: the labelled images and the rest")
    parser.add_argument("--test", type=int, default=50)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--uncertainty", default=DEFAULT_ESTIMATOR, choices=ESTIMATORS)
    parser.add_argument("--quick", action="store_true", help="a few steps and images: checks the script runs")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    if args.quick:
        args.labelled, args.suggested, args.pool, args.test, args.steps, args.seeds = 2, 2, 6, 3, 2, [0]
    quiet()
    base = fresh_base(args.base)  # one base lent to every training: each task's prompt cached, then no text stack
    base.prompts.encode(sorted({"", *(TASK_PROMPTS[task] for task in args.tasks)}))
    base.prompts.drop_text_encoders()
    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            rows.append(run(args, task, seed, base))
    summary = summarise(rows)
    print_table(summary, [("task", "task", "s"), ("runs", "runs", "d"), ("first", f"{args.labelled} only", ".3f"),
                          ("suggested", "+suggested", ".3f"), ("random", "+random", ".3f"), ("gain", "gain", "+.3f"),
                          ("low", "95% low", "+.3f"), ("high", "95% high", "+.3f"), ("verdict", "verdict", "s")])
    settings = {k: v for k, v in vars(args).items() if k != "name"}
    write_report(args.name or ("suggest_quick" if args.quick else "suggest"),
                 {"settings": settings, **describe(base), "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
