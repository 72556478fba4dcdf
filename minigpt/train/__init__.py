"""Training: the shared loop (``loop.fit``) and the tasks registered with it (``registry``):
pretraining and classification here, any other through ``register_task``.

``run(cfg)`` trains whichever task ``cfg`` is for; ``task_of`` picks the task (and so the schema) a
TOML file follows.
"""

from __future__ import annotations

from .finetune import CLASSIFY, ClassifyConfig, finetune
from .pretrain import PRETRAIN, PretrainConfig, train
from .registry import TASKS, TaskSpec, register_task, run, task_of

for _spec in (PRETRAIN, CLASSIFY):
    register_task(_spec)

__all__ = ["TASKS", "TaskSpec", "register_task", "run", "task_of", "PretrainConfig", "ClassifyConfig", "train",
           "finetune"]
