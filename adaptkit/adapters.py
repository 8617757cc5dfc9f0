"""LoRA adapters on the generalist's denoiser, and the adapter folder that a Hub repo holds.

An adapter folder is self-sufficient for inference on its base: PEFT's `adapter_config.json` and
`adapter_model.safetensors`, `adaptkit.json` (the resolved recipe, codec, prompt, objective,
inference settings, base id and weight fingerprint, chosen sample ids, metrics, versions),
`prompt_embeds.safetensors` (so the text encoders never load at inference) and a model card.
`AdaptedModel` is that folder loaded onto its generalist: what `eval`, `predict` and the Python
API use.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from adaptkit import bases
from adaptkit.card import build_card
from adaptkit.codecs import Codec, CodecError, build_codec
from adaptkit.errors import FileError
from adaptkit.files import read_json, read_safetensors, require_file, sha256
from adaptkit.generalist import Generalist, Prediction
from adaptkit.hub import download_adapter, is_hub_ref
from adaptkit.images import ImageLike
from adaptkit.prompts import PROMPT_CACHE_FILE, PromptCache
from adaptkit.recipe import TARGET_PRESETS, AdapterSection, metric_names
from adaptkit.record import ADAPTER_META_FILE, AdapterError, AdapterMeta
from adaptkit.sampling import inference_defaults, sampling_allowed

ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"

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
    # a preset names every layer kind a block may have; a one-block transformer's only block is
    # `context_pre_only` and has no to_add_out, so only layers a user listed must each be found
    unmatched = [s for s in suffixes if not any(n == s or n.endswith("." + s) for n in linears)]
    if unmatched and (not chosen or not isinstance(targets, str)):
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


def check_adapter_folder(folder: Path, meta: AdapterMeta) -> dict[str, torch.Tensor]:
    """Every file of an adapter folder present and readable, and the weights those recorded at training
    (sha256), before peft opens them: a missing file must never send peft looking on the Hub. Returns the
    LoRA tensors (for `check_adapter_fits`)."""
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
    if any(tensor.ndim != 2 or tensor.shape[0 if ".lora_A." in name else 1] != config["r"]
           for name, tensor in tensors.items() if ".lora_A." in name or ".lora_B." in name) \
            and not config.get("rank_pattern"):
        raise FileError(weights, f"its LoRA matrices are not of the rank r={config['r']} that "
                                 f"{ADAPTER_CONFIG_FILE} says", fix)
    return tensors


def check_adapter_fits(denoiser: nn.Module, tensors: dict[str, torch.Tensor], adapter: str | Path,
                       base: str) -> None:
    """Every LoRA matrix of an adapter sized for a layer of this denoiser, checked before peft loads it:
    an adapter made for another base would fail inside peft's state-dict loading, naming nothing a user knows."""
    model = denoiser.get_base_model() if isinstance(denoiser, PeftModel) else denoiser
    for name, tensor in sorted(tensors.items()):
        layer_name, _, kind = name.removeprefix("base_model.model.").partition(".lora_")
        try:
            layer = model.get_submodule(layer_name)
        except AttributeError:
            layer = None
        layer = getattr(layer, "base_layer", layer)  # a layer another adapter already wrapped
        if not isinstance(layer, nn.Linear):
            raise AdapterError(f"{adapter} does not fit base {base!r}: its weight {name} is for a layer "
                               f"{layer_name} that this base has no Linear layer of; load it onto the base it was "
                               "trained on")
        expected = layer.in_features if kind.startswith("A") else layer.out_features
        found = tensor.shape[1] if kind.startswith("A") else tensor.shape[0]
        if found != expected:
            raise AdapterError(f"{adapter} does not fit base {base!r}: its weight {name} has shape "
                               f"{tuple(tensor.shape)}, but layer {layer_name} is {layer.in_features} -> "
                               f"{layer.out_features}; load it onto the base it was trained on")


def save_adapter(folder: str | Path, denoiser: PeftModel, meta: AdapterMeta, prompts: PromptCache) -> Path:
    """Write the adapter folder (PEFT format + adaptkit.json + prompt embeddings + model card)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    denoiser.save_pretrained(str(folder))
    meta.weights_sha256 = sha256(folder / ADAPTER_WEIGHTS_FILE)
    meta.save(folder)
    prompts.subset([meta.prompt, ""]).save(folder / PROMPT_CACHE_FILE)
    build_card(meta, sweep=meta.sweep).save(folder / "README.md")
    return folder


def resolve_adapter(adapter: str | Path) -> Path:
    """An adapter as a local folder: a folder as given, or a Hub repo (`owner/name[@revision]`) pulled safely."""
    path = Path(adapter).expanduser()
    if path.is_dir():
        return path
    if is_hub_ref(adapter):
        return download_adapter(str(adapter))
    raise AdapterError(f"{adapter}: no such adapter folder{', it is a file' if path.exists() else ''}; give an "
                       "adapter folder (runs/NAME/adapter) or a Hub repo id (owner/name[@revision])")


def load_base(meta: AdapterMeta, device: torch.device | str | None = None) -> Generalist:
    """The generalist an adapter records as its base, at the resolution it was trained at, without text
    encoders (the adapter carries its prompt embeddings), in the dtype it was trained in: an adapter trained
    under bf16-mixed saw a bf16 base (its fingerprint is of those weights) and runs on one, as DICEPTION
    does, where the device's default (fp32 on a CPU) would widen a 2 B-parameter base to 8 GB."""
    trained_bf16 = meta.recipe.get("train", {}).get("precision") == "bf16-mixed"
    return bases.load_base(meta.base, device=device, dtype=torch.bfloat16 if trained_bf16 else None,
                           load_text_encoders=False)


def attach_adapter(generalist: Generalist, folder: Path, name: str) -> str:
    """Load an adapter folder onto the generalist's denoiser as a peft named adapter; return its name.

    The first adapter wraps the denoiser in a `PeftModel`; later ones are added to that same wrapper
    (`load_adapter`), so one base in memory serves them all and each keeps its own LoRA weights.
    """
    denoiser = generalist.denoiser
    taken = set(denoiser.peft_config) if isinstance(denoiser, PeftModel) else set()
    stem = re.sub(r"[^\w-]", "_", name) or "adapter"
    unique, count = stem, 1
    while unique in taken:
        count += 1
        unique = f"{stem}_{count}"
    if isinstance(denoiser, PeftModel):
        denoiser.load_adapter(str(folder), adapter_name=unique, is_trainable=False)
    else:
        generalist.denoiser = PeftModel.from_pretrained(denoiser, str(folder), adapter_name=unique)
    generalist.denoiser.to(generalist.device, generalist.dtype)
    generalist.requires_grad_(False)
    return unique


class AdaptedModel:
    """A generalist with an adapter (or none, for a built-in task) and the codec that reads its output.

    Several models may share one generalist (`from_pretrained(..., generalist=shared)`, `load_adapters`):
    each adapter is a peft named adapter on the one wrapped denoiser, and every call activates this
    model's own (a model without an adapter switches them all off), so the models stay independent.
    """

    def __init__(self, generalist: Generalist, codec: Codec, prompt: str, objective: str = "flow",
                 inference: dict[str, Any] | None = None, meta: AdapterMeta | None = None,
                 adapter_name: str | None = None) -> None:
        self.generalist, self.codec, self.prompt = generalist, codec, prompt
        self.objective, self.meta, self.adapter_name = objective, meta, adapter_name
        self.inference = {**inference_defaults(objective), **(inference or {})}

    @classmethod
    def from_pretrained(cls, adapter: str | Path, generalist: Generalist | None = None,
                        device: torch.device | str | None = None) -> AdaptedModel:
        """Load an adapter folder or Hub repo (`owner/name[@revision]`) onto its base, checking it is the right
        base (the weight fingerprint). Given a `generalist` already serving other adapters, this one is
        added beside them."""
        folder = resolve_adapter(adapter)
        meta = AdapterMeta.load(folder)
        tensors = check_adapter_folder(folder, meta)
        try:
            codec = build_codec(meta.codec, meta.codec_args)
        except CodecError as error:
            raise FileError(folder / ADAPTER_META_FILE, f"codec: {error}",
                            "the adapter folder is damaged, or its codec plugin is not importable here") from None
        metric_names(codec, meta.recipe["eval"]["metrics"] or None,
                     f"{folder / ADAPTER_META_FILE}: recipe.eval.metrics")
        cache_file = folder / PROMPT_CACHE_FILE
        cache = PromptCache.load(require_file(cache_file, "prompt embeddings", "copy the adapter folder again"))
        if meta.prompt not in cache:
            raise FileError(cache_file, f"does not hold the embedding of the adapter's prompt {meta.prompt!r}",
                            "copy the adapter folder again or retrain")
        generalist = generalist if generalist is not None else load_base(meta, device)
        fingerprint = generalist.fingerprint()
        if fingerprint != meta.base_fingerprint:
            raise AdapterError(
                f"{adapter}: this adapter was trained on base {meta.base['generalist']!r} with weight fingerprint "
                f"{meta.base_fingerprint}, but the generalist given has fingerprint {fingerprint}; load it onto "
                "the generalist it was trained on")
        check_adapter_fits(generalist.denoiser, tensors, adapter, meta.base["generalist"])
        for prompt in cache.prompts:
            generalist.prompts.cache.put(prompt, *cache.get(prompt))
        name = attach_adapter(generalist, folder, meta.name)
        return cls(generalist, codec, meta.prompt, meta.objective, meta.inference, meta, name)

    @contextmanager
    def active(self) -> Iterator[None]:
        """This model's adapter switched on (or, for a built-in task, every adapter off) for one call."""
        denoiser = self.generalist.denoiser
        if not isinstance(denoiser, PeftModel):
            yield
        elif self.adapter_name is None:
            with denoiser.disable_adapter():
                yield
        else:
            denoiser.set_adapter(self.adapter_name, inference_mode=True)
            yield

    def check_inference(self, steps: int, guidance: float) -> None:
        """A single-step adapter predicts in one deterministic pass; anything else is a mistake to report."""
        if steps < 1 or guidance < 0:
            raise AdapterError(f"steps must be >= 1 and guidance >= 0 (asked for steps={steps}, guidance={guidance})")
        if not sampling_allowed(self.objective, steps, guidance):
            raise AdapterError(
                f"adapter {self.meta.name if self.meta else self.prompt!r} was trained with the single_step "
                f"objective: it predicts in one deterministic pass, so steps must be 1 and guidance 1.0 "
                f"(asked for steps={steps}, guidance={guidance})")

    def predict_encoded(self, images: ImageLike | Sequence[ImageLike], steps: int | None = None,
                        guidance: float | None = None, seed: int | None = None, ensemble: int | None = None,
                        progress: bool = True, points: Sequence[Sequence[Sequence[float]] | None] | None = None,
                        ) -> list[list[Prediction]]:
        """Colour-encoded predictions: per image, `ensemble` samples (seeds seed, seed + 1000, ...); `points`
        per image (x, y) point prompts, for a point-prompted task."""
        chosen = self.sampling(steps=steps, guidance=guidance, seed=seed, ensemble=ensemble)
        with self.active():
            runs = [self.generalist.predict(images, self.prompt, points, steps=chosen["steps"],
                                            guidance=chosen["guidance"], seed=chosen["seed"] + 1000 * k,
                                            batch_size=chosen["batch_size"], deterministic=chosen["deterministic"],
                                            progress=progress)
                    for k in range(chosen["members"])]
        return [list(samples) for samples in zip(*runs, strict=True)]

    def sampling(self, **asked: Any) -> dict[str, Any]:
        """The sampling settings a call uses: those `asked` (steps, guidance, seed, ensemble, batch_size; None
        keeps the adapter's; `uncertainty`, an estimator of `adaptkit.uncertainty` or None for no map), checked,
        plus `deterministic` and `members` (samples drawn per image)."""
        from adaptkit.uncertainty import check_estimator

        chosen = {**self.inference, "uncertainty": None, **{k: v for k, v in asked.items() if v is not None}}
        self.check_inference(chosen["steps"], chosen["guidance"])
        if chosen["ensemble"] < 1 or chosen["batch_size"] < 1:
            raise AdapterError(f"ensemble and batch size must be >= 1 (asked for ensemble={chosen['ensemble']}, "
                               f"batch size={chosen['batch_size']})")
        chosen["deterministic"] = self.objective == "single_step"
        chosen["members"] = 1 if chosen["deterministic"] else chosen["ensemble"]
        if chosen["uncertainty"] is not None:
            mirrored = bool(self.meta.recipe.get("data", {}).get("hflip", True)) if self.meta else True
            check_estimator(self.codec, chosen["uncertainty"], chosen["deterministic"], chosen["members"], mirrored)
        return chosen

    def predict_members(self, arrays: Sequence[np.ndarray], indices: Sequence[int],
                        points: Sequence[Sequence[Sequence[float]] | None], chosen: dict[str, Any],
                        ) -> list[list[Prediction]]:
        """One batch of float RGB arrays -> per image, its ensemble members (colour-encoded). Image `indices[i]`
        of a collection draws member k from seed + 1000 k + indices[i], as `predict_encoded` numbers images, so
        a prediction depends on its place in the collection, not on which process or batch made it."""
        with self.active():
            runs = [self.generalist.predict_batch(arrays, self.prompt, [chosen["seed"] + 1000 * k + i for i in indices],
                                                  points, chosen["steps"], chosen["guidance"],
                                                  chosen["deterministic"])
                    for k in range(chosen["members"])]
        return [[Prediction(image) for image in members] for members in zip(*runs, strict=True)]

    def predict(self, images: ImageLike | Sequence[ImageLike], **kwargs: Any) -> list[Any]:
        """Decoded task outputs (masks, depth maps, instances, ...) at each input's own size."""
        return [self.codec.decode(self.codec.combine([m.image for m in members]))
                for members in self.predict_encoded(images, **kwargs)]


def load_adapters(adapters: Sequence[str | Path], device: torch.device | str | None = None) -> list[AdaptedModel]:
    """Several adapters, each base loaded once: adapters recording the same base share one generalist."""
    bases: dict[str, Generalist] = {}
    models = []
    for adapter in adapters:
        folder = resolve_adapter(adapter)  # once: a Hub id is listed and pulled a single time
        meta = AdapterMeta.load(folder)
        key = json.dumps([meta.base, meta.base_fingerprint], sort_keys=True)
        if key not in bases:
            bases[key] = load_base(meta, device)
        models.append(AdaptedModel.from_pretrained(folder, generalist=bases[key]))
    return models
