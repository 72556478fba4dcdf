"""``python train.py CONFIG.toml [--key=value ...]``: pretrain a GPT or fine-tune a classifier."""

from __future__ import annotations

import sys
from pathlib import Path

from ..checkpoint import LAST
from ..config_schema import build_config, config_help
from ..train import ClassifyConfig, PretrainConfig, config_class, run
from ..train.loop import Distributed, Interrupted
from . import program_name

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
    if not argv or "--help" in argv or "-h" in argv:
        print(USAGE.replace("usage: python train.py", f"usage: {program_name('python train.py')}", 1)
              + "\npretraining keys (task = \"pretrain\"):\n" + config_help(PretrainConfig)
              + "\n\nclassification keys (task = \"classify\"; the model keys apply to init_from = \"scratch\"):\n"
              + config_help(ClassifyConfig, skip=PretrainConfig))
        return 0
    toml_path, overrides = (argv[0], argv[1:]) if not argv[0].startswith("-") else (None, argv)
    cfg = build_config(config_class(toml_path, overrides), toml_path, overrides)
    try:
        summary = run(cfg)
    except Interrupted as stop:
        if Distributed.from_env().master:
            print(f"\ninterrupted: saved {stop.checkpoint} at iteration {stop.iter_num}; continue with --resume",
                  file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the loop took over Ctrl-C (start-up), or in the final report
        if Distributed.from_env().master:
            saved = Path(cfg.out_dir) / LAST
            print(f"\ninterrupted: {saved} is as last saved; continue with --resume" if saved.is_file()
                  else "\ninterrupted before the first checkpoint; nothing was saved", file=sys.stderr)
        return 130
    if not Distributed.from_env().master:
        return 0
    if summary.get("loss_png"):
        print(f"loss curve: {summary['loss_png']}")
    if isinstance(cfg, ClassifyConfig) and "report_text" in summary:
        print(f"\n{summary['report_text']}")
        if summary.get("confusion_png"):
            print(f"confusion matrix: {summary['confusion_png']}")
    elif "best_val_loss" in summary:  # pretraining (a classifier's --eval_only: its log line says it all)
        print(f"done: {summary['iter_num']} iterations, val loss {summary['val_loss']:.4f} "
              f"(best {summary['best_val_loss']:.4f}), checkpoints in {summary['out_dir']}")
    return 0
