"""The generalist's built-in tasks: one table that pretraining, `builtin_task` and the synthetic world read.

A built-in task is one a DICEPTION-style generalist answers with no adapter: its prompt (looked up by
`prompt_key` in the generalist's `task_prompts`) and the codec that reads its colour output. The
names are the synthetic world's (`normals`, `point_segmentation`); `aliases` are DICEPTION's own
prompt keys where they differ, so `adaptkit eval --task normal` and `--task normals` are one task.
The headline metric is the codec's first default metric (`adaptkit.metrics.default_metric_names`).
This module imports nothing heavy: the synthetic world (numpy only) reads it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinTask:
    """One built-in task. `class_prompt`: the prompt takes a class name after a space (DICEPTION's semantic,
    `[[image2semantic]] person`), and the answer is that class's mask. `point_prompted`: the answer is the
    mask of the instance under the image's point prompts."""

    name: str
    prompt_key: str
    codec: str
    aliases: tuple[str, ...] = ()
    class_prompt: bool = False
    point_prompted: bool = False

    def prompt(self, task_prompts: Mapping[str, str], class_name: str = "") -> str:
        """The task's prompt among a generalist's `task_prompts`, with the class name for a class prompt."""
        prompt = task_prompts[self.prompt_key]
        return f"{prompt} {class_name}".strip() if self.class_prompt else prompt


BUILTIN_TASKS: dict[str, BuiltinTask] = {
    task.name: task
    for task in (
        BuiltinTask("depth", "depth", "depth"),
        BuiltinTask("normals", "normal", "normals", aliases=("normal",)),
        BuiltinTask("entity", "entity", "instances"),
        BuiltinTask("semantic", "semantic", "binary_mask", class_prompt=True),
        BuiltinTask("point_segmentation", "segmentation", "binary_mask", aliases=("segmentation",),
                    point_prompted=True),
    )
}


def find_builtin_task(name: str) -> BuiltinTask | None:
    """The built-in task called `name` or one of its aliases; None for any other name."""
    for task in BUILTIN_TASKS.values():
        if name == task.name or name in task.aliases:
            return task
    return None


def builtin_task_names() -> list[str]:
    """Every name a built-in task answers to (names and aliases), for help texts and error messages."""
    return [name for task in BUILTIN_TASKS.values() for name in (task.name, *task.aliases)]
