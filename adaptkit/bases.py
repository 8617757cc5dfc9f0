"""The base generalist by name: what a recipe's `base:`, an adapter's recorded base and `--base` resolve to.

`default` is the small generalist shipped inside adaptkit, `tiny` a small random one built from
configs, `diception` the released model (the SD3-medium base plus `DICEPTION_v1.pth`, from where
`sd3` and `weights` say), anything else an adaptkit generalist folder or Hub repo id. Train, eval,
predict, info and adapters all load their base here, so the DICEPTION-specific arguments are built
once; and `adaptkit.generalist` (the model) need not know `adaptkit.tiny` (which builds models of it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from adaptkit.generalist import GENERALIST_CONFIG_FILE, CheckpointError, Generalist, resolve_folder
from adaptkit.tiny import build_tiny_generalist

#: The small generalist adaptkit pretrains and ships (see `adaptkit.pretrain`): `load_generalist("default")`.
DEFAULT_GENERALIST_DIR = Path(__file__).parent / "assets" / "default"


def load_generalist(name: str | Path, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None, **kwargs: Any) -> Generalist:
    """The generalist a recipe or command names.

    `default`: the small generalist shipped inside adaptkit, pretrained on the synthetic world;
    `tiny`: a small random model built from configs (tests, smoke runs); `diception`: the released
    model (SD3-medium base + DICEPTION_v1.pth; `base=` and `weights=` override where they come from);
    anything else: an adaptkit generalist folder or Hub repo id.
    """
    if str(name) == "tiny":
        generalist = build_tiny_generalist()
        if not kwargs.get("load_text_encoders", True):
            generalist.prompts.drop_text_encoders()
        return generalist.to_runtime(device, dtype)
    if str(name) == "diception":
        return Generalist.from_diception(device=device, dtype=dtype, **kwargs)
    return Generalist.from_pretrained(generalist_folder(name), device=device, dtype=dtype, **kwargs)


def generalist_folder(name: str | Path) -> Path:
    """The folder of an adaptkit generalist: `default` (the embedded one), a local folder, or a Hub repo id."""
    if str(name) != "default":
        return resolve_folder(name)
    if not (DEFAULT_GENERALIST_DIR / GENERALIST_CONFIG_FILE).is_file():
        raise CheckpointError(f"the embedded default generalist is missing from {DEFAULT_GENERALIST_DIR}; "
                              "reinstall adaptkit, or build it with `adaptkit pretrain` (see the README)")
    return DEFAULT_GENERALIST_DIR


def load_base(base: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
              load_text_encoders: bool = True) -> Generalist:
    """The generalist a base description names: a recipe's `BaseSection` or an adapter's recorded base (a
    mapping with the same keys). DICEPTION comes from its `sd3` and `weights`; a recorded `resolution`
    overrides the generalist's own (an adapter runs at the resolution it was trained at)."""
    fields: Mapping[str, Any] = dataclasses.asdict(base) if dataclasses.is_dataclass(base) else base
    name = str(fields["generalist"])
    extra = {"base": fields["sd3"], "weights": fields["weights"]} if name == "diception" else {}
    generalist = load_generalist(name, device=device, dtype=dtype, load_text_encoders=load_text_encoders, **extra)
    if fields.get("resolution"):
        generalist.config.resolution = fields["resolution"]
    return generalist
