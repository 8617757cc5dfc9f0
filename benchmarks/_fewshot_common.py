"""What `fewshot.py` and `objectives.py` share: the held-out task recipes, fresh bases, the fixed test images,
a training clock, and scoring an adapter folder the way a user loads it.

Both benchmarks train many adapters in one process. `train()` wraps the generalist it is given in LoRA and
drops its text encoders, so every run gets a freshly loaded base (the default is small: loading is instant).
Adapters are scored after reloading their folder, i.e. by the code path users run, not by a benchmark-only
re-implementation.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import transformers
from diffusers import SD3Transformer2DModel

from adaptkit.adapters import AdaptedModel
from adaptkit.bases import load_generalist
from adaptkit.codecs import build_codec
from adaptkit.data import Sample, check_all, load_splits
from adaptkit.generalist import Generalist, InContextDenoiser, PointPromptEncoder
from adaptkit.recipe import Recipe, load_recipe

#: The held-out synthetic tasks (binary masks the default never saw) and the prompts their adapters answer:
#: three on the pretraining scenes, and one on each family held out of pretraining whole (`cells`, microscopy-
#: like; `lungs`, slice-like), where a result is about transfer to images unlike any seen, not about memory.
TASK_PROMPTS = {"shadow": "[[image2shadow]]", "nearest": "[[image2nearest]]", "boundaries": "[[image2boundary]]",
                "cells": "[[image2cells]]", "lungs": "[[image2lungs]]"}

#: Seed of the random re-initialisation. Seed 0 re-creates exactly the transformer and point encoder that
#: pretraining started from (`build_tiny_generalist(DEFAULT_SPEC)` seeds 0 and builds the same configs), so
#: "pretrained vs random" isolates what pretraining added. With `--base tiny` the base *is* that random model.
INIT_SEED = 0


def quiet() -> None:
    """Dozens of runs: keep Lightning's per-run banners and data-loader hints, and transformers' weight-loading
    bars (one per text encoder per fresh base), out of the benchmark's output."""
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def fresh_base(name: str, random_init: bool = False, text_encoders: bool = True) -> Generalist:
    """A newly loaded base on the CPU; `random_init` swaps in a randomly initialised denoiser of the same
    architecture while keeping the base's VAE and text encoders, so only the transformer's pretraining differs."""
    generalist = load_generalist(name, device="cpu", load_text_encoders=text_encoders)
    if random_init:
        old = generalist.denoiser
        torch.manual_seed(INIT_SEED)
        denoiser = InContextDenoiser(SD3Transformer2DModel.from_config(old.transformer.config),
                                     PointPromptEncoder.from_config(old.point_encoder.config))
        generalist.denoiser = denoiser.to(generalist.device, generalist.dtype).requires_grad_(False)
    return generalist


def describe(generalist: Generalist) -> dict[str, Any]:
    """Which base the numbers belong to: the default is re-pretrained from time to time, so record its weights."""
    return {"base_description": generalist.config.description, "base_fingerprint": generalist.fingerprint()}


def task_recipe(base: str, task: str, resolution: int, overrides: dict[str, Any]) -> Recipe:
    """quickstart.yaml pointed at `base` and synthetic `task`, rendered at the base's own resolution."""
    return load_recipe("quickstart", {"name": f"{task}-{Path(base).name}", "base.generalist": base,
                                      "task.prompt": TASK_PROMPTS[task], "data.synth_task": task,
                                      "data.synth_resolution": resolution, **overrides})


def test_samples(recipe: Recipe) -> list[Sample]:
    """The recipe's test split, loaded: the images every variant of one task is scored on."""
    codec = build_codec(recipe.task.codec, recipe.task.codec_args)
    source, splits = load_splits(recipe.data, codec)
    return check_all(source, splits.test)


def load_adapter(folder: Path, base: str, random_init: bool = False) -> AdaptedModel:
    """An adapter folder loaded the way `adaptkit eval` loads it: onto a fresh base, fingerprint-checked, with
    the prompt embeddings it carries (so the base's text encoders are not needed)."""
    return AdaptedModel.from_pretrained(folder, generalist=fresh_base(base, random_init, text_encoders=False))


class TrainClock(L.Callback):
    """Seconds spent in training batches only (validation and data encoding excluded), optionally a budget.

    Timing batches rather than the whole `fit` keeps the comparison about optimisation: validating a flow
    adapter at 8 sampling steps costs more than a single-step one, and that must not eat its training time.
    With `budget_s`, the run stops (`trainer.should_stop`) at the first batch end past the budget; `points`
    records (training seconds, step, validation metrics) at every validation, including train()'s zero-shot one;
    `steps` is the number of optimiser steps taken.
    """

    def __init__(self, budget_s: float | None = None) -> None:
        self.budget_s = budget_s
        self.seconds = 0.0
        self.steps = 0
        self.points: list[dict[str, float]] = []
        self._started = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *_: Any) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        self.seconds += time.perf_counter() - self._started
        self.steps = trainer.global_step
        if self.budget_s is not None and self.seconds >= self.budget_s:
            trainer.should_stop = True

    def on_validation_end(self, trainer: L.Trainer, _: L.LightningModule) -> None:
        values = {k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        repeated = bool(self.points) and self.points[-1]["step"] == trainer.global_step  # stop, then train()'s final
        if values and not trainer.sanity_checking and not repeated:
            self.points.append({"seconds": self.seconds, "step": trainer.global_step, **values})
