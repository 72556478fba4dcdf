"""python -m minigpt.tokenizer: the command line is minigpt/cli/tokenizer.py."""

import sys

from minigpt.cli import run_cli
from minigpt.cli.tokenizer import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
