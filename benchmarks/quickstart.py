"""How long does the README's main job take? Times `adaptkit quickstart` end to end, wall and CPU.

The issue's target is under 3 minutes on 2 CPU cores (after the install). `--bases` times the same
quickstart on other generalists side by side (`default` is the shipped one; a folder is a candidate such
as `pretrain-runs/NAME/default`), so a new default's cost is a ratio measured in one run. Run it on a
quiet machine:

    python benchmarks/quickstart.py --bases default pretrain-runs/NEXT/default
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def time_quickstart(base: str) -> dict:
    """One quickstart on `base`; a failure ends the benchmark with adaptkit's own one-line message."""
    with tempfile.TemporaryDirectory() as folder:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "adaptkit.cli", "quickstart", "--out", f"{folder}/run",
                               f"base.generalist={base}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise SystemExit(f"quickstart on {base} failed: {last}")
        metrics = json.loads((Path(folder) / "run" / "eval" / "metrics.json").read_text())["metrics"]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"base": base, "wall_seconds": wall, "cpu_seconds": cpu, "iou": metrics["iou"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--bases", nargs="+", default=["default"],
                        help="generalists to time side by side: 'default' or a generalist folder")
    args = parser.parse_args()
    rows = []
    for _ in range(args.repeats):
        for base in args.bases:  # interleaved, so drift in the machine's speed touches every base alike
            row = time_quickstart(base)
            rows.append(row)
            print(f"adaptkit quickstart on {base}: {row['wall_seconds']:.0f} s wall, {row['cpu_seconds']:.0f} s CPU, "
                  f"test IoU {row['iou']:.3f}")
    first = [row for row in rows if row["base"] == args.bases[0]]
    for base in args.bases[1:]:
        ratio = (sum(row["wall_seconds"] for row in rows if row["base"] == base)
                 / sum(row["wall_seconds"] for row in first))
        print(f"{base}: {ratio:.2f}x the wall time of {args.bases[0]}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quickstart.json").write_text(json.dumps({"runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
