"""The training loop: AdamW with warmup + cosine decay, gradient accumulation and clipping, mixed
precision, optional torch.compile and DDP, periodic evaluation, atomic checkpoints, exact resume,
a progress bar, metrics.jsonl and a loss plot.

``train(cfg)`` is what ``train.py`` calls. Under ``torchrun`` it runs data-parallel (nccl on GPUs,
gloo on CPUs); only rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from .checkpoint import BEST, LAST, load_checkpoint, save_checkpoint
from .config import GPTConfig, LoopConfig, TrainConfig
from .data import RandomWindows, load_meta, open_tokens
from .device import autocast, keep_freed_host_memory, peak_dtype, resolve_device, resolve_dtype, seed_everything
from .errors import MiniGPTError
from .model import GPT, set_dropout
from .perf import flops_per_token, measure_matmul_peak
from .sample import load_model



class NonFiniteLoss(MiniGPTError):
    """The loss became NaN or infinite; the last good checkpoint was left untouched."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint was saved before stopping."""


def learning_rate(it: int, cfg: TrainConfig) -> float:
    """Linear warmup to learning_rate over warmup_iters, then cosine decay to min_lr by lr_decay_iters."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return cfg.min_lr
    progress = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


@dataclass
class Distributed:
    """Where this process stands in a (possibly one-process) data-parallel run."""

    enabled: bool
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Distributed":
        if int(os.environ.get("RANK", -1)) == -1:
            return cls(enabled=False)
        return cls(True, int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))


class StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step, so it can save first."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> "StopSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def batch_seed(seed: int, it: int, micro: int) -> int:
    """Seed of the batch drawn for micro-batch ``micro`` of step ``it``. Data order is a function of
    the step alone, so a resumed run draws the same windows; under DDP rank r takes micro-batches
    r·accum ... r·accum + accum - 1, so N processes see exactly the batches of one process with N
    times the accumulation."""
    return (seed * 1_000_003 + it * 10_007 + micro) % (2**63)


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def stop_requested(stop: StopSignal, ddp: Distributed, device: torch.device, at_boundary: bool) -> bool:
    """Whether to save and stop now. Under DDP the ranks agree (at log boundaries only, to keep the
    per-step path free of an extra collective), so they all stop at the same step."""
    if not ddp.enabled:
        return stop.received is not None
    if not at_boundary:
        return False
    flag = torch.tensor(float(stop.received is not None), device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


@dataclass
class Task:
    """What one kind of training brings to the shared loop; ``fit`` does everything else."""

    model: torch.nn.Module  # the plain model: what checkpoints hold
    optimizer: torch.optim.Optimizer
    batch: Callable[[int, int], tuple]  # (step, global micro-batch index) -> a batch on the device
    loss: Callable[[torch.nn.Module, tuple], torch.Tensor]  # (model to call, batch) -> mean loss
    evaluate: Callable[[torch.nn.Module], dict[str, float]]  # metrics logged at every evaluation
    score: str  # the metric that picks the best checkpoint (and drives early stopping)
    higher_is_better: bool
    meta: dict  # JSON kept in checkpoints: configs, tokenizer, labels
    units_per_step: int  # tokens (pretraining) or examples (classification) per optimizer step
    unit: str = "tok"
    flops_per_step: float | None = None  # for MFU; None hides it
    patience: int | None = None  # stop after this many evaluations without a better score
    restore_best: bool = False  # end with the weights of the best evaluation (from ckpt_best)
    banner: str = ""  # one line printed at the start


def setup_distributed(cfg: LoopConfig) -> tuple[Distributed, torch.device]:
    ddp = Distributed.from_env()
    if not ddp.enabled:
        return ddp, resolve_device(cfg.device)
    backend = "nccl" if torch.cuda.is_available() and cfg.device in ("auto", "cuda") else "gloo"
    dist.init_process_group(backend=backend)
    device = torch.device(f"cuda:{ddp.local_rank}") if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return ddp, device


def fit(task: Task, cfg: LoopConfig, ddp: Distributed, device: torch.device, dtype: torch.dtype) -> dict:
    """The one training loop: schedule, accumulation, AMP, clipping, DDP, evaluation, checkpoints
    (atomic; last and best), exact resume, SIGINT/SIGTERM, non-finite loss, progress, metrics, plot."""
    if cfg.gradient_accumulation_steps % ddp.world_size:
        raise MiniGPTError(
            f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be divisible by the number "
            f"of processes ({ddp.world_size})"
        )
    accum = cfg.gradient_accumulation_steps // ddp.world_size
    out_dir = Path(cfg.out_dir)
    raw_model, optimizer = task.model, task.optimizer
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    better = (lambda a, b: a > b) if task.higher_is_better else (lambda a, b: a < b)

    iter_num, best, bad_evals = 0, None, 0
    if cfg.resume or cfg.eval_only:
        ckpt = load_checkpoint(out_dir / LAST)
        saved = ckpt.meta.get("model_config")
        if "model_config" in task.meta and (saved is None or GPTConfig.from_dict(saved).to_dict() != task.meta["model_config"]):
            raise MiniGPTError(
                f"{ckpt.path}: checkpoint model {ckpt.meta.get('model_config')} differs from the config {task.meta['model_config']}"
            )
        ckpt.load_model(raw_model)
        if ckpt.optimizer_state() is not None and not cfg.eval_only:
            optimizer.load_state_dict(ckpt.optimizer_state())
        if ckpt.meta.get("scaler"):
            scaler.load_state_dict(ckpt.meta["scaler"])
        iter_num, best, bad_evals = ckpt.meta["iter_num"], ckpt.meta.get("best_score"), ckpt.meta.get("bad_evals", 0)
        if ddp.master:
            set_rng_state(ckpt.rng, device)
        else:  # only rank 0's dropout stream is stored; the others restart theirs deterministically
            torch.manual_seed(batch_seed(cfg.seed + ddp.rank, iter_num, 0))
    elif ddp.rank:
        torch.manual_seed(cfg.seed + ddp.rank)  # distinct dropout masks per rank

    raw_model.train()  # a backbone loaded for fine-tuning may arrive in eval mode (dropout off)
    model = raw_model
    if cfg.compile:
        model = torch.compile(model)
    if ddp.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def evaluate() -> dict[str, float]:
        model.eval()
        with torch.no_grad(), autocast(device, dtype):
            metrics = task.evaluate(model)
        model.train()
        return metrics

    def save(name: str) -> None:
        if ddp.master:
            meta = {**task.meta, "train_config": cfg.to_dict(), "iter_num": iter_num, "score_name": task.score,
                    "best_score": best, "bad_evals": bad_evals, "units_seen": iter_num * task.units_per_step,
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None}
            save_checkpoint(out_dir / name, raw_model, meta, optimizer, rng_state(device))

    def fmt(metrics: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())

    if cfg.eval_only:
        metrics = evaluate()
        if ddp.master:
            print(f"iter {iter_num}: {fmt(metrics)}")
        return {"iter_num": iter_num, **metrics}

    if device.type == "cpu":
        keep_freed_host_memory()  # each step reuses its activation memory instead of faulting it in anew
    peak = measure_matmul_peak(device, peak_dtype(device, dtype), n=1024)
    metrics_path = out_dir / "metrics.jsonl"
    units_key = "tokens" if task.unit == "tok" else "examples"
    if ddp.master:
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"{task.banner} | {task.units_per_step:,} {task.unit}/step | {device}, {str(dtype).removeprefix('torch.')}"
              + (f", {ddp.world_size} processes" if ddp.enabled else ""))

    def log(record: dict) -> None:
        if ddp.master:
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    last_metrics: dict[str, float] = {}
    stopped_early = False
    bar = tqdm(total=cfg.max_iters, initial=iter_num, desc="train", unit="step", dynamic_ncols=True,
               disable=None if cfg.progress and ddp.master else True, file=sys.stderr)  # None: only on a terminal
    resumed_at = iter_num if cfg.resume else None
    with StopSignal() as stop:
        t_last, window_steps = time.perf_counter(), 0
        while True:
            if iter_num % cfg.eval_interval == 0 and iter_num != resumed_at or iter_num == cfg.max_iters:
                last_metrics = evaluate()
                score = last_metrics[task.score]
                improved = best is None or better(score, best)
                if improved:
                    best, bad_evals = score, 0
                else:
                    bad_evals += 1
                log({"iter": iter_num, units_key: iter_num * task.units_per_step, **last_metrics})
                bar.write(f"iter {iter_num}: {fmt(last_metrics)}" + (" (best)" if improved else ""))
                if iter_num > 0:
                    save(LAST)
                    if improved:
                        save(BEST)
                if task.patience and bad_evals >= task.patience:
                    stopped_early = True
                    bar.write(f"early stop: {task.score} has not improved for {bad_evals} evaluations (best {best:.4f})")
                    break
            if iter_num >= cfg.max_iters:
                break

            lr = learning_rate(iter_num, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # a group may run at a multiple of the schedule
            step_loss = torch.zeros((), device=device)
            for micro in range(accum):
                batch = task.batch(iter_num, ddp.rank * accum + micro)
                sync_grads = not ddp.enabled or micro == accum - 1  # all-reduce once, after the last micro-batch
                with (nullcontext() if sync_grads else model.no_sync()), autocast(device, dtype):
                    loss = task.loss(model, batch) / accum
                scaler.scale(loss).backward()
                step_loss += loss.detach().float()
            if ddp.enabled:
                dist.all_reduce(step_loss, op=dist.ReduceOp.AVG)
            if not torch.isfinite(step_loss):
                last = out_dir / LAST
                raise NonFiniteLoss(
                    f"loss is {step_loss.item()} at iteration {iter_num}; stopped without saving. Last good "
                    f"checkpoint: {last if last.exists() else 'none yet'} (try a lower learning_rate or grad_clip)"
                )
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                params = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)  # batched; PyTorch loops per tensor on CPU
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            iter_num += 1
            window_steps += 1
            bar.update(1)

            if iter_num % cfg.log_interval == 0 or iter_num == cfg.max_iters:
                loss_value = step_loss.item()  # the one host sync per log interval
                elapsed = time.perf_counter() - t_last
                rate = window_steps * task.units_per_step / elapsed
                record = {"iter": iter_num, units_key: iter_num * task.units_per_step, "train_loss": loss_value,
                          "lr": lr, f"{task.unit}_per_s": rate}
                postfix = {"loss": f"{loss_value:.4f}", "lr": f"{lr:.2e}", f"{task.unit}/s": f"{rate:,.0f}"}
                if task.flops_per_step:
                    record["mfu"] = window_steps * task.flops_per_step / elapsed / (peak * ddp.world_size)
                    postfix["mfu"] = f"{record['mfu']:.0%}"
                t_last, window_steps = time.perf_counter(), 0
                log(record)
                bar.set_postfix(postfix)

            if stop_requested(stop, ddp, device, at_boundary=iter_num % cfg.log_interval == 0):
                save(LAST)
                bar.close()
                if ddp.master:
                    print(f"\ninterrupted: saved {out_dir / LAST} at iteration {iter_num}; "
                          f"continue with --resume", file=sys.stderr)
                raise Interrupted(iter_num)
    bar.close()
    if task.restore_best and (out_dir / BEST).is_file():
        if ddp.enabled:
            dist.barrier()  # rank 0 has finished writing it
        load_checkpoint(out_dir / BEST).load_model(raw_model)

    if ddp.master and cfg.plot:
        from .plot import plot_losses

        png = plot_losses(out_dir)
        if png:
            print(f"loss curve: {png}")
    return {"iter_num": iter_num, "best_score": best, "score_name": task.score, "stopped_early": stopped_early,
            **last_metrics, "out_dir": str(out_dir)}


def pretrain_task(cfg: TrainConfig, ddp: Distributed, device: torch.device) -> Task:
    """Next-token prediction on random windows of a prepared token file."""
    seed_everything(cfg.seed)  # same initial weights on every rank
    meta = load_meta(cfg.data_dir)
    train_tokens, val_tokens = open_tokens(cfg.data_dir, "train", meta), open_tokens(cfg.data_dir, "val", meta)
    if cfg.init_from:
        model = continued_model(cfg, meta, device)
        model_config = model.config
    else:
        model_config = cfg.model_config(vocab_size=meta["vocab_size"])
        model = GPT(model_config).to(device)
    block_size = model_config.block_size
    origin = f" from {cfg.init_from}" if cfg.init_from else ""
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device.type)
    tokens_per_step = cfg.batch_size * block_size * cfg.gradient_accumulation_steps

    def draw(tokens, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return RandomWindows(tokens, block_size, cfg.batch_size, device, seed).next_batch()

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        """Mean loss over eval_iters fixed batches per split (the same batches at every evaluation)."""
        losses = {}
        for split, tokens in (("train", train_tokens), ("val", val_tokens)):
            total = torch.zeros((), device=device)
            for k in range(cfg.eval_iters):
                x, y = draw(tokens, batch_seed(cfg.seed + 1, -1, ddp.rank * cfg.eval_iters + k))
                total += m(x, y)[1].float()
            if ddp.enabled:
                dist.all_reduce(total, op=dist.ReduceOp.AVG)
            losses[split] = total.item() / cfg.eval_iters
        return {"train_loss_eval": losses["train"], "val_loss": losses["val"], "val_ppl": math.exp(min(losses["val"], 50))}

    return Task(
        model=model, optimizer=optimizer,
        batch=lambda it, micro: draw(train_tokens, batch_seed(cfg.seed, it, micro)),
        loss=lambda m, batch: m(*batch)[1],
        evaluate=evaluate, score="val_loss", higher_is_better=False,
        meta={"model_config": model_config.to_dict(), "tokenizer": meta["tokenizer"]},
        units_per_step=tokens_per_step, unit="tok",
        flops_per_step=flops_per_token(model_config, model.num_parameters(non_embedding=True)) * tokens_per_step,
        banner=f"model: {model.num_parameters():,} parameters{origin} | data: {meta['train_tokens']:,} train tokens "
               f"({meta['tokenizer']['kind']}, vocab {meta['vocab_size']:,})",
    )


def continued_model(cfg: TrainConfig, meta: dict, device: torch.device) -> GPT:
    """The model of ``cfg.init_from`` (weights and architecture), checked against the prepared data."""
    model, tok = load_model(cfg.init_from, device)
    if tok.to_meta() != meta["tokenizer"]:
        raise MiniGPTError(f"init_from {cfg.init_from} uses a {tok.to_meta()['kind']} tokenizer that differs from the one "
                           f"{cfg.data_dir} was prepared with ({meta['tokenizer']['kind']}); prepare the data with the same tokenizer")
    set_dropout(model, cfg.dropout)
    return model.train()


def train(cfg: TrainConfig) -> dict:
    """Run pretraining as configured; returns a summary (iterations, best and last losses, paths)."""
    ddp, device = setup_distributed(cfg)
    try:
        summary = fit(pretrain_task(cfg, ddp, device), cfg, ddp, device, resolve_dtype(device, cfg.dtype))
    finally:
        if ddp.enabled:
            dist.destroy_process_group()
    summary["best_val_loss"] = summary.pop("best_score")
    return summary


USAGE = """usage: python train.py CONFIG.toml [--key=value ...] [--resume] [--debug]
       torchrun --nproc_per_node=N train.py CONFIG.toml [...]

Pretrain a GPT on data prepared by `python -m minigpt.data` (task = "pretrain"), or fine-tune a
text classifier on a CSV/TSV/JSONL file (task = "classify"). Settings come from the TOML file
(flat `key = value` lines), then from --key=value overrides; a bare --flag sets a boolean to true.
An unknown key or a value of the wrong type is an error.

Writes OUT_DIR/ckpt_last.safetensors (every eval_interval steps and on Ctrl-C),
OUT_DIR/ckpt_best.safetensors (best val metric), OUT_DIR/metrics.jsonl and OUT_DIR/loss.png;
classification adds OUT_DIR/report.json, report.txt and confusion.png.
"""


def main(argv: list[str]) -> int:
    """train.py: pick the task from the config (``task = "pretrain"`` or ``"classify"``), then run it."""
    from .config import ClassifyConfig, build_config, config_class, config_help

    toml_path, overrides = (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else (None, argv)
    cls = config_class(toml_path, overrides)
    if not argv or "--help" in argv or "-h" in argv:
        print(USAGE + "\npretraining keys (task = \"pretrain\"):\n" + config_help(TrainConfig)
              + "\n\nclassification keys (task = \"classify\"; the model keys apply to init_from = \"scratch\"):\n"
              + config_help(ClassifyConfig, skip=TrainConfig))
        return 0
    cfg = build_config(cls, toml_path, overrides)
    try:
        if cls is ClassifyConfig:
            from .classify import finetune

            summary = finetune(cfg)
        else:
            summary = train(cfg)
    except Interrupted:
        return 130
    if Distributed.from_env().master and "val_loss" in summary and cls is TrainConfig:
        print(f"done: {summary['iter_num']} iterations, val loss {summary['val_loss']:.4f} "
              f"(best {summary['best_val_loss']:.4f}), checkpoints in {summary['out_dir']}")
    return 0
