"""The central claim, measured: a pretrained generalist adapts from ~50 images with ~1% of its parameters
better than the same architecture, or a small U-Net, trained from scratch on those images.

On held-out synthetic tasks (binary masks the default never saw, two of them on image families held out of
pretraining whole; IoU/Dice summed over the test pixels), every variant gets the same labelled images
(`--shots`, with horizontal flips), the same step budget (`--steps` x `--batch-size`, identical row draws per
step) and the same `--test` test images:

* `zero-shot`: the pretrained base prompted with the new task, no adapter (= LoRA after 0 steps);
* `lora`: rank-`--rank` LoRA on the attention layers (~1% of the transformer) of the pretrained base, via
  `adaptkit.training.train` with quickstart.yaml (the training sets are nested across shot counts);
* `lora-random`: the same LoRA on a randomly initialised generalist of the same architecture;
* `unet-scratch`: a diffusers `UNet2DModel` (~ the transformer's size) trained in pixel space with BCE + Dice;
* `full-random` (largest shot count only): every transformer parameter of the random generalist trained;
* `full-pretrained` (largest shot count only): every transformer parameter of the pretrained base trained: whether
  a shortfall of `lora` is the adapter's (its ~1% of the parameters) or the base's;
* `vae-round-trip` (no training): each test target colour-encoded, through the base's VAE and back, scored as a
  prediction is: what a transformer variant predicting its training latents perfectly would score. The goal is
  recorded as unreachable where the U-Net's IoU plus the margin exceeds it.

`lora`, `lora-random` and `unet-scratch` run at every shot count (`--variants` picks some); `--pixel-loss`
adds the codec's task loss (BCE + Dice for masks, as the U-Net's) to the transformer variants' latent loss, and
`--lora-set KEY=VALUE` changes the LoRA variants' recipe (rate, targets, rank...). Every trained variant also
reports `train_iou`, its IoU on its own labelled images: low there too means it under-fits (capacity or
optimisation), high there but not on the test images means it over-fits. The U-Net never touches the
base, so comparing two bases can `--reuse` its rows from the first run (the settings must match). The goal
the project holds itself to (issue 16) is printed and recorded per task: at 25 and 50 shots, `lora` beats
`unet-scratch` by >= 0.05 IoU in less training time.

The random generalist re-initialises only the transformer and point encoder (seed 0: exactly the weights
pretraining started from) and keeps the base's VAE and text encoders, so the comparison is about the
transformer's pretraining, not about having a trained VAE. No validation images are used (train() keeps the
last weights), so each variant sees exactly `--shots` labelled images. Run:

    python benchmarks/fewshot.py [--base default] [--tasks cells lungs] [--steps 300]
    python benchmarks/fewshot.py --base runs/v2/default --reuse benchmarks/results/fewshot.json --name fewshot_v2
    python benchmarks/fewshot.py --base tiny --quick          # smoke test: tiny random base, a few steps

Writes ``benchmarks/results/{--name}.json`` and ``.png`` (default ``fewshot``; ``fewshot_quick`` with --quick).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _common import RESULTS, print_table, write_report
from _fewshot_common import (
    TASK_PROMPTS,
    TrainClock,
    describe,
    fresh_base,
    load_adapter,
    quiet,
    task_recipe,
    test_samples,
)
from diffusers import UNet2DModel

from adaptkit.adapters import AdaptedModel
from adaptkit.codecs import _soft_dice, build_codec
from adaptkit.data import Sample, check_all, hflip_sample, load_splits
from adaptkit.images import resize, to_model_batch
from adaptkit.inference import evaluate
from adaptkit.metrics import build_codec_metrics
from adaptkit.recipe import Recipe, RecipeError, TrainSection, parse_overrides
from adaptkit.training import OBJECTIVES, encode_samples, target_pixels, train, warmup_cosine

#: Every variant, in the order they run (the module docstring says what each is).
VARIANTS = ("zero-shot", "lora", "lora-random", "unet-scratch", "full-random", "full-pretrained", "vae-round-trip")
#: Single-step sampling, as every adapter here is trained (and as train() validates).
SINGLE_STEP = {"steps": 1, "guidance": 1.0, "batch_size": 32}


def fewshot_recipe(args: argparse.Namespace, task: str, shots: int, resolution: int,
                   extra: dict[str, Any] | None = None) -> Recipe:
    """`shots` training images and no validation (`extra`: further recipe overrides, e.g. `--lora-set`'s).
    The pool size is fixed (max shots + test), so the seeded permutation is the same for every shot count:
    k-shot training sets are prefixes of the largest, and the test images (the pool after the largest training
    set) never overlap any of them."""
    pool = max(args.shots) + args.test
    return task_recipe(args.base, task, resolution, {
        "data.train_shots": shots, "data.val_shots": 0, "data.test_shots": pool - shots,
        "adapter.rank": args.rank, "adapter.alpha": float(args.rank), "train.steps": args.steps,
        "train.batch_size": args.batch_size, "train.val_every": args.steps, "train.pixel_loss": args.pixel_loss,
        **(extra or {})})


def dotted_settings(texts: list[str]) -> dict[str, Any]:
    """`["train.lr=0.01"]` -> `{"train.lr": 0.01}`: read as `adaptkit train` reads its overrides
    (`parse_overrides`), flattened into the dotted form `fewshot_recipe` merges."""

    def flatten(mapping: dict[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
        for key, value in mapping.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return dict(flatten(parse_overrides(texts), ""))


def labelled_samples(recipe: Recipe) -> list[Sample]:
    """The recipe's training images as labelled (no mirror images): what `train_iou` is scored on."""
    codec = build_codec(recipe.task.codec, recipe.task.codec_args)
    source, splits = load_splits(recipe.data, codec)
    return check_all(source, splits.train)


def with_mirrors(recipe: Recipe, samples: list[Sample]) -> list[Sample]:
    """The training images plus their mirror images (when the recipe flips), exactly the rows train() caches."""
    codec = build_codec(recipe.task.codec, recipe.task.codec_args)
    return [v for s in samples for v in ([s, hflip_sample(s, codec)] if recipe.data.hflip else [s])]


def optimise(parameters: list[torch.nn.Parameter], loss_of: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
             rows: int, train_cfg: TrainSection, lr: float) -> float:
    """train()'s optimisation outside Lightning: AdamW, warmup + cosine, gradient clipping, and the very row
    draws of `AdapterModule.training_step` (seeded by seed and step), so every variant sees the same batches.
    Returns the seconds spent in the steps."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=train_cfg.weight_decay)
    started = time.perf_counter()
    for step in range(train_cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * warmup_cosine(step, train_cfg.steps, train_cfg.warmup)
        rng = np.random.default_rng([train_cfg.seed, 0, step, 0])
        indices = torch.from_numpy(rng.integers(0, rows, train_cfg.batch_size))
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        loss = loss_of(indices, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, train_cfg.grad_clip)
        optimizer.step()
    return time.perf_counter() - started


def run_lora(args: argparse.Namespace, recipe: Recipe, test: list[Sample], random_init: bool) -> dict[str, Any]:
    """LoRA through `train()` exactly as users run it, scored after reloading the adapter folder."""
    clock = TrainClock()
    with tempfile.TemporaryDirectory() as out:
        result = train(recipe, out, generalist=fresh_base(args.base, random_init), progress=False, callbacks=[clock])
        model = load_adapter(result.adapter, args.base, random_init)
        metrics = evaluate(model, test, progress=False).metrics
        fitted = evaluate(model, labelled_samples(recipe), progress=False).metrics
    return {"trainable": result.trainable_parameters, "seconds": clock.seconds, **metrics, "train_iou": fitted["iou"]}


def run_full(args: argparse.Namespace, recipe: Recipe, test: list[Sample], random_init: bool) -> dict[str, Any]:
    """All transformer parameters of the random or pretrained generalist, single-step objective, cached latents
    as train()."""
    generalist = fresh_base(args.base, random_init=random_init)
    codec = build_codec(recipe.task.codec, recipe.task.codec_args)
    embeds, pooled = generalist.prompts.encode([recipe.task.prompt])
    labelled = labelled_samples(recipe)
    train_set = encode_samples(generalist, codec, with_mirrors(recipe, labelled), hflip=False, cache_dir=None)
    objective = OBJECTIVES["single_step"](codec, recipe.train.pixel_loss)
    transformer = generalist.denoiser.transformer.train().requires_grad_(True)
    parameters = list(transformer.parameters())

    def loss_of(indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch = train_set.rows(indices, generalist.device)
        count = len(indices)

        def denoise(noisy: torch.Tensor, condition: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
            return generalist.denoiser(noisy, condition, timesteps, embeds.expand(count, -1, -1),
                                       pooled.expand(count, -1), batch["points"], batch["point_labels"])

        return objective.loss(generalist, denoise, batch, generator)["loss"]

    seconds = optimise(parameters, loss_of, len(train_set), recipe.train, args.full_lr)
    generalist.requires_grad_(False).eval()
    model = AdaptedModel(generalist, codec, recipe.task.prompt, "single_step", SINGLE_STEP)
    metrics = evaluate(model, test, progress=False).metrics
    fitted = evaluate(model, labelled, progress=False).metrics
    return {"trainable": sum(p.numel() for p in parameters), "seconds": seconds, **metrics, "train_iou": fitted["iou"]}


def build_unet(resolution: int) -> UNet2DModel:
    """A small pixel-space U-Net (~2.5 M parameters, about the default transformer's size), no attention."""
    torch.manual_seed(0)
    return UNet2DModel(sample_size=resolution, in_channels=3, out_channels=1, layers_per_block=1,
                       block_out_channels=(32, 64, 128), down_block_types=("DownBlock2D",) * 3,
                       up_block_types=("UpBlock2D",) * 3, norm_num_groups=8)


def run_unet(args: argparse.Namespace, recipe: Recipe, test: list[Sample], resolution: int) -> dict[str, Any]:
    """The specialist baseline: a U-Net from scratch on the same images (timestep fixed at 0), BCE + Dice."""
    labelled = labelled_samples(recipe)
    samples = with_mirrors(recipe, labelled)
    images = to_model_batch([s.image for s in samples], resolution)
    masks = torch.stack([resize(torch.from_numpy(s.target).float()[None], resolution, resolution, "nearest")[0]
                         for s in samples])
    unet = build_unet(resolution).train()
    parameters = list(unet.parameters())

    def loss_of(indices: torch.Tensor, _: torch.Generator) -> torch.Tensor:
        logits, truth = unet(images[indices], 0).sample[:, 0], masks[indices]
        return F.binary_cross_entropy_with_logits(logits, truth) + _soft_dice(torch.sigmoid(logits), truth)

    seconds = optimise(parameters, loss_of, len(samples), recipe.train, recipe.train.lr)
    unet.eval()
    values = score_unet(unet, recipe, test, resolution)
    fitted = score_unet(unet, recipe, labelled, resolution)
    return {"trainable": sum(p.numel() for p in parameters), "seconds": seconds, **values, "train_iou": fitted["iou"]}


@torch.inference_mode()
def score_unet(unet: UNet2DModel, recipe: Recipe, samples: list[Sample], resolution: int) -> dict[str, float]:
    """The U-Net's masks (logit > 0, resized to each image's own size) scored as `evaluate` scores an adapter."""
    metrics = build_codec_metrics(build_codec(recipe.task.codec), recipe.eval.metrics or None)
    for start in range(0, len(samples), SINGLE_STEP["batch_size"]):
        chunk = samples[start:start + SINGLE_STEP["batch_size"]]
        logits = unet(to_model_batch([s.image for s in chunk], resolution), 0).sample
        for sample, logit in zip(chunk, logits, strict=True):
            height, width = sample.target.shape
            metrics.update((resize(logit, height, width)[0] > 0).numpy(), sample.target)
    return {name: float(value) for name, value in metrics.compute().items()}


@torch.inference_mode()
def run_vae_round_trip(args: argparse.Namespace, recipe: Recipe, test: list[Sample]) -> dict[str, Any]:
    """The test targets encoded as training encodes them (posterior mean), decoded as a prediction is (resized
    back to each target's size, then the codec): the score of a perfect prediction of the training latents."""
    generalist = fresh_base(args.base, text_encoders=False)
    codec = build_codec(recipe.task.codec, recipe.task.codec_args)
    metrics = build_codec_metrics(codec, recipe.eval.metrics or None)
    resolution = generalist.config.resolution
    for start in range(0, len(test), SINGLE_STEP["batch_size"]):
        chunk = test[start:start + SINGLE_STEP["batch_size"]]
        pixels = torch.stack([target_pixels(codec.encode(s.target), resolution, codec.resample) for s in chunk])
        mean, _ = generalist.encode_posterior(pixels * 2.0 - 1.0)
        for sample, image in zip(chunk, generalist.decode_latents(mean).cpu(), strict=True):
            height, width = sample.target.shape[:2]
            metrics.update(codec.decode(resize(image, height, width).clamp(0, 1).permute(1, 2, 0).numpy()),
                           sample.target)
    values = {name: float(value) for name, value in metrics.compute().items()}
    return {"trainable": 0, "seconds": 0.0, **values}


#: Variants that never touch the base (the U-Net sees only the images), so a run on another base may reuse them.
BASE_FREE_VARIANTS = ("unet-scratch",)


def reused_rows(paths: list[str], args: argparse.Namespace, resolution: int) -> dict[tuple, dict[str, Any]]:
    """Base-free rows of earlier runs, keyed (task, variant, shots), when every setting they depend on matches."""
    found: dict[tuple, dict[str, Any]] = {}
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
            settings, rows = report["settings"], report["rows"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SystemExit(f"--reuse {path}: not a fewshot results file ({error}); give a "
                             "benchmarks/results/*.json that fewshot.py wrote") from None
        # The largest shot count fixes the pool, hence every training set (nested prefixes) and the test set.
        earlier = {**settings, "most_shots": max(settings.get("shots") or [0])}
        for key, value in (("steps", args.steps), ("batch_size", args.batch_size), ("most_shots", max(args.shots)),
                           ("test", args.test), ("resolution", resolution)):
            if earlier.get(key) != value:
                raise SystemExit(f"--reuse {path}: it ran with {key} {earlier.get(key)}, this run with {value}; "
                                 "its U-Net rows are not comparable (drop --reuse or match the setting)")
        found |= {(r["task"], r["variant"], r["shots"]): r for r in rows if r["variant"] in BASE_FREE_VARIANTS}
    return found


def run_task(args: argparse.Namespace, task: str, resolution: int, transformer_size: int,
             reused: dict[tuple, dict[str, Any]], lora_settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Every variant on one task; rows carry task, variant, shots and % of the transformer trained. Rows in
    `reused` (base-free variants of an earlier run with the same settings) are taken instead of rerun."""
    largest = fewshot_recipe(args, task, max(args.shots), resolution)
    test = test_samples(largest)
    rows: list[dict[str, Any]] = []

    def add(variant: str, shots: int, result: dict[str, Any]) -> None:
        row = {"task": task, "variant": variant, "shots": shots, **result,
               "percent": 100.0 * result["trainable"] / transformer_size}
        rows.append(row)
        fitted = f", {row['train_iou']:.4f} on its training images" if row.get("train_iou") is not None else ""
        print(f"  {task:>10} {variant:<14} {shots:>3} shots: IoU {row['iou']:.4f}{fitted}  ({row['seconds']:.0f} s)"
              + (" reused" if result.get("reused") else ""), flush=True)

    if "zero-shot" in args.variants:
        base = fresh_base(args.base)
        zero = AdaptedModel(base, build_codec(largest.task.codec), TASK_PROMPTS[task], "single_step", SINGLE_STEP)
        add("zero-shot", 0, {"trainable": 0, "seconds": 0.0, **evaluate(zero, test, progress=False).metrics})
    runs = {"lora": lambda recipe: run_lora(args, recipe, test, random_init=False),
            "lora-random": lambda recipe: run_lora(args, recipe, test, random_init=True),
            "unet-scratch": lambda recipe: run_unet(args, recipe, test, resolution)}
    for shots in sorted(args.shots):
        recipe = fewshot_recipe(args, task, shots, resolution)
        lora_recipe = fewshot_recipe(args, task, shots, resolution, lora_settings)
        for variant in (v for v in runs if v in args.variants):
            earlier = reused.get((task, variant, shots))
            if earlier is None:
                add(variant, shots, runs[variant](lora_recipe if variant.startswith("lora") else recipe))
            else:
                kept = {k: v for k, v in earlier.items() if k not in ("task", "variant", "shots", "percent")}
                add(variant, shots, kept | {"reused": True})
    for variant, random_init in (("full-random", True), ("full-pretrained", False)):
        if variant in args.variants:
            add(variant, max(args.shots), run_full(args, largest, test, random_init))
    if "vae-round-trip" in args.variants:
        add("vae-round-trip", 0, run_vae_round_trip(args, largest, test))
    return rows


#: The goal: pretrained + LoRA beats the from-scratch U-Net by this much IoU, in less training time, at these shots.
GOAL_MARGIN, GOAL_SHOTS = 0.05, (25, 50)


def goal_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task and goal shot count: LoRA's IoU margin over the U-Net, the time ratio, whether the goal holds,
    and whether it can (the VAE round trip's IoU is at least the U-Net's plus the margin; None when not run)."""
    found = {(r["task"], r["variant"], r["shots"]): r for r in rows}
    result = []
    for task in dict.fromkeys(r["task"] for r in rows):
        ceiling = found.get((task, "vae-round-trip", 0))
        for shots in GOAL_SHOTS:
            lora, unet = found.get((task, "lora", shots)), found.get((task, "unet-scratch", shots))
            if lora and unet:
                margin, time_ratio = lora["iou"] - unet["iou"], lora["seconds"] / max(unet["seconds"], 1e-9)
                result.append({"task": task, "shots": shots, "lora_iou": lora["iou"], "unet_iou": unet["iou"],
                               "margin": margin, "time_ratio": time_ratio,
                               "met": margin >= GOAL_MARGIN and time_ratio < 1.0,
                               "reachable": None if ceiling is None else ceiling["iou"] >= unet["iou"] + GOAL_MARGIN})
    return result


def plot(rows: list[dict[str, Any]], tasks: list[str], path: Path) -> None:
    """Per task: IoU vs shots for LoRA on the pretrained base (baselines dashed), and bars at the most shots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(tasks), 2, figsize=(11, 3.6 * len(tasks)), squeeze=False)
    colours = {"lora": "C0", "lora-random": "C1", "full-random": "C2", "full-pretrained": "C4", "unet-scratch": "C3",
               "zero-shot": "C7", "vae-round-trip": "k"}
    for (curve, bars), task in zip(axes, tasks, strict=True):
        mine = [r for r in rows if r["task"] == task]
        labels = {"lora": "LoRA, pretrained (0 = zero-shot)", "lora-random": "LoRA, random init",
                  "unet-scratch": "U-Net from scratch"}
        for variant, label in labels.items():
            points = sorted((r for r in mine if r["variant"] == variant or (variant == "lora" and
                                                                           r["variant"] == "zero-shot")),
                            key=lambda r: r["shots"])
            curve.plot([r["shots"] for r in points], [r["iou"] for r in points], marker="o",
                       color=colours[variant], label=label)
        for r in mine:
            if r["variant"].startswith("full-"):
                curve.axhline(r["iou"], ls="--", color=colours[r["variant"]], label=f"{r['variant']} ({r['shots']})")
            elif r["variant"] == "vae-round-trip":
                curve.axhline(r["iou"], ls=":", color=colours[r["variant"]], label="VAE round trip (ceiling)")
        curve.set(title=f"{task}: test IoU vs training images", xlabel="training images", ylabel="IoU",
                  ylim=(0, 1))
        curve.legend(fontsize=8)
        largest = max(r["shots"] for r in mine)
        chosen = [r for r in mine if r["shots"] == largest or r["variant"] == "zero-shot"]
        bars.bar(range(len(chosen)), [r["iou"] for r in chosen], color=[colours[r["variant"]] for r in chosen])
        bars.set_xticks(range(len(chosen)), [f"{r['variant']}\n{r['percent']:,.1f}% params" for r in chosen],
                        fontsize=7)
        for x, r in enumerate(chosen):
            bars.text(x, r["iou"] + 0.01, f"{r['iou']:.3f}", ha="center", fontsize=8)
        bars.set(title=f"{task}: {largest} images, equal steps", ylabel="IoU", ylim=(0, 1))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="default", help="generalist to adapt (`tiny` for a smoke test)")
    parser.add_argument("--tasks", nargs="+", default=list(TASK_PROMPTS), choices=sorted(TASK_PROMPTS))
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps, the same for every variant")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10, 25, 50],
                        help="training-set sizes for LoRA on the base; the largest is used for every baseline")
    parser.add_argument("--test", type=int, default=200, help="test images per task")
    parser.add_argument("--rank", type=int, default=3, help="LoRA rank (3: ~1%% of the default's transformer)")
    parser.add_argument("--full-lr", type=float, default=5e-4, help="lr of full training (pretraining's lr)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="which variants to run (all by default)")
    parser.add_argument("--pixel-loss", action="store_true",
                        help="train.pixel_loss for the transformer variants: the codec's task loss (BCE + Dice for "
                             "masks, as the U-Net's) on the decoded prediction, beside the latent loss")
    parser.add_argument("--lora-set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="recipe overrides for the LoRA variants only, e.g. train.lr=0.01 "
                             "adapter.targets=all-linear (the U-Net keeps quickstart.yaml's settings, so --reuse "
                             "stays valid)")
    parser.add_argument("--reuse", nargs="+", default=[], metavar="JSON",
                        help="take the U-Net rows (which do not depend on the base) from earlier fewshot results "
                             "with the same steps, batch size, largest shot count, test images and resolution")
    parser.add_argument("--name", default="fewshot", help="results file stem under benchmarks/results/")
    parser.add_argument("--quick", action="store_true", help="smoke settings: 4 steps, shots 2 4, 8 test images")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch_size, args.shots, args.test = 4, 4, [2, 4], 8
    quiet()

    probe = fresh_base(args.base, text_encoders=False)
    resolution = probe.config.resolution
    transformer_size = sum(p.numel() for p in probe.denoiser.transformer.parameters())
    note = ("lora-random and full-random re-initialise the transformer and point encoder (seed 0, the weights "
            "pretraining started from) and keep the base's VAE and text encoders: the comparison is about the "
            "transformer's pretraining.")
    print(f"base {args.base!r}: transformer {transformer_size:,} parameters, {resolution} px; {args.steps} steps x "
          f"batch {args.batch_size} for every variant; {args.test} test images per task.\n{note}")
    reused = reused_rows(args.reuse, args, resolution)
    try:  # a bad --lora-set ends here in one line, before any training
        lora_settings = dotted_settings(args.lora_set)
        fewshot_recipe(args, args.tasks[0], max(args.shots), resolution, lora_settings)
    except RecipeError as error:
        raise SystemExit(f"--lora-set {' '.join(args.lora_set)}: {error}") from None
    rows = [row for task in args.tasks
            for row in run_task(args, task, resolution, transformer_size, reused, lora_settings)]

    print()
    print_table(rows, [("task", "task", ""), ("variant", "variant", ""), ("shots", "shots", "d"),
                       ("trainable", "trainable params", ","), ("percent", "% of transformer", ",.2f"),
                       ("seconds", "train s", ".0f"), ("iou", "IoU", ".4f"), ("dice", "Dice", ".4f"),
                       ("train_iou", "IoU on its training images", ".4f")])
    goals = goal_rows(rows)
    print(f"\ngoal: LoRA on the pretrained base beats the U-Net by >= {GOAL_MARGIN} IoU in less training time")
    print_table(goals, [("task", "task", ""), ("shots", "shots", "d"), ("lora_iou", "LoRA IoU", ".4f"),
                        ("unet_iou", "U-Net IoU", ".4f"), ("margin", "margin", "+.4f"),
                        ("time_ratio", "time LoRA / U-Net", ".2f"), ("met", "met", ""),
                        ("reachable", "reachable through the VAE", "")])
    name = f"{args.name}_quick" if args.quick else args.name
    settings = {k: v for k, v in vars(args).items() if k not in ("quick", "name")} | {"resolution": resolution,
                                                                         "transformer_parameters": transformer_size,
                                                                         **describe(probe)}
    write_report(name, {"settings": settings, "note": note, "rows": rows, "goal": goals})
    plot(rows, args.tasks, RESULTS / f"{name}.png")
    print(f"wrote {RESULTS / f'{name}.png'}")


if __name__ == "__main__":
    main()
