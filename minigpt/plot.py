"""python -m minigpt.plot: the command line is minigpt/cli/plot.py."""

import sys

from minigpt.cli import run_cli
from minigpt.cli.plot import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
