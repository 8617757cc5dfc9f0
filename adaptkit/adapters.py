"""LoRA adapters on the generalist's denoiser, and the adapter folder that a Hub repo holds.

An adapter folder is self-sufficient for inference on its base: PEFT's `adapter_config.json` and
`adapter_model.safetensors`, `adaptkit.json` (the resolved recipe, codec, prompt, objective,
inference settings, base id and weight fingerprint, chosen sample ids, metrics, versions),
`prompt_embeds.safetensors` (so the text encoders never load at inference) and a model card.
`AdaptedModel` is that folder loaded onto its generalist: what `eval`, `predict` and the Python
API use.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from adaptkit.codecs import Codec, build_codec
from adaptkit.errors import AdaptkitError, FileError
from adaptkit.files import read_json, read_safetensors, require_file, sha256
from adaptkit.generalist import Generalist, Prediction, load_generalist, resolve_folder
from adaptkit.images import ImageLike
from adaptkit.prompts import PROMPT_CACHE_FILE, PromptCache
from adaptkit.recipe import AdapterSection, Recipe, TrainSection

ADAPTER_META_FILE = "adaptkit.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"

_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
_MLP = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")

#: Named sets of transformer-block layers to adapt (module-name suffixes inside each block).
TARGET_PRESETS: dict[str, tuple[str, ...] | None] = {
    "attention": _ATTENTION,
    "attention+mlp": _ATTENTION + _MLP,
    "all-linear": None,  # every Linear inside the transformer blocks
}


class AdapterError(AdaptkitError, ValueError):
    """An adapter that cannot be built or loaded as asked: names the folder, key or module at fault."""


def resolve_targets(denoiser: nn.Module, targets: str | Sequence[str]) -> list[str]:
    """Full names of the Linear layers that `targets` (a preset or module-name suffixes) selects.

    Only layers inside the transformer blocks are eligible: the embedders, the point encoder and
    the output projection stay frozen as in DICEPTION's ~1% recipe.
    """
    linears = [name for name, module in denoiser.named_modules()
               if isinstance(module, nn.Linear) and ".transformer_blocks." in f".{name}"]
    if isinstance(targets, str) and targets in TARGET_PRESETS:
        suffixes = TARGET_PRESETS[targets]
        if suffixes is None:
            return linears
    elif isinstance(targets, str):
        raise AdapterError(f"adapter.targets: unknown preset {targets!r}; presets: {', '.join(TARGET_PRESETS)}, "
                           "or a list of module names such as [to_q, to_v]")
    else:
        suffixes = tuple(targets)
    chosen = [name for name in linears if any(name == s or name.endswith("." + s) for s in suffixes)]
    unmatched = [s for s in suffixes if not any(n == s or n.endswith("." + s) for n in linears)]
    if unmatched:
        examples = sorted({re.sub(r".*transformer_blocks\.\d+\.", "", n) for n in linears})
        raise AdapterError(f"adapter.targets: {unmatched} match no Linear layer in the transformer blocks; "
                           f"layer names there: {', '.join(examples)}")
    return chosen


def add_lora(denoiser: nn.Module, section: AdapterSection) -> PeftModel:
    """Wrap the denoiser with fresh LoRA layers (base weights frozen, B initialised to zero)."""
    config = LoraConfig(r=section.rank, lora_alpha=section.alpha, lora_dropout=section.dropout,
                        target_modules=resolve_targets(denoiser, section.targets))
    return get_peft_model(denoiser, config)


def count_parameters(model: nn.Module, transformer: nn.Module) -> tuple[int, int]:
    """(trainable parameters, parameters of the base transformer): the '~1%' figure users ask for."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = sum(p.numel() for name, p in transformer.named_parameters() if "lora_" not in name)
    return trainable, base


def _versions() -> dict[str, str]:
    import diffusers
    import peft
    import transformers

    from adaptkit import __version__

    return {"adaptkit": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "peft": peft.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


@dataclass
class AdapterMeta:
    """`adaptkit.json`: everything needed to use an adapter correctly, and to know where it came from."""

    name: str
    prompt: str
    codec: str
    codec_args: dict[str, Any]
    objective: str
    inference: dict[str, Any]
    base: dict[str, Any]
    base_fingerprint: str
    recipe: dict[str, Any]
    samples: dict[str, list[str]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    trainable_parameters: int = 0
    base_parameters: int = 0
    versions: dict[str, str] = field(default_factory=_versions)
    weights_sha256: str = ""  # of adapter_model.safetensors, checked at load ("" for adapters written before it)

    @classmethod
    def from_recipe(cls, recipe: Recipe, generalist: Generalist, codec: Codec, **extra: Any) -> AdapterMeta:
        return cls(name=recipe.name, prompt=recipe.task.prompt, codec=codec.name, codec_args=codec.to_config(),
                   objective=recipe.train.objective, inference=recipe.to_dict()["inference"],
                   base=recipe.to_dict()["base"], base_fingerprint=generalist.fingerprint(),
                   recipe=recipe.to_dict(), **extra)

    def save(self, folder: Path) -> None:
        (folder / ADAPTER_META_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> AdapterMeta:
        """`adaptkit.json`, refused with the reason if it is missing, not JSON, or its keys or values are wrong."""
        path = folder / ADAPTER_META_FILE
        if not path.exists():
            raise AdapterError(f"{folder} is not an adaptkit adapter folder: {ADAPTER_META_FILE} is missing")
        data = read_json(path, "adapter record")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        required = [name for name, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        problems = []
        if not isinstance(data, dict):
            problems.append(f"expected a JSON object, got {type(data).__name__}")
        else:
            if missing := [name for name in required if name not in data]:
                problems.append(f"missing key(s) {', '.join(missing)}")
            if unknown := sorted(set(data) - set(fields)):
                problems.append(f"unknown key(s) {', '.join(unknown)} (an adapter from a newer adaptkit? keys: "
                                f"{', '.join(fields)})")
            hints = typing.get_type_hints(cls)
            for name, value in data.items():
                kind = typing.get_origin(hints.get(name)) or hints.get(name)
                if name in fields and isinstance(kind, type) and not isinstance(value, kind):
                    problems.append(f"{name} must be a {kind.__name__}, got {value!r}")
            objectives = typing.get_args(typing.get_type_hints(TrainSection)["objective"])
            if data.get("objective") not in objectives:
                problems.append(f"objective {data.get('objective')!r} is not one of {', '.join(objectives)}")
        if problems:
            raise FileError(path, "not a valid adapter record: " + "; ".join(problems),
                            "the adapter folder is damaged: copy it again or retrain")
        return cls(**data)


def check_adapter_folder(folder: Path, meta: AdapterMeta) -> None:
    """Every file of an adapter folder present and readable, and the weights those recorded at training
    (sha256), before peft opens them: a missing file must never send peft looking on the Hub."""
    fix = "the adapter folder is incomplete or damaged: copy it again or retrain"
    config = read_json(require_file(folder / ADAPTER_CONFIG_FILE, "adapter config (PEFT)", fix), "adapter config")
    if not isinstance(config, dict) or config.get("peft_type") != "LORA" or "r" not in config:
        raise FileError(folder / ADAPTER_CONFIG_FILE, "not a PEFT LoRA config (needs peft_type LORA and r)", fix)
    weights = folder / ADAPTER_WEIGHTS_FILE
    tensors, _ = read_safetensors(weights, "adapter weights", fix)
    if not tensors or not all("lora_" in name for name in tensors):
        raise FileError(weights, "holds no LoRA weights", fix)
    if meta.weights_sha256 and sha256(weights) != meta.weights_sha256:
        raise FileError(weights, f"its sha256 {sha256(weights)[:16]}... differs from the {meta.weights_sha256[:16]}... "
                                 f"recorded in {ADAPTER_META_FILE}: the weights changed after training", fix)


def save_adapter(folder: str | Path, denoiser: PeftModel, meta: AdapterMeta, prompts: PromptCache) -> Path:
    """Write the adapter folder (PEFT format + adaptkit.json + prompt embeddings + model card)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    denoiser.save_pretrained(str(folder))
    meta.weights_sha256 = sha256(folder / ADAPTER_WEIGHTS_FILE)
    meta.save(folder)
    prompts.subset([meta.prompt, ""]).save(folder / PROMPT_CACHE_FILE)
    (folder / "README.md").write_text(model_card(meta))
    return folder


def model_card(meta: AdapterMeta) -> str:
    """A Hub model card: what the adapter does, how it was made, how to use it, how well it does."""
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in meta.metrics.items()) or "| (not evaluated) | |"
    shots = {k: len(v) for k, v in meta.samples.items()}
    percent = 100.0 * meta.trainable_parameters / max(meta.base_parameters, 1)
    return f"""---
library_name: peft
tags: [adaptkit, lora, diception, perception]
---
# {meta.name}

A LoRA adapter for the DICEPTION-style generalist `{meta.base.get("generalist")}` that answers the task
prompt `{meta.prompt}` with a `{meta.codec}` colour encoding, trained with adaptkit.

- trainable parameters: {meta.trainable_parameters:,} ({percent:.2f}% of the transformer)
- objective: `{meta.objective}`; inference: {meta.inference.get("steps")} step(s), guidance
  {meta.inference.get("guidance")}
- labelled images: {shots}
- base weight fingerprint: `{meta.base_fingerprint}`

## Validation metrics
| metric | value |
| --- | --- |
{metrics}

## Use
```bash
adaptkit predict path/to/this/adapter images/ --out predictions/
```
```python
from adaptkit import AdaptedModel
model = AdaptedModel.from_pretrained("path/to/this/adapter")
masks = model.predict(["image.png"])
```
"""


class AdaptedModel:
    """A generalist with an adapter (or none, for a built-in task) and the codec that reads its output."""

    def __init__(self, generalist: Generalist, codec: Codec, prompt: str, objective: str = "flow",
                 inference: dict[str, Any] | None = None, meta: AdapterMeta | None = None) -> None:
        self.generalist, self.codec, self.prompt = generalist, codec, prompt
        self.objective, self.meta = objective, meta
        self.inference = {"steps": 28, "guidance": 2.0, "seed": 0, "batch_size": 8, "ensemble": 1,
                          **(inference or {})}

    @classmethod
    def from_pretrained(cls, adapter: str | Path, generalist: Generalist | None = None,
                        device: torch.device | str | None = None) -> AdaptedModel:
        """Load an adapter folder (or Hub repo) onto its base generalist, checking it is the right base.

        The base's text encoders are not loaded: the adapter carries its prompt embeddings.
        """
        folder = resolve_folder(adapter)
        meta = AdapterMeta.load(folder)
        check_adapter_folder(folder, meta)
        cache_file = folder / PROMPT_CACHE_FILE
        cache = PromptCache.load(require_file(cache_file, "prompt embeddings", "copy the adapter folder again"))
        if meta.prompt not in cache:
            raise FileError(cache_file, f"does not hold the embedding of the adapter's prompt {meta.prompt!r}",
                            "copy the adapter folder again or retrain")
        if generalist is None:
            base = meta.base
            extra = {"base": base["sd3"], "weights": base["weights"]} if base["generalist"] == "diception" else {}
            generalist = load_generalist(base["generalist"], device=device, load_text_encoders=False, **extra)
        fingerprint = generalist.fingerprint()
        if fingerprint != meta.base_fingerprint:
            raise AdapterError(
                f"{folder}: this adapter was trained on base {meta.base['generalist']!r} with weight fingerprint "
                f"{meta.base_fingerprint}, but the generalist given has fingerprint {fingerprint}; load it onto "
                "the generalist it was trained on")
        for prompt in cache.prompts:
            generalist.prompts.cache.put(prompt, *cache.get(prompt))
        generalist.denoiser = PeftModel.from_pretrained(generalist.denoiser, str(folder)).to(
            generalist.device, generalist.dtype)
        generalist.requires_grad_(False)
        return cls(generalist, build_codec(meta.codec, meta.codec_args), meta.prompt, meta.objective,
                   meta.inference, meta)

    def check_inference(self, steps: int, guidance: float) -> None:
        """A single-step adapter predicts in one deterministic pass; anything else is a mistake to report."""
        if steps < 1 or guidance < 0:
            raise AdapterError(f"steps must be >= 1 and guidance >= 0 (asked for steps={steps}, guidance={guidance})")
        if self.objective == "single_step" and (steps != 1 or guidance != 1.0):
            raise AdapterError(
                f"adapter {self.meta.name if self.meta else self.prompt!r} was trained with the single_step "
                f"objective: it predicts in one deterministic pass, so steps must be 1 and guidance 1.0 "
                f"(asked for steps={steps}, guidance={guidance})")

    def predict_encoded(self, images: ImageLike | Sequence[ImageLike], steps: int | None = None,
                        guidance: float | None = None, seed: int | None = None, ensemble: int | None = None,
                        progress: bool = True) -> list[list[Prediction]]:
        """Colour-encoded predictions: per image, `ensemble` samples (seeds seed, seed + 1000, ...)."""
        settings = self.inference
        steps = settings["steps"] if steps is None else steps
        guidance = settings["guidance"] if guidance is None else guidance
        seed = settings["seed"] if seed is None else seed
        ensemble = settings["ensemble"] if ensemble is None else ensemble
        self.check_inference(steps, guidance)
        deterministic = self.objective == "single_step"
        members = 1 if deterministic else ensemble
        runs = [self.generalist.predict(images, self.prompt, steps=steps, guidance=guidance, seed=seed + 1000 * k,
                                        batch_size=settings["batch_size"], deterministic=deterministic,
                                        progress=progress)
                for k in range(members)]
        return [list(samples) for samples in zip(*runs, strict=True)]

    def predict(self, images: ImageLike | Sequence[ImageLike], **kwargs: Any) -> list[Any]:
        """Decoded task outputs (masks, depth maps, instances, ...) at each input's own size."""
        return [self.codec.decode(combine_ensemble(self.codec, members))
                for members in self.predict_encoded(images, **kwargs)]


def combine_ensemble(codec: Codec, members: list[Prediction]) -> np.ndarray:
    """One colour image from several samples: the mean for continuous codecs, a per-pixel vote otherwise.

    A vote over colour images is the medoid colour per pixel (the member colour closest to the
    others), which keeps decoded labels crisp where a mean would blend two classes' colours.
    """
    stack = np.stack([m.image for m in members])
    if len(members) == 1:
        return stack[0]
    if codec.resample == "bilinear":
        return stack.mean(axis=0)
    distances = np.abs(stack[:, None] - stack[None]).sum(axis=(1, -1))  # (K, H, W)
    best = distances.argmin(axis=0)
    return np.take_along_axis(stack, best[None, ..., None], axis=0)[0]
