"""The training loop both tasks share: AdamW (or Muon + AdamW, ``optim.py``) on a warmup + cosine or
warmup-stable-decay schedule, gradient accumulation and clipping, mixed precision, optional
torch.compile and DDP, periodic evaluation, atomic checkpoints (last and best), exact resume, one
run per folder, ``--overwrite`` that keeps the old run until the new one has a checkpoint,
SIGINT/SIGTERM, a progress bar, metrics.jsonl and a loss plot.

A task (pretraining, classification, any registered one) brings a ``Task``: its model and optimizer,
how to draw a batch for a step, its loss, its evaluation, what its metrics are called and the files
it writes. ``fit`` does everything else; nothing here names a task. Under
``torchrun`` the run is data-parallel (nccl on GPUs, gloo on CPUs); only rank 0 writes files.
Progress lines go to the ``minigpt`` logger (the command-line tools print them).
"""

from __future__ import annotations

import gc
import inspect
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..checkpoint import BEST, LAST, Checkpoint, load_checkpoint, save_checkpoint
from ..files import output_dir, remove_stale_temporaries
from ..data.tokenizers import same_tokenizer
from ..device import (autocast, configure_matmul_precision, keep_freed_host_memory, peak_dtype, process_group_backend,
                      resolve_device)
from ..errors import MiniGPTError
from ..locks import LOCK_FILE, hold_lock
from ..model.config import GPTConfig
from ..perf import datasheet_peak, measure_matmul_peak
from .config import LoopConfig
from .plots import plot_losses
from .registry import TASKS

log = logging.getLogger(__name__)


LOOP_FILES = (LAST, BEST, "metrics.jsonl", "loss.png")  # what the loop writes in out_dir; a task adds its outputs


def run_files() -> tuple[str, ...]:
    """The files a run leaves in out_dir: the loop's and those any registered task declares (a folder
    that held a classifier and is overwritten by pretraining keeps no stale report). They decide
    whether a folder holds a run, and what --overwrite sets aside."""
    declared = [name for spec in TASKS.values() for name in spec.outputs]
    return LOOP_FILES + tuple(dict.fromkeys(n for n in declared if n not in LOOP_FILES))


class NonFiniteLoss(MiniGPTError):
    """The loss, an evaluation or the weights became NaN or infinite; no checkpoint was written over."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; ``checkpoint`` was saved at iteration ``iter_num`` before stopping."""

    def __init__(self, iter_num: int, checkpoint: Path):
        super().__init__(f"interrupted at iteration {iter_num}; saved {checkpoint}")
        self.iter_num, self.checkpoint = iter_num, checkpoint


def learning_rate(it: int, cfg: LoopConfig) -> float:
    """Linear warmup to learning_rate over warmup_iters, then down to min_lr by lr_decay_iters: along
    a cosine (``lr_schedule = "cosine"``), or held and then decayed linearly over the last
    decay_fraction of the steps (``"wsd"``: warmup, stable, decay)."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return cfg.min_lr
    if cfg.lr_schedule == "wsd":
        decay_start = decay_iters - cfg.decay_fraction * decay_iters
        if it < decay_start:
            return cfg.learning_rate
        return cfg.learning_rate + (it - decay_start) / (decay_iters - decay_start) * (cfg.min_lr - cfg.learning_rate)
    progress = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def batch_seed(seed: int, it: int, micro: int) -> int:
    """Seed of the batch drawn for micro-batch ``micro`` of step ``it``. Data order is a function of
    the step alone, so a resumed run draws the same windows; under DDP rank r takes micro-batches
    r·accum ... r·accum + accum - 1, so N processes see exactly the batches of one process with N
    times the accumulation."""
    return (seed * 1_000_003 + it * 10_007 + micro) % (2**63)


# ----------------------------------------------------------------------------- processes and signals


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


@contextmanager
def distributed(device_name: str) -> Iterator[tuple[Distributed, torch.device]]:
    """This process's place in the run and its device; under torchrun, a process group for the duration."""
    ddp = Distributed.from_env()
    if not ddp.enabled:
        yield ddp, resolve_device(device_name)
        return
    backend = process_group_backend(device_name)
    device = torch.device(f"cuda:{ddp.local_rank}") if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":  # first: NCCL's communicator is then built on this process's own GPU
        torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, device_id=device)
    else:
        dist.init_process_group(backend=backend)
    try:
        yield ddp, device
    finally:
        dist.destroy_process_group()


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


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ----------------------------------------------------------------------------- the loop


@dataclass
class Task:
    """What one kind of training brings to the shared loop; ``fit`` does everything else."""

    model: torch.nn.Module  # the plain model: what checkpoints hold
    optimizer: torch.optim.Optimizer
    batch: Callable[[int, int], tuple]  # (step, global micro-batch index) -> a batch on the device
    loss: Callable[[torch.nn.Module, tuple], torch.Tensor]  # (model to call, batch) -> mean loss
    evaluate: Callable[[torch.nn.Module], dict[str, float]]  # (model to call, in eval mode) -> metrics
    score: str  # the metric that picks the best checkpoint (and drives early stopping)
    higher_is_better: bool
    meta: dict  # JSON kept in checkpoints: configs, tokenizer, labels
    units_per_step: int  # tokens (pretraining) or examples (classification) per optimizer step
    unit: str = "tok"  # their short name, for rates: tok/s
    units: str = "tokens"  # their name in metrics.jsonl and on loss.png's top axis
    curves: tuple[str, ...] = ()  # evaluation metrics loss.png draws beside the loss, on their own axis
    flops_per_step: float | None = None  # for MFU; None hides it
    patience: int | None = None  # stop after this many evaluations without a better score
    restore_best: bool = False  # end with the weights of the best evaluation (from ckpt_best)
    banner: str = ""  # one line logged at the start
    same_on_resume: tuple[str, ...] = ()  # keys of ``meta`` a resumed checkpoint must agree on (beyond the model's)


SET_ASIDE = ".replaced"  # where --overwrite keeps the old run until the new one has saved its first checkpoint


class OldRun:
    """The files of the run that ``--overwrite`` replaces, moved into ``out/.replaced/`` (a rename, no
    copy) when the new run starts, and deleted once it has saved its first checkpoint. Until then
    any failure puts them back (``restore``), so a mistyped setting that only shows once training
    begins costs nothing; a run killed before then has them put back by the next start."""

    def __init__(self, out: Path, files: tuple[str, ...]):
        self.out, self.folder, self.files = out, out / SET_ASIDE, files

    def set_aside(self) -> None:
        self.folder.mkdir(exist_ok=True)
        for name in self.files:
            if (self.out / name).exists():
                os.replace(self.out / name, self.folder / name)

    def pending(self) -> bool:
        return self.folder.is_dir()

    def discard(self) -> None:
        if self.pending():
            shutil.rmtree(self.folder)

    def restore(self) -> list[str]:
        """Remove what the new run wrote and put the old files back; returns their names."""
        if not self.pending():
            return []
        for name in self.files:
            (self.out / name).unlink(missing_ok=True)
        names = sorted(p.name for p in self.folder.iterdir())
        for name in names:
            os.replace(self.folder / name, self.out / name)
        self.folder.rmdir()
        return names


def prepare_out_dir(cfg: LoopConfig, ddp: Distributed) -> Path:
    """Check out_dir before a run reads or writes anything, so no run is lost to a forgotten flag.

    A folder that holds a run is continued (``resume``) or replaced (``overwrite``: by ``fit``, once
    everything the new run needs has been read), never silently written over; ``resume`` and
    ``eval_only`` need its ckpt_last. An old run that a killed ``--overwrite`` had set aside is put
    back, and temporary files that a killed run left behind are removed. The caller holds the lock.
    """
    out, files = Path(cfg.out_dir), run_files()
    if ddp.master and not cfg.eval_only:
        output_dir(out)
        restored = OldRun(out, files).restore()
        if restored:
            log.info(f"{out}: put back the run that an interrupted --overwrite had set aside ({', '.join(restored)})")
        remove_stale_temporaries(out, files)
    held = [name for name in files if (out / name).exists()]
    if cfg.resume or cfg.eval_only:
        if not (out / LAST).is_file():
            also = f" (it holds {', '.join(held)})" if held else ""
            raise MiniGPTError(f"{out}: no {LAST} to {'resume from' if cfg.resume else 'evaluate'}{also}")
    elif held and not cfg.overwrite:
        raise MiniGPTError(f"{out} already holds a run ({', '.join(held)}); continue it with --resume, "
                           f"or replace it with --overwrite")
    return out


@contextmanager
def run_folder(cfg: LoopConfig, ddp: Distributed) -> Iterator[Path]:
    """out_dir, checked (``prepare_out_dir``) and locked against a second run for as long as this one
    lasts (rank 0 holds the lock; an evaluation only reads, and takes none)."""
    if not ddp.master or cfg.eval_only:
        yield prepare_out_dir(cfg, ddp)
        return
    created = not Path(cfg.out_dir).exists()
    try:
        with hold_lock(output_dir(cfg.out_dir), "training run"):
            yield prepare_out_dir(cfg, ddp)
    except BaseException:
        out = Path(cfg.out_dir)
        if created and out.is_dir() and [p.name for p in out.iterdir()] == [LOCK_FILE]:
            (out / LOCK_FILE).unlink()  # a run that failed before writing anything leaves no folder behind
            out.rmdir()
        raise


def dotted(meta: dict, key: str):
    """``meta["a"]["b"]`` for the key "a.b" (None where a level is missing)."""
    for part in key.split("."):
        meta = meta.get(part) if isinstance(meta, dict) else None
    return meta


def check_resumable(ckpt: Checkpoint, meta: dict, max_iters: int, same: tuple[str, ...] = ()) -> None:
    """A checkpoint to resume must have the config's architecture (run-time choices may differ),
    tokenizer and values of the ``same`` keys of ``meta`` (a classifier's labels, head, lengths),
    and stop short of max_iters."""
    ckpt.require("iter_num")
    if "model_config" in meta:
        ckpt.require("model_config")
        differences = GPTConfig.from_dict(ckpt.meta["model_config"]).differences(GPTConfig.from_dict(meta["model_config"]))
        if differences:
            raise MiniGPTError(f"{ckpt.path}: the checkpoint's architecture differs from the config's "
                               f"(checkpoint != config): {'; '.join(differences)}")
    if "tokenizer" in meta and not same_tokenizer(ckpt.meta.get("tokenizer"), meta["tokenizer"]):
        kinds = (ckpt.meta.get("tokenizer") or {}).get("kind"), meta["tokenizer"].get("kind")
        raise MiniGPTError(f"{ckpt.path}: the checkpoint was trained with another tokenizer ({kinds[0]}) than the data "
                           f"reads with ({kinds[1]}{', another vocabulary' if kinds[0] == kinds[1] else ''}); "
                           f"resume on the data it was trained on")
    for key in same:  # a dotted key looks inside: "head.pooling"
        theirs, ours = dotted(ckpt.meta, key), dotted(meta, key)
        if theirs != ours:
            raise MiniGPTError(f"{ckpt.path}: the checkpoint's {key} differs from the config's (checkpoint != config): "
                               f"{theirs!r} != {ours!r}; resume with the settings it was trained with")
    if ckpt.meta["iter_num"] >= max_iters:
        raise MiniGPTError(f"{ckpt.path} is at iteration {ckpt.meta['iter_num']} and max_iters is {max_iters}: "
                           f"nothing left to train; raise max_iters to continue")


def all_finite(model: torch.nn.Module) -> bool:
    """Whether every weight is finite (one host sync)."""
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


class Run:
    """The state of one training run of a ``Task``: counters, the wrapped model, the grad scaler.

    ``fit`` drives it: ``restore`` (on resume), ``start``, then ``evaluate_and_checkpoint`` and
    ``step`` until done, then ``finish``.
    """

    def __init__(self, task: Task, cfg: LoopConfig, ddp: Distributed, device: torch.device, dtype: torch.dtype):
        if cfg.gradient_accumulation_steps % ddp.world_size:
            raise MiniGPTError(f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be divisible "
                               f"by the number of processes ({ddp.world_size})")
        self.task, self.cfg, self.ddp, self.device, self.dtype = task, cfg, ddp, device, dtype
        self.accum = cfg.gradient_accumulation_steps // ddp.world_size  # micro-batches per process
        self.out_dir = Path(cfg.out_dir)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.model = task.model  # what is called: compiled and DDP-wrapped by start()
        self.iter_num, self.best, self.best_iter, self.bad_evals = 0, None, None, 0
        self.resumed_at: int | None = None  # no evaluation again at the step a resumed run starts from
        self.last_metrics: dict[str, float] = {}
        self.peak = float("nan")
        self.bar: tqdm | None = None
        self.old_run = OldRun(self.out_dir, run_files())  # set aside by --overwrite until the first checkpoint
        self._window_start = (0, time.perf_counter())  # (iteration, time) the throughput is measured from
        self._warm = False  # the process's first step (compilation, allocation) is behind it

    # --------------------------------------------------------------------------- before the first step

    def restore(self) -> None:
        """Continue from out_dir/ckpt_last: weights, optimizer moments, grad scaler, counters, RNG."""
        ckpt = load_checkpoint(self.out_dir / LAST)
        if self.cfg.eval_only:
            ckpt.require("iter_num")
        else:
            check_resumable(ckpt, self.task.meta, self.cfg.max_iters, self.task.same_on_resume)
        ckpt.load_model(self.task.model)
        if ckpt.optimizer_state() is not None and not self.cfg.eval_only:
            settings = [{k: v for k, v in g.items() if k != "params"} for g in self.task.optimizer.param_groups]
            try:
                self.task.optimizer.load_state_dict(ckpt.optimizer_state())
            except ValueError as e:  # torch: a different number or size of parameter groups
                raise MiniGPTError(f"{ckpt.path}: its optimizer state does not fit this run's parameter groups ({e}); "
                                   f"resume with the settings it was trained with (optimizer, strategy, "
                                   f"layer_lr_decay) or start again with --overwrite") from None
            for group, setting in zip(self.task.optimizer.param_groups, settings):
                group.update(setting)  # the moments come back; rates and decay are this run's config (torch keeps the saved)
        if ckpt.meta.get("scaler"):
            self.scaler.load_state_dict(ckpt.meta["scaler"])
        self.iter_num, self.best = ckpt.meta["iter_num"], ckpt.meta.get("best_score")
        self.best_iter, self.bad_evals = ckpt.meta.get("best_iter"), ckpt.meta.get("bad_evals", 0)
        self.resumed_at = self.iter_num
        if self.ddp.master:
            set_rng_state(ckpt.rng, self.device)
        else:  # only rank 0's dropout stream is stored; the others restart theirs deterministically
            torch.manual_seed(batch_seed(self.cfg.seed + self.ddp.rank, self.iter_num, 0))

    def start(self) -> None:
        """Wrap the model (DDP, then compile), set the matmul precision, measure the matmul peak for
        MFU, log the banner."""
        if not self.cfg.resume and self.ddp.rank:
            torch.manual_seed(self.cfg.seed + self.ddp.rank)  # distinct dropout masks per rank
        self.task.model.train()  # a backbone loaded for fine-tuning arrives in eval mode (dropout off)
        configure_matmul_precision(self.device, self.cfg.tf32)
        if self.ddp.enabled:
            # DDP first, then compile: the compiled graph then leaves room for DDP's bucketed all-reduce
            # to overlap the backward pass. No buffer needs broadcasting (none is trained), and the
            # gradients live in DDP's buckets instead of being copied into them.
            DDP = torch.nn.parallel.DistributedDataParallel
            # no buffer sync in forward: forward_sync_buffers in newer torch (broadcast_buffers is deprecated there)
            no_buffer_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters \
                else "broadcast_buffers"
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.model, device_ids=device_ids, gradient_as_bucket_view=True, **{no_buffer_sync: False})
        if self.cfg.compiles(self.device):
            self.model = torch.compile(self.model)
        if self.device.type == "cpu":
            keep_freed_host_memory()  # each step reuses its activation memory instead of faulting it in anew
        self.measure_peak()
        if self.ddp.master:
            processes = f", {self.ddp.world_size} processes" if self.ddp.enabled else ""
            log.info(f"{self.task.banner} | {self.task.units_per_step:,} {self.task.unit}/step | {self.device}, "
                     f"{str(self.dtype).removeprefix('torch.')}{processes}")
        self.bar = tqdm(total=self.cfg.max_iters, initial=self.iter_num, desc="train", unit="step",
                        dynamic_ncols=True, file=sys.stderr,
                        disable=None if self.cfg.progress and self.ddp.master else True)  # None: only on a terminal

    def measure_peak(self) -> None:
        """The measured matmul peak (the best seen so far), for ``mfu_measured`` on a GPU and ``mfu`` on
        a CPU. Measured at the start; on a CPU again at every evaluation (a millisecond matmul there),
        so a peak read while a shared machine was busy (too low: MFU past 100%) is replaced by a truer
        one. A GPU's (seconds of 8192² matmuls) is measured once."""
        if math.isfinite(self.peak) and self.device.type != "cpu":
            return
        self.peak = max(self.peak if math.isfinite(self.peak) else 0.0,
                        measure_matmul_peak(self.device, peak_dtype(self.device, self.dtype)))

    # --------------------------------------------------------------------------- evaluation and checkpoints

    def due_for_evaluation(self) -> bool:
        return (self.iter_num % self.cfg.eval_interval == 0 and self.iter_num != self.resumed_at
                or self.iter_num == self.cfg.max_iters)

    def evaluate(self) -> dict[str, float]:
        """The task's metrics, with the model in eval mode and gradients off."""
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.dtype):
            metrics = self.task.evaluate(self.model)
        self.model.train()
        return metrics

    def evaluate_and_checkpoint(self) -> bool:
        """Evaluate, log, save last (from the first step on) and best (from iteration 0 on); True when
        patience has run out. Nothing is saved unless the evaluation and the weights are finite."""
        self.last_metrics = self.evaluate()
        self.measure_peak()
        self.log_record({"iter": self.iter_num, self.task.units: self.units_seen, **self.last_metrics})
        self.check_finite(f"the evaluation gave {format_metrics(self.last_metrics)}",
                          all(math.isfinite(v) for v in self.last_metrics.values()))
        score = self.last_metrics[self.task.score]
        improved = self.best is None or (score > self.best if self.task.higher_is_better else score < self.best)
        if improved:
            self.best, self.best_iter, self.bad_evals = score, self.iter_num, 0
        else:
            self.bad_evals += 1
        if self.ddp.master:
            log.info(f"iter {self.iter_num}: {format_metrics(self.last_metrics)}" + (" (best)" if improved else ""))
        if self.iter_num > 0:
            self.save(LAST)
        if improved:
            self.save_best()
        if self.task.patience and self.bad_evals >= self.task.patience:
            if self.ddp.master:
                log.info(f"early stop: {self.task.score} has not improved for {self.bad_evals} evaluations "
                         f"(best {self.best:.4f})")
            return True
        return False

    def check_finite(self, what: str, finite: bool) -> None:
        """Stop (saving nothing) unless ``finite`` and every weight is finite."""
        if finite and all_finite(self.task.model):
            return
        last = self.out_dir / LAST
        raise NonFiniteLoss(
            f"at iteration {self.iter_num} {what if not finite else 'the weights are no longer finite'}; stopped "
            f"without saving. Last good checkpoint: {last if last.exists() else 'none yet'} "
            f"(try a lower learning_rate or grad_clip)")

    def save(self, name: str) -> None:
        if not self.ddp.master:
            return
        meta = {**self.task.meta, "train_config": self.cfg.to_dict(), "iter_num": self.iter_num,
                "score_name": self.task.score, "best_score": self.best, "best_iter": self.best_iter,
                "bad_evals": self.bad_evals, "plot": {"units": self.task.units, "curves": list(self.task.curves)},
                "units_seen": self.units_seen, "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None}
        try:
            save_checkpoint(self.out_dir / name, self.task.model, meta, self.task.optimizer, rng_state(self.device))
        except OSError as err:  # disk full, a file-size limit: the previous checkpoint is still whole
            raise MiniGPTError(f"{self.out_dir / name}: cannot write the checkpoint at iteration {self.iter_num} "
                               f"({err.strerror or err}); the previous one is left as it was") from None
        self.old_run.discard()  # the run --overwrite replaced is gone once the new one has a checkpoint

    def save_best(self) -> None:
        """ckpt_best: a hard link to ckpt_last when that was just written at this iteration (the same
        bytes: a second write of a GPU-sized checkpoint costs as long as the first), else a save."""
        if not self.ddp.master:
            return
        last, best = self.out_dir / LAST, self.out_dir / BEST
        if self.iter_num > 0 and last.is_file():
            link = best.with_name(f".{BEST}.link")
            try:
                link.unlink(missing_ok=True)
                os.link(last, link)
                os.replace(link, best)  # atomic; the next ckpt_last is a new file, so this one stays as it is
                return
            except OSError:  # a file system without hard links: write it
                link.unlink(missing_ok=True)
        self.save(BEST)

    # --------------------------------------------------------------------------- one optimizer step

    def step(self) -> None:
        """Accumulate gradients over this process's micro-batches, clip, and take one AdamW step.

        The next micro-batch is drawn while the accelerator still works on this one's forward pass
        (the host copy overlaps it), and the loss is read back only at log_interval: no host sync per
        step. A non-finite loss is therefore caught at the next log line; no checkpoint can take
        its weights, since every save checks them first."""
        lr = learning_rate(self.iter_num, self.cfg)
        for group in self.task.optimizer.param_groups:
            # a group may run at a multiple of the schedule; Muon's follow its shape from muon_lr
            peak = self.cfg.muon_lr / self.cfg.learning_rate if group.get("muon") else 1.0
            group["lr"] = lr * peak * group.get("lr_scale", 1.0)
        step_loss = torch.zeros((), device=self.device)
        first = self.ddp.rank * self.accum
        batch = self.task.batch(self.iter_num, first)
        for micro in range(self.accum):
            last_micro = micro == self.accum - 1  # DDP all-reduces the gradients once, after the last one
            with (nullcontext() if not self.ddp.enabled or last_micro else self.model.no_sync()), \
                    autocast(self.device, self.dtype):
                loss = self.task.loss(self.model, batch) / self.accum
            batch = None if last_micro else self.task.batch(self.iter_num, first + micro + 1)  # prefetch
            self.scaler.scale(loss).backward()
            step_loss += loss.detach().float()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.task.optimizer)
            params = [p for g in self.task.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip, foreach=True)  # batched; PyTorch loops per tensor on CPU
        self.scaler.step(self.task.optimizer)
        self.scaler.update()
        # under DDP the gradients are views into its all-reduce buckets (gradient_as_bucket_view): zeroed in
        # place they stay so, and backward writes straight into the buckets; elsewhere None frees them
        self.task.optimizer.zero_grad(set_to_none=not self.ddp.enabled)
        self.iter_num += 1
        self.bar.update(1)
        if not self._warm:  # compilation and first allocations are not throughput: the window starts after them
            self._warm = True
            freeze_heap()
            self.start_window()
        self.log_step(step_loss, lr)

    def log_step(self, step_loss: torch.Tensor, lr: float) -> None:
        """At each log_interval: a metrics.jsonl line (loss, lr, throughput, MFU) and the bar's postfix."""
        if self.iter_num % self.cfg.log_interval and self.iter_num != self.cfg.max_iters:
            return
        if self.ddp.enabled:
            dist.all_reduce(step_loss, op=dist.ReduceOp.AVG)
        loss = step_loss.item()  # the one host sync per log interval
        if not math.isfinite(loss):
            last = self.out_dir / LAST
            raise NonFiniteLoss(
                f"loss is {loss} at iteration {self.iter_num}; stopped without saving. Last good "
                f"checkpoint: {last if last.exists() else 'none yet'} (try a lower learning_rate or grad_clip)"
            )
        now = time.perf_counter()
        steps, elapsed = self.iter_num - self._window_start[0], now - self._window_start[1]
        self._window_start = (self.iter_num, now)
        record = {"iter": self.iter_num, self.task.units: self.units_seen, "train_loss": loss, "lr": lr}
        postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}"}
        if steps == 0:  # the window holds only the first step, which compiled: no throughput to report
            record["warmup"] = True
        else:
            record.update(self.throughput(steps, elapsed))
            unit = self.task.unit
            postfix[f"{unit}/s"] = f"{record[f'{unit}_per_s']:,.0f}"
            if "mfu" in record:
                postfix["mfu"] = f"{record['mfu']:.0%}"
        self.log_record(record)
        self.bar.set_postfix(postfix)

    def throughput(self, steps: int, elapsed: float) -> dict[str, float]:
        """Units per second over ``steps`` steps in ``elapsed`` seconds, and MFU: against the GPU's
        datasheet peak where the table knows it (``mfu``, what nanoGPT and nanochat print, with
        ``mfu_measured`` beside it), else against the matmul peak measured here (the CPU)."""
        out = {f"{self.task.unit}_per_s": steps * self.task.units_per_step / elapsed}
        if self.task.flops_per_step:
            achieved = steps * self.task.flops_per_step / elapsed / self.ddp.world_size  # FLOP/s per process
            datasheet = datasheet_peak(self.device, peak_dtype(self.device, self.dtype))
            out["mfu"] = achieved / (datasheet or self.peak)
            if datasheet:
                out["mfu_measured"] = achieved / self.peak
        return out

    def start_window(self) -> None:
        """Start timing throughput from now (at the start, after the first step, after each evaluation)."""
        self._window_start = (self.iter_num, time.perf_counter())

    # --------------------------------------------------------------------------- bookkeeping

    @property
    def units_seen(self) -> int:
        return self.iter_num * self.task.units_per_step

    def log_record(self, record: dict) -> None:
        if not self.ddp.master:
            return
        try:
            with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:
            raise MiniGPTError(f"{self.out_dir / 'metrics.jsonl'}: cannot append at iteration {self.iter_num} "
                               f"({err.strerror or err})") from None

    def finish(self, stopped_early: bool) -> dict:
        """Close the bar, restore the best weights if the task asks, plot; returns the run's summary."""
        self.bar.close()
        if self.task.restore_best and (self.out_dir / BEST).is_file():
            if self.ddp.enabled:
                dist.barrier()  # rank 0 has finished writing it
            load_checkpoint(self.out_dir / BEST).load_model(self.task.model)
        png = plot_losses(self.out_dir, self.task.units, self.task.curves) if self.ddp.master and self.cfg.plot else None
        return {"iter_num": self.iter_num, f"best_{self.task.score}": self.best, "best_iter": self.best_iter,
                "score_name": self.task.score, "stopped_early": stopped_early, **self.last_metrics,
                "out_dir": str(self.out_dir), "loss_png": png}


def format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def fit(task: Task, cfg: LoopConfig, ddp: Distributed, device: torch.device, dtype: torch.dtype) -> dict:
    """Train ``task`` as ``cfg`` says; returns a summary (iterations, best score, last metrics, paths).

    Raises ``Interrupted`` after saving when SIGINT/SIGTERM arrives, and ``NonFiniteLoss`` (saving
    nothing) when the loss stops being finite.
    """
    run = Run(task, cfg, ddp, device, dtype)
    if cfg.resume or cfg.eval_only:
        run.restore()
    if cfg.eval_only:
        return evaluate_only(run)
    if cfg.overwrite and ddp.master:
        run.old_run.set_aside()  # everything the task needs is read: the old run makes way
    try:
        return train_run(run)
    except BaseException:
        run.old_run.restore()  # no-op once the new run has saved a checkpoint
        raise


def evaluate_only(run: Run) -> dict:
    """``eval_only``: the metrics of the checkpoint in out_dir, nothing written."""
    metrics = run.evaluate()
    if run.ddp.master:
        log.info(f"iter {run.iter_num}: {format_metrics(metrics)}")
    return {"iter_num": run.iter_num, f"best_{run.task.score}": run.best, "best_iter": run.best_iter,
            "score_name": run.task.score, "eval_only": True, **metrics, "out_dir": str(run.out_dir)}


def freeze_heap() -> None:
    """After the first step: move every object alive now (modules, the compiled graphs, the data index:
    hundreds of thousands once torch is imported) into the collector's permanent generation, so a
    full collection no longer walks them all (bench/gc_pause.py measures it). Collection stays on."""
    gc.collect()
    gc.freeze()


def train_run(run: Run) -> dict:
    """Train to max_iters (or early stopping); SIGINT/SIGTERM save ckpt_last and raise ``Interrupted``."""
    try:
        return train_steps(run)
    finally:
        gc.unfreeze()  # a process that goes on (a notebook, the tests) collects those objects again


def train_steps(run: Run) -> dict:
    cfg, ddp, device = run.cfg, run.ddp, run.device
    run.start()
    stopped_early = False
    with StopSignal() as stop:
        run.start_window()
        while True:
            if run.due_for_evaluation():
                if run.evaluate_and_checkpoint():
                    stopped_early = True
                    break
                run.start_window()  # evaluation and checkpoints are not training throughput
            if run.iter_num >= cfg.max_iters:
                break
            run.step()
            if stop_requested(stop, ddp, device, at_boundary=run.iter_num % cfg.log_interval == 0):
                run.check_finite("", True)
                run.save(LAST)
                run.bar.close()
                raise Interrupted(run.iter_num, run.out_dir / LAST)
    return run.finish(stopped_early)
