"""Pretraining: next-token prediction on random windows of a prepared token file, as a ``Task`` of the loop."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..config_schema import setting
from ..data.loader import Windows, load_meta, open_split
from ..data.tokenizers import document_start, same_tokenizer, tokenizer_from_meta
from ..device import check_fits, memory_errors, resolve_dtype, seed_everything
from ..errors import MiniGPTError
from ..interop.hf import HF_FAMILIES
from ..loading import load_model
from ..model.config import RUNTIME_FIELDS
from ..model.model import GPT
from .config import TASK_HELP, LoopConfig, ModelFields
from .loop import Distributed, Task, batch_seed, distributed, fit, run_folder
from .optim import optimizer_for
from .registry import TaskSpec


@dataclass
class PretrainConfig(LoopConfig, ModelFields):
    """Pretraining (``task = "pretrain"``): read from a TOML file in ``configs/``, then ``--key=value`` overrides."""

    task: str = setting("pretrain", TASK_HELP, section="run")
    data_dir: str = setting("data/tinyshakespeare/char", "prepared data folder (python -m minigpt data), or a "
                                                        "folder of llm.c GPT-2 shards", section="data")
    bos_aligned: bool = setting(False, "start every training window at a document (at the token that begins each "
                                       "document: the tokenizer's beginning of text, else its end of text)")
    verify_data: bool = setting(False, "check every token id of the data against the vocabulary before training "
                                       "(otherwise a sample is checked)")
    init_from: str = setting("scratch", "scratch (random weights), or continue pretraining from this checkpoint, "
                                        f"out_dir or Hugging Face folder ({HF_FAMILIES}; fresh optimizer); its architecture replaces "
                                        "the model keys, except the run-time ones (" + ", ".join(RUNTIME_FIELDS) + ")",
                            section="model")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task != "pretrain":
            raise MiniGPTError(f"PretrainConfig is for task 'pretrain', got {self.task!r}")
        self.model_config(vocab_size=1)  # validates the model fields, naming the bad one
        if self.init_from == "":  # the spelling of "scratch" before classification's and pretraining's were one
            self.init_from = "scratch"


def pretrain_task(cfg: PretrainConfig, ddp: Distributed, device: torch.device) -> Task:
    """The language-modelling task: model, optimizer, batches, loss and evaluation."""
    seed_everything(cfg.seed)  # same initial weights on every rank
    meta = load_meta(cfg.data_dir)
    if cfg.init_from != "scratch":
        model = continued_model(cfg, meta, device)
    else:
        config = cfg.model_config(vocab_size=meta["vocab_size"])
        check_fits(config.padded_vocab * config.n_embd * 4, f"the embedding ({config.padded_vocab:,} rows with "
                   f"pad_vocab_multiple {config.pad_vocab_multiple:,}, x n_embd {config.n_embd})", device)
        model = GPT(config).to(device)
    block_size = model.config.block_size
    check_fits(cfg.batch_size * block_size * model.config.padded_vocab * 4,
               f"a micro-batch's logits (batch_size {cfg.batch_size} x block_size {block_size} x "
               f"{model.config.padded_vocab:,} vocabulary rows, float32)", device)
    bos = document_start(tokenizer_from_meta(meta["tokenizer"])) if cfg.bos_aligned else None
    if cfg.bos_aligned and bos is None:
        raise MiniGPTError(f"bos_aligned needs a tokenizer with a token that begins documents; {cfg.data_dir} uses "
                           f"{meta['tokenizer'].get('kind')!r}")
    train_windows = Windows(open_split(cfg.data_dir, "train", meta, cfg.verify_data), block_size, device, bos)
    val_windows = Windows(open_split(cfg.data_dir, "val", meta, cfg.verify_data), block_size, device)
    optimizer = optimizer_for(model, [(model, 1.0)], cfg, device)
    tokens_per_step = cfg.batch_size * block_size * cfg.gradient_accumulation_steps

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        """Mean loss over eval_iters fixed batches per split (the same batches at every evaluation)."""
        losses = {}
        for split, windows in (("train", train_windows), ("val", val_windows)):
            total = torch.zeros((), device=device)
            for k in range(cfg.eval_iters):
                x, y = windows.batch(cfg.batch_size, batch_seed(cfg.seed + 1, -1, ddp.rank * cfg.eval_iters + k))
                total += m(x, y)[1].float()
            if ddp.enabled:
                dist.all_reduce(total, op=dist.ReduceOp.AVG)
            losses[split] = total.item() / cfg.eval_iters
        return {"train_loss_eval": losses["train"], "val_loss": losses["val"], "val_ppl": math.exp(min(losses["val"], 50))}

    origin = f" from {cfg.init_from}" if cfg.init_from != "scratch" else ""
    return Task(
        model=model, optimizer=optimizer,
        batch=lambda it, micro: train_windows.batch(cfg.batch_size, batch_seed(cfg.seed, it, micro)),
        loss=lambda m, batch: m(*batch)[1],
        evaluate=evaluate, score="val_loss", higher_is_better=False,
        meta={"model_config": model.config.to_dict(), "tokenizer": meta["tokenizer"]},
        units_per_step=tokens_per_step, unit="tok", units="tokens", flops_per_step=model.flops_per_token() * tokens_per_step,
        banner=f"model: {model.num_parameters():,} parameters{origin} | data: {len(train_windows.tokens):,} train tokens "
               f"({meta['tokenizer']['kind']}, vocab {meta['vocab_size']:,}"
               f"{'; no meta.json: read as llm.c GPT-2 shards' if meta.get('foreign') else ''})",
    )


def continued_model(cfg: PretrainConfig, meta: dict, device: torch.device) -> GPT:
    """The model of ``cfg.init_from`` (weights and architecture; the config's run-time choices),
    checked against the tokenizer the data was prepared with."""
    model, tok = load_model(cfg.init_from, device, **cfg.runtime())
    if not same_tokenizer(tok.to_meta(), meta["tokenizer"]):
        raise MiniGPTError(f"init_from {cfg.init_from} uses a {tok.to_meta()['kind']} tokenizer that differs from the one "
                           f"{cfg.data_dir} was prepared with ({meta['tokenizer']['kind']}, {meta['vocab_size']:,} tokens against "
                           f"its {tok.vocab_size:,}); prepare the data with the same tokenizer")
    return model


def train(cfg: PretrainConfig) -> dict:
    """Run pretraining as configured; returns a summary (iterations, best and last losses, paths)."""
    with run_folder(cfg, Distributed.from_env()), distributed(cfg.device) as (ddp, device):
        with memory_errors("building the model (n_layer, n_embd, the vocabulary and pad_vocab_multiple size it)"):
            task = pretrain_task(cfg, ddp, device)
        with memory_errors(f"training with batch_size={cfg.batch_size} and block_size={task.model.config.block_size}"):
            return fit(task, cfg, ddp, device, resolve_dtype(device, cfg.dtype))


def report(summary: dict) -> str:
    """The line ``minigpt train`` ends a pretraining run (or an evaluation, ``eval_only``) with."""
    return (f"done: {summary['iter_num']} iterations, val loss {summary['val_loss']:.4f} "
            f"(best {summary['best_val_loss']:.4f}), checkpoints in {summary['out_dir']}")


PRETRAIN = TaskSpec("pretrain", "a next-token language model on data prepared by `minigpt data`", PretrainConfig,
                    train, report=report)
