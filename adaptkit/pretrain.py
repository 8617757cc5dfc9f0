"""Pretraining the embedded default: a small generalist of DICEPTION's architecture, on the synthetic world.

No DICEPTION weights can be downloaded everywhere, yet the claim worth showing is that a
*pretrained* generalist adapts from ~50 images. So adaptkit pretrains its own small one, with the
same classes, prompt format, codecs and folder layout as the real one, in two resumable stages:

1. `vae`: the SD3-style VAE learns to reconstruct rendered images and colour-encoded targets.
2. `generalist`: the in-context transformer and point encoder learn the DICEPTION tasks (depth,
   normals, entities, semantic by class prompt, point-prompted segmentation) from cached latents,
   with a pluggable objective (`single_step` by default: it learns in minutes on a CPU).

Each stage checkpoints every few hundred steps (weights as safetensors, optimiser state loaded with
`weights_only=True`) and resumes where it stopped; batches are drawn from `seed + step`, so a
resumed run is the run that was never interrupted. Hours of 2-core CPU: a background job, never CI.
The same job runs on a GPU (`device="cuda"`, `precision="bf16"`: bf16 autocast over fp32 weights), with the
world rendered by `workers` processes so that rendering keeps up.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import json
import math
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from adaptkit.bases import generalist_folder
from adaptkit.codecs import Instances, build_codec
from adaptkit.files import read_json
from adaptkit.generalist import DICEPTION_TASK_PROMPTS, MAX_CONFIG_SIZE, CheckpointError, Generalist
from adaptkit.images import to_model_batch
from adaptkit.metrics import build_codec_metrics, default_metric_names
from adaptkit.recipe import RecipeError, build_section
from adaptkit.sampling import euler_sample
from adaptkit.synth import PRETRAINING_FAMILIES, RENDERERS, sample_point_prompt
from adaptkit.tasks import BUILTIN_TASKS
from adaptkit.tiny import TinySpec, build_tiny_generalist
from adaptkit.training import OBJECTIVES, Denoise, warmup_cosine

#: The default's architecture: 4 blocks of 4 x 32 heads (2.3 M transformer parameters), 64 px images, a 4x
#: VAE (16 x 16 x 16 latents) and patch 1, so each image token is 4 x 4 pixels (patch 2's 8 x 8 tokens could
#: not draw thin or small objects): sized so that pretraining fits an hour of 2 CPU cores and a few-shot
#: LoRA run two minutes (see benchmarks/ and the README).
DEFAULT_SPEC = TinySpec(resolution=64, layers=4, heads=4, head_dim=32, patch_size=1, vae_channels=(16, 32, 64),
                        vae_norm_groups=8, clip_dim=32, t5_dim=64, text_layers=1, max_tokens=12,
                        num_frequencies=64, seed=0, name="adaptkit-default")

#: The pretraining stages, in the order they run (`adaptkit pretrain --stages`).
STAGES = ("vae", "generalist")
#: Index of the first validation scene: far from every training scene, whatever `scenes` is.
VAL_FIRST = 10_000_000
#: The report beside a pretrained generalist's weights: its settings, zero-shot scores and training seconds.
PRETRAINING_REPORT = "pretraining.json"
#: In a continued run's folder: the weight fingerprints of the generalist it started from, checked on resume.
INIT_FINGERPRINTS = "init.json"
#: Numeric precisions of the forward and backward passes (weights and optimiser state stay fp32).
PRECISIONS = ("fp32", "bf16")


def default_sizes() -> dict[str, Any]:
    """`DEFAULT_SPEC`'s sizes as a run records them: the sizes left to derive (None) are not written, so the
    records of runs made before such a size existed read the same."""
    return {key: value for key, value in asdict(DEFAULT_SPEC).items() if value is not None}


@dataclass
class PretrainConfig:
    """Everything that determines the result; recorded beside it.

    `families` mixes the synthetic world's image families (each scene's family is drawn with these weights);
    the held-out families are refused, so few-shot evidence on them stays about transfer. `spec` overrides
    `DEFAULT_SPEC` key by key (`spec.patch_size=1` keeps every other size). `init` names a generalist that
    adaptkit pretrained (`default` or its folder) whose weights the run starts from instead of random ones:
    pretraining continued on any machine, with a fresh optimiser and schedule, from weights alone.
    """

    seed: int = 0
    init: str = ""
    families: dict[str, float] = field(default_factory=lambda: {"scenes": 0.6, "layers": 0.4})
    precision: str = "fp32"
    scenes: int = 4000
    val_scenes: int = 100
    vae_steps: int = 2500
    vae_batch: int = 8
    vae_lr: float = 1e-3
    steps: int = 7500
    batch: int = 16
    lr: float = 5e-4
    warmup: int = 100
    objective: str = "single_step"
    checkpoint_every: int = 250
    spec: dict[str, Any] = field(default_factory=default_sizes)

    def __post_init__(self) -> None:
        sizes = asdict(DEFAULT_SPEC)
        for key in self.spec:
            if key not in sizes:
                close = difflib.get_close_matches(key, sizes, n=1)
                hint = f"did you mean 'spec.{close[0]}'? " if close else ""
                raise RecipeError(f"spec.{key} is not a size of the generalist; {hint}"
                                  f"sizes: {', '.join(sizes)}")
        self.spec = {**default_sizes(), **self.spec}
        for key, value in self.spec.items():  # the sizes a generalist is built from: none may be nonsense
            default = sizes[key]
            if isinstance(default, str):
                ok, kind = isinstance(value, str) and bool(value), "a non-empty string"
            elif isinstance(default, list | tuple):
                ok = isinstance(value, list | tuple) and bool(value) and all(map(_positive_int, value))
                kind = "a list of positive integers"
            else:
                ok, kind = _positive_int(value) or (key == "seed" and value == 0), "a positive integer"
            if not ok:
                raise RecipeError(f"spec.{key} must be {kind}, got {value!r}")
        counts = {"scenes": 1, "val_scenes": 1, "vae_steps": 1, "vae_batch": 1, "steps": 1, "batch": 1, "warmup": 0,
                  "checkpoint_every": 1, "seed": 0}
        for key, least in counts.items():
            if not (isinstance(getattr(self, key), int) and getattr(self, key) >= least):
                raise RecipeError(f"{key} must be an integer >= {least}, got {getattr(self, key)!r}")
        if self.objective not in OBJECTIVES:
            raise RecipeError(f"objective {self.objective!r}: expected one of {', '.join(OBJECTIVES)}")
        for key in ("lr", "vae_lr"):  # 0 is allowed: a continued run that keeps its start's weights (a test)
            if not (isinstance(getattr(self, key), int | float) and 0 <= getattr(self, key) < math.inf):
                raise RecipeError(f"{key} must be a finite number >= 0, got {getattr(self, key)!r}")
        for name, weight in self.families.items():
            if name not in PRETRAINING_FAMILIES:
                why = "is held out of pretraining (its tasks measure transfer)" if name in RENDERERS else \
                    "is not a family of the synthetic world"
                raise RecipeError(f"families.{name} {why}; pretraining families: "
                                  f"{', '.join(PRETRAINING_FAMILIES)}")
            if not isinstance(weight, int | float) or weight <= 0:
                raise RecipeError(f"families.{name} must be a positive weight, got {weight!r}")
        if not self.families:
            raise RecipeError("families is empty: name at least one of "
                              f"{', '.join(PRETRAINING_FAMILIES)}")
        if self.precision not in PRECISIONS:
            raise RecipeError(f"precision {self.precision!r}: expected one of "
                              f"{', '.join(PRECISIONS)}")


def _positive_int(value: Any) -> bool:
    """A size a model can be built with: a positive integer no real config exceeds."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CONFIG_SIZE


@dataclass
class Item:
    """One pretraining example: a scene, a task prompt and the colour-encoded target."""

    scene: int
    family: str
    task: str
    prompt: str
    target: np.ndarray
    truth: object
    points: list[tuple[int, int]] | None = None


def scene_family(index: int, seed: int, families: dict[str, float]) -> str:
    """The family of scene `index`: drawn with the mix's weights from (seed, index) alone."""
    if len(families) == 1:
        return next(iter(families))
    names = sorted(families)
    weights = np.array([families[name] for name in names], float)
    return names[int(np.random.default_rng([seed, index, 1]).choice(len(names), p=weights / weights.sum()))]


def scene_items(index: int, seed: int, resolution: int, families: dict[str, float],
                ) -> tuple[np.ndarray, list[Item]]:
    """A rendered scene and its examples of every pretraining task (semantic: one per class present)."""
    family = scene_family(index, seed, families)
    sample = RENDERERS[family](seed * 1_000_003 + index, resolution)
    rng = np.random.default_rng([seed, index])
    codecs = {name: build_codec(task.codec) for name, task in BUILTIN_TASKS.items()}
    prompts = {name: task.prompt(DICEPTION_TASK_PROMPTS) for name, task in BUILTIN_TASKS.items()}
    truths = {"depth": sample.depth, "normals": sample.normals, "entity": Instances.from_label_map(sample.instances)}
    items = [Item(index, family, task, prompts[task], codecs[task].encode(truth), truth)
             for task, truth in truths.items()]
    for class_index, name in enumerate(type(sample).CLASS_NAMES):
        mask = sample.semantic == class_index
        if name != "background" and mask.any():
            items.append(Item(index, family, "semantic",
                              BUILTIN_TASKS["semantic"].prompt(DICEPTION_TASK_PROMPTS, name),
                              codecs["semantic"].encode(mask), mask))
    if sample.instances.max() > 0:
        points, _, mask = sample_point_prompt(sample, rng, max_points=int(rng.integers(1, 4)))
        items.append(Item(index, family, "point_segmentation", prompts["point_segmentation"],
                          codecs["point_segmentation"].encode(mask), mask, [tuple(map(int, p)) for p in points]))
    return sample.image, items


def build_pool(first: int, count: int, config: PretrainConfig, resolution: int, workers: int = 1,
               ) -> tuple[list[np.ndarray], list[Item]]:
    """Scenes `first .. first + count` and their items, rendered by `workers` processes (the same pool for any
    number: each scene depends on its index alone)."""
    indices = range(first, first + count)
    render = _SceneRenderer(config.seed, resolution, config.families)
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")))
            scenes = pool.map(render, indices, chunksize=max(1, min(64, count // (4 * workers))))
        else:
            scenes = map(render, indices)
        images, items = [], []
        for image, scene in tqdm(scenes, total=count, desc="render scenes", unit="scene", leave=False):
            images.append(image)
            items.extend(scene)
    return images, items


@dataclass(frozen=True)
class _SceneRenderer:
    """`scene_items` with the pool's settings bound: a picklable callable for worker processes."""

    seed: int
    resolution: int
    families: dict

    def __call__(self, index: int) -> tuple[np.ndarray, list[Item]]:
        return scene_items(index, self.seed, self.resolution, self.families)


# ------------------------------------------------------------------------ checkpoints
def stage_state(folder: Path) -> dict[str, float]:
    """The step a stage's folder reached and the seconds it trained (0 and 0 before its first checkpoint)."""
    state = folder / "state.json"
    return {"step": 0, "seconds": 0.0, **(json.loads(state.read_text()) if state.is_file() else {})}


def refuse_finished(out: str | Path, config: PretrainConfig, stages: tuple[str, ...]) -> None:
    """A run whose generalist is written and whose every asked stage reached its steps would train nothing: say
    so (how to continue it, or start anew) rather than rewrite the same folder and exit as if it had worked."""
    out = Path(out)
    steps = {"vae": config.vae_steps, "generalist": config.steps}
    reached = {stage: int(stage_state(out / stage)["step"]) for stage in stages}
    if (out / "default" / PRETRAINING_REPORT).is_file() and all(reached[s] >= steps[s] for s in stages):
        done = ", ".join(f"{stage} at step {step}" for stage, step in reached.items())
        raise RecipeError(f"--out {out}: this run is finished ({done}); nothing to train: raise steps=N (vae_steps=N "
                          "for the VAE) to continue it, or use a new --out")


class Checkpoint:
    """A stage's resumable state: model weights (safetensors), optimiser state, the step reached and the
    seconds spent training (summed over resumes: what the stage cost)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def state(self) -> dict[str, float]:
        return stage_state(self.folder)

    def save(self, step: int, seconds: float, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        weights, opt = self.folder / "model.safetensors", self.folder / "optimizer.pt"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights.with_suffix(".tmp")))
        torch.save(optimizer.state_dict(), opt.with_suffix(".tmp"))
        weights.with_suffix(".tmp").replace(weights)
        opt.with_suffix(".tmp").replace(opt)
        (self.folder / "state.json").write_text(json.dumps({"step": step, "seconds": seconds}))

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        state = self.state
        if state["step"]:
            device = next(model.parameters()).device
            model.load_state_dict(load_file(str(self.folder / "model.safetensors"), device=str(device)))
            optimizer.load_state_dict(torch.load(self.folder / "optimizer.pt", map_location=device,
                                                 weights_only=True))
        return state


def _log(path: Path, row: dict) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


# ------------------------------------------------------------------------ stage 1: the VAE
def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / F.mse_loss(a.clamp(0, 1), b.clamp(0, 1)).clamp_min(1e-10)))


def run_stage(name: str, model: torch.nn.Module, lr: float, steps: int, warmup: int, folder: Path,
              config: PretrainConfig, loss_at: Callable[[np.random.Generator], torch.Tensor],
              scores_at: Callable[[int], dict[str, float]]) -> None:
    """The resumable loop both stages share: AdamW with warmup + cosine, clipping, checkpoints, a log.

    `loss_at(rng)` computes a step's loss from a generator seeded by (seed, stage, step) alone, so a
    resumed stage draws exactly the batches the uninterrupted one would have. With `precision="bf16"` the
    forward and backward passes run under bf16 autocast; the weights and AdamW's state stay fp32.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    checkpoint = Checkpoint(folder)
    state = checkpoint.restore(model, optimizer)
    start, seconds = int(state["step"]), float(state["seconds"])
    stage = {"vae": 1, "generalist": 2}[name]
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"pretrain {name}", unit="step")
    for step in bar:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr * warmup_cosine(step, steps, warmup)
        with autocast:
            loss = loss_at(np.random.default_rng([config.seed, stage, step]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        value = loss.item()  # waits for the device, so the clock below is honest on a GPU too
        seconds += time.perf_counter() - started
        bar.set_postfix(loss=f"{value:.4f}")
        done = step + 1
        if done % config.checkpoint_every == 0 or done == steps:
            checkpoint.save(done, seconds, model, optimizer)
            scores = scores_at(done)
            _log(folder / "log.csv", {"step": done, "loss": value, "time": time.time(), "seconds": seconds,
                                      "scores": json.dumps(scores)})
            bar.write(f"{name} step {done}: loss {value:.4f} {scores}")


def train_vae(generalist: Generalist, config: PretrainConfig, out: Path, workers: int = 1) -> dict[str, float]:
    """L1 + tiny KL on a mix of rendered images and every task's colour-encoded targets."""
    resolution = generalist.config.resolution
    images, items = build_pool(0, config.scenes // 4, config, resolution, workers)
    pictures = torch.from_numpy(np.stack(images + [item.target for item in items])).permute(0, 3, 1, 2).half()
    val_images, val_items = build_pool(VAL_FIRST, config.val_scenes, config, resolution, workers)
    val = torch.from_numpy(np.stack(val_images + [i.target for i in val_items][:len(val_images)])).permute(0, 3, 1, 2)
    val = val.to(generalist.device)
    vae = generalist.vae.train().requires_grad_(True)

    def loss_at(rng: np.random.Generator) -> torch.Tensor:
        batch = pictures[rng.integers(0, len(pictures), config.vae_batch)].to(generalist.device).float()
        if rng.random() < 0.5:
            batch = batch.flip(-1)
        posterior = vae.encode(batch * 2 - 1).latent_dist
        reconstruction = (vae.decode(posterior.sample()).sample + 1) / 2
        return F.l1_loss(reconstruction, batch) + 1e-6 * posterior.kl().mean()

    @torch.no_grad()
    def scores_at(_: int) -> dict[str, float]:
        vae.eval()
        value = psnr((vae.decode(vae.encode(val * 2 - 1).latent_dist.mode()).sample.float() + 1) / 2, val)
        vae.train()
        return {"vae_psnr_db": value}

    run_stage("vae", vae, config.vae_lr, config.vae_steps, 100, out / "vae", config, loss_at, scores_at)
    vae.eval().requires_grad_(False)
    return scores_at(config.vae_steps)


# ------------------------------------------------------------------------ stage 2: the generalist
@torch.no_grad()
def encode_pool(generalist: Generalist, images: list[np.ndarray], items: list[Item], batch: int = 64,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means of every scene image and every item's target (the single-step inputs and goals)."""
    resolution = generalist.config.resolution

    def encode(arrays: list[np.ndarray], what: str) -> torch.Tensor:
        out = []
        for start in tqdm(range(0, len(arrays), batch), desc=f"encode {what}", leave=False):
            out.append(generalist.encode_posterior(to_model_batch(arrays[start:start + batch], resolution))[0])
        return torch.cat(out)

    return encode(images, "images"), encode([item.target for item in items], "targets")


class PretrainData:
    """Cached latents of a scene pool, prompts as indices into an embedding table, task-balanced batches."""

    def __init__(self, generalist: Generalist, images: list[np.ndarray], items: list[Item]) -> None:
        self.items, self.device = items, generalist.device
        self.conditions, self.targets = (latents.cpu() for latents in encode_pool(generalist, images, items))
        self.prompts = sorted({item.prompt for item in items} | {""})
        self.embeds, self.pooled = generalist.prompts.encode(self.prompts)
        self.prompt_index = torch.tensor([self.prompts.index(item.prompt) for item in items])
        first_scene = items[0].scene
        self.scene_index = torch.tensor([item.scene - first_scene for item in items])
        normalised = [generalist.denoiser.point_encoder.normalise(item.points, images[0].shape[1::-1],
                                                                  generalist.config.resolution) for item in items]
        self.points = torch.stack([p for p, _ in normalised])
        self.point_labels = torch.stack([label for _, label in normalised])
        self.by_task = {task: np.array([i for i, item in enumerate(items) if item.task == task])
                        for task in BUILTIN_TASKS}
        self.families = sorted({item.family for item in items})

    def batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The rows' cached latents and prompts, on the generalist's device."""
        rows_t = torch.from_numpy(rows)
        condition = self.conditions[self.scene_index[rows_t]]
        target = self.targets[rows_t]
        batch = {"condition_mean": condition, "condition_std": torch.zeros_like(condition),
                 "target_mean": target, "target_std": torch.zeros_like(target),
                 "prompt": self.prompt_index[rows_t], "points": self.points[rows_t],
                 "point_labels": self.point_labels[rows_t]}
        return {key: value.to(self.device) for key, value in batch.items()}

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        tasks = rng.choice(list(self.by_task), size=size)
        return np.array([rng.choice(self.by_task[task]) for task in tasks])


def make_denoise(generalist: Generalist, data: PretrainData, batch: dict[str, torch.Tensor]) -> Denoise:
    embeds, pooled = data.embeds[batch["prompt"]], data.pooled[batch["prompt"]]

    def denoise(noisy: torch.Tensor, condition: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return generalist.denoiser(noisy, condition, timesteps, embeds, pooled, batch["points"],
                                   batch["point_labels"])

    return denoise


@torch.no_grad()
def evaluate(generalist: Generalist, data: PretrainData, objective: str, limit: int = 60) -> dict[str, float]:
    """Zero-shot metrics per pretraining task (and per family when several are mixed) on held-out scenes,
    with the deterministic one-step sampling the default is used with (8 Euler steps for `flow`)."""
    generalist.eval()
    results = {}
    groups = [(task, None) for task in data.by_task]
    if len(data.families) > 1:
        groups += [(task, family) for family in data.families for task in data.by_task]
    for task, family in groups:
        rows = np.array([row for row in data.by_task[task] if family in (None, data.items[row].family)])[:limit]
        if not len(rows):
            continue
        codec = build_codec(BUILTIN_TASKS[task].codec)
        headline = default_metric_names(codec)[0]
        metric = build_codec_metrics(codec, [headline])
        for start in range(0, len(rows), 32):
            batch = data.batch(rows[start:start + 32])
            denoise = make_denoise(generalist, data, batch)
            deterministic = OBJECTIVES[objective].deterministic
            condition = batch["condition_mean"]
            noise = torch.zeros_like(condition) if deterministic else torch.randn(
                condition.shape, generator=torch.Generator().manual_seed(start)).to(condition)
            steps = 1 if deterministic else 8
            latents = euler_sample(generalist.scheduler.config, denoise, condition, noise, steps)
            images = generalist.decode_latents(latents).permute(0, 2, 3, 1).float().cpu().numpy()
            for row, image in zip(rows[start:start + 32], images, strict=True):
                metric.update(codec.decode(image), data.items[row].truth)
        key = f"{task}/{headline}" if family is None else f"{family}/{task}/{headline}"
        results[key] = float(next(iter(metric.compute().values())))
    generalist.train()
    return results


def train_generalist(generalist: Generalist, config: PretrainConfig, out: Path, workers: int = 1,
                     ) -> dict[str, float]:
    """Full training of the denoiser (transformer + point encoder) on the pretraining tasks."""
    resolution = generalist.config.resolution
    images, items = build_pool(0, config.scenes, config, resolution, workers)
    data = PretrainData(generalist, images, items)
    val_images, val_items = build_pool(VAL_FIRST, config.val_scenes, config, resolution, workers)
    val = PretrainData(generalist, val_images, val_items)
    objective = OBJECTIVES[config.objective]()
    denoiser = generalist.denoiser.train().requires_grad_(True)

    def loss_at(rng: np.random.Generator) -> torch.Tensor:
        batch = data.batch(data.sample(rng, config.batch))
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        return objective.loss(generalist, make_denoise(generalist, data, batch), batch, generator)["loss"]

    def scores_at(done: int) -> dict[str, float]:
        if done % (4 * config.checkpoint_every) and done != config.steps:
            return {}
        return evaluate(generalist, val, config.objective)

    run_stage("generalist", denoiser, config.lr, config.steps, config.warmup, out / "generalist", config, loss_at,
              scores_at)
    denoiser.eval().requires_grad_(False)
    return evaluate(generalist, val, config.objective, limit=10_000)


#: Settings a resumed run may change: how long each stage runs and how often it checkpoints.
RESUMABLE_CHANGES = ("steps", "vae_steps", "checkpoint_every")


def pretrain_config(out: str | Path, overrides: dict) -> PretrainConfig:
    """The settings of a run in `out`: a new run's are the defaults with `overrides` (sizes from `init` where
    one is named); a resumed run starts from
    the settings it recorded, and may change only `RESUMABLE_CHANGES` (anything else would silently splice two
    different runs together)."""
    recorded_path = Path(out) / "config.json"
    if not recorded_path.is_file():
        if overrides.get("init"):  # a continued generalist keeps its sizes unless told otherwise (then refused)
            spec = init_report(str(overrides["init"]))[1]["config"]["spec"]
            overrides = {**overrides, "spec": {**spec, **overrides.get("spec", {})}}
        return build_section(PretrainConfig, overrides, "pretrain settings")
    recorded = json.loads(recorded_path.read_text())
    merged = {**recorded, **overrides, "spec": {**recorded.get("spec", {}), **overrides.get("spec", {})}}
    config = build_section(PretrainConfig, merged, "pretrain settings")
    for key, value in asdict(config).items():
        if key in recorded and key not in RESUMABLE_CHANGES and recorded[key] != value:
            raise RecipeError(f"pretrain settings: {key} was {recorded[key]!r} in {recorded_path}, not "
                              f"{value!r}; a resumed run keeps its settings (only {', '.join(RESUMABLE_CHANGES)} "
                              "may change): use a new --out for a new run")
    return config


def pretrain(out: str | Path, config: PretrainConfig | None = None, stages: tuple[str, ...] = STAGES,
             device: str = "cpu", workers: int = 1) -> Generalist:
    """Run (or resume) the stages on `device` and write the generalist folder `out/default` with its report.

    Weights are written in safetensors shards of at most 15 MB (files that travel anywhere); the report
    `pretraining.json` records the config, the zero-shot scores and the seconds each stage trained.
    """
    config = config or PretrainConfig()
    out = Path(out)
    spec = TinySpec(**{**config.spec, "vae_channels": tuple(config.spec["vae_channels"])})
    generalist, lineage = starting_generalist(config, spec, device)  # a bad `init` fails before the run exists
    if lineage:
        check_same_start(generalist, config.init, out / INIT_FINGERPRINTS)
    out.mkdir(parents=True, exist_ok=True)
    if lineage and not (out / INIT_FINGERPRINTS).is_file():
        (out / INIT_FINGERPRINTS).write_text(json.dumps(start_fingerprints(generalist), indent=2))
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2))
    report: dict[str, float] = {}
    if "vae" in stages:
        report |= train_vae(generalist, config, out, workers)
    elif (out / "vae" / "model.safetensors").is_file():
        generalist.vae.load_state_dict(load_file(str(out / "vae" / "model.safetensors"), device=str(device)))
    elif lineage and "vae_psnr_db" in lineage["zero_shot"]:  # the start's VAE, untouched: its score still holds
        report["vae_psnr_db"] = lineage["zero_shot"]["vae_psnr_db"]
    if "generalist" in stages:
        report |= train_generalist(generalist, config, out, workers)
    families = " and ".join(sorted(config.families)) + (" family" if len(config.families) == 1 else " families")
    generalist.config.description = (
        f"adaptkit's embedded default: {spec.layers} x {spec.heads * spec.head_dim} SD3 transformer (patch "
        f"{spec.patch_size}) pretrained with the {config.objective} objective on the synthetic world's {families} "
        f"({config.scenes} scenes, {config.steps} steps" + (
            f" after {lineage['config']['steps']} on {lineage['config']['scenes']}" if lineage else "") + ")")
    generalist.config.task_prompts = {task.prompt_key: DICEPTION_TASK_PROMPTS[task.prompt_key]
                                      for task in BUILTIN_TASKS.values()}
    generalist.config.objective = config.objective
    generalist = generalist.to("cpu")
    generalist.save_pretrained(out / "default", max_shard_size="15MB")
    seconds = {stage: Checkpoint(out / stage).state["seconds"] for stage in STAGES}
    (out / "default" / PRETRAINING_REPORT).write_text(json.dumps(
        {"config": asdict(config), "zero_shot": report, "device": str(device), "training_seconds": seconds,
         **({"init": lineage} if lineage else {})}, indent=2))
    return generalist


def starting_generalist(config: PretrainConfig, spec: TinySpec, device: str) -> tuple[Generalist, dict | None]:
    """Random weights of `spec`, or those of `config.init` with the report of the pretraining that made them
    (kept in the new report, so a continued default still says everything it cost). Only a generalist with
    such a report can be continued, and only with its own sizes: anything else would not be that run."""
    if not config.init:
        return build_tiny_generalist(spec).to_runtime(device, torch.float32), None
    folder, lineage = init_report(config.init)
    recorded = lineage["config"]["spec"]
    differing = [key for key, value in config.spec.items() if json.loads(json.dumps(value)) != recorded.get(key)]
    if differing:
        raise RecipeError(f"init {config.init!r}: spec.{differing[0]} is {config.spec[differing[0]]!r} here but "
                          f"{recorded.get(differing[0])!r} in {folder / PRETRAINING_REPORT}; a continued run keeps "
                          "the sizes it starts from (drop the spec.* settings)")
    return Generalist.from_pretrained(folder, device=device, dtype=torch.float32), lineage


def start_fingerprints(generalist: Generalist) -> dict[str, str]:
    """The weight fingerprints of a continued run's start: what its record's `init` lineage is about."""
    return {"denoiser": generalist.fingerprint(), "vae": generalist.fingerprint("vae")}


def check_same_start(generalist: Generalist, init: str, recorded_path: Path) -> None:
    """Refuse to resume a continued run from a start that has changed since it began (`init=default` after a new
    default shipped, a folder overwritten): the resume would take that VAE and report that lineage, splicing
    two different runs together."""
    if not recorded_path.is_file():
        return
    recorded, now = json.loads(recorded_path.read_text()), start_fingerprints(generalist)
    changed = [part for part in now if recorded.get(part) != now[part]]
    if changed:
        raise RecipeError(f"init {init!r}: its {changed[0]} weights have fingerprint {now[changed[0]]}, but this run "
                          f"started from {recorded.get(changed[0])} ({recorded_path}); resume with the generalist "
                          "it started from, or use a new --out for a new run")


def init_report(init: str) -> tuple[Path, dict]:
    """The folder of generalist `init` (`default`, a folder or a Hub id) and the report of its pretraining."""
    try:
        folder = generalist_folder(init)
    except CheckpointError as error:
        raise RecipeError(f"init {init!r}: {error}") from None
    report_path = folder / PRETRAINING_REPORT
    if not report_path.is_file():
        raise RecipeError(f"init {init!r}: {report_path} is missing; only a generalist written by `adaptkit "
                          "pretrain` can be continued (its sizes and cost are read from that report)")
    report = read_json(report_path, "pretraining report")
    try:  # what a continued run reads from it: the settings (sizes among them) and the zero-shot scores
        if not isinstance(report, dict) or not isinstance(report.get("config"), dict):
            raise RecipeError("expected a JSON object with a 'config' object")
        build_section(PretrainConfig, report["config"], "config")
        scores = report.get("zero_shot")
        if not (isinstance(scores, dict) and all(isinstance(v, int | float) and not isinstance(v, bool)
                                                 for v in scores.values())):
            raise RecipeError(f"zero_shot must map score names to numbers, got {scores!r}")
    except RecipeError as error:
        raise RecipeError(f"init {init!r}: {report_path} is not a valid pretraining report: {error}; only a "
                          "generalist written by `adaptkit pretrain` can be continued") from None
    return folder, report
