"""Training: the shared loop (``loop.fit``), its two tasks (pretraining, classification), their configs and plots.

``run(cfg)`` trains whichever task ``cfg`` is for; ``config_class`` picks the schema a TOML file follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config_schema import read_toml
from ..errors import MiniGPTError
from .classify import ClassifyConfig, finetune
from .pretrain import PretrainConfig, train

SCHEMAS = {"pretrain": PretrainConfig, "classify": ClassifyConfig}  # task -> its config schema


def config_class(toml_path: str | Path | None, overrides: Sequence[str] = ()) -> type:
    """The schema a config follows, by its task: a ``--task=`` override first, then the file's
    ``task`` key, else pretraining."""
    task = None
    for i, item in enumerate(overrides):
        if item.startswith("--task="):
            task = item.split("=", 1)[1]
        elif item == "--task" and i + 1 < len(overrides):
            task = overrides[i + 1]
    if task is None and toml_path is not None:
        task = read_toml(toml_path).get("task", "pretrain")
    if task is None:
        task = "pretrain"
    if task not in SCHEMAS:
        raise MiniGPTError(f"{toml_path or 'command line'}: task must be one of {', '.join(SCHEMAS)}; got {task!r}")
    return SCHEMAS[task]


def run(cfg: PretrainConfig | ClassifyConfig) -> dict:
    """Train as ``cfg`` says: pretraining or fine-tuning a classifier."""
    return finetune(cfg) if isinstance(cfg, ClassifyConfig) else train(cfg)
