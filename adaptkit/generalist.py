"""The frozen generalist: DICEPTION's in-context SD3 transformer, its VAE, prompts and sampler.

DICEPTION (Zhao et al. 2025) is Stable Diffusion 3 medium fine-tuned to answer perception tasks as
images. Three things distinguish it from plain SD3, and all three live here:

* In-context conditioning: the input image's VAE latent goes through the same patch/position
  embedding as the noisy latent and its tokens are appended after the noisy ones; only the first
  half of the output tokens (the noisy positions) is un-patchified into the prediction.
* Point prompts: five SAM-style point tokens (Fourier features, an MLP, a per-label embedding)
  are appended to the text tokens after the context embedder, for every task.
* A checkpoint layout of its own (`DICEPTION_v1.pth`, five keys) on top of the SD3-medium base.

`Generalist` is the one class users meet; `InContextDenoiser` is the network that LoRA adapts.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from adaptkit.errors import AdaptkitError
from adaptkit.files import read_json
from adaptkit.images import ImageLike, resize, to_model_batch, to_rgb_array
from adaptkit.prompts import MAX_POINTS, PROMPT_CACHE_FILE, PromptCache, PromptEncoder
from adaptkit.sampling import SAMPLER_DEFAULTS, SHARED_DEFAULTS, euler_sample

SD3_MEDIUM_HUB_ID = "stabilityai/stable-diffusion-3-medium-diffusers"
DICEPTION_HUB_ID = "Canyu/DICEPTION"
DICEPTION_WEIGHTS_FILE = "DICEPTION_v1.pth"
GENERALIST_CONFIG_FILE = "generalist.json"

#: SD3-medium's transformer config (2.03 B parameters), as published with the base model.
SD3_MEDIUM_TRANSFORMER_CONFIG: dict[str, Any] = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192,
}

#: The task prompts DICEPTION was trained with (semantic takes a class name after a space).
DICEPTION_TASK_PROMPTS: dict[str, str] = {
    "depth": "[[image2depth]]",
    "normal": "[[image2normal]]",
    "pose": "[[image2pose]]",
    "segmentation": "[[image2segmentation]]",
    "semantic": "[[image2semantic]]",
    "entity": "[[image2entity]]",
}

#: How a generalist is sampled when its caller says nothing: as DICEPTION is (see `adaptkit.sampling`).
_FLOW = SAMPLER_DEFAULTS["flow"]

#: The five top-level keys of `DICEPTION_v1.pth`.
CHECKPOINT_KEYS = ("transformer", "point_embedder", "not_seg_embeddings", "seg_embeddings",
                   "positional_encoding_gaussian_matrix")

#: The files of the SD3 base that `from_diception` reads (its transformer weights come from the .pth).
SD3_BASE_FILES = ["vae/*", "scheduler/*", "text_encoder*/*", "tokenizer*/*", "transformer/config.json"]


class CheckpointError(AdaptkitError, ValueError):
    """A checkpoint that cannot be loaded as asked: names the file and what is wrong with it."""


class PointPromptEncoder(ModelMixin, ConfigMixin):
    """SAM-style point tokens as DICEPTION computes them.

    Each point is (a, b) normalised to [0, 1] by the model resolution; padding points sit at
    (-1, -1). Encoding: p -> 2p - 1, times a fixed Gaussian matrix (2, F), times 2 pi, then
    [sin, cos] -> MLP(2F -> 2F -> D); then a learned vector is added per label (`seg` for 1,
    `not_seg` for 0). Unlike SAM, padding tokens are not zeroed: they are MLP(-3, -3) + not_seg.
    `coordinate_order` says whether (a, b) is (x, y) or (y, x): DICEPTION's two released code
    paths disagree, so it is a setting recorded with the weights.
    """

    @register_to_config
    def __init__(self, embed_dim: int = 1536, num_frequencies: int = 1024, coordinate_order: str = "xy",
                 seed: int = 0) -> None:
        super().__init__()
        if coordinate_order not in ("xy", "yx"):
            raise ValueError(f"coordinate_order must be 'xy' or 'yx', got {coordinate_order!r}")
        gaussian = torch.randn(2, num_frequencies, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("gaussian_matrix", gaussian)
        self.mlp = nn.Sequential(nn.Linear(2 * num_frequencies, 2 * num_frequencies), nn.GELU(),
                                 nn.Linear(2 * num_frequencies, embed_dim))
        self.not_seg = nn.Embedding(1, embed_dim)
        self.seg = nn.Embedding(1, embed_dim)

    def forward(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, P, 2) normalised points and (B, P) labels -> (B, P, D) tokens."""
        coords = (2.0 * points.to(self.gaussian_matrix.dtype) - 1.0) @ self.gaussian_matrix
        coords = 2.0 * math.pi * coords
        tokens = self.mlp(torch.cat([coords.sin(), coords.cos()], dim=-1))
        return tokens + torch.where(labels[..., None] == 1, self.seg.weight[0], self.not_seg.weight[0])

    def normalise(self, points_xy: Sequence[Sequence[float]] | None, image_size: tuple[int, int],
                  resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel (x, y) points on an image of `image_size` (W, H) -> padded (P, 2) inputs and (P,) labels.

        Points are mapped to the integer pixel of the resized model input and divided by the
        resolution (no half-pixel offset), as the release does.
        """
        points = list(points_xy or [])
        if len(points) > MAX_POINTS:
            raise ValueError(f"at most {MAX_POINTS} points per image, got {len(points)}")
        width, height = image_size
        out = torch.full((MAX_POINTS, 2), -1.0)
        labels = torch.zeros(MAX_POINTS, dtype=torch.long)
        for index, (x, y) in enumerate(points):
            if not (0 <= x < width and 0 <= y < height):
                raise ValueError(f"point ({x}, {y}) lies outside the {width} x {height} image")
            px, py = math.floor(x * resolution / width), math.floor(y * resolution / height)
            pair = (px, py) if self.config.coordinate_order == "xy" else (py, px)
            out[index] = torch.tensor(pair, dtype=torch.float32) / resolution
            labels[index] = 1
        return out, labels


class InContextDenoiser(nn.Module):
    """The SD3 transformer run DICEPTION's way: condition tokens after noisy tokens, point tokens after text.

    This is the module LoRA adapters attach to (inside `transformer`). The forward mirrors
    `SD3Transformer2DModel.forward`, with the two in-context changes, and optional per-block
    gradient checkpointing for training at high resolution.
    """

    def __init__(self, transformer: SD3Transformer2DModel, point_encoder: PointPromptEncoder) -> None:
        super().__init__()
        self.transformer = transformer
        self.point_encoder = point_encoder
        self.gradient_checkpointing = False

    def forward(self, noisy: torch.Tensor, condition: torch.Tensor, timestep: torch.Tensor,
                prompt_embeds: torch.Tensor, pooled_prompt_embeds: torch.Tensor,
                points: torch.Tensor | None = None, point_labels: torch.Tensor | None = None,
                null_points: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity for `noisy` given the `condition` latent; both (B, C, h, w).

        `timestep` is the scheduler's t in (0, 1000]. `points` (B, 5, 2) / `point_labels` (B, 5)
        default to padding; rows where `null_points` is True get literal zero point tokens (the
        unconditional branch of classifier-free guidance).
        """
        tr = self.transformer
        batch, _, height, width = noisy.shape
        if points is None:
            points = noisy.new_full((batch, MAX_POINTS, 2), -1.0)
            point_labels = torch.zeros(batch, MAX_POINTS, dtype=torch.long, device=noisy.device)
        hidden = torch.cat([tr.pos_embed(noisy), tr.pos_embed(condition)], dim=1).contiguous()
        num_noisy_tokens = hidden.shape[1] // 2
        temb = tr.time_text_embed(timestep, pooled_prompt_embeds)
        point_tokens = self.point_encoder(points, point_labels).to(hidden.dtype)
        if null_points is not None:
            point_tokens = point_tokens * (~null_points).to(point_tokens.dtype)[:, None, None]
        context = torch.cat([tr.context_embedder(prompt_embeds), point_tokens], dim=1)
        for block in tr.transformer_blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                context, hidden = checkpoint(block, hidden, context, temb, use_reentrant=False)
            else:
                context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb)
        hidden = tr.proj_out(tr.norm_out(hidden[:, :num_noisy_tokens], temb))
        patch, channels = tr.config.patch_size, tr.out_channels
        hidden = hidden.reshape(batch, height // patch, width // patch, patch, patch, channels)
        return torch.einsum("nhwpqc->nchpwq", hidden).reshape(batch, channels, height, width)


@dataclass
class GeneralistConfig:
    """What a generalist folder records beside its weights (`generalist.json`)."""

    name: str = "diception"
    resolution: int = 768
    max_sequence_length: int = 256
    task_prompts: dict[str, str] = field(default_factory=lambda: dict(DICEPTION_TASK_PROMPTS))
    objective: str = "flow"  # how it was trained, hence how its built-in tasks are sampled
    description: str = ""


@dataclass
class Prediction:
    """One input's colour-encoded prediction, float32 H x W x 3 in [0, 1] at the input's own size."""

    image: np.ndarray
    source: str = ""


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on GPU, as DICEPTION runs; fp32 on CPU, where bf16 is slow and lossy."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Generalist(nn.Module):
    """A DICEPTION-style generalist: denoiser, VAE, prompt encoder and flow-matching scheduler.

    Build it with `Generalist.from_pretrained` (an adaptkit folder or Hub id),
    `Generalist.from_diception` (the SD3-medium base plus `DICEPTION_v1.pth`), or
    `adaptkit.tiny.build_tiny_generalist` (small random models for tests); run it with `predict`.
    """

    def __init__(self, denoiser: InContextDenoiser, vae: AutoencoderKL, prompts: PromptEncoder,
                 scheduler: FlowMatchEulerDiscreteScheduler, config: GeneralistConfig) -> None:
        super().__init__()
        self.denoiser, self.vae, self.prompts = denoiser, vae, prompts
        self.scheduler, self.config = scheduler, config
        self._fingerprints: dict[str, tuple[tuple, str]] = {}  # part -> (weights state, hash): see fingerprint
        self.requires_grad_(False)

    # ---------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @property
    def latent_size(self) -> int:
        return self.config.resolution // (2 ** (len(self.vae.config.block_out_channels) - 1))

    # ---------------------------------------------------------------- building blocks
    def encode_posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, R, R) pixels in [-1, 1] -> the VAE posterior's mean and std in SD3's latent space.

        Latents are (z - shift) * scale with the constants read from the VAE config. Returning the
        distribution rather than a draw lets training cache it once and still draw fresh latents.
        """
        dist = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        scale, shift = self.vae.config.scaling_factor, self.vae.config.shift_factor
        return (dist.mean - shift) * scale, dist.std * scale

    def decode_latents(self, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Latents -> (B, 3, R, R) images in [0, 1] (unclamped for differentiable pixel losses)."""
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor + self.vae.config.shift_factor
        images = (self.vae.decode(latents).sample.float() + 1.0) / 2.0
        return images.clamp(0.0, 1.0) if clamp else images

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, pooled = self.prompts.encode(prompts)
        return embeds.to(self.device, self.dtype), pooled.to(self.device, self.dtype)

    def sample_latents(self, condition: torch.Tensor, prompt_embeds: torch.Tensor, pooled: torch.Tensor,
                       noise: torch.Tensor, steps: int = _FLOW["steps"], guidance: float = _FLOW["guidance"],
                       points: torch.Tensor | None = None, point_labels: torch.Tensor | None = None,
                       ) -> torch.Tensor:
        """Flow-matching Euler sampling from `noise` (SD3's shift-3 schedule), with optional guidance.

        Guidance is applied only above 1.0 (as the release does): the unconditional branch keeps the
        condition latent, uses the empty prompt and literal zero point tokens, batched [uncond, cond].
        """
        batch = noise.shape[0]
        if points is None:
            points = noise.new_full((batch, MAX_POINTS, 2), -1.0)
            point_labels = torch.zeros(batch, MAX_POINTS, dtype=torch.long, device=noise.device)
        if guidance <= 1.0:
            def denoise(latents: torch.Tensor, condition: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
                return self.denoiser(latents, condition, timesteps, prompt_embeds, pooled, points, point_labels)

            return euler_sample(self.scheduler.config, denoise, condition, noise, steps)
        null_embeds, null_pooled = self.encode_prompts([""])
        prompt_embeds = torch.cat([null_embeds.expand_as(prompt_embeds), prompt_embeds])
        pooled = torch.cat([null_pooled.expand_as(pooled), pooled])
        points, point_labels = torch.cat([points, points]), torch.cat([point_labels, point_labels])
        null_points = torch.arange(2 * batch, device=noise.device) < batch

        def guided(latents: torch.Tensor, condition: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
            uncond, cond = self.denoiser(torch.cat([latents, latents]), torch.cat([condition, condition]),
                                         torch.cat([timesteps, timesteps]), prompt_embeds, pooled, points,
                                         point_labels, null_points).chunk(2)
            return uncond + guidance * (cond - uncond)

        return euler_sample(self.scheduler.config, guided, condition, noise, steps)

    def predict_latents(self, mean: torch.Tensor, std: torch.Tensor, seeds: Sequence[int], prompt_embeds: torch.Tensor,
                        pooled: torch.Tensor, steps: int = _FLOW["steps"], guidance: float = _FLOW["guidance"],
                        deterministic: bool = False,
                        points: torch.Tensor | None = None, point_labels: torch.Tensor | None = None,
                        ) -> torch.Tensor:
        """Sample prediction latents from the condition images' posteriors (`encode_posterior`).

        Row i draws its condition latent (as DICEPTION does, from the posterior) and then its
        starting noise from one generator seeded with `seeds[i]`, on the CPU: a result depends on
        neither the batch it was in nor the device. `deterministic=True` uses the posterior mean and
        starts from zeros (the single-step objective's sampler): then the seeds are irrelevant.
        """
        if deterministic:
            condition, noise = mean, torch.zeros_like(mean)
        else:
            condition_draws, noises = [], []
            for seed in seeds:
                generator = torch.Generator().manual_seed(int(seed))
                condition_draws.append(torch.randn(mean.shape[1:], generator=generator))
                noises.append(torch.randn(mean.shape[1:], generator=generator))
            eps = torch.stack(condition_draws).to(mean.device, mean.dtype)
            condition, noise = mean + std * eps, torch.stack(noises).to(mean.device, mean.dtype)
        return self.sample_latents(condition.to(self.dtype), prompt_embeds, pooled, noise.to(self.dtype), steps,
                                   guidance, points, point_labels)

    @torch.inference_mode()
    def predict(self, images: ImageLike | Sequence[ImageLike], prompt: str,
                points: Sequence[Sequence[Sequence[float]] | None] | None = None, steps: int = _FLOW["steps"],
                guidance: float = _FLOW["guidance"], seed: int = SHARED_DEFAULTS["seed"],
                batch_size: int = SHARED_DEFAULTS["batch_size"], deterministic: bool = False,
                progress: bool = True) -> list[Prediction]:
        """Colour-encoded predictions for `images` under a task `prompt`.

        Images may be paths, PIL images or arrays of any size and mode; each output is resized
        back to its input's size. Image i uses seed `seed + i` (see `predict_latents`).
        `points` gives per image up to five (x, y) pixel points (point-prompted segmentation).
        """
        if isinstance(images, str | Path | np.ndarray) or not isinstance(images, Sequence):
            images = [images]
        sources = [str(im) if isinstance(im, str | Path) else f"image {i}" for i, im in enumerate(images)]
        points = list(points) if points is not None else [None] * len(images)
        if len(points) != len(images):
            raise ValueError(f"got {len(points)} point lists for {len(images)} images")
        results = []
        bar = tqdm(total=len(images), desc=f"predict {prompt}", unit="img", disable=not progress)
        for start in range(0, len(images), batch_size):
            arrays = [to_rgb_array(im) for im in images[start:start + batch_size]]
            count = len(arrays)
            decoded = self.predict_batch(arrays, prompt, range(seed + start, seed + start + count),
                                         points[start:start + count], steps, guidance, deterministic)
            results.extend(Prediction(image, sources[start + offset]) for offset, image in enumerate(decoded))
            bar.update(count)
        bar.close()
        return results

    def predict_batch(self, arrays: Sequence[np.ndarray], prompt: str, seeds: Sequence[int],
                      points: Sequence[Sequence[Sequence[float]] | None], steps: int, guidance: float,
                      deterministic: bool) -> list[np.ndarray]:
        """One batch of float RGB arrays -> colour-encoded predictions (H x W x 3 in [0, 1], each at its
        input's size), image i drawn from `seeds[i]`. The unit that streamed and distributed prediction
        (`adaptkit.inference`) runs: which batch an image is in is fixed there, so results are bit-identical
        however the batches are spread over processes."""
        resolution, count = self.config.resolution, len(arrays)
        embeds, pooled = self.encode_prompts([prompt])
        mean, std = self.encode_posterior(to_model_batch(arrays, resolution))
        encoded = [self.denoiser.point_encoder.normalise(p, (a.shape[1], a.shape[0]), resolution)
                   for p, a in zip(points, arrays, strict=True)]
        latents = self.predict_latents(
            mean, std, seeds, embeds.expand(count, -1, -1), pooled.expand(count, -1), steps, guidance,
            deterministic, torch.stack([e[0] for e in encoded]).to(self.device, self.dtype),
            torch.stack([e[1] for e in encoded]).to(self.device))
        decoded = self.decode_latents(latents).cpu()
        return [resize(image, array.shape[0], array.shape[1]).clamp(0.0, 1.0).permute(1, 2, 0).numpy()
                for array, image in zip(arrays, decoded, strict=True)]

    # ---------------------------------------------------------------- description
    def parts(self) -> list[tuple[str, int, str]]:
        """(part, parameter count, dtype) for every loaded part; used by `adaptkit info`."""
        named = [("transformer", self.denoiser.transformer), ("point encoder", self.denoiser.point_encoder),
                 ("vae", self.vae), ("text encoder (CLIP-L)", self.prompts.text_encoder),
                 ("text encoder 2 (CLIP-G)", self.prompts.text_encoder_2),
                 ("text encoder 3 (T5)", self.prompts.text_encoder_3)]
        return [(name, sum(p.numel() for p in module.parameters()), str(next(module.parameters()).dtype))
                for name, module in named if module is not None]

    def fingerprint(self, part: str = "denoiser") -> str:
        """A short hash of the denoiser's (or the VAE's) weights, recorded with adapters to catch a wrong base.

        Hashing SD3-medium's denoiser reads ~8 GB, so the hash is kept on the generalist and recomputed
        only when a weight tensor was replaced or changed in place (its storage or version counter moved):
        every sweep trial and adapter load on one base reuses it.
        """
        module = self.denoiser if part == "denoiser" else self.vae
        state = _weights_state(module)
        cached = self._fingerprints.get(part)
        if cached is None or cached[0] != state:
            self._fingerprints[part] = cached = (state, weights_fingerprint(module))
        return cached[1]

    # ---------------------------------------------------------------- saving and loading
    def save_pretrained(self, folder: str | Path, max_shard_size: int | str = "10GB") -> Path:
        """Write a diffusers-style folder (safetensors per part, configs beside them) that reloads bit-exactly;
        the transformer and VAE split into shards of at most `max_shard_size` (diffusers' index format)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.denoiser.transformer.save_pretrained(folder / "transformer", max_shard_size=max_shard_size)
        self.denoiser.point_encoder.save_pretrained(folder / "point_encoder")
        self.vae.save_pretrained(folder / "vae", max_shard_size=max_shard_size)
        self.scheduler.save_pretrained(folder / "scheduler")
        for part in ("transformer", "point_encoder", "vae"):  # diffusers records where a model was loaded from:
            config = json.loads((folder / part / "config.json").read_text())  # a path of this machine, not the model
            if config.pop("_name_or_path", None) is not None:
                (folder / part / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        self._save_text_stack(folder)
        if len(self.prompts.cache):
            self.prompts.cache.save(folder / PROMPT_CACHE_FILE)
        (folder / GENERALIST_CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        return folder

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, load_text_encoders: bool = True,
                        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                        ) -> Generalist:
        """Load an adaptkit generalist folder, or a Hub repo holding one (offline from the cache)."""
        folder = resolve_folder(name_or_path)
        config_path = folder / GENERALIST_CONFIG_FILE
        if not config_path.is_file():
            raise CheckpointError(f"{folder} is not an adaptkit generalist folder: {GENERALIST_CONFIG_FILE} "
                                  "is missing (for the SD3 base + DICEPTION_v1.pth use from_diception)")
        config = read_generalist_config(config_path)
        refuse_pickled_weights(folder)
        transformer = load_part(SD3Transformer2DModel, folder, "transformer")
        point_encoder = load_part(PointPromptEncoder, folder, "point_encoder")
        generalist = cls(InContextDenoiser(transformer, point_encoder), load_part(AutoencoderKL, folder, "vae"),
                         _load_prompt_encoder(folder, config.max_sequence_length, load_text_encoders),
                         load_scheduler(folder), config)
        return generalist.to_runtime(device, dtype)

    @classmethod
    def from_diception(cls, base: str | Path = SD3_MEDIUM_HUB_ID, weights: str | Path = DICEPTION_HUB_ID,
                       load_text_encoders: bool = True, resolution: int = 768, coordinate_order: str = "xy",
                       max_sequence_length: int = 256, device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None) -> Generalist:
        """The released DICEPTION: the SD3-medium base (VAE, text encoders, scheduler, transformer config)
        plus `DICEPTION_v1.pth` (a file, a folder holding it, or a Hub id), loaded safely and strictly."""
        folder = resolve_folder(base, allow_patterns=SD3_BASE_FILES)
        checkpoint_parts = load_diception_checkpoint(resolve_weights(weights))
        # built on the meta device, buffers included: SD3-medium's 192 x 192 position grid, computed in fp64 and
        # then overwritten by the checkpoint's, would cost 0.85 GB of peak memory for nothing
        with torch.device("meta"):
            transformer = SD3Transformer2DModel.from_config(
                SD3Transformer2DModel.load_config(folder / "transformer"))
        _load_strict(transformer, checkpoint_parts["transformer"], "transformer", assign=True)
        gaussian = checkpoint_parts["positional_encoding_gaussian_matrix"]
        point_encoder = PointPromptEncoder(embed_dim=transformer.config.caption_projection_dim,
                                           num_frequencies=gaussian.shape[1], coordinate_order=coordinate_order)
        point_state = {"gaussian_matrix": gaussian, **_prefixed(checkpoint_parts["point_embedder"], "mlp."),
                       **_prefixed(checkpoint_parts["not_seg_embeddings"], "not_seg."),
                       **_prefixed(checkpoint_parts["seg_embeddings"], "seg.")}
        _load_strict(point_encoder, point_state, "point encoder")
        config = GeneralistConfig(name="diception", resolution=resolution,
                                  max_sequence_length=max_sequence_length)
        generalist = cls(InContextDenoiser(transformer, point_encoder),
                         AutoencoderKL.from_pretrained(folder / "vae"),
                         _load_prompt_encoder(folder, config.max_sequence_length, load_text_encoders),
                         FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler"), config)
        return generalist.to_runtime(device, dtype)

    def save_diception_checkpoint(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write the denoiser in DICEPTION's five-key `.pth` layout (the inverse of `from_diception`), its
        tensors in `dtype` (None: as held; the release's file is bf16)."""
        point = self.denoiser.point_encoder

        def cast(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {key: value.to(dtype or value.dtype) for key, value in state.items()}

        state = {
            "transformer": cast(self.denoiser.transformer.state_dict()),
            "point_embedder": cast(point.mlp.state_dict()),
            "not_seg_embeddings": cast(point.not_seg.state_dict()),
            "seg_embeddings": cast(point.seg.state_dict()),
            "positional_encoding_gaussian_matrix": point.gaussian_matrix.to(dtype or point.gaussian_matrix.dtype),
        }
        torch.save(state, path)
        return Path(path)

    def save_release(self, folder: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
        """Write what a DICEPTION user downloads, into one folder: the SD3 base's diffusers layout (the
        transformer's config only, the VAE, scheduler, three text encoders and tokenizers) and
        `DICEPTION_v1.pth` in `dtype`. `from_diception(folder, folder)` loads it, as it loads the release:
        so a release-shaped model (`adaptkit.tiny.real_size_spec`) rehearses the real path with no download."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.denoiser.transformer.save_config(folder / "transformer")
        self.vae.save_pretrained(folder / "vae")
        self.scheduler.save_pretrained(folder / "scheduler")
        self._save_text_stack(folder)
        return self.save_diception_checkpoint(folder / DICEPTION_WEIGHTS_FILE, dtype).parent

    def _save_text_stack(self, folder: Path) -> None:
        """The three tokenizers, and the text encoders that are loaded, in diffusers' SD3 folder names."""
        for suffix in ("", "_2", "_3"):
            encoder = getattr(self.prompts, f"text_encoder{suffix}")
            if encoder is not None:
                encoder.save_pretrained(folder / f"text_encoder{suffix}")
            getattr(self.prompts, f"tokenizer{suffix}").save_pretrained(folder / f"tokenizer{suffix}")

    def to_runtime(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                   ) -> Generalist:
        """Move to `device` (default: CUDA if present) in `dtype` (default: bf16 on GPU, fp32 on CPU)."""
        device = torch.device(device) if device is not None else default_device()
        return self.to(device=device, dtype=dtype or default_dtype(device))


def _base_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's base weights under peft-independent names (LoRA layers left out)."""
    return {name.removeprefix("base_model.model.").replace(".base_layer.", "."): tensor
            for name, tensor in module.state_dict().items() if "lora_" not in name}


def _weights_state(module: nn.Module) -> tuple[tuple[str, int, int], ...]:
    """Where each base weight lives and how often it was written: cheap to read, changes with any update."""
    def version(tensor: torch.Tensor) -> int:
        try:
            return tensor._version
        except RuntimeError:  # an inference-mode tensor keeps no version counter (and cannot change outside it)
            return -1

    return tuple((name, tensor.data_ptr(), version(tensor)) for name, tensor in sorted(_base_weights(module).items()))


#: Elements hashed at once: the fp32 view of SD3-medium's largest tensor (its 192 x 192 position grid) is 226 MB.
_HASH_CHUNK = 2**22


def weights_fingerprint(module: nn.Module) -> str:
    """A short hash of a module's base weights (names and values); LoRA layers, if any, are left out.

    A peft-wrapped module names its base weights differently, so names are normalised first: the
    fingerprint of a denoiser is the same with and without an adapter attached.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(_base_weights(module).items()):
        digest.update(name.encode())
        flat = tensor.detach().reshape(-1)
        for start in range(0, flat.numel(), _HASH_CHUNK):  # fp32 bytes of a chunk at a time, never a whole copy
            digest.update(flat[start:start + _HASH_CHUNK].float().cpu().numpy())
    return digest.hexdigest()[:16]


# -------------------------------------------------------------------- loading helpers
def resolve_folder(name_or_path: str | Path, allow_patterns: list[str] | None = None) -> Path:
    """A local folder as is; otherwise a Hub repo id, fetched (or found in the offline cache).

    `allow_patterns` limits a download to the files needed (the SD3 repo also holds multi-GB
    single-file checkpoints that adaptkit never reads).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; expected a model folder or a Hub repo id")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=allow_patterns))
    except Exception as error:  # huggingface_hub raises many kinds; all mean "not available here"
        raise CheckpointError(
            f"{name_or_path!r} is neither a local folder nor a Hub repo available here ({type(error).__name__}: "
            f"{error}). Download it where there is network (huggingface-cli download {name_or_path}) or pass "
            "the local folder.") from error


def resolve_weights(weights: str | Path) -> Path:
    """`DICEPTION_v1.pth` from a file path, a folder holding it, or a Hub id (offline cache works)."""
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        candidate = path / DICEPTION_WEIGHTS_FILE
        if not candidate.is_file():
            raise CheckpointError(f"{path} has no {DICEPTION_WEIGHTS_FILE}")
        return candidate
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(str(weights), DICEPTION_WEIGHTS_FILE))
    except Exception as error:  # huggingface_hub raises many kinds; all mean "not available here"
        raise CheckpointError(
            f"DICEPTION weights {weights!r}: not a local file or folder, and the Hub file "
            f"{weights}/{DICEPTION_WEIGHTS_FILE} is not available here ({type(error).__name__}: {error})"
        ) from error


def load_diception_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a `DICEPTION_v1.pth` safely (`weights_only=True`) and check its five top-level keys."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refusing to load: the file holds pickled code or objects other than tensors "
            f"(loaded with weights_only=True; never run code from a checkpoint). Detail: {error}") from error
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({error})") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict with keys {CHECKPOINT_KEYS}, got {type(state).__name__}")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path}: missing top-level key(s) {missing}; found {sorted(state)}")
    extra = sorted(set(state) - set(CHECKPOINT_KEYS))
    if extra:
        warnings.warn(f"{path}: ignoring unexpected top-level key(s) {extra}", stacklevel=2)
    return state


def read_generalist_config(path: Path) -> GeneralistConfig:
    """`generalist.json`, its keys and values checked: a wrong one is named here, not deep inside sampling."""
    from adaptkit.recipe import MAX_RESOLUTION, RecipeError, build_section

    data = read_json(path, "generalist config")
    try:
        config = build_section(GeneralistConfig, data)
    except RecipeError as error:
        raise CheckpointError(f"{path}: not a valid generalist config: {error}") from None
    problems = [
        (16 <= config.resolution <= MAX_RESOLUTION and config.resolution % 16 == 0,
         f"resolution must be a multiple of 16 from 16 to {MAX_RESOLUTION}, got {config.resolution}"),
        (config.max_sequence_length >= 1, f"max_sequence_length must be >= 1, got {config.max_sequence_length}"),
        (config.objective in SAMPLER_DEFAULTS, f"objective {config.objective!r} is not one of "
                                               f"{', '.join(SAMPLER_DEFAULTS)}"),
        (all(isinstance(k, str) and isinstance(v, str) and v for k, v in config.task_prompts.items()),
         f"task_prompts must map task names to prompt strings, got {config.task_prompts!r}"),
    ]
    for ok, problem in problems:
        if not ok:
            raise CheckpointError(f"{path}: not a valid generalist config: {problem}")
    return config


#: No size in a real model's config comes near this (SD3-medium's largest is 4096, T5's vocabulary 32128): a larger
#: one is a damaged config, refused before a library tries to build a model that size.
MAX_CONFIG_SIZE = 1 << 20


def bounded_config(path: Path, config: Any) -> dict[str, Any]:
    """`config` (read from `path`) once it is a JSON object whose sizes are all within MAX_CONFIG_SIZE: building
    even on the meta device takes time and memory in proportion to a size, so a damaged one is refused first."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}")
    for key, value in config.items():
        if any(isinstance(v, int | float) and not isinstance(v, bool) and abs(v) > MAX_CONFIG_SIZE
               for v in (value if isinstance(value, list) else [value])):
            raise CheckpointError(f"{path}: {key} {value!r} is beyond any model's size (at most {MAX_CONFIG_SIZE}); "
                                  "the generalist folder is damaged: copy it again")
    return config


def load_part(model_class: Any, folder: Path, part: str, config_file: str = "") -> Any:
    """One part of a generalist folder (`folder/part`), built by its library from the config and weights there.

    diffusers and transformers trust a config: a key missing, a wrong type or a size that disagrees with the
    weights fails deep inside them, and a huge size would build for ever. So sizes are bounded first, and any
    failure to build comes back naming the part's folder.
    """
    path = folder / part / (config_file or getattr(model_class, "config_name", "config.json"))
    bounded_config(path, read_json(path, f"{part} config"))
    try:
        return model_class.from_pretrained(folder / part)
    except Exception as error:  # the libraries raise many kinds for a config or weights they cannot build from
        detail = (str(error).splitlines() or [""])[0][:300]
        raise CheckpointError(f"{folder / part}: the {part} cannot be built from {path.name} and the files beside it "
                              f"({type(error).__name__}: {detail}); the generalist folder is damaged: copy it "
                              "again") from None


def load_scheduler(folder: Path) -> FlowMatchEulerDiscreteScheduler:
    """The folder's flow-matching schedule, tried once on a single number as training and sampling use it: a
    config that cannot sample (dynamic shifting without an image size, a shift that is not a number, no
    timesteps) is refused here, naming its file, rather than in the middle of a run."""
    scheduler = load_part(FlowMatchEulerDiscreteScheduler, folder, "scheduler")
    path = folder / "scheduler" / scheduler.config_name
    try:
        one = torch.ones(1)
        sampled = euler_sample(scheduler.config, lambda latents, condition, t: one, one, one, 2)
        usable = len(scheduler.timesteps) > 0 and bool(torch.isfinite(scheduler.sigmas).all()
                                                       and torch.isfinite(sampled).all())
        problem = "its timesteps or noise levels are empty or not finite"
    except Exception as error:  # diffusers' own checks of the options raise several kinds
        usable, problem = False, f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
    if not usable:
        raise CheckpointError(f"{path}: this schedule cannot sample ({problem}); the generalist folder is damaged: "
                              "copy it again")
    return scheduler


#: Pickle formats that diffusers and transformers would fall back to where a part holds no safetensors.
PICKLED_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_pickled_weights(folder: Path) -> None:
    """Refuse a generalist folder whose part (transformer, vae, a text encoder) holds its weights only as a
    pickle: adaptkit loads safetensors alone, so a pickle is never unpickled, and the message says how to convert."""
    for part in sorted(path for path in folder.iterdir() if path.is_dir()):
        files = sorted(path for path in part.iterdir() if path.is_file())
        pickled = [path for path in files if path.suffix in PICKLED_WEIGHT_SUFFIXES]
        if pickled and not any(path.suffix == ".safetensors" for path in files):
            stem = "model" if pickled[0].stem == "pytorch_model" else pickled[0].stem  # the name transformers reads
            target = pickled[0].with_name(f"{stem}.safetensors")
            raise CheckpointError(
                f"{pickled[0]}: the {part.name} weights are a pickle, and adaptkit never loads pickled weights (they "
                f"can run code); convert them to safetensors, where you trust the file: python -c \"import torch; "
                f"from safetensors.torch import save_file; save_file(torch.load('{pickled[0]}', weights_only=True), "
                f"'{target}')\"")


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], part: str, assign: bool = False) -> None:
    """Load `state` into `module`; missing keys or wrong shapes are errors, unexpected keys a warning.

    The release loads with `strict=False`, so a mismatched checkpoint would pass silently there.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing key(s), e.g. {missing[:5]}")
        if wrong:
            detail.append(f"{len(wrong)} wrong shape(s), e.g. {wrong[:5]}")
        raise CheckpointError(f"{part} weights do not match the model: " + "; ".join(detail))
    if unexpected:
        warnings.warn(f"{part}: ignoring {len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}",
                      stacklevel=3)
    module.load_state_dict({k: state[k] for k in expected}, strict=True, assign=assign)


def _load_prompt_encoder(folder: Path, max_sequence_length: int, load_text_encoders: bool) -> PromptEncoder:
    """Tokenizers always; text encoders unless told not to (then only cached prompts can be encoded)."""
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

    encoders: dict[str, Any] = {"text_encoder": None, "text_encoder_2": None, "text_encoder_3": None}
    if load_text_encoders:
        for name, model_class in (("text_encoder", CLIPTextModelWithProjection),
                                  ("text_encoder_2", CLIPTextModelWithProjection),
                                  ("text_encoder_3", T5EncoderModel)):
            if (folder / name).is_dir():
                encoders[name] = load_part(model_class, folder, name, "config.json")
    tokenizers = {name: AutoTokenizer.from_pretrained(folder / name) if (folder / name).is_dir() else None
                  for name in ("tokenizer", "tokenizer_2", "tokenizer_3")}
    cache_path = folder / PROMPT_CACHE_FILE
    cache = PromptCache.load(cache_path) if cache_path.is_file() else None
    return PromptEncoder(**encoders, **tokenizers, max_sequence_length=max_sequence_length, cache=cache)
