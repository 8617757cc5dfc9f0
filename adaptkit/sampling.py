"""How a generalist's predictions are sampled: the flow-matching Euler loop.

Prediction (`Generalist.sample_latents`, with classifier-free guidance) and pretraining's zero-shot
evaluation (per-row prompts) run the same loop; what differs is only the velocity, so each passes a
`denoise(latents, condition, timesteps)` callable and the loop lives here once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

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
