"""Everything a run checks before it loads a model: `adaptkit check` and `train` run the same checks.

`load_recipe` already checked each value alone; here the recipe meets what it depends on: the codec (its
metric names, through `adaptkit.metrics`), this machine (Lightning's accelerators and device counts), the data
(every chosen pair decoded, and the set checked as a whole), the base's layer width and, on a GPU, whether the
run fits its memory (`adaptkit.memory`). Values that are legal but probably not what the user meant come back as
warnings rather than errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adaptkit.codecs import Codec, build_codec
from adaptkit.data import DataSource, Sample, Splits, check_all, load_splits
from adaptkit.memory import gpu_fit_warning, recipe_shapes
from adaptkit.recipe import Recipe, RecipeError


@dataclass
class Preflight:
    """A recipe checked against its codec, machine and data: what a run needs to start."""

    codec: Codec
    source: DataSource
    splits: Splits
    samples: dict[str, list[Sample]]
    warnings: list[str] = field(default_factory=list)


def _devices_asked(devices: str | int) -> int:
    """How many devices `train.devices` asks for; 0 for 'auto' and -1 (as many as there are)."""
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return 0
    return len([index for index in text.split(",") if index]) if "," in text else int(text)


def check_machine(recipe: Recipe) -> None:
    """The accelerator exists on this machine and has as many devices as train.devices asks for."""
    check_devices(recipe.train.accelerator, recipe.train.devices, recipe.source)


def check_devices(accelerator: str, devices: str | int, where: str, prefix: str = "train.") -> None:
    """`accelerator` exists on this machine with as many devices as `devices` asks for (`prefix` names the
    settings as the user wrote them: recipe keys or command-line options)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    if accelerator in ("auto", "cpu"):
        return  # CPU "devices" are processes: any number works
    names = ["cuda", "mps"] if accelerator == "gpu" else [accelerator]
    available = [name for name in names if AcceleratorRegistry[name]["accelerator"].is_available()]
    if not available:
        raise RecipeError(f"{where}: {prefix}accelerator {accelerator!r}: no such device on this machine; "
                          "use 'auto' or 'cpu'")
    count = AcceleratorRegistry[available[0]]["accelerator"].auto_device_count()
    if _devices_asked(devices) > count:
        raise RecipeError(f"{where}: {prefix}devices {devices!r} asks for more {available[0]} devices than the "
                          f"{count} this machine has")


def suspicious(recipe: Recipe, train_images: int) -> list[str]:
    """Legal settings that are probably mistakes, as one warning each."""
    train, found = recipe.train, []
    if train.batch_size > train_images:
        found.append(f"train.batch_size {train.batch_size} is larger than the {train_images} training images: every "
                     "batch repeats images")
    if train.warmup >= train.steps:
        found.append(f"train.warmup {train.warmup} >= train.steps {train.steps}: the learning rate never leaves "
                     "its warmup")
    shapes = recipe_shapes(recipe)  # from configs only; None where the base is not on this machine
    width = shapes[0].width if shapes else None
    if width is not None and recipe.adapter.rank > width:
        found.append(f"adapter.rank {recipe.adapter.rank} is above the layer width {width} of base "
                     f"{recipe.base.generalist!r}: a rank above {width} adds parameters but no capacity")
    if shapes and (too_big := gpu_fit_warning(recipe, *shapes, train_images)):
        found.append(too_big)
    return found


def preflight(recipe: Recipe, decode: tuple[str, ...] = ("train", "val"), splits: Splits | None = None) -> Preflight:
    """Check the recipe against its codec, this machine and its data, decoding the `decode` splits: the recipe's
    own draw, or the given `splits` (ids of its data; a learning curve's subsets)."""
    codec = build_codec(recipe.task.codec, recipe.task.codec_args)
    check_machine(recipe)
    source, drawn = load_splits(recipe.data, codec)
    splits = splits or drawn
    chosen = {name: getattr(splits, name) for name in decode}
    loaded = check_all(source, [id for ids in chosen.values() for id in ids])
    samples, start = {}, 0
    for name, ids in chosen.items():
        samples[name], start = loaded[start:start + len(ids)], start + len(ids)
    return Preflight(codec, source, splits, samples, suspicious(recipe, len(splits.train)))
