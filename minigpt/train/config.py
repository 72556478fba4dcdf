"""What every training config holds: the loop's settings (``LoopConfig``) and the model keys
(``ModelFields``, derived from ``GPTConfig`` so each architecture field is stated once).

The task-specific schemas build on these: ``PretrainConfig`` (``train/pretrain.py``) and
``ClassifyConfig`` (``train/classify.py``). A TOML file and ``--key=value`` overrides fill them
through ``minigpt.config_io.build_config``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config_io import check_choices, setting
from ..device import DEVICE_HELP, DTYPES
from ..errors import MiniGPTError
from ..model.config import RUNTIME_FIELDS, GPTConfig


@dataclass
class LoopConfig:
    """Settings every training run shares (pretraining and classification)."""

    task: str = setting("pretrain", "what to train: pretrain (a next-token LM) or classify (a text classifier)")
    out_dir: str = setting("out", "where checkpoints, metrics.jsonl and plots are written")
    resume: bool = setting(False, "continue from out_dir/ckpt_last (weights, optimizer, RNG, data order)")
    # optimisation
    batch_size: int = setting(12, "sequences per micro-batch (per process)")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step, summed over all processes")
    max_iters: int = setting(2000, "optimizer steps in total")
    learning_rate: float = setting(1e-3, "peak learning rate")
    min_lr: float = setting(1e-4, "learning rate at the end of the cosine decay")
    warmup_iters: int = setting(100, "steps of linear warmup from 0 to learning_rate")
    lr_decay_iters: int = setting(0, "steps over which the cosine decays to min_lr (0: max_iters)")
    decay_lr: bool = setting(True, "warmup + cosine schedule; false keeps learning_rate constant")
    weight_decay: float = setting(0.1, "AdamW weight decay on matrices and embeddings")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.99, "AdamW beta2")
    grad_clip: float = setting(1.0, "clip the global gradient norm to this (0: off)")
    # evaluation, logging, checkpoints
    eval_interval: int = setting(250, "evaluate and checkpoint every this many steps")
    eval_iters: int = setting(200, "batches averaged for each evaluation")
    log_interval: int = setting(10, "steps between metrics.jsonl lines")
    eval_only: bool = setting(False, "evaluate the checkpoint in out_dir and exit")
    plot: bool = setting(True, "write plots (loss.png) at the end")
    # system
    device: str = setting("auto", DEVICE_HELP)
    dtype: str = setting("auto", "auto: bf16 on capable CUDA, else fp32; float16 is for CUDA", ("auto", *DTYPES))
    compile: bool = setting(False, "torch.compile the model")
    seed: int = setting(1337, "random seed (data order, init, dropout)")
    progress: bool = setting(True, "show a progress bar (on a terminal)")

    def __post_init__(self) -> None:
        check_choices(self)  # every field declared with choices, the model keys' included
        for name in ("batch_size", "gradient_accumulation_steps", "max_iters", "eval_interval", "eval_iters", "log_interval"):
            if getattr(self, name) < 1:
                raise MiniGPTError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "warmup_iters", "lr_decay_iters"):
            if getattr(self, name) < 0:
                raise MiniGPTError(f"{name} must not be negative, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SMALL_MODEL = dict(n_layer=4, n_head=4, n_embd=128, block_size=64)  # a training config's default shape


def _model_fields() -> type:
    """A dataclass of ``GPTConfig``'s fields (type, help, choices) without the vocabulary, which comes
    from the tokenizer; the default shape is ``SMALL_MODEL`` instead of GPT-2 124M."""
    specs = [(f.name, f.type, dataclasses.field(default=SMALL_MODEL.get(f.name, f.default), metadata=f.metadata))
             for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size"]
    return dataclasses.make_dataclass("ModelFieldsBase", specs)


class ModelFields(_model_fields()):
    """The model keys of a training config."""

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The ``GPTConfig`` these keys describe, for a tokenizer of ``vocab_size`` tokens."""
        names = [f.name for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size"]
        return GPTConfig(vocab_size=vocab_size, **{n: getattr(self, n) for n in names})

    def runtime(self) -> dict[str, Any]:
        """The run-time choices of these keys (``dropout``, ``attn_backend``), for a loaded model."""
        return {name: getattr(self, name) for name in RUNTIME_FIELDS}
