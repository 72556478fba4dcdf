"""python -m minigpt.evaluate: the command line is minigpt/cli/evaluate.py."""

import sys

from minigpt.cli import run_cli
from minigpt.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
