"""`adaptkit.json`: an adapter's record of everything needed to use it correctly, and where it came from.

The record sits below the modules that read it (the adapter loader, the model card, the Hub push), so
each of those imports it and none imports another for it: the module graph stays acyclic. It also says
how a base is identified (`base_record`): Hub ids with the commit that was loaded, local paths as given.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adaptkit.codecs import Codec
from adaptkit.errors import AdaptkitError, FileError
from adaptkit.files import read_json
from adaptkit.generalist import GENERALIST_CONFIG_FILE, Generalist
from adaptkit.recipe import (
    InferenceSection,
    Recipe,
    RecipeError,
    TrainSection,
    build_section,
    inference_problems,
    recorded_recipe,
)

ADAPTER_META_FILE = "adaptkit.json"


class AdapterError(AdaptkitError, ValueError):
    """An adapter that cannot be built or loaded as asked: names the folder, key or module at fault."""


def is_hub_id(text: str) -> bool:
    """Whether `text` reads as a Hub repo id (`owner/name`) rather than a local path as given."""
    parts = str(text).split("/")
    return (len(parts) == 2 and all(parts) and not str(text).startswith((".", "~"))
            and not Path(str(text)).expanduser().exists())


def cached_commit(repo_id: str, filename: str) -> str | None:
    """The commit of a Hub file in the local cache (what was loaded), or None for a local path."""
    from huggingface_hub import try_to_load_from_cache

    if not is_hub_id(repo_id):
        return None
    path = try_to_load_from_cache(repo_id, filename)
    if not isinstance(path, str):
        return None
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def _versions() -> dict[str, str]:
    import diffusers
    import peft
    import transformers

    from adaptkit import __version__

    return {"adaptkit": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "peft": peft.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def base_record(base: dict[str, Any]) -> dict[str, Any]:
    """The base as it is identified anywhere: a generalist name, Hub ids with the commit that was loaded,
    local paths as given (the weight fingerprint, recorded beside it, is what load checks)."""
    name = str(base["generalist"])
    record: dict[str, Any] = {"generalist": name, "resolution": base.get("resolution")}
    if name == "diception":
        record |= {"sd3": base["sd3"], "sd3_revision": cached_commit(base["sd3"], "transformer/config.json"),
                   "weights": base["weights"], "weights_revision": cached_commit(base["weights"], "DICEPTION_v1.pth")}
    elif name not in ("default", "tiny"):
        record["revision"] = cached_commit(name, GENERALIST_CONFIG_FILE)
    return {key: value for key, value in record.items() if value is not None}


@dataclass
class AdapterMeta:
    """`adaptkit.json`: everything needed to use an adapter correctly, and to know where it came from."""

    name: str
    prompt: str
    codec: str  # what build_codec rebuilds it from: a registered name or package.module:ClassName
    codec_args: dict[str, Any]
    objective: str
    inference: dict[str, Any]
    base: dict[str, Any]
    base_fingerprint: str
    recipe: dict[str, Any]
    samples: dict[str, list[str]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    trainable_parameters: int = 0
    base_parameters: int = 0
    versions: dict[str, str] = field(default_factory=_versions)
    weights_sha256: str = ""  # of adapter_model.safetensors, checked at load ("" for adapters written before it)
    sweep: dict[str, Any] | None = None  # a sweep's best trial: study, trial number, value and parameters

    @classmethod
    def from_recipe(cls, recipe: Recipe, generalist: Generalist, codec: Codec, **extra: Any) -> AdapterMeta:
        return cls(name=recipe.name, prompt=recipe.task.prompt, codec=codec.reference, codec_args=codec.to_config(),
                   objective=recipe.train.objective, inference=recipe.to_dict()["inference"],
                   base=base_record(recipe.to_dict()["base"]), base_fingerprint=generalist.fingerprint(),
                   recipe=recipe.to_dict(), **extra)

    def save(self, folder: Path) -> None:
        (folder / ADAPTER_META_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> AdapterMeta:
        """`adaptkit.json`, refused with the reason if it is missing, not JSON, or its keys or values are wrong."""
        path = folder / ADAPTER_META_FILE
        if not path.exists():
            raise AdapterError(f"{folder} is not an adaptkit adapter folder: {ADAPTER_META_FILE} is missing")
        data = read_json(path, "adapter record")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        required = [name for name, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        problems = []
        if not isinstance(data, dict):
            problems.append(f"expected a JSON object, got {type(data).__name__}")
        else:
            if missing := [name for name in required if name not in data]:
                problems.append(f"missing key(s) {', '.join(missing)}")
            if unknown := sorted(set(data) - set(fields)):
                problems.append(f"unknown key(s) {', '.join(unknown)} (an adapter from a newer adaptkit? keys: "
                                f"{', '.join(fields)})")
            hints = typing.get_type_hints(cls)
            for name, value in data.items():
                if name in fields and not isinstance(value, kinds := _runtime_types(hints[name])):
                    problems.append(f"{name} must be a {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
            objectives = typing.get_args(typing.get_type_hints(TrainSection)["objective"])
            if data.get("objective") not in objectives:
                problems.append(f"objective {data.get('objective')!r} is not one of {', '.join(objectives)}")
        if not problems:  # what loading, eval and predict read inside the values: checked here, keys named
            problems += [message for ok, message in (
                (re.fullmatch(r"[0-9a-f]{16}", data["base_fingerprint"]) is not None,
                 f"base_fingerprint must be 16 hex digits, got {data['base_fingerprint']!r}"),
                (isinstance(data["base"].get("generalist"), str) and bool(data["base"].get("generalist")),
                 f"base.generalist must name the base, got {data['base'].get('generalist')!r}"),
                (all(isinstance(ids, list) and all(isinstance(i, str) for i in ids)
                     for ids in data.get("samples", {}).values()),
                 f"samples must map splits to lists of pair ids, got {data.get('samples')!r}"),
            ) if not ok]
        if not problems:  # the recorded settings as a recipe's are checked: what eval and predict will use
            try:
                problems += inference_problems(build_section(InferenceSection, data["inference"], "inference"))
                recorded_recipe(data["recipe"])
            except RecipeError as error:
                problems.append(str(error))
        if problems:
            raise FileError(path, "not a valid adapter record: " + "; ".join(problems),
                            "the adapter folder is damaged: copy it again or retrain")
        return cls(**data)


def _runtime_types(hint: Any) -> tuple[type, ...]:
    """The classes a value of a type hint may be: `dict[str, Any] | None` -> (dict, NoneType)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(typing.get_origin(option) or option for option in options)
