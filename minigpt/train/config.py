"""What every training config holds: the loop's settings (``LoopConfig``) and the model keys
(``ModelFields``, derived from ``GPTConfig`` so each architecture field is stated once).

The task-specific schemas build on these: ``PretrainConfig`` (``train/pretrain.py``) and
``ClassifyConfig`` (``train/finetune.py``). A TOML file and ``--key=value`` overrides fill them
through ``minigpt.config_schema.build_config``.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

import torch

from ..config_schema import AT_LEAST_0, AT_LEAST_1, POSITIVE, SEEDS, UNIT, Range, check_settings, setting
from ..device import DEVICE_HELP, DTYPES
from ..errors import MiniGPTError
from ..model.config import RUNTIME_FIELDS, GPTConfig
from .optim import OPTIMIZERS

TASK_HELP = "what to train: a registered task (minigpt train --help lists them)"
SCHEDULES = ("cosine", "wsd")  # the learning-rate shapes after warmup


@dataclass
class LoopConfig:
    """Settings every training run shares (pretraining and classification)."""

    task: str = setting("", TASK_HELP, section="run")
    out_dir: str = setting("out", "where checkpoints, metrics.jsonl and plots are written")
    resume: bool = setting(False, "continue from out_dir/ckpt_last (weights, optimizer, RNG, data order)")
    overwrite: bool = setting(False, "start afresh in an out_dir that holds a run: its files make way once the new "
                                     "run has read everything it needs, and are deleted at its first checkpoint (put "
                                     "back if it fails before)")
    batch_size: int = setting(12, "sequences per micro-batch (per process)", within=AT_LEAST_1, section="optimisation")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step, summed over all processes",
                                               within=AT_LEAST_1)
    max_iters: int = setting(2000, "optimizer steps in total", within=AT_LEAST_1)
    learning_rate: float = setting(1e-3, "peak learning rate", within=POSITIVE)
    min_lr: float = setting(1e-4, "learning rate at the end of the cosine decay (at most learning_rate)", within=AT_LEAST_0)
    warmup_iters: int = setting(100, "steps of linear warmup from 0 to learning_rate", within=AT_LEAST_0)
    lr_decay_iters: int = setting(0, "steps over which the cosine decays to min_lr (0: max_iters)", within=AT_LEAST_0)
    decay_lr: bool = setting(True, "warmup + cosine schedule; false keeps learning_rate constant")
    lr_schedule: str = setting("cosine", "after warmup: cosine (decay all along to min_lr) or wsd (hold, then decay "
                                         "linearly to min_lr over the last decay_fraction of the steps)", SCHEDULES)
    decay_fraction: float = setting(0.2, "wsd: the share of the steps (of lr_decay_iters) spent decaying",
                                    within=Range(0, 1, low_open=True))
    optimizer: str = setting("adamw", "adamw: every parameter on AdamW; muon: the blocks' weight matrices on Muon "
                                      "(muon_lr), the rest on AdamW (learning_rate)", OPTIMIZERS)
    muon_lr: float = setting(0.02, "Muon's peak learning rate (scaled by sqrt(max(1, rows/cols)) per matrix)",
                             within=POSITIVE)
    muon_momentum: float = setting(0.95, "Muon's Nesterov momentum", within=UNIT)
    muon_weight_decay: float = setting(0.0, "Muon's decoupled weight decay", within=AT_LEAST_0)
    weight_decay: float = setting(0.1, "AdamW weight decay on matrices and embeddings", within=AT_LEAST_0)
    beta1: float = setting(0.9, "AdamW beta1", within=UNIT)
    beta2: float = setting(0.99, "AdamW beta2", within=UNIT)
    grad_clip: float = setting(1.0, "clip the global gradient norm to this (0: off)", within=AT_LEAST_0)
    eval_interval: int = setting(250, "evaluate and checkpoint every this many steps", within=AT_LEAST_1,
                                 section="evaluation, logging, checkpoints")
    eval_iters: int = setting(200, "batches averaged for each evaluation", within=AT_LEAST_1)
    log_interval: int = setting(10, "steps between metrics.jsonl lines", within=AT_LEAST_1)
    eval_only: bool = setting(False, "evaluate the checkpoint in out_dir and exit")
    plot: bool = setting(True, "write plots (loss.png) at the end")
    device: str = setting("auto", DEVICE_HELP, section="system")
    dtype: str = setting("auto", "auto: bf16 on capable CUDA, else fp32; float16 is for CUDA", ("auto", *DTYPES))
    compile: str = setting("auto", "torch.compile the model (auto: on CUDA under Linux)", ("auto", "true", "false"))
    tf32: bool = setting(True, "on CUDA, let float32 matmuls use TF32 tensor cores (about 8x faster on an A100)")
    seed: int = setting(1337, "random seed (data order, init, dropout)", within=SEEDS)
    progress: bool = setting(True, "show a progress bar (on a terminal)")

    def __post_init__(self) -> None:
        check_settings(self)  # every field of the final schema: types, choices, ranges, the model keys' included
        if self.min_lr > self.learning_rate:
            raise MiniGPTError(f"min_lr ({self.min_lr:g}) must not exceed learning_rate ({self.learning_rate:g}): "
                               f"the cosine would climb instead of decaying")
        if not self.out_dir:
            raise MiniGPTError("out_dir is empty; name a folder for the checkpoints")
        if self.resume and self.overwrite:
            raise MiniGPTError("resume and overwrite exclude each other: continue the run in out_dir, or replace it")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def compiles(self, device: torch.device) -> bool:
        """Whether to torch.compile: as asked, or by default on CUDA under Linux (where Triton is)."""
        if self.compile == "auto":
            return device.type == "cuda" and sys.platform.startswith("linux")
        return self.compile == "true"


# a training config's default shape; the vocabulary is padded to a multiple of 64 rows by default
SMALL_MODEL = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, pad_vocab_multiple=64)


def _model_fields() -> type:
    """A dataclass of ``GPTConfig``'s fields (type, help, choices) without the vocabulary, which comes
    from the tokenizer; the default shape is ``SMALL_MODEL`` instead of GPT-2 124M."""
    specs = [(f.name, f.type, dataclasses.field(default=SMALL_MODEL.get(f.name, f.default),
                                                metadata={**f.metadata, "section": "model"}))
             for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size"]
    return dataclasses.make_dataclass("ModelFieldsBase", specs)


class ModelFields(_model_fields()):
    """The model keys of a training config."""

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The ``GPTConfig`` these keys describe, for a tokenizer of ``vocab_size`` tokens."""
        names = [f.name for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size"]
        return GPTConfig(vocab_size=vocab_size, **{n: getattr(self, n) for n in names})

    def runtime(self) -> dict[str, Any]:
        """The run-time choices of these keys (``RUNTIME_FIELDS``), for a loaded model."""
        return {name: getattr(self, name) for name in RUNTIME_FIELDS}
