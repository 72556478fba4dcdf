"""Pretrain a GPT or fine-tune a classifier: python train.py configs/shakespeare_char.toml [--key=value ...]  (see --help)."""

import sys

from minigpt.cli import run_cli
from minigpt.cli.train import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
