"""python -m minigpt.classify: the command line is minigpt/cli/classify.py."""

import sys

from minigpt.cli import run_cli
from minigpt.cli.classify import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
