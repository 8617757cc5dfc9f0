"""Inference cost of the generalist: one sampling step versus DICEPTION's 28 steps with guidance 2.0.

The single-step objective's whole claim is cost: one deterministic pass instead of 28 guided Euler
steps, each of which runs the transformer on twice the batch (unconditional + conditional rows).
This measures that, per sampling configuration and batch size:

* end-to-end latency per image: VAE encode + sampling (`Generalist.predict_latents`) + VAE decode;
  prompts are encoded once beforehand, as `predict` and adapters do (their cache makes that free);
* the sampler's time per step, and one bare denoiser forward at the batch the sampler runs it at;
* peak memory: CPU, process RSS sampled from a thread (see `_common` for why not tracemalloc,
  ru_maxrss or the profiler), reported as the rise above the loaded model; CUDA,
  `torch.cuda.max_memory_allocated` (absolute, and the rise above the weights).

Run (each on an otherwise quiet machine; timings of a shared box are only comparable within a run):

    python benchmarks/generalist.py                          # tiny and default sizes, CPU, batch 1 and 8
    python benchmarks/generalist.py --device cuda --real-size   # SD3-medium transformer, bf16, 768 px

`--real-size` builds SD3-medium's transformer (2 B parameters, random weights) with DICEPTION's
point encoder: 96 x 96 latents (2304 tokens, doubled to 4608 by the in-context condition), 333 text
tokens of width 4096 plus 5 point tokens. It times the transformer only: the VAE and text encoders
are not built (the VAE runs once per image whatever the step count, so it dilutes the 28-step / 1-step
ratio; prompts come from the cache), hence there "e2e" is sampling alone.
Writes ``benchmarks/results/generalist.json`` (or ``generalist_real.json``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from _common import (
    REAL_JOINT_DIM,
    REAL_LATENT_SIDE,
    REAL_POOLED_DIM,
    REAL_RESOLUTION,
    REAL_TEXT_TOKENS,
    PeakRSS,
    build_real_denoiser,
    check_device,
    print_table,
    release_memory,
    write_report,
)
from diffusers import FlowMatchEulerDiscreteScheduler

from adaptkit.generalist import Generalist, GeneralistConfig
from adaptkit.pretrain import DEFAULT_SPEC
from adaptkit.prompts import PromptCache, PromptEncoder
from adaptkit.tiny import TinySpec, build_tiny_generalist

PROMPT = "[[image2depth]]"
SPECS = {"tiny": TinySpec(), "default": DEFAULT_SPEC}


@dataclass(frozen=True)
class Case:
    """One sampling configuration; guidance above 1.0 doubles the batch the transformer sees."""

    steps: int
    guidance: float

    @classmethod
    def parse(cls, text: str) -> Case:
        steps, guidance = text.split(":")
        return cls(int(steps), float(guidance))

    @property
    def label(self) -> str:
        return f"{self.steps}:{self.guidance:g}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall ms, process CPU ms, result) of `fn`, synchronising the GPU so queued kernels are counted.

    CPU time is kept beside wall time because on a shared CPU box wall time mostly measures the
    scheduler; with one torch thread, CPU time is the work itself (on a GPU only wall time means anything).
    """
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    _sync(device)
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3, result


class Memory:
    """Peak memory of a block: CUDA allocator statistics on a GPU, sampled process RSS on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rss = PeakRSS() if device.type == "cpu" else None
        self.peak_mb = self.delta_mb = 0.0

    def __enter__(self) -> Memory:
        if self.rss is not None:
            self.rss.__enter__()
        else:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
        return self

    def __exit__(self, *exc: object) -> None:
        if self.rss is not None:
            self.rss.__exit__(*exc)
            self.peak_mb, self.delta_mb = self.rss.peak_mb, self.rss.delta_mb
        else:
            _sync(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.delta_mb = self.peak_mb - self.start_mb


# -------------------------------------------------------------------- building the models
def build_small(spec_name: str, device: torch.device) -> Generalist:
    """A tiny-class generalist with random weights (cost does not depend on the weights' values)."""
    generalist = build_tiny_generalist(SPECS[spec_name]).to_runtime(device)
    generalist.encode_prompts([PROMPT, ""])  # fill the prompt cache: predict() pays this once per prompt
    return generalist


def build_real(device: torch.device) -> Generalist:
    """SD3-medium's denoiser (random weights, bf16) without VAE or text encoders: the prompt cache holds
    random embeddings of the real shapes, which is all the sampler reads."""
    denoiser = build_real_denoiser(device, torch.bfloat16).eval()
    cache = PromptCache()
    for prompt in (PROMPT, ""):
        cache.put(prompt, torch.randn(REAL_TEXT_TOKENS, REAL_JOINT_DIM), torch.randn(REAL_POOLED_DIM))
    prompts = PromptEncoder(None, None, None, None, None, None, max_sequence_length=256, cache=cache)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    config = GeneralistConfig(name="sd3-medium-random", resolution=REAL_RESOLUTION)
    return Generalist(denoiser, None, prompts, scheduler, config)  # no VAE: transformer-only timings


# -------------------------------------------------------------------- measuring
def latent_side(generalist: Generalist) -> int:
    """Latent height/width: from the VAE when there is one, else SD3's 8x downsampling."""
    return generalist.latent_size if generalist.vae is not None else REAL_LATENT_SIDE


def forward_ms(generalist: Generalist, batch: int, repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) ms of one bare denoiser forward at `batch` rows (what one sampling step runs once)."""
    device, dtype, side = generalist.device, generalist.dtype, latent_side(generalist)
    latents = torch.randn(batch, 16, side, side, device=device, dtype=dtype)
    embeds, pooled = generalist.encode_prompts([PROMPT] * batch)
    timestep = torch.full((batch,), 1000.0, device=device)
    with torch.inference_mode():
        generalist.denoiser(latents, latents, timestep, embeds, pooled)  # warm-up
        times = [_timed(device, lambda: generalist.denoiser(latents, latents, timestep, embeds, pooled))[:2]
                 for _ in range(repeats)]
    wall, cpu = zip(*times, strict=True)
    return statistics.median(wall), statistics.median(cpu)


def measure(generalist: Generalist, batch: int, case: Case, repeats: int, with_vae: bool) -> dict[str, float]:
    """Median phase times (wall and CPU) of `repeats` runs, after a warm-up and a memory-measured run."""
    device, dtype = generalist.device, generalist.dtype
    resolution, side = generalist.config.resolution, latent_side(generalist)
    embeds, pooled = generalist.encode_prompts([PROMPT])
    pixels = torch.rand(batch, 3, resolution, resolution, device=device) * 2 - 1 if with_vae else None
    zero = (0.0, 0.0, None)

    @torch.inference_mode()
    def run() -> list[float]:
        if pixels is not None:
            encode = _timed(device, lambda: generalist.encode_posterior(pixels))
            mean, std = encode[2]
        else:  # real size: no VAE; a posterior of the real latent shape
            encode = zero
            mean = torch.randn(batch, 16, side, side, device=device, dtype=dtype)
            std = torch.full_like(mean, 0.01)
        sample = _timed(device, lambda: generalist.predict_latents(
            mean, std, range(batch), embeds.expand(batch, -1, -1), pooled.expand(batch, -1), case.steps,
            case.guidance))
        decode = _timed(device, lambda: generalist.decode_latents(sample[2])) if pixels is not None else zero
        return [value for phase in (encode, sample, decode) for value in phase[:2]]

    run()  # warm-up: first-call allocations, kernel selection
    with Memory(device) as memory:
        run()
    timings = [run() for _ in range(repeats)]
    enc, enc_cpu, sample, sample_cpu, dec, dec_cpu = (statistics.median(c) for c in zip(*timings, strict=True))
    return {"e2e_ms_per_image": (enc + sample + dec) / batch,
            "e2e_cpu_ms_per_image": (enc_cpu + sample_cpu + dec_cpu) / batch,
            "encode_ms": enc / batch, "encode_cpu_ms": enc_cpu / batch,
            "sample_ms": sample / batch, "sample_cpu_ms": sample_cpu / batch,
            "decode_ms": dec / batch, "decode_cpu_ms": dec_cpu / batch,
            "ms_per_step": sample / case.steps, "cpu_ms_per_step": sample_cpu / case.steps,
            "peak_mb": memory.peak_mb, "peak_delta_mb": memory.delta_mb}


def run_spec(name: str, generalist: Generalist, batches: list[int], cases: list[Case], repeats: int,
             with_vae: bool) -> list[dict[str, object]]:
    rows = []
    for batch in batches:
        forwards = {b: forward_ms(generalist, b, repeats) for b in {batch, 2 * batch}}
        for case in cases:
            release_memory()
            effective = 2 * batch if case.guidance > 1.0 else batch
            row = {"spec": name, "batch": batch, "case": case.label, "steps": case.steps, "guidance": case.guidance,
                   **measure(generalist, batch, case, repeats, with_vae), "forward_batch": effective,
                   "forward_ms": forwards[effective][0], "forward_cpu_ms": forwards[effective][1]}
            rows.append(row)
            print(f"  {name} batch {batch} {case.label}: {row['e2e_ms_per_image']:.1f} ms/image (wall)", flush=True)
    return rows


def ratios(rows: list[dict[str, object]], slow: str, fast: str) -> list[dict[str, object]]:
    """`slow` case over `fast` case per (spec, batch): latency (wall and CPU), per-step time and peak memory."""
    by_key = {(r["spec"], r["batch"], r["case"]): r for r in rows}
    out = []
    for spec, batch, case in by_key:
        if case != fast or (spec, batch, slow) not in by_key:
            continue
        a, b = by_key[(spec, batch, slow)], by_key[(spec, batch, fast)]
        out.append({"spec": spec, "batch": batch, "ratio": f"{slow} / {fast}",
                    "latency_x": a["e2e_ms_per_image"] / b["e2e_ms_per_image"],
                    "cpu_x": a["e2e_cpu_ms_per_image"] / b["e2e_cpu_ms_per_image"],
                    "step_x": a["ms_per_step"] / b["ms_per_step"],
                    "step_cpu_x": a["cpu_ms_per_step"] / b["cpu_ms_per_step"],
                    "memory_x": a["peak_delta_mb"] / b["peak_delta_mb"] if b["peak_delta_mb"] > 0 else None,
                    "peak_x": a["peak_mb"] / b["peak_mb"]})
    return out


#: CPU tables show CPU time (the work; wall time on a shared box is mostly waiting) beside wall latency.
CPU_COLUMNS = [("spec", "spec", ""), ("batch", "batch", "d"), ("case", "steps:cfg", ""),
               ("e2e_ms_per_image", "e2e wall ms/img", ".1f"), ("e2e_cpu_ms_per_image", "e2e cpu ms/img", ".1f"),
               ("encode_cpu_ms", "enc", ".2f"), ("sample_cpu_ms", "sample", ".2f"), ("decode_cpu_ms", "dec", ".2f"),
               ("cpu_ms_per_step", "cpu ms/step", ".2f"), ("forward_cpu_ms", "fwd cpu ms", ".2f"),
               ("forward_batch", "fwd batch", "d"), ("peak_delta_mb", "peak +MB", ".1f"), ("peak_mb", "peak MB", ".0f")]
GPU_COLUMNS = [("spec", "spec", ""), ("batch", "batch", "d"), ("case", "steps:cfg", ""),
               ("sample_ms", "sample ms/img", ".1f"), ("ms_per_step", "ms/step", ".1f"),
               ("forward_ms", "fwd ms", ".1f"),
               ("forward_batch", "fwd batch", "d"), ("peak_delta_mb", "peak +MB", ".0f"), ("peak_mb", "peak MB", ".0f")]
RATIO_COLUMNS = [("spec", "spec", ""), ("batch", "batch", "d"), ("ratio", "ratio", ""),
                 ("latency_x", "wall x", ".1f"), ("cpu_x", "cpu x", ".1f"), ("step_x", "per-step wall x", ".2f"),
                 ("step_cpu_x", "per-step cpu x", ".2f"), ("memory_x", "peak +mem x", ".2f"),
                 ("peak_x", "peak x", ".2f")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", nargs="+", choices=sorted(SPECS), default=["tiny", "default"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--cases", type=Case.parse, nargs="+", metavar="STEPS:GUIDANCE",
                        default=[Case(1, 1.0), Case(1, 2.0), Case(4, 1.0), Case(28, 2.0)])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--real-size", action="store_true",
                        help="SD3-medium transformer (random weights, bf16, 768 px); needs --device cuda")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0: torch's default). One by default: CPU time then measures work, "
                             "not OpenMP spin-waiting on a busy machine")
    args = parser.parse_args()
    check_device(parser, args.device, args.real_size, "a 2 B-parameter transformer over ~4900 tokens, 28 guided "
                     "steps, is hours per image on a CPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    slow, fast = Case(28, 2.0), Case(1, 1.0)
    cases = list(dict.fromkeys([*args.cases, slow, fast]))  # the ratio needs both ends

    rows = []
    if args.real_size:
        print("building SD3-medium's transformer with random weights (bf16) ...", flush=True)
        generalist = build_real(device)
        weights_mb = torch.cuda.memory_allocated(device) / 2**20
        rows += run_spec("sd3-medium", generalist, args.batch_sizes, cases, args.repeats, with_vae=False)
    else:
        for name in args.spec:
            generalist = build_small(name, device)
            rows += run_spec(name, generalist, args.batch_sizes, cases, args.repeats, with_vae=True)
            del generalist
    print()
    if args.real_size:
        print("Transformer only: VAE encode/decode and text encoders are not built or timed (e2e = sampling).")
        print(f"weights resident: {weights_mb:.0f} MB; 'peak MB' is torch.cuda.max_memory_allocated")
    if args.device == "cpu":
        print("enc / sample / dec: CPU ms per image. Peak memory: process RSS sampled every 2 ms; 'peak +MB' is "
              "the rise above the loaded model.")
    print_table(rows, CPU_COLUMNS if args.device == "cpu" else GPU_COLUMNS)
    print()
    ratio_rows = ratios(rows, slow.label, fast.label)
    print_table(ratio_rows, [c for c in RATIO_COLUMNS if args.device == "cpu" or "cpu" not in c[0]])
    report = {"device": args.device, "real_size": args.real_size, "repeats": args.repeats,
              "memory_method": "torch.cuda.max_memory_allocated" if args.device == "cuda"
              else "process RSS sampled every 2 ms in a thread (psutil), minus the RSS before the run",
              "rows": rows, "ratios": ratio_rows}
    if args.real_size:
        report["note"] = "transformer only; VAE and text encoders excluded"
        report["weights_mb"] = weights_mb
    write_report("generalist_real" if args.real_size else "generalist", report)


if __name__ == "__main__":
    main()
