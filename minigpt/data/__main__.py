"""python -m minigpt.data: the command line is minigpt/cli/data.py."""

import sys

from minigpt.cli import run_cli
from minigpt.cli.data import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
