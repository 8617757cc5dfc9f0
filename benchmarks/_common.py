"""Helpers shared by the benchmarks: peak-RSS sampling on the CPU, a plain-text table, the JSON report, and
the real-size (SD3-medium) denoiser with random weights that both GPU modes time.

Why RSS sampling for CPU memory: torch's CPU allocator calls malloc/mmap directly, so `tracemalloc`
(Python objects only) never sees tensors; `resource.getrusage().ru_maxrss` is the high-water mark of
the whole process, so after the first big run every later delta reads 0; and `torch.profiler`'s
memory view reports per-op allocations (a live peak has to be rebuilt from its timeline) while adding
per-op overhead to the very timings we take. Sampling the process RSS from a thread every couple of
milliseconds is cheap (torch releases the GIL in its kernels), sees every allocation that touches
memory, and is what the operating system (and an OOM killer) actually counts. Its caveats: a spike
shorter than the interval can be missed, and freed memory that the allocator keeps counts as used,
so deltas are taken after `release_memory()` returns what it can to the OS.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import platform
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import torch
from diffusers import SD3Transformer2DModel

from adaptkit.generalist import SD3_MEDIUM_TRANSFORMER_CONFIG, InContextDenoiser, PointPromptEncoder

RESULTS = Path(__file__).resolve().parent / "results"
MB = 2**20

#: DICEPTION at 768 px: 96 x 96 latents; 77 CLIP + 256 T5 text tokens of width 4096; CLIP-L ++ CLIP-G pooled.
REAL_RESOLUTION, REAL_LATENT_SIDE, REAL_TEXT_TOKENS, REAL_JOINT_DIM, REAL_POOLED_DIM = 768, 96, 333, 4096, 2048


def release_memory() -> None:
    """Collect garbage and ask glibc to return freed heap pages, so an RSS baseline means "live" memory."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): deltas under-report a little
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRSS:
    """Context manager: the process RSS before (`baseline_mb`) and its sampled maximum within (`peak_mb`)."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.baseline_mb = self.peak_mb = 0.0
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def delta_mb(self) -> float:
        return self.peak_mb - self.baseline_mb

    def _rss_mb(self) -> float:
        return self._process.memory_info().rss / MB

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._rss_mb())
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRSS:
        release_memory()
        self.baseline_mb = self.peak_mb = self._rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())


def check_device(parser: Any, device: str, real_size: bool, cpu_cost: str) -> None:
    """Refuse the real-size mode on a CPU (it would take `cpu_cost`) and CUDA where there is none."""
    if real_size and device != "cuda":
        parser.error(f"--real-size needs --device cuda: {cpu_cost}")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False); "
                         "run this mode on a GPU machine, or drop --device cuda for the CPU benchmark")


def build_real_denoiser(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> InContextDenoiser:
    """SD3-medium's transformer (2 B parameters) and DICEPTION's point encoder (1024 frequencies), random weights.

    The transformer is built on the device (fp32, ~8 GB, then cast), so no host copy of 2 B parameters
    is made; the point encoder is built on the CPU because its fixed Gaussian matrix is drawn from a
    CPU generator, as in the release. Cost does not depend on the weights' values.
    """
    with torch.device(device):
        transformer = SD3Transformer2DModel(**SD3_MEDIUM_TRANSFORMER_CONFIG)
    points = PointPromptEncoder(embed_dim=transformer.config.caption_projection_dim, num_frequencies=1024)
    denoiser = InContextDenoiser(transformer, points.to(device)).to(dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the fp32 originals are gone; do not let their blocks inflate "reserved"
    return denoiser


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> None:
    """Print `rows` as an aligned table; `columns` are (key, header, format spec); missing values print '-'."""

    def cell(row: dict[str, Any], key: str, spec: str) -> str:
        value = row.get(key)
        return "-" if value is None else format(value, spec)

    cells = [[cell(row, key, spec) for key, _, spec in columns] for row in rows]
    widths = [max([len(header), *(len(r[i]) for r in cells)]) for i, (_, header, _) in enumerate(columns)]
    print(" | ".join(header.rjust(w) for (_, header, _), w in zip(columns, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in cells:
        print(" | ".join(value.rjust(w) for value, w in zip(row, widths, strict=True)))


def machine() -> dict[str, Any]:
    """What the numbers were measured on: timings on a shared 2-core box are only comparable within a run."""
    info: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()], "niceness": os.nice(0),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_report(name: str, report: dict[str, Any]) -> Path:
    """Write `benchmarks/results/{name}.json` with the machine description added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **report}, indent=2) + "\n")
    print(f"wrote {path}")
    return path
