"""The kinds of training ``minigpt train`` knows, each one ``TaskSpec``: its config schema, how it
runs, the files it writes besides the loop's, the lines printed at its end. The loop and the
command line read this table and name no task; a new kind of training is one ``register_task``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config_schema import read_toml
from ..errors import MiniGPTError


@dataclass(frozen=True)
class TaskSpec:
    """One kind of training, as ``minigpt train`` sees it."""

    name: str  # the value of the config's ``task`` key
    help: str  # one line for --help
    schema: type  # its config dataclass (a ``LoopConfig``, with the ``task`` key defaulting to ``name``)
    run: Callable[[Any], dict]  # trains as a config of ``schema`` says; returns the summary
    outputs: tuple[str, ...] = ()  # files it writes in out_dir beside the loop's (checkpoints, metrics, loss.png)
    report: Callable[[dict], str] | None = None  # the summary -> what the command prints at the end


TASKS: dict[str, TaskSpec] = {}  # name -> spec, in the order they were registered (--help lists them so)


def register_task(spec: TaskSpec) -> TaskSpec:
    """Make ``spec`` a value of the ``task`` key (replacing one of the same name)."""
    TASKS[spec.name] = spec
    return spec


def task_of(toml_path: str | Path | None, overrides: Sequence[str] = ()) -> TaskSpec:
    """The task a config is for: a ``--task=`` override first, then the file's ``task`` key, else the
    first registered (pretraining)."""
    name = None
    for i, item in enumerate(overrides):
        if item.startswith("--task="):
            name = item.split("=", 1)[1]
        elif item == "--task" and i + 1 < len(overrides):
            name = overrides[i + 1]
    if name is None and toml_path is not None:
        name = read_toml(toml_path).get("task")
    if name is None:
        name = next(iter(TASKS))
    if name not in TASKS:
        raise MiniGPTError(f"{toml_path or 'command line'}: task must be one of {', '.join(TASKS)}; got {name!r}")
    return TASKS[name]


def run(cfg) -> dict:
    """Train as ``cfg`` says, by the task its ``task`` key names."""
    if cfg.task not in TASKS:
        raise MiniGPTError(f"task must be one of {', '.join(TASKS)}; got {cfg.task!r}")
    return TASKS[cfg.task].run(cfg)
