"""Training a LoRA adapter on the frozen generalist: objectives, latent caching, the Lightning module, `train`.

The program `train(recipe)` reads top to bottom like the job it does:
1. check the recipe and the data (no model yet), 2. load the generalist, 3. encode the prompt and
every image and target once (the VAE and text encoders are frozen, so their outputs are cached
and the text encoders freed), 4. fit LoRA with Lightning, validating with the recipe's metrics
and keeping the best adapter, 5. write the adapter folder, metrics, a CSV log and a curve.

Objectives are pluggable (`OBJECTIVES`): `flow` is SD3's rectified flow; `single_step` trains one
deterministic pass at the pure-noise end of the schedule, which learns far faster on small data.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.checkpoint import checkpoint as grad_checkpoint
from torch.utils.data import DataLoader

from adaptkit import bases
from adaptkit.adapters import AdapterMeta, add_lora, count_parameters, resolve_targets, save_adapter
from adaptkit.codecs import Codec
from adaptkit.data import Sample, Splits, hflip_sample
from adaptkit.errors import AdaptkitError, FileError
from adaptkit.files import load_torch, writable_folder
from adaptkit.generalist import MAX_POINTS, CheckpointError, Generalist
from adaptkit.images import resize, to_model_batch
from adaptkit.memory import BaseShapes, estimate_memory, generalist_shapes, held_modules, peak_rss_bytes
from adaptkit.metrics import HIGHER_IS_BETTER, build_codec_metrics, default_metric_names
from adaptkit.preflight import preflight
from adaptkit.recipe import Recipe


class TrainingError(AdaptkitError, RuntimeError):
    """Training stopped for a reason the user must act on (the message says which)."""


class TrainingInterrupted(TrainingError):
    """Ctrl-C or SIGTERM stopped training after a checkpoint was saved; the message says how to resume."""

    exit_code = 130


# ------------------------------------------------------------------------ cached latents
@dataclass
class EncodedSet:
    """Posterior parameters of condition images and targets, cached once per run.

    Rows are (sample, augmentation variant). `target_pixels` (the encoded target at the model
    resolution, [0, 1]) serves the pixel loss; `records` keep each row's original sample for metrics.
    """

    condition_mean: torch.Tensor
    condition_std: torch.Tensor
    target_mean: torch.Tensor
    target_std: torch.Tensor
    target_pixels: torch.Tensor
    points: torch.Tensor
    point_labels: torch.Tensor
    records: list[Sample]

    def __len__(self) -> int:
        return len(self.records)

    def rows(self, index: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        names = ("condition_mean", "condition_std", "target_mean", "target_std", "target_pixels", "points",
                 "point_labels")
        return {name: getattr(self, name)[index.cpu()].to(device) for name in names}


def _content_key(sample: Sample, encoded_target: np.ndarray, resolution: int, vae_fingerprint: str) -> str:
    digest = hashlib.sha256()
    for part in (sample.image, encoded_target):
        digest.update(np.ascontiguousarray(part, dtype=np.float32).tobytes())
        digest.update(str(part.shape).encode())
    digest.update(f"{resolution}|{vae_fingerprint}|{sample.points}".encode())
    return digest.hexdigest()[:32]


@torch.inference_mode()
def target_pixels(encoded_target: np.ndarray, resolution: int, resample: str) -> torch.Tensor:
    """A colour-encoded target as the VAE sees it: (3, R, R) in [0, 1] at the model's square resolution,
    resized with the codec's resampling (`nearest` keeps discrete colours exact)."""
    pixels = torch.from_numpy(encoded_target).permute(2, 0, 1)
    return resize(pixels, resolution, resolution, resample).clamp(0, 1)


def encode_samples(generalist: Generalist, codec: Codec, samples: list[Sample], hflip: bool,
                   cache_dir: Path | None, batch_size: int = 8) -> EncodedSet:
    """VAE-encode every (image, colour-encoded target) pair, and its flip, once, keyed by content hash.

    The cache is a folder of small safetensors files: a rerun, a resumed run or a sweep trial with
    the same data skips the VAE entirely.
    """
    resolution = generalist.config.resolution
    variants = [s for sample in samples for s in ([sample, hflip_sample(sample, codec)] if hflip else [sample])]
    fingerprint = generalist.fingerprint("vae")
    rows: list[dict[str, torch.Tensor]] = [{} for _ in variants]
    todo = []
    for index, sample in enumerate(variants):
        encoded = codec.encode(sample.target)
        pixels = target_pixels(encoded, resolution, codec.resample)
        key = _content_key(sample, encoded, resolution, fingerprint)
        path = cache_dir / f"{key}.safetensors" if cache_dir else None
        rows[index]["target_pixels"] = pixels
        if path is not None and path.is_file():
            rows[index].update(load_file(str(path)))
        else:
            todo.append((index, sample, pixels, path))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        images = to_model_batch([sample.image for _, sample, _, _ in chunk], resolution)
        targets = torch.stack([pixels for _, _, pixels, _ in chunk]) * 2.0 - 1.0
        condition_mean, condition_std = generalist.encode_posterior(images)
        target_mean, target_std = generalist.encode_posterior(targets)
        for offset, (index, _, _, path) in enumerate(chunk):
            entry = {"condition_mean": condition_mean[offset], "condition_std": condition_std[offset],
                     "target_mean": target_mean[offset], "target_std": target_std[offset]}
            entry = {k: v.float().cpu().contiguous() for k, v in entry.items()}
            rows[index].update(entry)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                temporary = path.with_suffix(".tmp")
                save_file(entry, str(temporary))
                temporary.replace(path)  # atomic: parallel ranks or an interrupted run never see half a file
    points, labels = zip(*[generalist.denoiser.point_encoder.normalise(
        s.points, (s.image.shape[1], s.image.shape[0]), resolution) for s in variants], strict=True) if variants \
        else ((), ())
    stack = {name: torch.stack([row[name] for row in rows]) if rows else torch.empty(0)
             for name in ("condition_mean", "condition_std", "target_mean", "target_std", "target_pixels")}
    return EncodedSet(**stack, points=torch.stack(points) if points else torch.empty(0, MAX_POINTS, 2),
                      point_labels=torch.stack(labels) if labels else torch.empty(0, MAX_POINTS, dtype=torch.long),
                      records=variants)


# ------------------------------------------------------------------------ objectives
Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Objective:
    """How the denoiser is trained, and therefore how it must be sampled.

    `loss` sees the denoiser only as `denoise(noisy, condition, timesteps) -> velocity`, with the
    prompts and points already bound, so adapter training and pretraining share the objectives.
    """

    name: ClassVar[str]
    deterministic: ClassVar[bool]

    def __init__(self, codec: Codec | None = None, pixel_loss: bool = False) -> None:
        self.codec, self.pixel_loss = codec, pixel_loss

    def loss(self, generalist: Generalist, denoise: Denoise, batch: dict[str, torch.Tensor],
             generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class FlowMatching(Objective):
    """SD3's rectified flow: x_t = (1 - s) x0 + s noise, predict noise - x0, s from a logit-normal index.

    As in diffusers' SD3 DreamBooth recipe (the likely DICEPTION recipe), a logit-normal draw
    picks an index into the shift-3 sigma schedule, so sigma itself is not logit-normal.
    """

    name, deterministic = "flow", False

    def loss(self, generalist: Generalist, denoise: Denoise, batch: dict[str, torch.Tensor],
             generator: torch.Generator) -> dict[str, torch.Tensor]:
        scheduler = generalist.scheduler
        x0 = _draw(batch["target_mean"], batch["target_std"], generator)
        condition = _draw(batch["condition_mean"], batch["condition_std"], generator)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        u = torch.sigmoid(torch.randn(x0.shape[0], generator=generator))
        indices = (u * scheduler.config.num_train_timesteps).long().clamp_max(len(scheduler.timesteps) - 1)
        timesteps = scheduler.timesteps[indices].to(x0.device)
        sigmas = scheduler.sigmas[indices].to(x0)[:, None, None, None]
        velocity = denoise((1.0 - sigmas) * x0 + sigmas * noise, condition, timesteps)
        return {"loss": F.mse_loss(velocity.float(), (noise - x0).float())}


class SingleStep(Objective):
    """One deterministic pass: input zeros at t = 1000 (sigma 1), x0 = -v, loss on x0.

    Garcia et al. (2024) found a fixed single-step, end-to-end objective matches or beats
    multi-step sampling for diffusion perception at a fraction of the cost; on 2 CPU cores it
    learns in minutes where flow matching has not started. With `pixel_loss`, x0 is also decoded
    by the frozen VAE (with gradient checkpointing) and scored by the codec's task loss.
    """

    name, deterministic = "single_step", True

    def loss(self, generalist: Generalist, denoise: Denoise, batch: dict[str, torch.Tensor],
             generator: torch.Generator) -> dict[str, torch.Tensor]:
        x0 = batch["target_mean"]
        timesteps = torch.full((x0.shape[0],), 1000.0, device=x0.device)
        predicted = -denoise(torch.zeros_like(x0), batch["condition_mean"], timesteps).float()
        latent_loss = F.mse_loss(predicted, x0.float())
        if not self.pixel_loss:
            return {"loss": latent_loss}
        pixels = grad_checkpoint(generalist.decode_latents, predicted, False, use_reentrant=False)
        pixel_loss = self.codec.loss(pixels, batch["target_pixels"])
        return {"loss": latent_loss + pixel_loss, "latent_loss": latent_loss, "pixel_loss": pixel_loss}


OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (FlowMatching, SingleStep)}


def _draw(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return mean + std * torch.randn(mean.shape, generator=generator).to(mean)


# ------------------------------------------------------------------------ the Lightning module
def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """The learning-rate factor at `step`: linear warmup over `warmup` steps, then cosine decay to zero at
    `total`. A plain float of the step alone, so adapter training and pretraining share it and a resumed
    run continues on the same curve."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


class AdapterModule(L.LightningModule):
    """The frozen generalist with trainable LoRA layers: training steps touch only the denoiser."""

    def __init__(self, generalist: Generalist, recipe: Recipe, codec: Codec, train_set: EncodedSet,
                 val_set: EncodedSet) -> None:
        super().__init__()
        self.generalist, self.recipe, self.codec = generalist, recipe, codec
        self.train_set, self.val_set = train_set, val_set
        self.objective = OBJECTIVES[recipe.train.objective](codec, recipe.train.pixel_loss)
        self.metrics = build_codec_metrics(codec, recipe.eval.metrics or None)
        embeds, pooled = generalist.prompts.encode([recipe.task.prompt])
        self.register_buffer("prompt_embeds", embeds, persistent=False)
        self.register_buffer("pooled", pooled, persistent=False)
        self.strict_loading = False  # checkpoints hold only the LoRA weights, not the frozen base

    def training_step(self, _: torch.Tensor, batch_idx: int) -> torch.Tensor:
        # Rows and noise are a function of (seed, rank, step, micro-batch) alone, so a resumed run draws
        # exactly what the uninterrupted run would have drawn.
        train = self.recipe.train
        rng = np.random.default_rng([train.seed, self.global_rank, self.global_step, batch_idx % train.grad_accum])
        indices = torch.from_numpy(rng.integers(0, len(self.train_set), train.batch_size))
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        batch = self.train_set.rows(indices, self.device)
        dtype, count = self.generalist.dtype, len(indices)

        def denoise(noisy: torch.Tensor, condition: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
            return self.generalist.denoiser(
                noisy.to(dtype), condition.to(dtype), timesteps, self.prompt_embeds.expand(count, -1, -1).to(dtype),
                self.pooled.expand(count, -1).to(dtype), batch["points"].to(dtype), batch["point_labels"])

        losses = self.objective.loss(self.generalist, denoise, batch, generator)
        if not torch.isfinite(losses["loss"]):
            raise TrainingError(
                f"the training loss became {losses['loss'].item()} at step {self.global_step}; stopping. The adapter "
                "from the last validation is kept. Lower train.lr, raise train.warmup or keep train.grad_clip > 0.")
        self.step_losses = {f"train/{k}": float(v.detach()) for k, v in losses.items()}  # what SaveLast logs on a stop
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, on_step=True, on_epoch=False,
                      batch_size=len(indices))
        return losses["loss"]

    def validation_step(self, indices: torch.Tensor, _: int) -> None:
        rows = self.val_set.rows(indices, self.device)
        inference = self.recipe.inference
        count = len(indices)
        seeds = [inference.seed + int(i) for i in indices]
        latents = self.generalist.predict_latents(
            rows["condition_mean"], rows["condition_std"], seeds, self.prompt_embeds.expand(count, -1, -1),
            self.pooled.expand(count, -1), inference.steps, inference.guidance, self.objective.deterministic,
            rows["points"].to(self.generalist.dtype), rows["point_labels"])
        images = self.generalist.decode_latents(latents).cpu()
        for index, image in zip(indices.tolist(), images, strict=True):
            record = self.val_set.records[index]
            height, width = record.image.shape[:2]
            restored = resize(image, height, width).clamp(0, 1).permute(1, 2, 0).numpy()
            self.metrics.update(self.codec.decode(restored), record.target)

    def on_validation_epoch_end(self) -> None:
        values = {f"val/{k}": float(v) for k, v in self.metrics.compute().items()}
        # `trainer.validate` runs under inference mode but validation inside `fit` does not: states reset
        # here would be inference tensors that fit's next validation may not update in place.
        with torch.inference_mode(False):
            self.metrics.reset()
        self.log_dict(values, sync_dist=False)

    def configure_optimizers(self) -> dict[str, Any]:
        train = self.recipe.train
        parameters = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=train.lr, weight_decay=train.weight_decay)

        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, train.steps, train.warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}


# ------------------------------------------------------------------------ callbacks
class KeepBestAdapter(L.Callback):
    """After each validation, write the adapter folder if the monitored metric improved."""

    def __init__(self, folder: Path, monitor: str, higher_is_better: bool, meta: AdapterMeta) -> None:
        self.folder, self.monitor, self.higher, self.meta = folder, monitor, higher_is_better, meta
        self.best: float | None = None
        self.history: list[dict[str, float]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "history": self.history, "metrics": dict(self.meta.metrics)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # the best metrics come back with the best value, so a resumed run's metrics.json keeps them
        self.best, self.history = state["best"], state["history"]
        self.meta.metrics = dict(state.get("metrics", {}))

    def on_validation_end(self, trainer: L.Trainer, module: AdapterModule) -> None:
        if trainer.sanity_checking:
            return
        values = {k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items()
                  if k.startswith("val/")}
        if not values:
            return
        self.history.append({"step": trainer.global_step, **values})
        value = values[self.monitor]
        improved = self.best is None or (value > self.best if self.higher else value < self.best)
        if improved and trainer.is_global_zero:
            self.best = value
            self.meta.metrics = values
            self.meta.metrics["step"] = trainer.global_step
            save_adapter(self.folder, module.generalist.denoiser, self.meta, module.generalist.prompts.cache)
        elif improved:
            self.best = value


class ResourceRecord(L.Callback):
    """`resources.json` in the run folder: the dtype and bytes of every module the run holds (a freed text
    encoder listed as freed, so a silent fp32 copy or a kept encoder shows), the optimizer state, the
    caches, the process's peak RSS and seconds per training step, beside what `estimate_memory` predicted."""

    def __init__(self, path: Path, shapes: BaseShapes, recipe: Recipe, images: int, precision: str) -> None:
        self.path, self.shapes, self.recipe, self.images, self.precision = path, shapes, recipe, images, precision
        self.seconds: list[float] = []
        self.held: dict[str, dict[str, Any]] = {}
        self._started = 0.0

    def on_train_start(self, trainer: L.Trainer, module: AdapterModule) -> None:
        self.held = held_modules(module.generalist)

    def on_train_batch_start(self, trainer: L.Trainer, module: AdapterModule, batch: Any, batch_idx: int) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: AdapterModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.seconds.append(time.perf_counter() - self._started)

    def on_train_end(self, trainer: L.Trainer, module: AdapterModule) -> None:
        if not trainer.is_global_zero:
            return
        optimizer = sum(value.numel() * value.element_size() for optim in trainer.optimizers
                        for state in optim.state.values() for value in state.values() if torch.is_tensor(value))
        cached = [module.train_set, module.val_set]
        latents = sum(getattr(s, name).numel() * 4 for s in cached
                      for name in ("condition_mean", "condition_std", "target_mean", "target_std"))
        prompts = module.generalist.prompts.cache
        prompt_bytes = sum(t.numel() * t.element_size() for p in prompts.prompts for t in prompts.get(p))
        train = self.recipe.train
        predicted = estimate_memory(self.shapes, module.generalist.config.resolution, train.batch_size,
                                    self.recipe.adapter.rank, "bf16-mixed" if self.precision == "bf16-mixed" else "32",
                                    train.gradient_checkpointing, images=self.images, device=module.device.type)
        steady = sorted(self.seconds[1:] or self.seconds)  # the first step also warms kernels and allocators
        record = {"device": module.device.type, "precision": self.precision,
                  "gradient_checkpointing": train.gradient_checkpointing, "batch_size": train.batch_size,
                  "resolution": module.generalist.config.resolution, "modules": self.held,
                  "optimizer_state_bytes": optimizer, "latent_cache_bytes": latents, "prompt_cache_bytes": prompt_bytes,
                  "peak_rss_bytes": peak_rss_bytes(), "steps_timed": len(self.seconds),
                  "seconds_per_step": steady[len(steady) // 2] if steady else None,
                  "predicted_bytes": predicted.to_dict()}
        self.path.write_text(json.dumps(record, indent=2) + "\n")


class SaveLast(L.Callback):
    """`last.ckpt` after every validation (after KeepBestAdapter has recorded it, so a resumed run keeps the
    point), at the end of training (marked finished) and on Ctrl-C, SIGTERM, a crash or a non-finite loss.

    Ctrl-C and SIGTERM only ask to stop (`stop_requested`, see `_stop_on_signals`): the run stops at the end of
    the current batch, the one point where a checkpoint resumes to exactly the uninterrupted run. The CSV log
    is flushed before each save, so the log on disk covers the checkpoint's steps.
    """

    def __init__(self, path: Path) -> None:
        self.path, self.finished, self.stop_requested = path, False, False

    def _save(self, trainer: L.Trainer) -> None:
        for logger in trainer.loggers:
            logger.save()
        partial = self.path.with_suffix(".partial")  # kill -9 mid-write must not cost the previous checkpoint
        trainer.save_checkpoint(partial, weights_only=False)  # with optimiser and callback state, to resume
        if trainer.is_global_zero:  # only rank 0 writes; save_checkpoint ends with a barrier
            partial.replace(self.path)

    def on_train_batch_end(self, trainer: L.Trainer, module: AdapterModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.stop_requested:
            return
        train = module.recipe.train
        if (batch_idx + 1) % (train.val_every * train.grad_accum) == 0 and trainer.global_step < train.steps:
            return  # this batch's validation runs first: stop after it (on_validation_end)
        # Lightning logs this batch's losses after this hook; log them now so the CSV keeps them
        for logger in trainer.loggers:
            logger.log_metrics({**module.step_losses, "epoch": trainer.current_epoch}, step=trainer.global_step - 1)
        raise KeyboardInterrupt  # Lightning's graceful shutdown: on_exception below, then SystemExit

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._save(trainer)
            if self.stop_requested:
                raise KeyboardInterrupt

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.finished = True
        self._save(trainer)

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        self._save(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["adaptkit"] = {"finished": self.finished}


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's warnings about what adaptkit does on purpose, so a run prints what matters."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode")  # the frozen parts
        warnings.filterwarnings("ignore", message=r".*Previous log files")  # the log is restored: _merge_log
        # batches are a function of the step alone (training_step), so a mid-epoch checkpoint resumes exactly
        warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable")
        warnings.filterwarnings("ignore", message=r".*LeafSpec")  # Lightning's own deprecation, not ours
        yield


@contextlib.contextmanager
def _stop_on_signals(save_last: SaveLast) -> Iterator[None]:
    """Ctrl-C and SIGTERM (what a cluster scheduler sends) ask `save_last` to stop at the end of the batch; a
    second Ctrl-C stops at once. Lightning alone stops on SIGTERM only at the end of an epoch (a run here is
    one epoch, so it would train on to the end and exit 0)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: Any) -> None:
        if save_last.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not save_last.stop_requested:
            print(f"\n{signal.Signals(signum).name}: stopping at the end of this batch, with a checkpoint"
                  + (" (Ctrl-C again stops at once)" if signum == signal.SIGINT else ""), file=sys.stderr)
        save_last.stop_requested = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------ the program
@dataclass
class TrainResult:
    out: Path
    adapter: Path
    metrics: dict[str, float]
    trainable_parameters: int
    base_parameters: int
    splits: Splits


def _uses_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _precision(setting: str, accelerator: str) -> str:
    if setting != "auto":
        return "32-true" if setting == "32" else setting
    return "bf16-mixed" if _uses_gpu(accelerator) else "32-true"


def placement(accelerator: str, devices: str | int, strategy: str, precision: str = "auto",
              num_nodes: int = 1) -> dict[str, Any]:
    """The `L.Trainer` arguments that say where a run executes (accelerator, devices, strategy, machines) and
    in which precision: one place, so training and prediction (`adaptkit.inference`) run alike on one CPU,
    8 GPUs or several machines."""
    return {"accelerator": accelerator, "devices": devices, "strategy": strategy, "num_nodes": num_nodes,
            "precision": _precision(precision, accelerator)}


def train(recipe: Recipe, out: str | Path, resume: bool = False, generalist: Generalist | None = None,
          progress: bool = True, cache_dir: str | Path | None = None,
          callbacks: list[L.Callback] | None = None, splits: Splits | None = None) -> TrainResult:
    """Train the recipe's adapter into `out` (see the module docstring for the steps).

    `generalist` skips loading the recipe's base (e.g. one shared by sweep trials): it is handed back
    exactly as it was found (see `lend`), so call `train` on it again and again. Its text encoders are
    kept, so drop them first to free their memory once its prompts are cached. `cache_dir` holds the
    latent cache (default `out/cache`; trials of a sweep share one). `callbacks` are extra Lightning
    callbacks (a sweep's pruning callback, say). `splits` trains on exactly these pair ids of the recipe's
    data instead of the recipe's own draw (a learning curve's nested subsets); they are what the adapter records.
    """
    if generalist is None:
        return _train(recipe, out, resume, None, progress, cache_dir, callbacks, splits)
    with lend(generalist, recipe.base.resolution):
        return _train(recipe, out, resume, generalist, progress, cache_dir, callbacks, splits)


@contextmanager
def lend(generalist: Generalist, resolution: int | None = None) -> Iterator[Generalist]:
    """Lend a shared generalist to one run and hand it back exactly as it was found.

    A run sets its own resolution, caches its prompts, drops the text encoders, attaches LoRA and
    switches modules to training mode; none of that may outlive it when the next sweep trial (or
    the caller) uses the same loaded base. The weights themselves are frozen and never written.
    """
    config, prompts, denoiser = generalist.config, generalist.prompts, generalist.denoiser
    encoders = (prompts.text_encoder, prompts.text_encoder_2, prompts.text_encoder_3)
    cache, checkpointing = prompts.cache, denoiser.gradient_checkpointing
    modes = {module: module.training for module in generalist.modules()}
    generalist.config = replace(config, resolution=resolution or config.resolution)
    prompts.cache = cache.subset(cache.prompts)  # a copy: the run's prompts stay out of the shared cache
    try:
        yield generalist
    finally:
        if generalist.denoiser is not denoiser:  # LoRA is still injected (the run failed before unloading)
            generalist.denoiser.unload()
        generalist.config, generalist.denoiser, prompts.cache = config, denoiser, cache
        prompts.text_encoder, prompts.text_encoder_2, prompts.text_encoder_3 = encoders
        denoiser.gradient_checkpointing = checkpointing
        for module, training in modes.items():
            module.training = training


def _train(recipe: Recipe, out: str | Path, resume: bool, generalist: Generalist | None, progress: bool,
           cache_dir: str | Path | None, callbacks: list[L.Callback] | None, splits: Splits | None) -> TrainResult:
    out = Path(out)
    last_checkpoint = out / "checkpoints" / "last.ckpt"
    if out.exists() and not out.is_dir():
        raise FileError(out, "the output folder is a file, not a folder", "choose another --out")
    resume_step = _check_resume(recipe, out, resume, last_checkpoint)
    # 1. the recipe and the data, before any model: every bad pair and every bad value reported at once
    checked = preflight(recipe, splits=splits)
    codec, splits = checked.codec, checked.splits
    train_samples, val_samples = checked.samples["train"], checked.samples["val"]
    for warning in checked.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    writable_folder(out, create=False)  # created once nothing can be refused any more: a refusal leaves nothing
    L.seed_everything(recipe.train.seed, verbose=False)
    # 2. the generalist; under bf16-mixed its frozen weights are bf16 too (LoRA weights stay fp32), which is
    #    what lets SD3-medium train in 24 GB
    train_cfg = recipe.train
    if generalist is None:
        generalist = load_base(recipe)
    resolve_targets(generalist.denoiser, recipe.adapter.targets)  # layer names this base lacks: before any write
    # 3. prompts and latents, once; then the text encoders go
    generalist.prompts.encode([recipe.task.prompt, ""])
    shapes = generalist_shapes(generalist, recipe.adapter.targets)  # with the text encoders: the loading peak
    generalist.prompts.drop_text_encoders()
    cache = Path(cache_dir) if cache_dir else out / "cache"
    train_set = encode_samples(generalist, codec, train_samples, recipe.data.hflip, cache)
    val_set = encode_samples(generalist, codec, val_samples, False, cache)
    # 4. LoRA and Lightning
    base_denoiser = generalist.denoiser
    base_denoiser.gradient_checkpointing = recipe.train.gradient_checkpointing
    generalist.denoiser = add_lora(base_denoiser, recipe.adapter)
    trainable, base_count = count_parameters(generalist.denoiser, base_denoiser.transformer)
    print(f"trainable parameters: {trainable:,} = {100 * trainable / base_count:.3f}% of the transformer "
          f"({base_count:,}); {len(splits.train)} training images ({len(train_set)} with flips), "
          f"{len(splits.val)} validation images")
    module = AdapterModule(generalist, recipe, codec, train_set, val_set)
    monitor = recipe.train.monitor or (recipe.eval.metrics or default_metric_names(codec))[0]
    higher = HIGHER_IS_BETTER.get(monitor, True)
    meta = AdapterMeta.from_recipe(recipe, generalist, codec, samples=asdict(splits),
                                   trainable_parameters=trainable, base_parameters=base_count)
    keep_best = KeepBestAdapter(out / "adapter", monitor, higher, meta)
    save_last = SaveLast(last_checkpoint)
    where = placement(train_cfg.accelerator, train_cfg.devices, train_cfg.strategy, train_cfg.precision)
    resources = ResourceRecord(out / "resources.json", shapes, recipe, len(train_set) + len(val_set),
                               where["precision"])
    callbacks = [*(callbacks or []), keep_best, save_last, resources]
    if recipe.train.early_stop:
        callbacks.append(L.pytorch.callbacks.EarlyStopping(f"val/{monitor}", patience=recipe.train.early_stop,
                                                           mode="max" if higher else "min"))
    trainer = L.Trainer(
        **where,
        max_steps=train_cfg.steps, accumulate_grad_batches=train_cfg.grad_accum,
        gradient_clip_val=train_cfg.grad_clip or None,
        val_check_interval=train_cfg.val_every * train_cfg.grad_accum, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, callbacks=callbacks,
        logger=L.pytorch.loggers.CSVLogger(out / "logs", name="", version=""),
        enable_progress_bar=progress, enable_model_summary=False, enable_checkpointing=False,  # SaveLast saves
        deterministic="warn", log_every_n_steps=1,
        default_root_dir=out)
    train_loader = DataLoader(range(train_cfg.steps * train_cfg.grad_accum), batch_size=1)  # batches: see training_step
    val_loader = DataLoader(range(len(val_set)), batch_size=recipe.inference.batch_size)
    writable_folder(out)
    (out / "recipe.yaml").write_text(recipe.to_yaml())
    log = out / "logs" / "metrics.csv"
    earlier_log = [row for row in _read_log(log) if int(row["step"]) < resume_step] if resume else []
    with _quiet_lightning():
        if not resume and len(val_set):
            trainer.validate(module, val_loader, verbose=False)  # the zero-shot point of the curve
        try:
            with _stop_on_signals(save_last):
                trainer.fit(module, train_loader, val_loader if len(val_set) else None,
                            ckpt_path=str(last_checkpoint) if resume else None, weights_only=True)
        except SystemExit as stop:  # Lightning exits after saving on Ctrl-C / SIGTERM (see SaveLast)
            if not trainer.interrupted:
                raise
            source = recipe.source if Path(recipe.source).is_file() else "RECIPE"
            raise TrainingInterrupted(
                f"training interrupted at step {trainer.global_step} of {train_cfg.steps}; the run is saved in {out} "
                f"({last_checkpoint}). Resume it with: adaptkit train {source} --out {out} --resume") from stop
        finally:  # also after a non-finite loss or an interruption: the last good adapter, metrics and curve stay
            if trainer.global_step % train_cfg.val_every and len(val_set) and not trainer.interrupted:
                trainer.validate(module, val_loader, verbose=False)  # the final point, when steps % val_every != 0
            if resume:
                _merge_log(log, earlier_log, resume_step)
            # under DDP every rank runs this; only rank 0 holds the best metrics, so only it writes the record
            metrics = _finish(out, keep_best, module, meta) if trainer.is_global_zero else dict(meta.metrics)
            generalist.denoiser = generalist.denoiser.unload()  # a shared generalist (sweep trials) leaves unchanged
            base_denoiser.gradient_checkpointing = False
    return TrainResult(out, out / "adapter", metrics, trainable, base_count, splits)


def load_base(recipe: Recipe) -> Generalist:
    """The recipe's generalist, on the device and in the dtype its training precision needs.

    Under bf16-mixed the frozen weights are bf16 too (LoRA weights stay fp32), which is what lets
    SD3-medium train in 24 GB; the VAE encodes the data set on that device.
    """
    train_cfg = recipe.train
    dtype = torch.bfloat16 if _precision(train_cfg.precision, train_cfg.accelerator) == "bf16-mixed" else torch.float32
    device = "cuda" if _uses_gpu(train_cfg.accelerator) else "cpu"
    try:
        return bases.load_base(recipe.base, device=device, dtype=dtype)
    except CheckpointError as error:  # say which recipe key named it
        raise CheckpointError(f"{recipe.source}: base.generalist {recipe.base.generalist!r}: {error}") from None


def _check_resume(recipe: Recipe, out: Path, resume: bool, last_checkpoint: Path) -> int:
    """The step a resumed run continues from (0 for a new run), after checking the run can be resumed: its
    checkpoint is readable and adaptkit's, its recipe unchanged, and it is not finished already."""
    recorded = out / "recipe.yaml"
    if not resume:
        if last_checkpoint.is_file():
            raise TrainingError(f"{out} already holds a run ({last_checkpoint}); pass --resume to continue it, or "
                                "choose a new --out")
        return 0
    if not last_checkpoint.exists():
        raise TrainingError(f"--resume: {last_checkpoint} does not exist; nothing to resume (train without it)")
    fix = "this is not the checkpoint of an adaptkit run: train into a new --out, or without --resume"
    state = load_torch(last_checkpoint, "checkpoint", fix)
    if not isinstance(state, dict) or not {"state_dict", "global_step", "loops"} <= set(state) or not all(
            "lora_" in name for name in state["state_dict"]):
        raise FileError(last_checkpoint, "not a checkpoint written by adaptkit training (it lacks LoRA weights, "
                                         "a step or loop state)", fix)
    if recorded.is_file() and recorded.read_text() != recipe.to_yaml():
        raise TrainingError(f"--resume: the recipe differs from the one the run in {out} started with "
                            f"({recorded}); resume with the same recipe or train into a new --out")
    if state.get("adaptkit", {}).get("finished") or state["global_step"] >= recipe.train.steps:
        raise TrainingError(f"--resume: the run in {out} is finished (step {state['global_step']} of "
                            f"{recipe.train.steps}); nothing was changed. Its adapter is {out / 'adapter'}; to train "
                            "longer, train into a new --out")
    return int(state["global_step"])


def _read_log(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _merge_log(path: Path, earlier: list[dict[str, str]], start: int) -> None:
    """The CSV log of a resumed run: the rows logged before its checkpoint (Lightning's CSVLogger deletes the
    file when a run starts), then the resumed run's rows from the checkpoint's step on, as one table."""
    rows = earlier + [row for row in _read_log(path) if int(row["step"]) >= start]
    if not rows:
        return
    header = sorted({key for row in rows for key in row})
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def _finish(out: Path, keep_best: KeepBestAdapter, module: AdapterModule, meta: AdapterMeta) -> dict[str, float]:
    """Write metrics.json and the curve; make sure an adapter exists (the last weights if never validated)."""
    if keep_best.best is None:
        save_adapter(out / "adapter", module.generalist.denoiser, meta, module.generalist.prompts.cache)
    metrics = dict(meta.metrics)
    (out / "metrics.json").write_text(json.dumps({"best": metrics, "history": keep_best.history}, indent=2) + "\n")
    plot_curves(out / "logs" / "metrics.csv", keep_best.history, out / "curve.png")
    return metrics


def plot_curves(log_csv: Path, history: list[dict[str, float]], path: Path) -> None:
    """Training loss per step and validation metrics per validation, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = [], []
    if log_csv.is_file():
        with log_csv.open() as handle:
            for row in csv.DictReader(handle):
                if row.get("train/loss"):
                    steps.append(int(row["step"]))
                    losses.append(float(row["train/loss"]))
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(steps, losses, lw=0.8)
    left.set(xlabel="step", ylabel="training loss", yscale="log" if losses and min(losses) > 0 else "linear")
    for name in sorted({k for row in history for k in row if k != "step"}):
        right.plot([r["step"] for r in history], [r[name] for r in history], marker="o", label=name)
    right.set(xlabel="step", ylabel="validation")
    if history:
        right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
