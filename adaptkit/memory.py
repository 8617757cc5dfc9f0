"""Memory a run needs, predicted before it loads anything, and what it really held, recorded while it ran.

A 2 B-parameter base turns memory into the first thing that breaks: SD3-medium's transformer is 4 GB in
bf16 and 8 GB in fp32, and at 768 px its activations for one image outgrow the weights unless gradient
checkpointing is on. `estimate_memory` adds up what a run holds (frozen weights, LoRA with its gradients
and AdamW moments, activations with or without checkpointing, cached latents and prompt embeddings, and
the text encoders while they encode the prompts) from configs alone, so `adaptkit check` can say before a
download or a model load whether a recipe fits the visible GPU, and which setting would make it fit.
`held_modules` lists the dtype and bytes of every module a run holds, for the run's record.

The activation coefficients were measured with `torch.autograd.graph.saved_tensors_hooks` on SD3 joint
blocks carrying rank-32 attention LoRA (peft) at 1536 wide (tests/test_memory.py re-measures them on a
small block): bytes saved for backward per token and per block, in units of the hidden width.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

GIB = 2**30

#: Bytes saved for backward per token, per joint block, per unit of hidden width, without checkpointing.
#: bf16-mixed keeps bf16 activations but peft casts each LoRA input to fp32, hence not half of fp32's.
SAVED_PER_TOKEN_WIDTH = {"bf16-mixed": 30.0, "32": 48.5}
#: With checkpointing each block keeps only its input (one hidden vector per token) until it is recomputed.
CHECKPOINT_PER_TOKEN_WIDTH = {"bf16-mixed": 2.0, "32": 4.0}
#: Point tokens DICEPTION appends to the text tokens.
POINT_TOKENS = 5
#: What the process holds besides the model: torch, diffusers, Lightning and their kernels on the CPU
#: (RSS after imports, measured); the CUDA context and cuBLAS workspace on a GPU.
RUNTIME_BYTES = {"cpu": int(0.75 * GIB), "cuda": int(0.8 * GIB)}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run holds, by kind. `peak` is the larger of the two moments a run can peak at: loading
    (the weights with the text encoders, before they are freed) and the training or inference step."""

    weights: int
    text_encoders: int
    lora: int
    optimizer: int
    activations: int
    latents: int
    prompt_cache: int
    runtime: int

    @property
    def loading(self) -> int:
        return self.runtime + self.weights + self.text_encoders

    @property
    def step(self) -> int:
        return (self.runtime + self.weights + self.lora + self.optimizer + self.activations + self.latents
                + self.prompt_cache)

    @property
    def peak(self) -> int:
        return max(self.loading, self.step)

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "loading": self.loading, "step": self.step, "peak": self.peak}


@dataclass(frozen=True)
class BaseShapes:
    """What memory depends on in a base, read from configs: parameter counts and the token geometry."""

    transformer_parameters: int
    point_parameters: int
    vae_parameters: int
    text_parameters: int  # 0 when the text encoders are not loaded
    layers: int
    width: int
    patch_size: int
    vae_downsampling: int
    lora_parameters_per_rank: int  # for the recipe's adapter.targets
    text_tokens: int

    def image_tokens(self, resolution: int) -> int:
        """Noisy plus condition tokens of one sample (DICEPTION concatenates the condition image's)."""
        side = resolution // self.vae_downsampling // self.patch_size
        return 2 * side * side


def bytes_of(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def estimate_memory(shapes: BaseShapes, resolution: int, batch_size: int, rank: int, precision: str = "bf16-mixed",
                    gradient_checkpointing: bool = True, training: bool = True, images: int = 0,
                    guidance: float = 1.0, device: str = "cuda") -> MemoryEstimate:
    """Predicted bytes of a LoRA run (`training`) or of inference on `shapes`, at `resolution` px and
    `batch_size`, with the frozen base in bf16 (`precision` bf16-mixed, as DICEPTION runs) or fp32 ("32").

    `images` is how many (image, target) pairs a training run caches as latents (flips included);
    `guidance` > 1 doubles the batch a sampling step runs. The VAE's own workspace and the pixel loss
    are left out: the VAE encodes and decodes a batch at a time, outside the transformer's peak.
    """
    if precision not in SAVED_PER_TOKEN_WIDTH:
        raise ValueError(f"precision must be one of {sorted(SAVED_PER_TOKEN_WIDTH)}, got {precision!r}")
    weight_bytes = 2 if precision == "bf16-mixed" else 4
    weights = (shapes.transformer_parameters + shapes.point_parameters + shapes.vae_parameters) * weight_bytes
    tokens = shapes.image_tokens(resolution) + shapes.text_tokens + POINT_TOKENS
    per_block = tokens * shapes.width * batch_size  # one hidden vector per token of the batch
    latent_side = resolution // shapes.vae_downsampling
    latent = 16 * latent_side * latent_side * 4  # fp32, as the cache keeps them
    prompt_cache = 2 * (shapes.text_tokens * 4096 + 2048) * 4  # the task prompt and the empty one, fp32
    lora = optimizer = latents = 0
    if training:
        lora_parameters = shapes.lora_parameters_per_rank * rank
        lora = 2 * lora_parameters * 4  # fp32 weights and their gradients
        optimizer = 2 * lora_parameters * 4  # AdamW's two moments
        saved = SAVED_PER_TOKEN_WIDTH[precision] * per_block
        if gradient_checkpointing:  # every block's input, plus one block recomputed during backward
            activations = int(CHECKPOINT_PER_TOKEN_WIDTH[precision] * per_block * shapes.layers + saved)
        else:
            activations = int(saved * shapes.layers)
        latents = images * 4 * latent  # condition and target posteriors: mean and std of each
    else:  # no graph is kept: the live hidden states of one block at a time, both streams, batch x guidance
        activations = int(SAVED_PER_TOKEN_WIDTH[precision] * per_block * (2 if guidance > 1.0 else 1))
        latents = 3 * latent * batch_size
    return MemoryEstimate(weights=weights, text_encoders=shapes.text_parameters * weight_bytes, lora=lora,
                          optimizer=optimizer, activations=activations, latents=latents, prompt_cache=prompt_cache,
                          runtime=RUNTIME_BYTES["cuda" if device.startswith("cuda") else "cpu"])


# ---------------------------------------------------------------------------------------------- the base's shapes
def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def shapes_of(transformer: nn.Module, vae: nn.Module, targets: Any, point_parameters: int, text_parameters: int = 0,
              text_tokens: int = 333) -> BaseShapes:
    """Shapes of a base from its transformer and VAE (loaded, or built on the meta device from configs)."""
    from adaptkit.adapters import resolve_targets

    modules = dict(transformer.named_modules())
    per_rank = sum(modules[name].in_features + modules[name].out_features
                   for name in resolve_targets(transformer, targets))
    config = transformer.config
    return BaseShapes(transformer_parameters=_parameters(transformer), point_parameters=point_parameters,
                      vae_parameters=_parameters(vae), text_parameters=text_parameters, layers=config.num_layers,
                      width=config.num_attention_heads * config.attention_head_dim, patch_size=config.patch_size,
                      vae_downsampling=2 ** (len(vae.config.block_out_channels) - 1),
                      lora_parameters_per_rank=per_rank, text_tokens=text_tokens)


def shapes_from_configs(transformer_config: Mapping[str, Any], vae_config: Mapping[str, Any], targets: Any,
                        text_parameters: int = 0, text_tokens: int = 333, num_frequencies: int = 1024) -> BaseShapes:
    """Shapes of a base from its transformer and VAE configs: models built on the meta device, no memory."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    with init_empty_weights():
        transformer = SD3Transformer2DModel.from_config(dict(transformer_config))
        vae = AutoencoderKL.from_config(dict(vae_config))
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    point = 2 * num_frequencies * (2 * num_frequencies + 1) + width * (2 * num_frequencies + 1) + 2 * width
    return shapes_of(transformer, vae, targets, point, text_parameters, text_tokens)


def generalist_shapes(generalist: Any, targets: Any) -> BaseShapes:
    """Shapes of a loaded generalist (its text encoders counted while they are loaded; the text length read
    from its prompt cache)."""
    prompts = generalist.prompts
    encoders = [e for e in (prompts.text_encoder, prompts.text_encoder_2, prompts.text_encoder_3) if e is not None]
    text_tokens = prompts.cache.get(prompts.cache.prompts[0])[0].shape[0] if len(prompts.cache) else 333
    return shapes_of(generalist.denoiser.transformer, generalist.vae, targets,
                     _parameters(generalist.denoiser.point_encoder), sum(map(_parameters, encoders)), text_tokens)


def held_modules(generalist: Any) -> dict[str, dict[str, Any]]:
    """Every module a generalist holds: its dtypes, parameter count and bytes (LoRA layers counted apart from
    the frozen transformer); a freed text encoder is listed as freed, so a record shows it is gone."""
    denoiser = generalist.denoiser
    named = {"transformer": denoiser, "vae": generalist.vae, "text encoder (CLIP-L)": generalist.prompts.text_encoder,
             "text encoder 2 (CLIP-G)": generalist.prompts.text_encoder_2,
             "text encoder 3 (T5)": generalist.prompts.text_encoder_3}
    held: dict[str, dict[str, Any]] = {}
    for name, module in named.items():
        if module is None:
            held[name] = {"freed": True, "bytes": 0}
            continue
        groups: dict[str, list[torch.Tensor]] = {}
        for key, tensor in [*module.named_parameters(), *module.named_buffers()]:
            part = "lora" if "lora_" in key else "point encoder" if ".point_encoder." in f".{key}" else name
            groups.setdefault(part, []).append(tensor)
        for part, tensors in groups.items():
            held[part] = {"dtype": sorted({str(t.dtype).removeprefix("torch.") for t in tensors}),
                          "parameters": sum(t.numel() for t in tensors),
                          "bytes": sum(t.numel() * t.element_size() for t in tensors)}
    return held


def peak_rss_bytes() -> int:
    """The process's resident-set high-water mark (what an out-of-memory killer counts)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def write_record(path: Path, record: dict[str, Any]) -> None:
    path.write_text(json.dumps(record, indent=2) + "\n")

