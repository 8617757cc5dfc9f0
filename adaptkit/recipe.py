"""Recipes: a YAML file that says everything about one adaptation, checked before any model loads.

A recipe names the base generalist, the new task (prompt and colour codec), where the labelled
images come from, the LoRA adapter and the training and inference settings. It is parsed into
typed dataclasses; every key is checked (unknown keys get a "did you mean"), every value is
type-checked and range-checked, and `key.path=value` overrides from the command line (or a sweep
trial) go through the very same checks. The resolved recipe is written beside every adapter.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from adaptkit.errors import AdaptkitError
from adaptkit.files import read_yaml, yaml_problem
from adaptkit.sampling import SAMPLER_DEFAULTS, SHARED_DEFAULTS, sampling_allowed

_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
_MLP = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")

#: Named sets of transformer-block layers to adapt (module-name suffixes inside each block): `adapter.targets`.
TARGET_PRESETS: dict[str, tuple[str, ...] | None] = {
    "attention": _ATTENTION,
    "attention+mlp": _ATTENTION + _MLP,
    "all-linear": None,  # every Linear inside the transformer blocks
}


class RecipeError(AdaptkitError, ValueError):
    """A recipe that cannot run: names the file, the key and what is wrong."""


@dataclass
class TaskSection:
    """The new task: its prompt and how its target is colour-encoded."""

    prompt: str = ""
    codec: str = "binary_mask"
    codec_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class BaseSection:
    """The frozen generalist to adapt."""

    generalist: str = "default"
    sd3: str = "stabilityai/stable-diffusion-3-medium-diffusers"
    weights: str = "Canyu/DICEPTION"
    resolution: int | None = None


@dataclass
class DataSection:
    """Where labelled pairs come from and how many of each split to draw."""

    source: Literal["folder", "hf", "coco", "synth"] = "folder"
    path: str = ""
    images: str = "images"
    targets: str = "masks"
    image_column: str = "image"
    target_column: str = "mask"
    split: str = "train"
    train_shots: int = 50
    val_shots: int = 20
    test_shots: int = 0
    categories: list[str | int] | None = None
    seed: int = 0
    hflip: bool = True
    synth_task: str = ""
    synth_resolution: int = 64


@dataclass
class AdapterSection:
    """The LoRA adapter (peft)."""

    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.0
    targets: str | list[str] = "attention"


@dataclass
class TrainSection:
    """Optimisation. `objective` picks the training target and, with it, the sampler at inference."""

    objective: Literal["flow", "single_step"] = "single_step"
    pixel_loss: bool = False
    steps: int = 1500
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-4
    warmup: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"
    gradient_checkpointing: bool = False
    seed: int = 0
    val_every: int = 100
    monitor: str = ""
    early_stop: int = 0
    devices: str | int = "auto"
    strategy: str = "auto"
    accelerator: str = "auto"


@dataclass
class InferenceSection:
    """How predictions are sampled (a single-step adapter only accepts steps 1, guidance 1)."""

    steps: int = SAMPLER_DEFAULTS["single_step"]["steps"]  # the default objective's: see TrainSection
    guidance: float = SAMPLER_DEFAULTS["single_step"]["guidance"]
    ensemble: int = SHARED_DEFAULTS["ensemble"]
    batch_size: int = SHARED_DEFAULTS["batch_size"]
    seed: int = SHARED_DEFAULTS["seed"]


@dataclass
class EvalSection:
    metrics: list[str] = field(default_factory=list)


@dataclass
class SweepSection:
    """An Optuna search over recipe keys for `adaptkit sweep`: what to vary, how to search, what to select on.

    `space` maps recipe key paths to a list of choices (`adapter.rank: [2, 4, 8]`) or a range
    (`train.lr: {low: 1e-4, high: 1e-2, log: true}`, `train.steps: {low: 100, high: 1000, step: 100}`;
    int when low, high and step are ints). `metric` defaults to the recipe's monitored metric.
    `startup_trials` sample at random and are never pruned (TPE's and the pruner's warm-up).
    """

    trials: int = 16
    metric: str = ""
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    startup_trials: int = 4
    seed: int = 0
    space: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    name: str = "adapter"
    task: TaskSection = field(default_factory=TaskSection)
    base: BaseSection = field(default_factory=BaseSection)
    data: DataSection = field(default_factory=DataSection)
    adapter: AdapterSection = field(default_factory=AdapterSection)
    train: TrainSection = field(default_factory=TrainSection)
    inference: InferenceSection = field(default_factory=InferenceSection)
    eval: EvalSection = field(default_factory=EvalSection)
    sweep: SweepSection = field(default_factory=SweepSection)
    source: str = field(default="<memory>", metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data (what `adaptkit check` prints and adapters record)."""
        data = dataclasses.asdict(self)
        data.pop("source")
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ------------------------------------------------------------------------ parsing
def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "null")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check `value` against a field annotation, converting what YAML and `key=value` can't say exactly."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        if value in args or str(value) in args:
            return str(value) if str(value) in args else value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RecipeError(f"{where}: {value!r} is not one of {_type_name(annotation)}{hint}")
    if isinstance(annotation, types.UnionType) or origin is typing.Union:
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except RecipeError:
                continue
        raise RecipeError(f"{where}: expected {_type_name(annotation)}, got {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 1e-4 (no dot) as a string
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    elif origin is list:
        if isinstance(value, list):
            return [_coerce(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
    elif origin is dict and isinstance(value, dict):
        return dict(value)
    raise RecipeError(f"{where}: expected {_type_name(annotation)}, got {value!r} ({type(value).__name__})")


def _build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, failing on unknown keys with a suggestion."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where or 'recipe'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    values = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(fields)}"
            raise RecipeError(f"{where + ': ' if where else ''}unknown key {key!r}{hint}")
        child = f"{where}.{key}" if where else key
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            values[key] = _build(annotation, value if value is not None else {}, child)
        else:
            values[key] = _coerce(value, annotation, child)
    return cls(**values)


def build_section(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Any settings dataclass from a mapping with the recipe's checks: unknown keys get a suggestion, values
    are type-checked (what `adaptkit pretrain key=value` settings go through)."""
    try:
        return _build(cls, data, "")
    except RecipeError as error:
        raise RecipeError(f"{where}: {error}" if where else str(error)) from None


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {dotted}: {key!r} is not a section")
    node[keys[-1]] = value


def _annotation_at(dotted: str) -> Any:
    """The type of the recipe field a dotted key names (None when it names no field, e.g. inside codec_args)."""
    node: Any = Recipe
    for key in dotted.split("."):
        if not dataclasses.is_dataclass(node):
            return None
        hints = typing.get_type_hints(node)
        if key not in hints:
            return None
        node = hints[key]
    return node


def parse_overrides(overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """`["train.lr=3e-4", "adapter.rank=8"]` (or a dict of dotted keys) -> a nested mapping.

    Values are read as YAML, so `8` is an int, `true` a bool and `[a, b]` a list, except for keys whose field
    is a plain string: `task.prompt=[[image2x]]` (DICEPTION's prompt syntax) stays the text typed.
    """
    items = overrides.items() if isinstance(overrides, dict) else []
    if not isinstance(overrides, dict):
        parsed = []
        for text in overrides:
            if "=" not in text:
                raise RecipeError(f"override {text!r}: expected key.path=value, e.g. train.lr=1e-4")
            key, raw = text.split("=", 1)
            key = key.strip()
            if _annotation_at(key) is str or not raw.strip():
                parsed.append((key, raw))
                continue
            try:
                parsed.append((key, yaml.safe_load(raw)))
            except yaml.YAMLError as error:
                raise RecipeError(f"override {text!r}: the value is not valid YAML ({yaml_problem(error)}); "
                                  "quote it, e.g. key='[1, 2]'") from None
        items = parsed
    nested: dict[str, Any] = {}
    for key, value in items:
        _set_path(nested, key, value)
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _validate(recipe: Recipe) -> None:
    """Values that type-check but cannot run, caught before any model is loaded."""
    where = recipe.source
    checks = [
        (bool(recipe.task.prompt.strip()), "task.prompt is empty: name the new task's prompt, e.g. '[[image2lung]]'"),
        (recipe.adapter.rank >= 1, f"adapter.rank must be >= 1, got {recipe.adapter.rank}"),
        (recipe.adapter.alpha > 0, f"adapter.alpha must be > 0, got {recipe.adapter.alpha}"),
        (0 <= recipe.adapter.dropout < 1, f"adapter.dropout must be in [0, 1), got {recipe.adapter.dropout}"),
        (recipe.data.train_shots >= 1, f"data.train_shots must be >= 1, got {recipe.data.train_shots}"),
        (recipe.data.val_shots >= 0, f"data.val_shots must be >= 0, got {recipe.data.val_shots}"),
        (recipe.data.test_shots >= -1, f"data.test_shots must be >= 0 (or -1 for all the rest), got "
                                        f"{recipe.data.test_shots}"),
        (recipe.train.steps >= 1, f"train.steps must be >= 1, got {recipe.train.steps}"),
        (recipe.train.weight_decay >= 0, f"train.weight_decay must be >= 0, got {recipe.train.weight_decay}"),
        (recipe.train.grad_clip >= 0, f"train.grad_clip must be >= 0 (0 turns clipping off), got "
                                      f"{recipe.train.grad_clip}"),
        (recipe.train.early_stop >= 0, f"train.early_stop must be >= 0 validations (0 turns it off), got "
                                       f"{recipe.train.early_stop}"),
        (recipe.train.seed >= 0, f"train.seed must be >= 0, got {recipe.train.seed}"),
        (recipe.data.seed >= 0, f"data.seed must be >= 0, got {recipe.data.seed}"),
        (recipe.data.synth_resolution >= 8, f"data.synth_resolution must be >= 8, got {recipe.data.synth_resolution}"),
        (recipe.train.batch_size >= 1, f"train.batch_size must be >= 1, got {recipe.train.batch_size}"),
        (recipe.train.grad_accum >= 1, f"train.grad_accum must be >= 1, got {recipe.train.grad_accum}"),
        (recipe.train.lr > 0, f"train.lr must be > 0, got {recipe.train.lr}"),
        (recipe.train.warmup >= 0, f"train.warmup must be >= 0, got {recipe.train.warmup}"),
        (recipe.train.val_every >= 1, f"train.val_every must be >= 1, got {recipe.train.val_every}"),
        (recipe.base.resolution is None or (16 <= recipe.base.resolution <= MAX_RESOLUTION
                                             and recipe.base.resolution % 16 == 0),
         f"base.resolution must be a multiple of 16 (patch size 2 x the VAE's factor 8) from 16 to "
         f"{MAX_RESOLUTION}, got {recipe.base.resolution}"),
        (_plain_name(recipe.name), f"name {recipe.name!r} must be a plain name (letters, digits, '-', '_', '.'; "
                                   "not starting with '.'): it names the run folder runs/NAME"),
        (recipe.data.source == "synth" or bool(recipe.data.path),
         f"data.path is empty: give the folder, Hub dataset id or COCO json for source {recipe.data.source!r}"),
        (recipe.data.source != "synth" or bool(recipe.data.synth_task),
         "data.synth_task is empty: name a held-out synthetic task, e.g. 'shadow'"),
        *((False, problem) for problem in inference_problems(recipe.inference)),
    ]
    for ok, message in checks:
        if not ok:
            raise RecipeError(f"{where}: {message}")
    _validate_targets(recipe.adapter.targets, where)
    check_placement(recipe.train.accelerator, recipe.train.strategy, recipe.train.devices, where)
    if not sampling_allowed(recipe.train.objective, recipe.inference.steps, recipe.inference.guidance):
        raise RecipeError(
            f"{where}: train.objective single_step predicts in one deterministic pass, so inference.steps must "
            f"be 1 and inference.guidance 1.0 (got {recipe.inference.steps}, {recipe.inference.guidance}); "
            "use train.objective=flow for multi-step sampling")
    if recipe.train.pixel_loss and recipe.train.objective != "single_step":
        raise RecipeError(f"{where}: train.pixel_loss decodes the single_step objective's one-pass prediction, so it "
                          f"needs train.objective single_step (got {recipe.train.objective}); drop the pixel loss "
                          "or train single_step")
    if recipe.data.source in ("folder", "coco") and not Path(recipe.data.path).expanduser().exists():
        raise RecipeError(f"{where}: data.path {recipe.data.path!r} does not exist")


def inference_problems(inference: InferenceSection) -> list[str]:
    """What is out of range in inference settings: a recipe's, or those an adapter records (checked at load)."""
    checks = [
        (inference.steps >= 1, f"inference.steps must be >= 1, got {inference.steps}"),
        (inference.ensemble >= 1, f"inference.ensemble must be >= 1, got {inference.ensemble}"),
        (inference.batch_size >= 1, f"inference.batch_size must be >= 1, got {inference.batch_size}"),
        (math.isfinite(inference.guidance) and inference.guidance >= 0,
         f"inference.guidance must be >= 0, got {inference.guidance}"),
        (inference.seed >= 0, f"inference.seed must be >= 0, got {inference.seed}"),
    ]
    return [message for ok, message in checks if not ok]


def _validate_task(recipe: Recipe) -> None:
    """What only the codec knows: its arguments build it, the objective can learn its encoding, and the
    metrics named in eval.metrics and train.monitor exist for it. Cheap (no model, no data), so mistakes
    surface at `check`."""
    from adaptkit.codecs import CodecError, build_codec
    from adaptkit.metrics import default_metric_names

    where = recipe.source
    try:
        codec = build_codec(recipe.task.codec, recipe.task.codec_args)
        default_metric_names(codec)  # it declares a metric table
    except (CodecError, ValueError) as error:
        raise RecipeError(f"{where}: task.codec: {error}") from None
    if recipe.train.objective == "single_step" and not codec.deterministic_ok:
        raise RecipeError(
            f"{where}: task.codec {recipe.task.codec} paints its targets in colours drawn at random per encoding, "
            "which train.objective single_step cannot learn: one deterministic pass predicts their blurred "
            "average. Use train.objective=flow (sampled in several steps, e.g. inference.steps=8), which draws "
            "them as DICEPTION does")
    evaluated = metric_names(codec, recipe.eval.metrics or None, f"{where}: eval.metrics")
    monitor = recipe.train.monitor
    if monitor and monitor not in evaluated:
        metric_names(codec, [monitor], f"{where}: train.monitor")  # an unknown name: lists the codec's metrics
        raise RecipeError(f"{where}: train.monitor {monitor!r} is not among the validation metrics "
                          f"({', '.join(evaluated)}); add it to eval.metrics or monitor one of them")


def metric_names(codec: Any, names: list[str] | None, key: str) -> list[str]:
    """The names `build_codec_metrics` will report for `names` (None: the codec's defaults); an unknown name is
    a RecipeError naming `key` and listing the codec's metrics."""
    from adaptkit.metrics import build_codec_metrics

    try:
        return list(build_codec_metrics(codec, names).keys())
    except (ValueError, TypeError) as error:
        raise RecipeError(f"{key}: {error}") from None
#: Above this the latent grid alone outgrows any accelerator (65536 px would ask for ~51 GB in one layer).
MAX_RESOLUTION = 4096


def _plain_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*", name))


def _require_choice(value: str, choices: list[str], key: str, where: str, what: str) -> None:
    """RecipeError naming `key` unless `value` is one of `choices` (with the closest as a suggestion)."""
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RecipeError(f"{where}: {key} {value!r} {what}; {hint}choices: {', '.join(dict.fromkeys(choices))}")


def _validate_targets(targets: str | list[str], where: str) -> None:
    presets = list(TARGET_PRESETS)
    if isinstance(targets, str):
        _require_choice(targets, presets, "adapter.targets", where,
                        "is not a preset (or give a list of layer names such as [to_q, to_v])")
    elif not targets or not all(name.strip() for name in targets):
        raise RecipeError(f"{where}: adapter.targets {targets!r} must name at least one layer; presets: "
                          f"{', '.join(presets)}, or a list of layer names such as [to_q, to_v]")


def check_placement(accelerator: str, strategy: str, devices: str | int, where: str, prefix: str = "train.") -> None:
    """The settings Lightning takes (accelerator, strategy, devices), checked against Lightning's own registries
    by name only: whether this machine has them is checked where a run starts (`check`, `train`, `predict`).
    `prefix` names them as the user wrote them: recipe keys (`train.devices`) or options (`--devices`)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    _require_choice(accelerator, ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())],
                    f"{prefix}accelerator", where, "is not known to Lightning")
    _require_choice(strategy, ["auto", "ddp", *StrategyRegistry.available_strategies()], f"{prefix}strategy",
                    where, "is not known to Lightning")
    valid = (devices == "auto" or (isinstance(devices, int) and (devices >= 1 or devices == -1))
             or (isinstance(devices, str) and re.fullmatch(r"-1|\d+|(\d+,)+\d*", devices.strip()) is not None
                 and devices.strip() != "0"))
    if not valid:
        raise RecipeError(f"{where}: {prefix}devices {devices!r} must be 'auto', a number of devices >= 1, -1 (all) "
                          "or a list of device indices such as '0,1'")


def load_recipe(path_or_name: str | Path | dict[str, Any], overrides: list[str] | dict[str, Any] | None = None,
                ) -> Recipe:
    """Read, override and validate a recipe: a YAML path, a bundled recipe name, or a mapping.

    Relative `data.path` values are resolved against the recipe file's folder (bundled recipes:
    the working directory), so a recipe and its data can travel together.
    """
    if isinstance(path_or_name, dict):
        raw, source, folder = path_or_name, "<recipe>", Path.cwd()
    else:
        path = resolve_recipe_path(path_or_name)
        source = str(path)
        raw = read_yaml(path, "recipe") or {}
        folder = Path.cwd() if path.parent == bundled_recipe_dir() else path.parent
    if overrides:
        raw = _merge(raw, parse_overrides(overrides))
    try:
        recipe = _build(Recipe, raw, "")
    except RecipeError as error:
        raise RecipeError(f"{source}: {error}") from None
    recipe.source = source
    if recipe.data.path and recipe.data.source in ("folder", "coco") and not Path(recipe.data.path).is_absolute():
        candidate = folder / recipe.data.path
        if candidate.exists() or not Path(recipe.data.path).exists():
            recipe.data.path = str(candidate)
    _validate(recipe)
    _validate_task(recipe)
    _validate_sweep(recipe, {key: value for key, value in raw.items() if key != "sweep"})
    return recipe


def recorded_recipe(record: dict[str, Any]) -> Recipe:
    """A recipe as an adapter recorded it, rebuilt as typed data but not checked against this machine.

    An adapter travels (a Hub repo, a colleague's disk): its recorded `data.path` need not exist
    here, and nothing that loads or evaluates an adapter should depend on it existing.
    """
    try:
        return _build(Recipe, record, "")
    except RecipeError as error:
        raise RecipeError(f"the recorded recipe: {error}") from None


# ------------------------------------------------------------------------ the sweep's search space
#: Keys a sweep may not vary: its trials share one loaded base, and the sweep section is the sweep itself.
UNSWEEPABLE = ("base.generalist", "base.sd3", "base.weights", "sweep.", "name")
RANGE_KEYS = {"low", "high", "step", "log"}


def recipe_key_paths(cls: type = Recipe, prefix: str = "") -> list[str]:
    """Every leaf key of a recipe as a dotted path (`train.lr`, `adapter.rank`, ...)."""
    hints = typing.get_type_hints(cls)
    paths = []
    for item in dataclasses.fields(cls):
        if item.metadata.get("internal"):
            continue
        path = f"{prefix}{item.name}"
        if dataclasses.is_dataclass(hints[item.name]):
            paths.extend(recipe_key_paths(hints[item.name], f"{path}."))
        else:
            paths.append(path)
    return paths


def space_values(spec: Any) -> list[Any]:
    """The values of one space entry a recipe must accept: every choice, or a range's ends and steps."""
    if isinstance(spec, list):
        return spec
    low, high, step = spec["low"], spec["high"], spec.get("step")
    if step and isinstance(low, int) and isinstance(high, int) and isinstance(step, int) and (high - low) // step < 100:
        return list(range(low, high + 1, step))
    return [low, high]


def _validate_sweep(recipe: Recipe, raw_without_sweep: dict[str, Any]) -> None:
    """The sweep section's own checks, then every value it can sample through the recipe's own validation.

    Fails with the space key named, so a typo or an impossible value stops the sweep before any model loads.
    """
    sweep, where = recipe.sweep, recipe.source
    if sweep.trials < 1:
        raise RecipeError(f"{where}: sweep.trials must be >= 1, got {sweep.trials}")
    if sweep.startup_trials < 0:
        raise RecipeError(f"{where}: sweep.startup_trials must be >= 0, got {sweep.startup_trials}")
    paths = [p for p in recipe_key_paths() if not p.startswith(UNSWEEPABLE)]
    for key, spec in sweep.space.items():
        at = f"{where}: sweep.space.{key}"
        if key.startswith(UNSWEEPABLE):
            raise RecipeError(f"{at}: cannot be swept (all trials share one loaded base and one sweep section)")
        if key not in paths:
            close = difflib.get_close_matches(key, paths, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else "; give a recipe key path such as train.lr"
            raise RecipeError(f"{at}: not a recipe key{hint}")
        _check_space_entry(at, spec)
        if sweep.sampler == "grid" and not isinstance(spec, list):
            raise RecipeError(f"{at}: sweep.sampler grid needs a list of choices for every key, not a range")
        for value in space_values(spec):
            try:
                candidate = _build(Recipe, _merge(raw_without_sweep, parse_overrides({key: value})), "")
                candidate.source = f"{at}: value {value!r} is rejected"
                _validate(candidate)
            except RecipeError as error:
                message = str(error)
                raise RecipeError(message if message.startswith(at) else
                                  f"{at}: value {value!r} is rejected: {message}") from None


def _check_space_entry(at: str, spec: Any) -> None:
    if isinstance(spec, list):
        if not spec:
            raise RecipeError(f"{at}: the list of choices is empty")
        for choice in spec:
            if not (choice is None or isinstance(choice, bool | int | float | str)):
                raise RecipeError(f"{at}: choice {choice!r} must be a number, string, bool or null")
        return
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - RANGE_KEYS:
        raise RecipeError(f"{at}: expected a list of choices or a range {{low: L, high: H[, step: S][, log: true]}}, "
                          f"got {spec!r}")
    numbers = {name: spec[name] for name in ("low", "high", "step") if spec.get(name) is not None}
    for name, value in numbers.items():
        if isinstance(value, str):
            try:
                spec[name] = numbers[name] = float(value)  # YAML reads 1e-4 (no dot) as a string
            except ValueError:
                raise RecipeError(f"{at}.{name}: expected a number, got {value!r}") from None
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise RecipeError(f"{at}.{name}: expected a number, got {value!r}")
    low, high, step, log = numbers["low"], numbers["high"], numbers.get("step"), spec.get("log", False)
    if not isinstance(log, bool):
        raise RecipeError(f"{at}.log: expected true or false, got {log!r}")
    if not low < high:
        raise RecipeError(f"{at}: low must be < high, got low {low} and high {high}")
    if step is not None and step <= 0:
        raise RecipeError(f"{at}.step: must be > 0, got {step}")
    if log and (step is not None or low <= 0):
        raise RecipeError(f"{at}: a log range needs low > 0 and no step")


def bundled_recipe_dir() -> Path:
    return Path(str(resources.files("adaptkit") / "recipes"))


def list_recipes() -> list[tuple[str, str]]:
    """(name, first comment line) of each bundled recipe, for `adaptkit recipes`."""
    rows = []
    for path in sorted(bundled_recipe_dir().glob("*.yaml")):
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        rows.append((path.stem, first.lstrip("# ").strip()))
    return rows


def resolve_recipe_path(path_or_name: str | Path) -> Path:
    """A YAML path, or the name of a bundled recipe (`quickstart`)."""
    path = Path(path_or_name).expanduser()
    if path.is_file():
        return path
    bundled = bundled_recipe_dir() / f"{path_or_name}.yaml"
    if bundled.is_file():
        return bundled
    names = [name for name, _ in list_recipes()]
    close = difflib.get_close_matches(str(path_or_name), names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; bundled recipes: {', '.join(names)}"
    raise RecipeError(f"recipe {str(path_or_name)!r} is neither a file nor a bundled recipe{hint}")
