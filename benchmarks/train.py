"""Training throughput: cached latents (adaptkit's path) versus encoding the VAE and the prompt every step.

`adaptkit.training.train` encodes every image and target through the frozen VAE once
(`encode_samples`), encodes the task prompt once and frees the text encoders, so a training step
touches only the denoiser. This measures what that buys, in one run, on the synthetic world's
held-out `shadow` task:

* `cached`: exactly `train`'s steps (`encode_samples`, text encoders dropped, `add_lora` with the
  bundled recipes' adapter section, `AdapterModule` under a Lightning `Trainer`);
* `uncached`: the same module, objective and batches, but every step VAE-encodes the batch's images
  and colour-encoded targets and runs the prompt through the three text encoders (the SD3 pipeline's
  `encode_prompt`, built once). Colour encoding and resizing are done once in both modes, so the
  difference is the frozen encoders alone.

Each (spec, mode, objective) runs in a subprocess of its own, so its peak RSS (sampled from a thread
over the timed steps; see `_common`) holds only its own models; the cached and uncached workers take
turns every few steps, so a load that drifts on a shared machine hits both alike. Steps/s is given in
wall time and from the median step's CPU time (on a shared CPU box wall time includes waiting). Run:

    python benchmarks/train.py [--steps 20] [--warmup 3] [--batch-size 4]
    python benchmarks/train.py --device cuda --real-size      # SD3-medium, bf16, 768 px, on a GPU

`--real-size` trains rank-32 LoRA on the attention layers of SD3-medium's transformer (random
weights) at 768 px from cached latents (random tensors of the real shapes: the VAE and text encoders
are not built, the pixel loss is not run), with gradient checkpointing off and on, batch 1, 2 and 4,
for bf16 weights and for fp32 weights under bf16 autocast (what Lightning's `bf16-mixed` does with
the fp32 model `train` loads), and reports peak memory against a 24 GB card.
Writes ``benchmarks/results/train.json`` (or ``train_real.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
from _common import (
    REAL_JOINT_DIM,
    REAL_LATENT_SIDE,
    REAL_POOLED_DIM,
    REAL_TEXT_TOKENS,
    PeakRSS,
    build_real_denoiser,
    check_device,
    print_table,
    write_report,
)
from diffusers import FlowMatchEulerDiscreteScheduler
from torch.utils.data import DataLoader

from adaptkit.adapters import add_lora
from adaptkit.codecs import Codec, build_codec
from adaptkit.data import Sample, check_all, hflip_sample, load_splits
from adaptkit.generalist import MAX_POINTS, Generalist
from adaptkit.images import to_model_batch
from adaptkit.pretrain import DEFAULT_SPEC
from adaptkit.recipe import AdapterSection, Recipe, load_recipe
from adaptkit.tiny import TinySpec, build_tiny_generalist
from adaptkit.training import OBJECTIVES, AdapterModule, encode_samples, target_pixels

SPECS = {"tiny": TinySpec(), "default": DEFAULT_SPEC}
MODES = ("cached", "uncached")
GIB = 2**30


def make_recipe(spec: TinySpec, objective: str, batch_size: int, steps: int, train_shots: int) -> Recipe:
    """A few-shot shadow recipe at the spec's resolution; the adapter is the bundled recipes' (rank 32, attention)."""
    sampler = {"steps": 1, "guidance": 1.0} if objective == "single_step" else {"steps": 28, "guidance": 2.0}
    return load_recipe({
        "name": "bench-shadow",
        "task": {"prompt": "[[image2shadow]]", "codec": "binary_mask"},
        "base": {"generalist": "tiny"},
        "data": {"source": "synth", "synth_task": "shadow", "synth_resolution": spec.resolution,
                 "train_shots": train_shots, "val_shots": 0},
        "adapter": asdict(AdapterSection()),
        "train": {"objective": objective, "steps": steps, "batch_size": batch_size, "precision": "32",
                  "accelerator": "cpu", "devices": 1},
        "inference": sampler,
    })


# -------------------------------------------------------------------- the uncached baseline
class EncodeEveryStepSet:
    """Duck-types `EncodedSet` for `AdapterModule`: `rows()` runs the frozen VAE on the chosen rows each call.

    The rows (samples and their flips), colour encoding and resizing are exactly `encode_samples`'s, so
    both modes see the same batches and the same latents.
    """

    def __init__(self, generalist: Generalist, codec: Codec, samples: list[Sample], hflip: bool) -> None:
        resolution = generalist.config.resolution
        self.generalist = generalist
        self.records = [v for s in samples for v in ([s, hflip_sample(s, codec)] if hflip else [s])]
        self.images = to_model_batch([s.image for s in self.records], resolution)
        self.target_pixels = torch.stack([target_pixels(codec.encode(s.target), resolution, codec.resample)
                                          for s in self.records])
        encoded = [generalist.denoiser.point_encoder.normalise(s.points, (s.image.shape[1], s.image.shape[0]),
                                                                resolution) for s in self.records]
        self.points = torch.stack([p for p, _ in encoded])
        self.point_labels = torch.stack([label for _, label in encoded])

    def __len__(self) -> int:
        return len(self.records)

    @torch.no_grad()
    def rows(self, index: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        index = index.cpu()
        condition_mean, condition_std = self.generalist.encode_posterior(self.images[index])
        target_mean, target_std = self.generalist.encode_posterior(self.target_pixels[index] * 2.0 - 1.0)
        rows = {"condition_mean": condition_mean, "condition_std": condition_std, "target_mean": target_mean,
                "target_std": target_std, "target_pixels": self.target_pixels[index], "points": self.points[index],
                "point_labels": self.point_labels[index]}
        return {name: value.float().to(device) if value.is_floating_point() else value.to(device)
                for name, value in rows.items()}


class EncodeEveryStepModule(AdapterModule):
    """`AdapterModule` whose every step first re-encodes the task prompt through the three text encoders."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from diffusers import StableDiffusion3Pipeline

        prompts = self.generalist.prompts  # the pipeline is built once: only encode_prompt runs per step
        self.pipeline = StableDiffusion3Pipeline(
            transformer=None, scheduler=None, vae=None, text_encoder=prompts.text_encoder, tokenizer=prompts.tokenizer,
            text_encoder_2=prompts.text_encoder_2, tokenizer_2=prompts.tokenizer_2,
            text_encoder_3=prompts.text_encoder_3, tokenizer_3=prompts.tokenizer_3)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        with torch.no_grad():
            embeds, _, pooled, _ = self.pipeline.encode_prompt(
                [self.recipe.task.prompt], None, None, device=self.device, do_classifier_free_guidance=False,
                max_sequence_length=self.generalist.prompts.max_sequence_length)
        self.prompt_embeds, self.pooled = embeds.float(), pooled.float()
        return super().training_step(batch, batch_idx)


# -------------------------------------------------------------------- one CPU measurement (a subprocess)
class StepClock(L.Callback):
    """Wall and CPU time of every step after `warmup`, peak RSS over them, and pauses for the parent.

    After the warm-up and after every `block` timed steps the worker prints PAUSE and waits for a line
    on stdin: the parent lets the cached and uncached workers take turns, so a load that drifts on a
    shared machine falls on both alike. Pauses lie between steps, outside every timed interval.
    """

    def __init__(self, warmup: int, steps: int, block: int) -> None:
        self.warmup, self.total, self.block, self.losses = warmup, warmup + steps, block, []
        self.rss = PeakRSS()
        self.times: list[tuple[float, float]] = []  # (wall s, CPU s) of each timed step
        self._start = (0.0, 0.0)

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        end = (time.perf_counter(), time.process_time())
        self.losses.append(float(outputs["loss"]))
        done = batch_idx + 1
        if done > self.warmup:
            self.times.append((end[0] - self._start[0], end[1] - self._start[1]))
        if done == self.warmup:
            self.rss.__enter__()
        if done < self.total and (done - self.warmup) % self.block == 0:
            print("PAUSE", flush=True)
            sys.stdin.readline()

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.rss.__exit__()

    def rates(self) -> dict[str, float]:
        """Steps/s from the summed wall time of the timed steps (includes waiting for a busy CPU), and from the
        median step's CPU time (the work; robust to bursts of contention)."""
        return {"steps_per_s": len(self.times) / sum(wall for wall, _ in self.times),
                "cpu_steps_per_s": 1.0 / statistics.median(cpu for _, cpu in self.times)}


def measure(spec_name: str, mode: str, objective: str, steps: int, warmup: int, batch_size: int,
            train_shots: int, block: int) -> dict[str, Any]:
    """Train `warmup + steps` steps in `mode`; steps/s over the last `steps`, peak RSS over them."""
    spec = SPECS[spec_name]
    recipe = make_recipe(spec, objective, batch_size, warmup + steps, train_shots)
    codec = build_codec(recipe.task.codec, recipe.task.codec_args)
    source, splits = load_splits(recipe.data, codec)
    samples = check_all(source, splits.train)
    generalist = build_tiny_generalist(spec).to_runtime("cpu")
    start = time.perf_counter()
    if mode == "cached":  # train()'s steps 3 and 4
        generalist.prompts.encode([recipe.task.prompt, ""])
        generalist.prompts.drop_text_encoders()
        train_set = encode_samples(generalist, codec, samples, recipe.data.hflip, cache_dir=None)
        module_class = AdapterModule
    else:
        train_set = EncodeEveryStepSet(generalist, codec, samples, recipe.data.hflip)
        module_class = EncodeEveryStepModule
    prepare_s = time.perf_counter() - start
    generalist.denoiser = add_lora(generalist.denoiser, recipe.adapter)
    module = module_class(generalist, recipe, codec, train_set, train_set)
    clock = StepClock(warmup, steps, block)
    trainer = L.Trainer(max_steps=warmup + steps, accelerator="cpu", devices=1, precision="32-true",
                        gradient_clip_val=recipe.train.grad_clip, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[clock])
    trainer.fit(module, DataLoader(range(warmup + steps), batch_size=1))
    return {"spec": spec_name, "mode": mode, "objective": objective, "batch_size": batch_size,
            "rows": len(train_set), "steps": steps, "prepare_s": prepare_s, **clock.rates(),
            "peak_rss_mb": clock.rss.peak_mb, "losses": clock.losses}


def _until_pause(worker: subprocess.Popen, errors: Path) -> str:
    """Read the worker's stdout up to its next PAUSE or RESULT line."""
    for line in worker.stdout:
        if line.startswith(("PAUSE", "RESULT ")):
            return line
    raise RuntimeError(f"benchmark worker failed ({worker.wait()}):\n{errors.read_text()[-3000:]}")


def run_interleaved(jobs: list[dict[str, Any]], threads: int) -> list[dict[str, Any]]:
    """One subprocess per job (so each peak RSS holds only its own models), taking turns block by block.

    Workers are started one after the other and only one ever computes: the others wait on stdin.
    """
    workers: list[tuple[subprocess.Popen, Path]] = []
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        try:
            for index, job in enumerate(jobs):
                errors = Path(folder) / f"{index}.err"
                command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job),
                           "--threads", str(threads)]
                with errors.open("w") as stderr:
                    worker = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                              stderr=stderr, text=True)
                workers.append((worker, errors))
                _until_pause(worker, errors)  # built and warmed up before the next one starts
            while len(results) < len(workers):
                for index, (worker, errors) in enumerate(workers):
                    if index in results:
                        continue
                    worker.stdin.write("go\n")
                    worker.stdin.flush()
                    line = _until_pause(worker, errors)
                    if line.startswith("RESULT "):
                        results[index] = json.loads(line.removeprefix("RESULT "))
        finally:  # on a failure, do not leave the other worker waiting on its stdin
            for worker, _ in workers:
                if worker.poll() is None and len(results) < len(workers):
                    worker.kill()
                worker.wait()
    return [results[index] for index in range(len(jobs))]


def run_cpu(args: argparse.Namespace) -> None:
    """Per (spec, objective): the cached and uncached workers, interleaved; then the table and the JSON."""
    rows = []
    for spec in args.spec:
        for objective in args.objectives:
            jobs = [{"spec_name": spec, "mode": mode, "objective": objective, "steps": args.steps,
                     "warmup": args.warmup, "batch_size": args.batch_size, "train_shots": args.train_shots,
                     "block": args.block} for mode in MODES]
            for row in run_interleaved(jobs, args.threads):
                rows.append(row)
                print(f"  {spec} {objective} {row['mode']}: {row['steps_per_s']:.2f} steps/s (wall)", flush=True)
    by_key = {(r["spec"], r["objective"], r["mode"]): r for r in rows}
    for row in rows:  # same batches, same latents: the first (pre-update) losses must agree
        cached = by_key[(row["spec"], row["objective"], "cached")]
        row["ratio"] = cached["steps_per_s"] / row["steps_per_s"]
        row["cpu_ratio"] = cached["cpu_steps_per_s"] / row["cpu_steps_per_s"]
        row["first_loss_matches"] = abs(row["losses"][0] - cached["losses"][0]) <= 1e-4 * abs(cached["losses"][0])
    print()
    print(f"{args.steps} timed steps after {args.warmup} warm-up, batch {args.batch_size}, {args.threads} torch "
          "thread(s). steps/s: wall clock over the timed steps; cpu steps/s: 1 / the median step's CPU time (robust "
          "to contention). ratio = cached / this row. Peak RSS sampled every 2 ms over the timed steps.")
    print_table(rows, [("mode", "mode", ""), ("spec", "spec", ""), ("objective", "objective", ""),
                       ("steps_per_s", "steps/s", ".2f"), ("ratio", "ratio (wall)", ".2f"),
                       ("cpu_steps_per_s", "cpu steps/s", ".2f"), ("cpu_ratio", "ratio (cpu)", ".2f"),
                       ("peak_rss_mb", "peak RSS MB", ".0f"), ("prepare_s", "prepare s", ".2f")])
    if not all(r["first_loss_matches"] for r in rows):
        print("WARNING: cached and uncached first-step losses differ: the two modes are not training the same thing")
    write_report("train", {"device": "cpu", "steps": args.steps, "warmup": args.warmup,
                           "batch_size": args.batch_size, "train_shots": args.train_shots, "rows": rows})


# -------------------------------------------------------------------- real size on a GPU
def real_step_loop(denoiser: torch.nn.Module, objective: str, batch: int, steps: int, warmup: int,
                   autocast: bool) -> dict[str, float]:
    """`warmup + steps` LoRA steps from random "cached" latents; seconds per step over the last `steps`."""
    weight = next(denoiser.parameters())
    device, dtype = weight.device, weight.dtype
    params = [p for p in denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    loss_of = OBJECTIVES[objective]()
    holder = SimpleNamespace(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))  # all `flow` reads of it
    shape = (batch, 16, REAL_LATENT_SIDE, REAL_LATENT_SIDE)
    cached = {name: torch.randn(shape, device=device) for name in ("target_mean", "condition_mean")}
    cached |= {name: torch.full(shape, 0.05, device=device) for name in ("target_std", "condition_std")}
    embeds = torch.randn(batch, REAL_TEXT_TOKENS, REAL_JOINT_DIM, device=device)
    pooled = torch.randn(batch, REAL_POOLED_DIM, device=device)
    points = torch.full((batch, MAX_POINTS, 2), -1.0, device=device)
    labels = torch.zeros(batch, MAX_POINTS, dtype=torch.long, device=device)
    generator = torch.Generator().manual_seed(0)
    compute = torch.bfloat16 if autocast else dtype

    def denoise(noisy: torch.Tensor, condition: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return denoiser(noisy.to(dtype), condition.to(dtype), timesteps, embeds.to(dtype), pooled.to(dtype),
                        points.to(dtype), labels)

    def step() -> None:
        with torch.autocast(device.type, dtype=compute, enabled=autocast):
            loss = loss_of.loss(holder, denoise, cached, generator)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return {"s_per_step": (time.perf_counter() - start) / steps}


def run_real(args: argparse.Namespace) -> None:
    """Rank-32 attention LoRA on SD3-medium at 768 px: checkpointing off/on x batch x weight precision."""
    device, rows = torch.device(args.device), []
    for weights in ("bf16", "fp32+autocast"):
        print(f"building SD3-medium's transformer with random weights ({weights}) ...", flush=True)
        base = build_real_denoiser(device, torch.bfloat16 if weights == "bf16" else torch.float32)
        denoiser = add_lora(base, AdapterSection(rank=32, alpha=32, targets="attention"))
        weights_gib = torch.cuda.memory_allocated(device) / GIB
        for checkpointing in (False, True):
            base.gradient_checkpointing = checkpointing
            for batch in args.real_batch_sizes:
                for objective in args.objectives:
                    row = {"weights": weights, "checkpointing": checkpointing, "batch": batch, "objective": objective,
                           "weights_gib": weights_gib}
                    denoiser.zero_grad(set_to_none=True)  # an OOM mid-backward leaves partial gradients
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                    try:
                        row |= real_step_loop(denoiser, objective, batch, args.steps, args.warmup,
                                              autocast=weights != "bf16")
                        row["images_per_s"] = batch / row["s_per_step"]
                    except torch.cuda.OutOfMemoryError:
                        row["oom"] = True
                    row["peak_alloc_gib"] = torch.cuda.max_memory_allocated(device) / GIB
                    row["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
                    # a 24 GB card also holds the CUDA context and cuBLAS workspace: ~0.8 GiB kept aside
                    row["fits_24gb"] = not row.get("oom") and row["peak_reserved_gib"] + 0.8 <= 24.0
                    rows.append(row)
                    speed = "OOM" if row.get("oom") else f"{row['s_per_step']:.3f} s/step"
                    print(f"  {weights} ckpt={checkpointing} batch {batch} {objective}: {speed}, "
                          f"peak {row['peak_alloc_gib']:.1f} GiB", flush=True)
        del denoiser, base
        torch.cuda.empty_cache()
    print("\nTransformer + LoRA only, from cached latents: VAE, text encoders and the pixel loss are excluded. "
          "'fits 24GB': peak reserved + 0.8 GiB CUDA context <= 24 GiB.")
    print_table(rows, [("weights", "weights", ""), ("checkpointing", "grad ckpt", ""), ("batch", "batch", "d"),
                       ("objective", "objective", ""), ("s_per_step", "s/step", ".3f"),
                       ("images_per_s", "images/s", ".2f"), ("weights_gib", "weights GiB", ".1f"),
                       ("peak_alloc_gib", "peak alloc GiB", ".1f"), ("peak_reserved_gib", "peak reserved GiB", ".1f"),
                       ("fits_24gb", "fits 24GB", "")])
    write_report("train_real", {"device": "cuda", "resolution": 768, "lora": {"rank": 32, "targets": "attention"},
                                "steps": args.steps, "warmup": args.warmup, "rows": rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", nargs="+", choices=sorted(SPECS), default=["tiny", "default"])
    parser.add_argument("--objectives", nargs="+", choices=sorted(OBJECTIVES), default=["single_step", "flow"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--block", type=int, default=5, help="steps each mode runs before the other takes a turn")
    parser.add_argument("--batch-size", type=int, default=4, help="CPU runs (the bundled recipes use 4)")
    parser.add_argument("--train-shots", type=int, default=8, help="synthetic training pairs (doubled by flips)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0: torch's default); one keeps CPU time a measure of work")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--real-size", action="store_true", help="SD3-medium at 768 px on a GPU (needs --device cuda)")
    parser.add_argument("--real-batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one CPU measurement, as JSON
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be >= 1: the clock starts at the end of the last warm-up step")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        L.seed_everything(0, verbose=False)
        print("RESULT " + json.dumps(measure(**json.loads(args.worker))))
        return
    check_device(parser, args.device, args.real_size, "training a 2 B-parameter transformer at 768 px on a CPU "
                     "takes minutes per step")
    if args.device == "cuda" and not args.real_size:
        parser.error("the cached/uncached comparison runs on the CPU; on a GPU use --real-size")
    if args.real_size:
        run_real(args)
    else:
        run_cpu(args)


if __name__ == "__main__":
    main()
