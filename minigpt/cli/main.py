"""``minigpt COMMAND ...`` (or ``python -m minigpt COMMAND ...``): one entry for every command line.

``train.py`` and ``sample.py`` run the same commands; a command is looked up here and its module
imported only when it runs.
"""

from __future__ import annotations

import importlib
import sys

from ..errors import MiniGPTError
from . import command_name, run_cli

COMMANDS = {  # name -> (module with main(argv), what it does)
    "train": ("minigpt.cli.train", "pretrain a GPT or fine-tune a classifier from a TOML config (= python train.py)"),
    "sample": ("minigpt.cli.sample", "generate text from a checkpoint or a Hugging Face folder (= python sample.py)"),
    "data": ("minigpt.cli.data", "prepare a corpus (text, folders, jsonl, parquet) as token shards"),
    "tokenizer": ("minigpt.cli.tokenizer", "train a byte-level BPE tokenizer (tokenizer.json) on a corpus"),
    "classify": ("minigpt.cli.classify", "label texts with a fine-tuned classifier"),
    "evaluate": ("minigpt.cli.evaluate", "loss, perplexity and bits per byte of a language model on a text"),
    "plot": ("minigpt.cli.plot", "draw OUT_DIR/loss.png from OUT_DIR/metrics.jsonl"),
    "export": ("minigpt.cli.export", "a classifier out: a Hugging Face folder, a PEFT adapter or an ONNX file"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return ("usage: minigpt COMMAND [ARGS ...]   (or python -m minigpt COMMAND ...; --debug shows tracebacks)\n\n"
            "commands:\n" + "\n".join(lines) + "\n\n`minigpt COMMAND --help` explains each.")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        raise MiniGPTError(f"unknown command {name!r}; the commands are {', '.join(COMMANDS)} (see minigpt --help)")
    command = importlib.import_module(COMMANDS[name][0])
    with command_name(f"minigpt {name}"):
        return command.main(rest)


def entry() -> None:
    """The ``minigpt`` console script."""
    sys.exit(run_cli(main))
