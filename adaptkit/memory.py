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
from dataclasses import asdict, dataclass, replace
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
#: The VAE's peak working memory per (first-block channel x pixel x image) in bf16 (fp32: twice), measured
#: on SD3's VAE (128-256-512-512) at 128 and 256 px: encoding and decoding.
VAE_ENCODE_PER_PIXEL_CHANNEL, VAE_DECODE_PER_PIXEL_CHANNEL = 20.0, 28.0
#: Point tokens DICEPTION appends to the text tokens; images the VAE encodes at once when a run caches latents.
POINT_TOKENS, ENCODE_BATCH = 5, 8
#: What the process holds besides the model. CPU: the RSS after importing torch, diffusers, transformers, peft
#: and Lightning (measured); GPU: the CUDA context and cuBLAS workspace.
RUNTIME_BYTES = {"cpu": int(0.48 * GIB), "cuda": int(0.8 * GIB)}
#: Share of a GPU kept free for the caching allocator's fragmentation when judging whether a run fits.
GPU_HEADROOM = 0.10
#: SD3-medium's VAE config as published with the base (the transformer's is `SD3_MEDIUM_TRANSFORMER_CONFIG`).
SD3_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 2,
    "norm_num_groups": 32, "sample_size": 1024, "scaling_factor": 1.5305, "shift_factor": 0.0609,
    "use_quant_conv": False, "use_post_quant_conv": False,
}
#: SD3-medium's three text encoders (CLIP-L ~0.12 B, CLIP-G ~0.69 B, T5-XXL's encoder ~4.76 B), stored in fp16.
SD3_TEXT_PARAMETERS, SD3_TEXT_STORED_BYTES = 5_570_000_000, 2


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run holds, by kind, and the three moments it can peak at: `loading` (the weights with the
    text encoders, before they are freed), `encoding` (the VAE caching the data set) and `step` (a training
    step, or one inference batch). `peak` is the largest."""

    weights: int
    text_encoders: int
    lora: int
    optimizer: int
    activations: int
    vae_workspace: int
    latents: int
    prompt_cache: int
    runtime: int

    @property
    def loading(self) -> int:
        return self.runtime + self.weights + self.text_encoders

    @property
    def encoding(self) -> int:
        return self.runtime + self.weights + self.latents + self.vae_workspace

    @property
    def step(self) -> int:
        return (self.runtime + self.weights + self.lora + self.optimizer + self.activations + self.latents
                + self.prompt_cache)

    @property
    def peak(self) -> int:
        return max(self.loading, self.encoding, self.step)

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "loading": self.loading, "encoding": self.encoding, "step": self.step,
                "peak": self.peak}


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
    vae_channels: int  # the VAE's first block's channels: its widest feature maps are these at full resolution
    lora_parameters_per_rank: int  # for the recipe's adapter.targets
    text_tokens: int
    text_stored_bytes: int = 4  # bytes per text-encoder parameter on disk (loaded as stored, then cast)

    def image_tokens(self, resolution: int) -> int:
        """Noisy plus condition tokens of one sample (DICEPTION concatenates the condition image's)."""
        side = resolution // self.vae_downsampling // self.patch_size
        return 2 * side * side


def estimate_memory(shapes: BaseShapes, resolution: int, batch_size: int, rank: int, precision: str = "bf16-mixed",
                    gradient_checkpointing: bool = True, training: bool = True, images: int = 0,
                    guidance: float = 1.0, device: str = "cuda") -> MemoryEstimate:
    """Predicted bytes of a LoRA run (`training`) or of inference on `shapes`, at `resolution` px and
    `batch_size`, with the frozen base in bf16 (`precision` bf16-mixed, as DICEPTION runs) or fp32 ("32").

    `images` is how many (image, target) pairs a training run caches as latents (flips included);
    `guidance` > 1 doubles the batch a sampling step runs. The pixel loss (a VAE decode inside the
    training graph) is left out. Inference holds the adapter's LoRA weights but no text encoders.
    """
    if precision not in SAVED_PER_TOKEN_WIDTH:
        raise ValueError(f"precision must be one of {sorted(SAVED_PER_TOKEN_WIDTH)}, got {precision!r}")
    on_gpu = device.startswith("cuda")
    weight_bytes = 2 if precision == "bf16-mixed" else 4
    from adaptkit.generalist import vae_dtype  # where the rule lives (a CPU keeps the VAE in fp32)

    vae_bytes = vae_dtype(device, torch.bfloat16 if weight_bytes == 2 else torch.float32).itemsize
    weights = ((shapes.transformer_parameters + shapes.point_parameters) * weight_bytes
               + shapes.vae_parameters * vae_bytes)
    # on a CPU the text encoders count as stored (memory-mapped); a GPU receives them cast
    text_bytes = weight_bytes if on_gpu else shapes.text_stored_bytes
    tokens = shapes.image_tokens(resolution) + shapes.text_tokens + POINT_TOKENS
    per_block = tokens * shapes.width * batch_size  # one hidden vector per token of the batch
    latent_side = resolution // shapes.vae_downsampling
    latent = 16 * latent_side * latent_side * 4  # fp32, as the cache keeps them
    prompt_cache = 2 * (shapes.text_tokens * 4096 + 2048) * 4  # the task prompt and the empty one, fp32
    pixels = shapes.vae_channels * resolution * resolution * vae_bytes / 2
    lora_parameters = shapes.lora_parameters_per_rank * rank
    saved = SAVED_PER_TOKEN_WIDTH[precision] * per_block
    if training:
        lora, optimizer = 2 * lora_parameters * 4, 2 * lora_parameters * 4  # fp32 weights + grads; AdamW moments
        if gradient_checkpointing:  # every block's input, plus one block recomputed during backward
            activations = int(CHECKPOINT_PER_TOKEN_WIDTH[precision] * per_block * shapes.layers + saved)
        else:
            activations = int(saved * shapes.layers)
        latents = images * 4 * latent  # condition and target posteriors: mean and std of each
        vae_workspace = int(VAE_ENCODE_PER_PIXEL_CHANNEL * pixels * min(ENCODE_BATCH, max(images, 1)))
        text = shapes.text_parameters * text_bytes
    else:  # no graph is kept: one block's live states at a time (twice the batch under guidance), then the decode
        lora, optimizer, text = lora_parameters * 4, 0, 0
        vae_workspace = int(VAE_DECODE_PER_PIXEL_CHANNEL * pixels * batch_size)
        activations = max(int(saved * (2 if guidance > 1.0 else 1)), vae_workspace)
        latents = 3 * latent * batch_size
    return MemoryEstimate(weights=weights, text_encoders=text, lora=lora,
                          optimizer=optimizer, activations=activations, vae_workspace=vae_workspace, latents=latents,
                          prompt_cache=prompt_cache, runtime=RUNTIME_BYTES["cuda" if on_gpu else "cpu"])


def fit_table(shapes: BaseShapes, resolution: int = 768, rank: int = 32, capacities_gb: tuple[int, ...] = (24, 40, 80),
              batches: tuple[int, ...] = (1, 2, 4, 8)) -> list[dict[str, Any]]:
    """Which training settings fit which GPU: predicted peak GiB per (precision, checkpointing, batch), and per
    capacity whether it fits with `GPU_HEADROOM` left free; then inference at the same batches."""
    rows = []
    for precision in ("bf16-mixed", "32"):
        for checkpointing in (True, False):
            for batch in batches:
                peak = estimate_memory(shapes, resolution, batch, rank, precision, checkpointing, images=70).peak
                rows.append({"run": "train", "precision": precision, "checkpointing": checkpointing, "batch": batch,
                             "peak_gib": peak / GIB, **_fits(peak, capacities_gb)})
    for batch in batches:
        for guidance in (1.0, 2.0):
            peak = estimate_memory(shapes, resolution, batch, rank, training=False, guidance=guidance).peak
            rows.append({"run": f"predict, guidance {guidance:g}", "precision": "bf16-mixed", "batch": batch,
                         "peak_gib": peak / GIB, **_fits(peak, capacities_gb)})
    return rows


def _fits(peak: int, capacities_gb: tuple[int, ...]) -> dict[str, bool]:
    return {f"fits_{gb}": peak <= gb * GIB * (1 - GPU_HEADROOM) for gb in capacities_gb}


# ------------------------------------------------------------------------------------------- the base's shapes
def _parameters(module: nn.Module) -> int:
    """Parameters and buffers: what the module holds (SD3's position grid is a 57 M-element buffer)."""
    return sum(t.numel() for t in [*module.parameters(), *module.buffers()])


def shapes_of(transformer: nn.Module, vae: nn.Module, targets: Any, point_parameters: int, text_parameters: int = 0,
              text_tokens: int = 333, text_stored_bytes: int = 4) -> BaseShapes:
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
                      vae_channels=vae.config.block_out_channels[0], lora_parameters_per_rank=per_rank,
                      text_tokens=text_tokens, text_stored_bytes=text_stored_bytes)


def shapes_from_configs(transformer_config: Mapping[str, Any], vae_config: Mapping[str, Any], targets: Any,
                        text_parameters: int = 0, text_tokens: int = 333, num_frequencies: int = 1024,
                        text_stored_bytes: int = 4) -> BaseShapes:
    """Shapes of a base from its transformer and VAE configs: models built on the meta device, no memory."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    with torch.device("meta"):  # buffers too: SD3's position grid would cost 0.85 GB to compute
        transformer = SD3Transformer2DModel.from_config(dict(transformer_config))
        vae = AutoencoderKL.from_config(dict(vae_config))
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    point = 2 * num_frequencies * (2 * num_frequencies + 1) + width * (2 * num_frequencies + 1) + 2 * width
    return shapes_of(transformer, vae, targets, point, text_parameters, text_tokens, text_stored_bytes)


def generalist_shapes(generalist: Any, targets: Any) -> BaseShapes:
    """Shapes of a loaded generalist (its text encoders counted while they are loaded; the text length read
    from its prompt cache)."""
    prompts = generalist.prompts
    encoders = [e for e in (prompts.text_encoder, prompts.text_encoder_2, prompts.text_encoder_3) if e is not None]
    text_tokens = prompts.cache.get(prompts.cache.prompts[0])[0].shape[0] if len(prompts.cache) else 333
    return shapes_of(generalist.denoiser.transformer, generalist.vae, targets,
                     _parameters(generalist.denoiser.point_encoder), sum(map(_parameters, encoders)), text_tokens)


def folder_shapes(folder: Path, targets: Any, max_sequence_length: int = 256) -> BaseShapes:
    """Shapes of an SD3-layout folder (a release base, or an adaptkit generalist folder) from its configs."""
    import transformers

    from adaptkit.generalist import bounded_config

    text_parameters, stored = 0, 4
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        config_path = folder / name / "config.json"
        if not config_path.is_file():
            continue
        config = bounded_config(config_path, json.loads(config_path.read_text()))
        model_class = getattr(transformers, config["architectures"][0])
        with torch.device("meta"):
            text_parameters += _parameters(model_class(model_class.config_class.from_pretrained(folder / name)))
        stored = 2 if config.get("dtype", config.get("torch_dtype")) in ("float16", "bfloat16") else 4
    clip_tokens = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text()).get("model_max_length", 77)
    point_config = folder / "point_encoder" / "config.json"
    frequencies = json.loads(point_config.read_text())["num_frequencies"] if point_config.is_file() else 1024
    configs = [bounded_config(path, json.loads(path.read_text()))
               for path in (folder / part / "config.json" for part in ("transformer", "vae"))]
    return shapes_from_configs(*configs, targets, text_parameters, clip_tokens + max_sequence_length, frequencies,
                               stored)


def recipe_shapes(recipe: Any) -> tuple[BaseShapes, int] | None:
    """Shapes of a recipe's base and the resolution it runs at, from configs (nothing loaded, nothing
    downloaded); None where the base's configs are not on this machine or cannot be read."""
    try:
        return _recipe_shapes(recipe)
    except (OSError, ValueError, KeyError, AttributeError, TypeError, OverflowError):  # train says which config
        return None


def _recipe_shapes(recipe: Any) -> tuple[BaseShapes, int] | None:
    from adaptkit.bases import DEFAULT_GENERALIST_DIR
    from adaptkit.generalist import GENERALIST_CONFIG_FILE, SD3_MEDIUM_TRANSFORMER_CONFIG

    base, targets = recipe.base, recipe.adapter.targets
    if base.generalist == "tiny":
        from adaptkit.tiny import build_tiny_generalist

        generalist = build_tiny_generalist()
        shapes = generalist_shapes(generalist, targets)
        return replace(shapes, text_tokens=2 * generalist.config.max_sequence_length), \
            base.resolution or generalist.config.resolution
    if base.generalist == "diception":
        folder = Path(base.sd3).expanduser()
        if (folder / "transformer" / "config.json").is_file():
            return folder_shapes(folder, targets), base.resolution or 768
        return shapes_from_configs(SD3_MEDIUM_TRANSFORMER_CONFIG, SD3_VAE_CONFIG, targets, SD3_TEXT_PARAMETERS,
                                   text_stored_bytes=SD3_TEXT_STORED_BYTES), base.resolution or 768
    folder = DEFAULT_GENERALIST_DIR if base.generalist == "default" else Path(base.generalist).expanduser()
    if not (folder / GENERALIST_CONFIG_FILE).is_file():
        return None
    config = json.loads((folder / GENERALIST_CONFIG_FILE).read_text())
    return folder_shapes(folder, targets, config["max_sequence_length"]), base.resolution or config["resolution"]


def gpu_fit_warning(recipe: Any, shapes: BaseShapes, resolution: int, train_images: int) -> str | None:
    """One line when the recipe's training on `shapes` (its base, see `recipe_shapes`) will not fit the visible
    GPU, naming the setting that would make it fit; None when it fits, trains on the CPU, or no GPU is visible."""
    train = recipe.train
    if train.accelerator == "cpu" or not torch.cuda.is_available():
        return None
    gpu = torch.cuda.get_device_properties(0)
    usable = gpu.total_memory * (1 - GPU_HEADROOM)
    images = train_images * (2 if recipe.data.hflip else 1) + recipe.data.val_shots
    precision = "32" if train.precision in ("32", "16-mixed") else "bf16-mixed"  # auto: bf16-mixed on a GPU

    def peak(precision: str, checkpointing: bool, batch: int) -> int:
        return estimate_memory(shapes, resolution, batch, recipe.adapter.rank, precision, checkpointing,
                               images=images).peak

    needed = peak(precision, train.gradient_checkpointing, train.batch_size)
    if needed <= usable:
        return None
    candidates = []  # every combination of the three settings, each change named as the recipe key it sets
    for precision_choice in dict.fromkeys([precision, "bf16-mixed"]):
        for checkpointing in dict.fromkeys([train.gradient_checkpointing, True]):
            batch = train.batch_size
            while batch >= 1:
                changes = {}
                if checkpointing != train.gradient_checkpointing:
                    changes["train.gradient_checkpointing"] = "true"
                if precision_choice != precision:
                    changes["train.precision"] = "bf16-mixed"
                if batch != train.batch_size:
                    changes["train.batch_size"] = str(batch)
                    changes["train.grad_accum"] = str(train.grad_accum * train.batch_size // batch)
                candidates.append((changes, peak(precision_choice, checkpointing, batch)))
                batch //= 2
    # the fewest changes; among those the first listed: checkpointing before precision, the largest batch
    fitting = sorted(((changes, fit) for changes, fit in candidates if changes and fit <= usable),
                     key=lambda candidate: len(candidate[0]))
    where = (f"{recipe.source}: training needs ~{needed / GIB:.1f} GiB at {resolution} px (batch {train.batch_size}) "
             f"but the visible GPU ({gpu.name}) has {gpu.total_memory / GIB:.1f} GiB")
    if not fitting:
        return f"{where}; no change of precision, checkpointing or batch size fits it: lower base.resolution"
    changes, fit = fitting[0]
    settings = " ".join(f"{key}={value}" for key, value in changes.items())
    return f"{where}: set {settings} (~{fit / GIB:.1f} GiB)"


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
                          "elements": sum(t.numel() for t in tensors),
                          "bytes": sum(t.numel() * t.element_size() for t in tensors)}
    return held


def peak_rss_bytes() -> int:
    """The process's resident-set high-water mark (what an out-of-memory killer counts)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
