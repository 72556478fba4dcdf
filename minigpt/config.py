"""Typed model configuration.

``GPTConfig`` holds the architecture; ``validate()`` runs on construction so a bad value fails
early with a message that names the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import MiniGPTError

ATTENTION_BACKENDS = ("sdpa", "manual")
ACTIVATIONS = ("gelu_tanh", "gelu")
POSITIONAL_EMBEDDINGS = ("learned", "sinusoidal")


@dataclass
class GPTConfig:
    """Architecture of a decoder-only transformer.

    The defaults are the GPT-2 124M shape (12 layers, 12 heads, 768 channels, 1024 positions,
    the 50,257-token GPT-2 vocabulary, LM head tied to the token embedding).
    """

    vocab_size: int = 50257
    block_size: int = 1024  # longest sequence the model can see
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # on embeddings, attention weights and residual branches
    bias: bool = True  # biases in Linear and LayerNorm layers (GPT-2 has them)
    pos_embedding: str = "learned"  # "learned" (GPT-2) or "sinusoidal" (Vaswani et al. 2017)
    attn_backend: str = "sdpa"  # "sdpa" (fused kernel) or "manual" (explicit softmax(QK^T/sqrt(d))V)
    tie_weights: bool = True  # LM head shares its matrix with the token embedding
    layer_norm_eps: float = 1e-5
    activation: str = "gelu_tanh"  # GPT-2's tanh approximation of GELU, or "gelu" (exact, erf form)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def validate(self) -> None:
        """Raise ``MiniGPTError`` naming the first field whose value is not usable."""
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MiniGPTError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise MiniGPTError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by GPTConfig.n_head ({self.n_head})"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise MiniGPTError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.attn_backend not in ATTENTION_BACKENDS:
            raise MiniGPTError(
                f"GPTConfig.attn_backend must be one of {ATTENTION_BACKENDS}, got {self.attn_backend!r}"
            )
        if self.pos_embedding not in POSITIONAL_EMBEDDINGS:
            raise MiniGPTError(
                f"GPTConfig.pos_embedding must be one of {POSITIONAL_EMBEDDINGS}, got {self.pos_embedding!r}"
            )
        if self.activation not in ACTIVATIONS:
            raise MiniGPTError(f"GPTConfig.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not self.layer_norm_eps > 0:
            raise MiniGPTError(f"GPTConfig.layer_norm_eps must be positive, got {self.layer_norm_eps!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GPTConfig":
        """Build a config from a plain dict; an unknown key is an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MiniGPTError(f"unknown GPTConfig key(s) {unknown}; expected some of {sorted(known)}")
        return cls(**values)


# ----------------------------------------------------------------------------- training configs


def _field(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class LoopConfig:
    """Settings every training run shares (pretraining and classification)."""

    task: str = _field("pretrain", "what to train: pretrain (next-token LM) or classify (text classifier)")
    out_dir: str = _field("out", "where checkpoints, metrics.jsonl and plots are written")
    resume: bool = _field(False, "continue from out_dir/ckpt_last (weights, optimizer, RNG, data order)")
    # optimisation
    batch_size: int = _field(12, "sequences per micro-batch (per process)")
    gradient_accumulation_steps: int = _field(1, "micro-batches per optimizer step, summed over all processes")
    max_iters: int = _field(2000, "optimizer steps in total")
    learning_rate: float = _field(1e-3, "peak learning rate")
    min_lr: float = _field(1e-4, "learning rate at the end of the cosine decay")
    warmup_iters: int = _field(100, "steps of linear warmup from 0 to learning_rate")
    lr_decay_iters: int = _field(0, "steps over which the cosine decays to min_lr (0: max_iters)")
    decay_lr: bool = _field(True, "warmup + cosine schedule; false keeps learning_rate constant")
    weight_decay: float = _field(0.1, "AdamW weight decay on matrices and embeddings")
    beta1: float = _field(0.9, "AdamW beta1")
    beta2: float = _field(0.99, "AdamW beta2")
    grad_clip: float = _field(1.0, "clip the global gradient norm to this (0: off)")
    # evaluation, logging, checkpoints
    eval_interval: int = _field(250, "evaluate and checkpoint every this many steps")
    eval_iters: int = _field(200, "batches averaged for each evaluation")
    log_interval: int = _field(10, "steps between metrics.jsonl lines")
    eval_only: bool = _field(False, "evaluate the checkpoint in out_dir and exit")
    plot: bool = _field(True, "write plots (loss.png) at the end")
    # system
    device: str = _field("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = _field("auto", "auto (bf16 on capable CUDA, else fp32), float32, bfloat16, float16 (CUDA)")
    compile: bool = _field(False, "torch.compile the model")
    seed: int = _field(1337, "random seed (data order, init, dropout)")
    progress: bool = _field(True, "show a progress bar (on a terminal)")

    def __post_init__(self) -> None:
        if self.task not in ("pretrain", "classify"):
            raise MiniGPTError(f"task must be 'pretrain' or 'classify', got {self.task!r}")
        for name in ("batch_size", "gradient_accumulation_steps", "max_iters", "eval_interval", "eval_iters", "log_interval"):
            if getattr(self, name) < 1:
                raise MiniGPTError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "warmup_iters", "lr_decay_iters"):
            if getattr(self, name) < 0:
                raise MiniGPTError(f"{name} must not be negative, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ModelFields:
    """The architecture keys of a training config (the vocabulary comes from the tokenizer)."""

    n_layer: int = _field(4, "transformer blocks")
    n_head: int = _field(4, "attention heads per block")
    n_embd: int = _field(128, "channels of the residual stream")
    block_size: int = _field(64, "context length in tokens")
    dropout: float = _field(0.0, "dropout on embeddings, attention weights and residual branches")
    bias: bool = _field(True, "biases in Linear and LayerNorm layers")
    pos_embedding: str = _field("learned", "positional embedding: learned or sinusoidal")
    attn_backend: str = _field("sdpa", "attention: sdpa (fused kernel) or manual (explicit softmax)")
    tie_weights: bool = _field(True, "tie the LM head to the token embedding")
    activation: str = _field("gelu_tanh", "MLP activation: gelu_tanh (GPT-2's) or gelu (exact; faster on some CPUs)")

    def model_config(self, vocab_size: int) -> GPTConfig:
        names = {f.name for f in dataclasses.fields(GPTConfig)} - {"vocab_size", "layer_norm_eps"}
        return GPTConfig(vocab_size=vocab_size, **{n: getattr(self, n) for n in names})


@dataclass
class TrainConfig(LoopConfig, ModelFields):
    """Pretraining (``task = "pretrain"``): read from a TOML file in ``configs/``, then ``--key=value`` overrides."""

    data_dir: str = _field("data/tinyshakespeare/char", "prepared data folder holding train.bin, val.bin, meta.json")
    init_from: str = _field("", "continue pretraining from this checkpoint or out_dir (fresh optimizer); "
                                "its architecture replaces the model keys except dropout")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task != "pretrain":
            raise MiniGPTError(f"TrainConfig is for task 'pretrain', got {self.task!r}")
        self.model_config(vocab_size=1)  # validates the model fields, naming the bad one


@dataclass
class ClassifyConfig(LoopConfig, ModelFields):
    """Fine-tuning a text classifier (``task = "classify"``); the model fields apply when training
    from scratch (``init_from = "scratch"``), otherwise the backbone's own architecture is used."""

    # data
    train_file: str = _field("", "CSV/TSV/JSONL with a text and a label column (required)")
    val_file: str = _field("", "validation file; empty: split it off train_file (see split)")
    test_file: str = _field("", "test file; empty: split it off train_file when val_file is empty too")
    format: str = _field("auto", "csv, tsv, jsonl, or auto (from the file extension)")
    header: bool = _field(True, "the first line names the columns (csv/tsv)")
    text_column: str = _field("text", "column name (or 0-based index without a header) of the text")
    label_column: str = _field("label", "column name (or 0-based index without a header) of the label")
    labels: str = _field("", "comma-separated class names in id order (default: sorted labels of the data)")
    skip_bad_rows: bool = _field(False, "skip rows with a missing text or label (counted) instead of failing")
    split: str = _field("0.7,0.1,0.2", "train,val,test fractions for a stratified split of train_file")
    split_seed: int = _field(123, "seed of the stratified split (and of downsampling)")
    balance: str = _field("none", "none, downsample (every class to the smallest before splitting), class_weights, or sampler")
    max_length: int = _field(0, "tokens per text after truncation (0: block_size)")
    truncate: str = _field("head", "keep the head (first tokens) or tail (last tokens) of a long text")
    # model
    init_from: str = _field("scratch", "scratch, a minigpt checkpoint or out_dir, or a Hugging Face GPT-2 folder")
    tokenizer: str = _field("gpt2", "for init_from=scratch: gpt2 or char (vocabulary from the training texts; other characters read as U+FFFD)")
    pooling: str = _field("last", "last, mean or first (real tokens only)")
    head_hidden: int = _field(0, "width of a hidden layer in the head (0: a single linear layer)")
    head_dropout: float = _field(0.0, "dropout before the head's output layer")
    strategy: str = _field("full", "full, head (backbone frozen), last_n (last n_last blocks + final norm), lora")
    n_last: int = _field(1, "blocks trained with strategy=last_n")
    lora_rank: int = _field(8, "LoRA rank r")
    lora_alpha: float = _field(16.0, "LoRA alpha (update scaled by alpha / r)")
    lora_dropout: float = _field(0.0, "dropout on the LoRA input")
    lora_targets: str = _field("c_attn,attn.c_proj", "comma-separated layer names to wrap with LoRA")
    head_lr_scale: float = _field(1.0, "the head learns at learning_rate x this")
    # selection
    epochs: float = _field(0.0, "if > 0, sets max_iters to this many passes over the training set")
    metric: str = _field("accuracy", "val metric for the best checkpoint and early stopping: accuracy, macro_f1, loss")
    patience: int = _field(0, "stop after this many evaluations without a better metric (0: off)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task != "classify":
            raise MiniGPTError(f"ClassifyConfig is for task 'classify', got {self.task!r}")
        self.model_config(vocab_size=1)
        choices = {"balance": ("none", "downsample", "class_weights", "sampler"), "truncate": ("head", "tail"),
                   "strategy": ("full", "head", "last_n", "lora"), "metric": ("accuracy", "macro_f1", "loss"),
                   "pooling": ("last", "mean", "first"), "tokenizer": ("gpt2", "char"), "format": ("auto", "csv", "tsv", "jsonl")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise MiniGPTError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not self.train_file:
            raise MiniGPTError("train_file is required for task 'classify'")
        try:
            fractions = [float(x) for x in self.split.split(",")]
        except ValueError:
            raise MiniGPTError(f"split must be comma-separated fractions, got {self.split!r}") from None
        if len(fractions) not in (2, 3) or abs(sum(fractions) - 1) > 1e-6:
            raise MiniGPTError(f"split must be 2 or 3 fractions summing to 1, got {self.split!r}")
        if self.patience < 0 or self.n_last < 1 or self.lora_rank < 1 or self.max_length < 0:
            raise MiniGPTError("patience must be ≥ 0 and n_last, lora_rank ≥ 1, max_length ≥ 0")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce(key: str, value: Any, tp: type, source: str) -> Any:
    """Convert ``value`` (from TOML or a CLI string) to the field's type, or explain what was expected."""
    tp = {"int": int, "float": float, "bool": bool, "str": str}.get(tp, tp) if isinstance(tp, str) else tp
    if isinstance(value, str) and tp is not str:
        text = value.strip()
        if tp is bool:
            lowered = text.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
        else:
            try:
                number = float(text) if tp is float else int(text)
            except ValueError:
                pass
            else:
                return number
        raise MiniGPTError(f"{source}: {key} expects {_type_name(tp)}, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise MiniGPTError(f"{source}: {key} expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _unknown_key(key: str, known: list[str], source: str) -> MiniGPTError:
    import difflib

    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; run with --help to list the keys"
    return MiniGPTError(f"{source}: unknown key {key!r}{hint}")


def read_toml(path) -> dict[str, Any]:
    """A TOML file as a dict; a missing file or a syntax error names the file."""
    from pathlib import Path

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    if not path.is_file():
        raise MiniGPTError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise MiniGPTError(f"{path}: not valid TOML ({err})") from None


def build_config(cls, toml_path: str | None, overrides: list[str]):
    """Read ``toml_path`` (flat ``key = value`` lines), apply ``--key=value`` overrides, validate.

    Unknown keys and values of the wrong type are errors naming the file (or "command line") and key.
    """
    from pathlib import Path

    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if toml_path is not None:
        path = Path(toml_path)
        for key, value in read_toml(path).items():
            if key not in fields:
                raise _unknown_key(key, list(fields), str(path))
            values[key] = coerce(key, value, fields[key].type, str(path))
    for item in overrides:
        if not item.startswith("--"):
            raise MiniGPTError(f"command line: expected --key=value, got {item!r}")
        key, has_value, raw = item[2:].partition("=")
        if not has_value and key in fields and fields[key].type in (bool, "bool"):
            raw = "true"  # a bare --flag switches a boolean on
        elif not has_value:
            raise MiniGPTError(f"command line: expected --key=value, got {item!r}")
        if key not in fields:
            raise _unknown_key(key, list(fields), "command line")
        values[key] = coerce(key, raw, fields[key].type, "command line")
    return cls(**values)


def config_class(toml_path: str | None, overrides: Sequence[str] = ()) -> type:
    """The schema a config follows, by its task (a ``--task=`` override first, then the file's
    ``task`` key): ``ClassifyConfig`` for "classify", else ``TrainConfig`` (pretraining)."""
    task = next((o.split("=", 1)[1] for o in overrides if o.startswith("--task=")), None)
    if task is None and toml_path is not None:
        task = read_toml(toml_path).get("task", "pretrain")
    return ClassifyConfig if task == "classify" else TrainConfig


def config_help(cls, skip=None) -> str:
    """One line per key: name, type, default and meaning (for ``--help``); keys of ``skip`` left out."""
    lines = []
    skipped = {f.name for f in dataclasses.fields(skip)} if skip else set()
    for f in dataclasses.fields(cls):
        if f.name in skipped:
            continue
        default = str(f.default).lower() if isinstance(f.default, bool) else repr(f.default)
        lines.append(f"  --{f.name}={default}".ljust(44) + f"{_type_name(f.type):<6} {f.metadata.get('help', '')}")
    return "\n".join(lines)
