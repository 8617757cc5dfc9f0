"""How long does the README's main job take? Times `adaptkit quickstart` end to end, wall and CPU.

The issue's target is under 5 minutes on 2 CPU cores (after the install). Run it on a quiet machine:

    python benchmarks/quickstart.py
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "adaptkit.cli", "quickstart", "--out", f"{folder}/run"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            metrics = json.loads((Path(folder) / "run" / "eval" / "metrics.json").read_text())["metrics"]
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        rows.append({"wall_seconds": wall, "cpu_seconds": cpu, "iou": metrics["iou"]})
        print(f"adaptkit quickstart: {wall:.0f} s wall, {cpu:.0f} s CPU, test IoU {metrics['iou']:.3f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quickstart.json").write_text(json.dumps({"runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
