"""adaptkit: adapt a frozen generalist perception diffusion model to new tasks from ~50 images.

The public API, one name per concept (each module's docstring says why it is shaped as it is):

- `Generalist`, `load_generalist`: the frozen DICEPTION-style model (`adaptkit.generalist`), and a base
  loaded by name: `default`, `tiny`, `diception`, a folder or a Hub id (`adaptkit.bases`).
- `build_codec`, `list_codecs`: how a task's target becomes an RGB image and back (`adaptkit.codecs`).
- `load_recipe`, `Recipe`: a task's YAML recipe, validated (`adaptkit.recipe`).
- `train`: a LoRA adapter from a recipe (`adaptkit.training`).
- `learning_curve`, `CurveResult`: how many labelled images a task needs, from adapters trained on nested subsets
  of growing size, with intervals and a fitted power law (`adaptkit.curve`).
- `AdaptedModel`: an adapter folder loaded onto its generalist, to predict (`adaptkit.adapters`).
- `evaluate`, `predict_files`, `builtin_task`, `Placement`: scoring and writing predictions, streamed, resumable and
  on any devices Lightning reaches (`adaptkit.inference`).
- `build_metrics`: torchmetrics per codec (`adaptkit.metrics`).
- `estimate_memory`: the memory a run will need, from configs, before anything loads (`adaptkit.memory`).
- `Sample`: one labelled pair, as every data source returns it (`adaptkit.data`).
- `AdaptkitError` and its subclasses, one per concept: what adaptkit raises for input a user can fix, with a
  message naming the file, key or value at fault (`adaptkit.errors` says more).

Imports are lazy, so `import adaptkit` stays fast and the CLI starts quickly (`__getattr__` imports a name's
module on first use); the `TYPE_CHECKING` imports below name the same objects for type checkers and editors.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # exactly the names of `_EXPORTS` (tests/test_api.py checks it)
    from adaptkit.adapters import AdaptedModel, AdapterError
    from adaptkit.bases import load_generalist
    from adaptkit.codecs import CodecError, build_codec, list_codecs
    from adaptkit.curve import CurveError, CurveResult, learning_curve
    from adaptkit.data import DataError, Sample
    from adaptkit.errors import AdaptkitError, FileError
    from adaptkit.generalist import CheckpointError, Generalist
    from adaptkit.hub import HubError
    from adaptkit.inference import Placement, PredictionError, builtin_task, evaluate, predict_files
    from adaptkit.memory import estimate_memory
    from adaptkit.metrics import build_metrics
    from adaptkit.metrics.uncertainty import ErrorAUROC
    from adaptkit.recipe import Recipe, RecipeError, load_recipe
    from adaptkit.suggest import SuggestError, SuggestReport, suggest_labels
    from adaptkit.sweep import SweepError
    from adaptkit.training import TrainingError, TrainingInterrupted, train
    from adaptkit.uncertainty import UncertaintyError

_EXPORTS = {
    "Generalist": "adaptkit.generalist",
    "load_generalist": "adaptkit.bases",
    "build_codec": "adaptkit.codecs",
    "list_codecs": "adaptkit.codecs",
    "Recipe": "adaptkit.recipe",
    "load_recipe": "adaptkit.recipe",
    "train": "adaptkit.training",
    "learning_curve": "adaptkit.curve",
    "CurveResult": "adaptkit.curve",
    "AdaptedModel": "adaptkit.adapters",
    "evaluate": "adaptkit.inference",
    "predict_files": "adaptkit.inference",
    "builtin_task": "adaptkit.inference",
    "suggest_labels": "adaptkit.suggest",
    "SuggestReport": "adaptkit.suggest",
    "ErrorAUROC": "adaptkit.metrics.uncertainty",
    "estimate_memory": "adaptkit.memory",
    "Placement": "adaptkit.inference",
    "PredictionError": "adaptkit.inference",
    "build_metrics": "adaptkit.metrics",
    "Sample": "adaptkit.data",
    "AdaptkitError": "adaptkit.errors",
    "FileError": "adaptkit.errors",
    "RecipeError": "adaptkit.recipe",
    "CodecError": "adaptkit.codecs",
    "DataError": "adaptkit.data",
    "CheckpointError": "adaptkit.generalist",
    "AdapterError": "adaptkit.adapters",
    "TrainingError": "adaptkit.training",
    "TrainingInterrupted": "adaptkit.training",
    "SweepError": "adaptkit.sweep",
    "CurveError": "adaptkit.curve",
    "SuggestError": "adaptkit.suggest",
    "UncertaintyError": "adaptkit.uncertainty",
    "HubError": "adaptkit.hub",
}

# A literal list, since type checkers read no other form: `__version__` and `_EXPORTS` (tests/test_api.py)
__all__ = [
    "AdaptedModel",
    "AdapterError",
    "AdaptkitError",
    "CheckpointError",
    "CodecError",
    "CurveError",
    "CurveResult",
    "DataError",
    "ErrorAUROC",
    "FileError",
    "Generalist",
    "HubError",
    "Placement",
    "PredictionError",
    "Recipe",
    "RecipeError",
    "Sample",
    "SuggestError",
    "SuggestReport",
    "SweepError",
    "TrainingError",
    "TrainingInterrupted",
    "UncertaintyError",
    "__version__",
    "build_codec",
    "build_metrics",
    "builtin_task",
    "estimate_memory",
    "evaluate",
    "learning_curve",
    "list_codecs",
    "load_generalist",
    "load_recipe",
    "predict_files",
    "suggest_labels",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'adaptkit' has no attribute {name!r}")
