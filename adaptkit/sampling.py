"""How a generalist's predictions are sampled: the defaults per objective, the rule they obey, the Euler loop.

Recipes (`InferenceSection`), adapters (`AdaptedModel`), built-in tasks and `Generalist.predict` all
take their defaults from `inference_defaults`, and recipe validation and `AdaptedModel` check the
single-step rule with `sampling_allowed`, so the places can never disagree.

Prediction (`Generalist.sample_latents`, with classifier-free guidance) and pretraining's zero-shot
evaluation (per-row prompts) run the same loop; what differs is only the velocity, so each passes a
`denoise(latents, condition, timesteps)` callable and the loop lives here once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Steps and guidance per training objective: `flow` is sampled as DICEPTION is (28 steps, guidance 2);
#: `single_step` predicts in one deterministic pass, and nothing else is allowed (`sampling_allowed`).
SAMPLER_DEFAULTS: dict[str, dict[str, Any]] = {"flow": {"steps": 28, "guidance": 2.0},
                                               "single_step": {"steps": 1, "guidance": 1.0}}
#: The settings every objective shares: samples per image, images per forward pass, the first image's seed.
SHARED_DEFAULTS: dict[str, Any] = {"ensemble": 1, "batch_size": 8, "seed": 0}


def inference_defaults(objective: str) -> dict[str, Any]:
    """Every inference setting (steps, guidance, ensemble, batch_size, seed) for a model trained with `objective`."""
    return {**SAMPLER_DEFAULTS[objective], **SHARED_DEFAULTS}


def sampling_allowed(objective: str, steps: int, guidance: float) -> bool:
    """Whether a model trained with `objective` may be sampled so: a single-step one only in its one
    deterministic pass (steps 1, guidance 1.0), which is all it learnt."""
    return objective != "single_step" or (steps, guidance) == (1, 1.0)


#: A velocity model: (noisy latents, condition latents, per-row timesteps) -> velocity.
Denoise = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def euler_sample(scheduler_config: Any, denoise: Denoise, condition: torch.Tensor, noise: torch.Tensor,
                 steps: int) -> torch.Tensor:
    """Integrate `denoise` from `noise` in `steps` Euler steps of the flow-matching schedule `scheduler_config`
    describes (SD3's shift-3 schedule for a DICEPTION-style generalist).

    A fresh scheduler is built from the config for every call, so concurrent samplers never share its
    step counter.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps, device=noise.device)
    latents = noise
    for t in scheduler.timesteps:
        latents = scheduler.step(denoise(latents, condition, t.expand(len(latents))), t, latents).prev_sample
    return latents
