"""``python train.py CONFIG.toml [--key=value ...]``: pretrain a GPT or fine-tune a classifier."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from ..checkpoint import LAST
from ..config_schema import build_config, config_help
from ..train import TASKS, task_of
from ..train.loop import Distributed, Interrupted
from . import program_name

USAGE = """usage: python train.py CONFIG.toml [--key=value ...] [--resume] [--debug]
       torchrun --nproc_per_node=N train.py CONFIG.toml [...]

Train what the config's `task` key names (the tasks are below): pretrain a GPT on data prepared by
`minigpt data`, or fine-tune a text classifier on a CSV/TSV/JSONL file. Settings come from the TOML
file (flat `key = value` lines), then from --key=value overrides; a bare --flag sets a boolean to
true. An unknown key or a value of the wrong type is an error.

Writes OUT_DIR/ckpt_last.safetensors (every eval_interval steps and on Ctrl-C),
OUT_DIR/ckpt_best.safetensors (best val metric), OUT_DIR/metrics.jsonl and OUT_DIR/loss.png, and
the task's own files (below).
"""


def usage() -> str:
    """USAGE, then each registered task with its keys by section (a later task lists only keys not shown yet)."""
    text = USAGE.replace("usage: python train.py", f"usage: {program_name('python train.py')}", 1)
    shown: set[str] = set()
    for spec in TASKS.values():
        also = f"; also writes {', '.join(spec.outputs)}" if spec.outputs else ""
        more = " (more)" if shown else ""
        text += f"\ntask = \"{spec.name}\": {spec.help}{also}\n{spec.name} keys{more}:\n"
        text += config_help(spec.schema, skip=shown) + "\n"
        shown |= {f.name for f in dataclasses.fields(spec.schema)}
    return text


def main(argv: list[str]) -> int:
    if not argv or "--help" in argv or "-h" in argv:
        print(usage())
        return 0
    toml_path, overrides = (argv[0], argv[1:]) if not argv[0].startswith("-") else (None, argv)
    spec = task_of(toml_path, overrides)
    cfg = build_config(spec.schema, toml_path, overrides)
    try:
        summary = spec.run(cfg)
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
    text = spec.report(summary) if spec.report else ""
    if text:
        print(text)
    return 0
