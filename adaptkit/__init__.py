"""adaptkit: adapt a frozen generalist perception diffusion model to new tasks from ~50 images.

The public API, one name per concept (each module's docstring says why it is shaped as it is):

- `Generalist`, `load_generalist`: the frozen DICEPTION-style model (`adaptkit.generalist`).
- `build_codec`, `list_codecs`: how a task's target becomes an RGB image and back (`adaptkit.codecs`).
- `load_recipe`, `Recipe`: a task's YAML recipe, validated (`adaptkit.recipe`).
- `train`: a LoRA adapter from a recipe (`adaptkit.training`).
- `AdaptedModel`: an adapter folder loaded onto its generalist, to predict (`adaptkit.adapters`).
- `evaluate`, `predict_files`, `builtin_task`: scoring and writing predictions (`adaptkit.inference`).
- `build_metrics`: torchmetrics per codec (`adaptkit.metrics`).

Imports are lazy, so `import adaptkit` stays fast and the CLI starts quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Generalist": "adaptkit.generalist",
    "load_generalist": "adaptkit.generalist",
    "build_codec": "adaptkit.codecs",
    "list_codecs": "adaptkit.codecs",
    "Recipe": "adaptkit.recipe",
    "load_recipe": "adaptkit.recipe",
    "train": "adaptkit.training",
    "AdaptedModel": "adaptkit.adapters",
    "evaluate": "adaptkit.inference",
    "predict_files": "adaptkit.inference",
    "builtin_task": "adaptkit.inference",
    "build_metrics": "adaptkit.metrics",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'adaptkit' has no attribute {name!r}")
