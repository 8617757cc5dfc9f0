"""Predicting a large collection: images/s and peak memory of `adaptkit predict` as the collection grows, with
1 or 2 processes (Lightning DDP on the CPU, gloo) and 0 or 2 decoding workers.

Each configuration runs the real command in its own process tree (`python -m adaptkit.cli predict ...`) on
the same folder of synthetic PNG inputs; its RSS is sampled every 20 ms over the whole tree (the ranks and
their DataLoader workers), and reported both summed (what the machine must hold) and for the largest single
process (what must stay flat as the collection grows: streamed prediction holds one batch, not the
collection). Images/s is counted from the run's own summary line: prediction only, after every rank has
started and loaded its model (the per-process start-up, seconds, is reported apart as wall minus that).

    python benchmarks/predict.py                       # 200 and 2,000 inputs on the embedded default, CPU
    python benchmarks/predict.py --counts 200 --quick  # one count, 1 vs 2 processes, no workers sweep

The goals (issue 34): peak RSS at 2,000 inputs within 10% of that at 200; on a 2-core machine, 2 processes
>= 1.6x the images/s of one. The prepared GPU command (one process per GPU; workers decode ahead of it):

    python benchmarks/predict.py --accelerator gpu --processes 1 8 --workers 0 8 --counts 2000 20000 \\
        --size 768 --name predict-gpu
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from _common import MB, print_table, write_report
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def write_inputs(folder: Path, count: int, size: int) -> Path:
    """`count` random-noise PNGs of size x size (noise: the slowest to decode, so decoding cost is not flattered)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        path = folder / f"{index:06d}.png"
        if not path.exists():
            Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(path)
    return folder


class TreeRSS(threading.Thread):
    """Samples the RSS of a process and all its descendants: peak of the sum, and peak of any one process."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.root, self.interval_s = psutil.Process(pid), interval_s
        self.total_mb = self.single_mb = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            sizes = []
            for process in processes:
                try:
                    sizes.append(process.memory_info().rss / MB)
                except psutil.NoSuchProcess:
                    continue
            if sizes:
                self.total_mb, self.single_mb = max(self.total_mb, sum(sizes)), max(self.single_mb, max(sizes))
            time.sleep(self.interval_s)


def run_once(args: argparse.Namespace, inputs: Path, out: Path, processes: int, workers: int) -> dict:
    command = [sys.executable, "-m", "adaptkit.cli", "predict", args.task, "--base", args.base, str(inputs),
               "--out", str(out), "--accelerator", args.accelerator, "--devices", str(processes),
               "--workers", str(workers), "--batch-size", str(args.batch_size), "--overwrite"]
    if processes > 1:
        command += ["--strategy", "ddp"]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1",
                   "OMP_NUM_THREADS": str(args.threads_per_process)}
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    sampler = TreeRSS(process.pid)
    sampler.start()
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    found = re.search(r"(\d+) prediction\(s\) written .* in ([\d.]+) s \(([\d.]+) img/s", stdout)
    if not found:
        raise SystemExit(f"no summary line in:\n{stdout}")
    written, seconds = int(found.group(1)), float(found.group(2))
    return {"inputs": written, "processes": processes, "workers": workers, "images_per_s": written / seconds,
            "predict_s": seconds, "wall_s": wall, "startup_s": wall - seconds, "peak_rss_total_mb": sampler.total_mb,
            "peak_rss_process_mb": sampler.single_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="default")
    parser.add_argument("--task", default="depth", help="a built-in task of --base (default depth)")
    parser.add_argument("--counts", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--size", type=int, default=256, help="input side in pixels (default 256)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads-per-process", type=int, default=1,
                        help="torch threads of each process (default 1: on a shared 2-core machine more threads "
                             "than cores spin against each other)")
    parser.add_argument("--quick", action="store_true", help="workers 0 only")
    parser.add_argument("--name", default="predict")
    args = parser.parse_args()
    workers = [0] if args.quick else args.workers
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for count in args.counts:
            inputs = write_inputs(Path(scratch) / f"in-{count}", count, args.size)
            for processes in args.processes:
                for worker_count in workers:
                    row = run_once(args, inputs, Path(scratch) / "out", processes, worker_count)
                    rows.append(row)
                    print(f"  {count} inputs, {processes} process(es), {worker_count} worker(s): "
                          f"{row['images_per_s']:.1f} img/s, peak RSS {row['peak_rss_process_mb']:.0f} MB per process",
                          flush=True)
    print_table(rows, [("inputs", "inputs", "d"), ("processes", "procs", "d"), ("workers", "workers", "d"),
                       ("images_per_s", "img/s", ".1f"), ("predict_s", "predict s", ".1f"),
                       ("startup_s", "start-up s", ".1f"), ("peak_rss_process_mb", "peak RSS/process MB", ".0f"),
                       ("peak_rss_total_mb", "peak RSS total MB", ".0f")])
    summary = {}
    by = {(r["inputs"], r["processes"], r["workers"]): r for r in rows}
    small, large = min(args.counts), max(args.counts)
    for processes in args.processes:
        for worker_count in workers:
            if (small, processes, worker_count) in by and (large, processes, worker_count) in by and small != large:
                growth = by[large, processes, worker_count]["peak_rss_process_mb"] / by[
                    small, processes, worker_count]["peak_rss_process_mb"]
                summary[f"rss_growth_{large}_vs_{small}_p{processes}_w{worker_count}"] = growth
    for count in args.counts:
        for worker_count in workers:
            if (count, 1, worker_count) in by and (count, 2, worker_count) in by:
                summary[f"speedup_2_vs_1_n{count}_w{worker_count}"] = (
                    by[count, 2, worker_count]["images_per_s"] / by[count, 1, worker_count]["images_per_s"])
    for key, value in summary.items():
        print(f"{key}: {value:.3f}")
    write_report(args.name, {"settings": vars(args), "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
