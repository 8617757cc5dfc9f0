"""What does `adaptkit sweep` buy on the quickstart task, and what does it cost?

(a) the bundled quickstart recipe, trained once, against a `--trials`-trial sweep of its bundled `sweep:` space
    (TPE, median pruning): validation IoU (what the sweep selects on) and test IoU (100 held-out images, scored
    once), and wall time;
(b) `--compare` trials in one sweep (one process, one loaded base, one latent cache) against the same trials as
    separate `adaptkit train` processes: the ratio of wall times (the sweep also tests its best adapter, which
    the separate runs do not: the ratio is conservative);
(c) the same trials with `--workers 1` and `--workers 2`: the ratio of wall times on this machine.
(b) and (c) use a grid over `adapter.rank` at `train.steps=--steps` with no pruning, so every variant runs the
very same trials. Every run is a fresh `adaptkit` process, timed end to end. Run (OMP_NUM_THREADS=1):

    python benchmarks/sweep.py [--trials 16] [--compare 4] [--steps 100]
    python benchmarks/sweep.py --trials 4 --compare 2 --steps 20     # smoke test

Writes ``benchmarks/results/sweep.json`` (and copies the sweep's plots beside it as ``sweep_*.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, print_table, write_report

RANKS = [2, 4, 8, 16, 1, 32]


def adaptkit(*args: str) -> float:
    """Run one `adaptkit` command in a fresh process; its wall time in seconds."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "adaptkit.cli", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - started


def bundled_recipe(folder: Path) -> dict[str, Any]:
    """Train the quickstart recipe as shipped; score its kept adapter on the test split, as the sweep does."""
    wall = adaptkit("train", "quickstart", "--out", str(folder / "run"))
    wall += adaptkit("eval", str(folder / "run" / "adapter"), "--out", str(folder / "eval"))
    validation = json.loads((folder / "run" / "metrics.json").read_text())["best"]
    test = json.loads((folder / "eval" / "metrics.json").read_text())["metrics"]
    return {"variant": "bundled recipe", "val_iou": validation["iou"], "test_iou": test["iou"], "wall_s": wall}


def sweep(folder: Path, trials: int) -> dict[str, Any]:
    wall = adaptkit("sweep", "quickstart", "--trials", str(trials), "--out", str(folder))
    record = json.loads((folder / "sweep.json").read_text())
    states = [t["state"] for t in record["trials"]]
    for plot in folder.glob("*.png"):
        shutil.copy(plot, RESULTS / f"sweep_{plot.name}")
    return {"variant": f"sweep, {trials} trials", "val_iou": record["best"]["value"],
            "test_iou": record["test"]["iou"], "wall_s": wall, "best_params": record["best"]["params"],
            "complete": states.count("complete"), "pruned": states.count("pruned"), "failed": states.count("fail")}


def same_trials(folder: Path, ranks: list[int], steps: int) -> list[dict[str, Any]]:
    """(b) and (c): the same grid of trials as one sweep, as separate processes, and with two workers."""
    space = f"{{adapter.rank: [{', '.join(map(str, ranks))}], train.lr: [3.0e-3], train.steps: [{steps}]}}"
    grid = [f"sweep.space={space}", "sweep.sampler=grid", "sweep.pruner=none", f"train.steps={steps}",
            "train.val_every=50"]
    rows = []
    for workers in (1, 2):
        wall = adaptkit("sweep", "quickstart", *grid, "--trials", str(len(ranks)), "--workers", str(workers),
                        "--out", str(folder / f"sweep-{workers}"))
        rows.append({"variant": f"one sweep, --workers {workers}", "wall_s": wall})
    wall = sum(adaptkit("train", "quickstart", f"adapter.rank={rank}", f"train.steps={steps}", "train.val_every=50",
                        "--out", str(folder / f"train-{rank}")) for rank in ranks)
    rows.append({"variant": "separate adaptkit train processes", "wall_s": wall})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=16, help="(a): trials of the bundled sweep")
    parser.add_argument("--compare", type=int, default=4, help="(b), (c): trials compared (at most 6)")
    parser.add_argument("--steps", type=int, default=100, help="(b), (c): training steps per trial")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        quality = [bundled_recipe(folder / "bundled"), sweep(folder / "sweep", args.trials)]
        print_table(quality, [("variant", "variant", "s"), ("val_iou", "val IoU", ".3f"),
                              ("test_iou", "test IoU", ".3f"), ("wall_s", "wall s", ".0f")])
        print(f"best params: {quality[1]['best_params']}; {quality[1]['complete']} complete, "
              f"{quality[1]['pruned']} pruned, {quality[1]['failed']} failed")
        report: dict[str, Any] = {"settings": vars(args), "quality": quality,
                                  "test_iou_gain": quality[1]["test_iou"] - quality[0]["test_iou"]}
        write_report("sweep", report)  # (a) is kept even if (b) or (c) fails
        cost = same_trials(folder / "cost", RANKS[:args.compare], args.steps)
    one, two, separate = (row["wall_s"] for row in cost)
    ratios = {"separate_over_one_sweep": separate / one, "two_workers_over_one": two / one}
    print()
    print_table(cost, [("variant", f"{args.compare} trials of {args.steps} steps", "s"), ("wall_s", "wall s", ".0f")])
    print(f"separate processes / one sweep: {ratios['separate_over_one_sweep']:.2f}x; "
          f"2 workers / 1 worker: {ratios['two_workers_over_one']:.2f}x")
    write_report("sweep", {**report, "cost": cost, "ratios": ratios})


if __name__ == "__main__":
    main()
