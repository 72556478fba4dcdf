"""Pictures of a training run: the loss curve from ``metrics.jsonl`` (``loss.png``, also drawn by
``python -m minigpt plot OUT_DIR``) and a classifier's confusion matrix (``confusion.png``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..checkpoint import LAST
from ..errors import MiniGPTError
from ..files import read_safetensors_metadata

log = logging.getLogger(__name__)


def read_metrics(out_dir: str | Path) -> list[dict]:
    path = Path(out_dir) / "metrics.jsonl"
    if not path.is_file():
        raise MiniGPTError(f"{path} not found; it is written by train.py")
    records = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise MiniGPTError(f"{path}:{line_no}: not a JSON line") from None
    return records


def _pyplot(what: str):
    """matplotlib.pyplot on a file-only backend, or None (with a note naming ``what``) if not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning(f"note: install matplotlib (pip install 'minigpt[plot]') for {what}")
        return None
    return plt


def declared_plot(out_dir: str | Path, records: list[dict]) -> tuple[str | None, tuple[str, ...]]:
    """What the task of the run in ``out_dir`` declared for its plot, as its last checkpoint keeps it:
    (the units counted in metrics.jsonl, the metrics drawn beside the loss). A run from before tasks
    declared them (2026-12-03), or one whose checkpoint cannot be read, is read as those runs wrote
    their records: tokens or examples, and a classifier's val accuracy."""
    last = Path(out_dir) / LAST
    try:
        declared = read_safetensors_metadata(last, "minigpt").get("plot") if last.is_file() else None
    except MiniGPTError:  # the plot needs only metrics.jsonl
        declared = None
    if declared:
        return declared.get("units"), tuple(declared.get("curves", ()))
    keys = {key for record in records for key in record}
    units = next((u for u in ("tokens", "examples") if u in keys), None)
    return units, ("val_accuracy",) if "val_accuracy" in keys else ()


def plot_losses(out_dir: str | Path, units: str | None = None, curves: tuple[str, ...] | None = None) -> Path | None:
    """Train (per step) and val (per evaluation) loss against iteration, the ``units`` seen (a key of
    the records: tokens, examples) on a top axis, and each metric of ``curves`` (val accuracy) on a
    second vertical axis. Without ``units`` and ``curves`` they are read from out_dir's checkpoint
    (``declared_plot``).

    Returns the PNG path, or None (with a note) when matplotlib is not installed.
    """
    plt = _pyplot("loss.png")
    if plt is None:
        return None
    records = read_metrics(out_dir)
    if units is None and curves is None:
        units, curves = declared_plot(out_dir, records)
    # a resumed run appends; keep the last record for each (kind, iteration)
    train = {r["iter"]: r for r in records if "train_loss" in r}
    val = {r["iter"]: r for r in records if "val_loss" in r}
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    if train:
        its = sorted(train)
        ax.plot(its, [train[i]["train_loss"] for i in its], lw=0.8, alpha=0.6, label="train (batch)")
    if val:
        its = sorted(val)
        if all("train_loss_eval" in val[i] for i in its):
            ax.plot(its, [val[i]["train_loss_eval"] for i in its], "o-", ms=3, label="train (eval)")
        ax.plot(its, [val[i]["val_loss"] for i in its], "o-", ms=3, label="val")
        best = min(its, key=lambda i: val[i]["val_loss"])
        ax.annotate(f"best val {val[best]['val_loss']:.3f}", (best, val[best]["val_loss"]),
                    textcoords="offset points", xytext=(0, 12), ha="center", fontsize=8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    right = None
    for name, color in zip(curves or (), ("tab:red", "tab:purple", "tab:brown", "tab:olive")):
        its = sorted(i for i in val if name in val[i])
        if its:  # a metric other than the loss (a classifier's accuracy): its own axis on the right
            right = right or ax.twinx()
            right.plot(its, [val[i][name] for i in its], "s--", ms=3, color=color, label=name.replace("_", " "))
    if right is not None:
        right.set_ylabel(", ".join(name.replace("_", " ") for name in curves))
        right.legend(loc="center right")
    any_record = next((r for r in [*train.values(), *val.values()] if r.get("iter") and units in r), None)
    if any_record:
        per_iter = any_record[units] / any_record["iter"]
        top = ax.secondary_xaxis("top", functions=(lambda i: i * per_iter, lambda t: t / per_iter))
        top.set_xlabel(units)
    ax.set_title(Path(out_dir).name)
    fig.tight_layout()
    png = Path(out_dir) / "loss.png"
    fig.savefig(png)
    plt.close(fig)
    return png


def plot_confusion(matrix, class_names, path: str | Path, title: str = "") -> Path | None:
    """A confusion-matrix heat map with counts (rows: true class, columns: predicted)."""
    plt = _pyplot("confusion.png")
    if plt is None:
        return None
    cm = np.asarray(matrix)
    size = max(3.5, 0.9 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=120)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (r, c), n in np.ndenumerate(cm):
        ax.text(c, r, str(n), ha="center", va="center", color="white" if n > cm.max() / 2 else "black")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
