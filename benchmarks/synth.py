"""Throughput of each family of the synthetic world, plus one titled grid per family to eyeball its samples.

Pretraining the small generalist renders tens of thousands of samples, so every family must stay at
thousands of images per minute on one laptop core (`adaptkit pretrain --workers N` spreads them over N).
Run:

    python benchmarks/synth.py [--n 200] [--resolutions 64 128] [--families scenes layers cells scans]

Writes ``benchmarks/results/synth.json`` (ms per image and images/minute per family and resolution, in
one process, as each of pretraining's rendering workers) and ``benchmarks/results/synth_<family>.png``
(rows = samples; one titled column per field of the family's sample: the image, depth as inverse depth so
near is bright, normals as RGB, instance and class maps in a fixed palette, masks bright over the dimmed
image).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
from _common import RESULTS, print_table, write_report

from adaptkit.inference import save_grid
from adaptkit.synth import RENDERERS

_PALETTE = np.random.default_rng(0).uniform(0.2, 1.0, size=(256, 3))
_PALETTE[0] = 0.0


def ms_per_image(family: str, n: int, resolution: int) -> float:
    """Time ``n`` renders after one warm-up, so import and first-call costs are excluded."""
    render = RENDERERS[family]
    render(0, resolution)
    start = time.perf_counter()
    for seed in range(1, n + 1):
        render(seed, resolution)
    return (time.perf_counter() - start) / n * 1e3


def panels(sample: object) -> dict[str, np.ndarray]:
    """Every per-pixel field of ``sample`` as an RGB picture in [0, 1], keyed by the field's name."""
    image = sample.image
    shown: dict[str, np.ndarray] = {}
    for field in dataclasses.fields(sample):
        value = getattr(sample, field.name)
        if not isinstance(value, np.ndarray) or value.shape[:2] != image.shape[:2]:
            continue  # per-object tables (object_classes), scalars (fov)
        if field.name == "image":
            shown["image"] = value
        elif value.dtype == bool:
            shown[field.name] = np.where(value[..., None], 1.0, 0.3 * image)
        elif field.name == "depth":
            inverse = 1.0 / value
            shown["depth"] = np.repeat(((inverse - inverse.min()) / (np.ptp(inverse) + 1e-8))[..., None], 3, -1)
        elif value.ndim == 3:  # normals
            shown[field.name] = (value + 1.0) / 2.0
        else:  # instance ids, semantic classes
            shown[field.name] = _PALETTE[value % 256]
    return shown


def save_family_grid(family: str, seeds: list[int], resolution: int) -> str:
    rows = [panels(RENDERERS[family](seed, resolution)) for seed in seeds]
    path = RESULTS / f"synth_{family}.png"
    save_grid(path, [tuple(row.values()) for row in rows], cell=resolution, titles=tuple(rows[0]))
    return path.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="samples timed per family and resolution")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--families", nargs="+", default=list(RENDERERS), choices=list(RENDERERS))
    parser.add_argument("--grid-resolution", type=int, default=128)
    parser.add_argument("--grid-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    args = parser.parse_args()

    rows = [{"family": family, "resolution": res, "ms_per_image": ms_per_image(family, args.n, res)}
            for family in args.families for res in args.resolutions]
    for row in rows:
        row["images_per_minute"] = 60e3 / row["ms_per_image"]
    print_table(rows, [("family", "family", "s"), ("resolution", "px", "d"),
                       ("ms_per_image", "ms/image", ".2f"), ("images_per_minute", "images/min", ".0f")])
    RESULTS.mkdir(parents=True, exist_ok=True)
    grids = [save_family_grid(family, args.grid_seeds, args.grid_resolution) for family in args.families]
    write_report("synth", {"n": args.n, "processes": 1, "rows": rows, "grids": grids})
    print(f"wrote {', '.join(grids)} in {RESULTS}")


if __name__ == "__main__":
    main()
