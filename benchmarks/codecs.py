"""Encode and decode time of every colour codec at the model's resolution (768 x 768).

Decoding runs once per generated image (and per ensemble member in evaluation), so a codec must decode a
768 px prediction in well under a second on a CPU core; encoding runs once per training image. Decoding is
timed twice: on the clean encoding, and on the encoding after a Gaussian blur (radius 1) and JPEG
(quality 75), which is closer to a generated image and harder for the clustering decoders (many more
distinct colours). The instances target has 50 instances. Run:

    python benchmarks/codecs.py [--size 768] [--repeats 5]

Writes ``benchmarks/results/codecs.json`` (median seconds per call, per codec).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from adaptkit.codecs import COCO_KEYPOINTS, CODECS, Keypoints, build_codec

RESULTS = Path(__file__).resolve().parent / "results"
ARGS: dict[str, dict[str, Any]] = {"semantic": {"num_classes": 21}, "heatmap": {"colormap": "viridis"}}
COLUMNS = {"encode_s": "encode", "decode_s": "decode", "decode_degraded_s": "decode (blur+JPEG)"}


def targets(size: int, rng: np.random.Generator) -> dict[str, Any]:
    """A plausible target of every codec at ``size`` x ``size``."""
    rows, cols = np.mgrid[:size, :size] / size
    seeds = rng.random((21, 2))
    nearest_seed = ((rows[..., None] - seeds[:, 0]) ** 2 + (cols[..., None] - seeds[:, 1]) ** 2).argmin(-1)
    grid = np.floor(rows * 5).astype(np.int64) * 10 + np.floor(cols * 10).astype(np.int64) + 1  # 50 cells
    inside = np.abs((rows * 5) % 1 - 0.5) + np.abs((cols * 10) % 1 - 0.5) < 0.6  # a diamond in each cell
    sphere = np.clip(1 - ((rows - 0.5) ** 2 + (cols - 0.5) ** 2) / 0.16, 0, None)
    normals = np.stack([cols - 0.5, 0.5 - rows, np.sqrt(sphere) + 0.05], -1)
    instances = np.where(inside, grid, 0)
    assert len(np.unique(instances)) == 51, "50 instances and the background"
    return {
        "binary_mask": sphere > 0,
        "semantic": nearest_seed.astype(np.int64),
        "instances": instances,
        "depth": (2.0 + 3 * rows - sphere).astype(np.float32),
        "normals": (normals / np.linalg.norm(normals, axis=-1, keepdims=True)).astype(np.float32),
        "keypoints": Keypoints(
            rng.uniform(0.1, 0.9, (len(COCO_KEYPOINTS), 2)) * size, np.ones(17, bool), None, (size, size)
        ),
        "heatmap": np.exp(-((rows - 0.4) ** 2 + (cols - 0.6) ** 2) / 0.02).astype(np.float32),
        "rgb": np.stack([rows, cols, sphere], -1).astype(np.float32),
    }


def degraded(image: np.ndarray) -> np.ndarray:
    """The encoding after blur and JPEG, like a generated image that was saved."""
    pil = Image.fromarray(np.rint(image * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.0))
    buffer = io.BytesIO()
    pil.save(buffer, "JPEG", quality=75)
    return np.asarray(Image.open(buffer).convert("RGB"), np.float32) / 255


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=768, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    options = parser.parse_args()
    rows = []
    for name, target in targets(options.size, np.random.default_rng(0)).items():
        codec = build_codec(name, ARGS.get(name))
        encoded = codec.encode(target)
        blurred = degraded(encoded)
        rows.append(
            {
                "codec": name,
                "encode_s": median_seconds(lambda c=codec, t=target: c.encode(t), options.repeats),
                "decode_s": median_seconds(lambda c=codec, e=encoded: c.decode(e), options.repeats),
                "decode_degraded_s": median_seconds(lambda c=codec, b=blurred: c.decode(b), options.repeats),
            }
        )
    assert {row["codec"] for row in rows} == set(CODECS), "every registered codec is benchmarked"
    print(f"{options.size} x {options.size}, median of {options.repeats} calls (seconds)")
    print(f"{'codec':>12} " + " ".join(f"{header:>18}" for header in COLUMNS.values()))
    for row in rows:
        print(f"{row['codec']:>12} " + " ".join(f"{row[key]:>18.4f}" for key in COLUMNS))
    machine = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    report = {
        "size": options.size,
        "repeats": options.repeats,
        "instances": 50,
        "machine": machine,
        "codecs": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "codecs.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS / 'codecs.json'}")


if __name__ == "__main__":
    main()
