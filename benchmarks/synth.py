"""Throughput of the synthetic-world renderer, plus a grid PNG to eyeball that its scenes look right.

Pretraining the small generalist renders tens of thousands of scenes, so the renderer must stay at
thousands of images per minute on a laptop core. Run:

    python benchmarks/synth.py [--n 300] [--resolutions 64 128]

Writes ``benchmarks/results/synth.json`` (images/minute per resolution, single process) and
``benchmarks/results/synth_grid.png`` (rows = scenes; columns = image | depth | normals | instances |
shadow | nearest, masks shown bright over a dimmed image).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from adaptkit.synth import FAR_DEPTH, SceneSample, render_batch, render_scene

RESULTS = Path(__file__).resolve().parent / "results"


def images_per_minute(n: int, resolution: int) -> float:
    """Time ``n`` renders after one warm-up, so import and first-call costs are excluded."""
    render_scene(0, resolution)
    start = time.perf_counter()
    render_batch(range(1, n + 1), resolution)
    return n / (time.perf_counter() - start) * 60.0


def _overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask[..., None], 1.0, 0.3 * image)


def grid_row(sample: SceneSample) -> np.ndarray:
    """One scene as panels side by side; depth is shown as inverse depth so near is bright."""
    inverse = 1.0 / sample.depth
    inverse = (inverse - 1.0 / FAR_DEPTH) / (inverse.max() - 1.0 / FAR_DEPTH + 1e-8)
    palette = np.random.default_rng(0).uniform(0.2, 1.0, size=(256, 3))
    palette[0] = 0.0
    panels = [
        sample.image,
        np.repeat(inverse[..., None], 3, axis=-1),
        (sample.normals + 1.0) / 2.0,
        palette[sample.instances % 256],
        _overlay(sample.image, sample.shadow),
        _overlay(sample.image, sample.nearest),
    ]
    gap = np.ones((sample.image.shape[0], 2, 3))
    return np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)


def save_grid(path: Path, seeds: list[int], resolution: int) -> None:
    rows = [grid_row(s) for s in render_batch(seeds, resolution)]
    gap = np.ones((2, rows[0].shape[1], 3))
    grid = np.concatenate([r for row in rows for r in (row, gap)][:-1], axis=0)
    Image.fromarray(np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=300, help="scenes timed per resolution")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--grid-resolution", type=int, default=128)
    parser.add_argument("--grid-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    args = parser.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    rates = {res: images_per_minute(args.n, res) for res in args.resolutions}
    print(f"{'resolution':>10} | {'images/min':>10} | {'ms/image':>8}")
    for res, rate in rates.items():
        print(f"{res:>10} | {rate:>10.0f} | {60e3 / rate:>8.2f}")
    report = {
        "n": args.n,
        "processes": 1,
        "machine": platform.processor() or platform.machine(),
        "images_per_minute": {str(res): round(rate, 1) for res, rate in rates.items()},
    }
    (RESULTS / "synth.json").write_text(json.dumps(report, indent=2) + "\n")
    save_grid(RESULTS / "synth_grid.png", args.grid_seeds, args.grid_resolution)
    print(f"wrote {RESULTS / 'synth.json'} and {RESULTS / 'synth_grid.png'}")


if __name__ == "__main__":
    main()
