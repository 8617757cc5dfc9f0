"""The small recipe most tests train: cast shadows of the synthetic world on the tiny generalist, in seconds.

One definition, so that a change to what every recipe needs (a new required key, say) is made once; each test
file states only what its runs need to differ in.
"""

from __future__ import annotations

import copy
from typing import Any

_SHADOW = {
    "task": {"prompt": "[[image2shadow]]", "codec": "binary_mask"},
    "base": {"generalist": "tiny"},
    "data": {"source": "synth", "synth_task": "shadow", "synth_resolution": 32},
    "adapter": {"rank": 4, "alpha": 4},
    "inference": {"batch_size": 4},
}


def shadow_recipe(name: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """The shadow recipe named `name`, each given section's keys laid over the shared ones."""
    recipe: dict[str, Any] = {"name": name, **copy.deepcopy(_SHADOW)}
    for section, values in sections.items():
        recipe[section] = {**recipe.get(section, {}), **values} if isinstance(values, dict) else values
    return recipe
