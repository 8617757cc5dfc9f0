"""adaptkit: adapt a frozen generalist perception diffusion model to new tasks from ~50 images."""

__version__ = "0.1.0"
