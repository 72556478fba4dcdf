"""python -m minigpt.export: the command line is minigpt/cli/export.py."""

import sys

from minigpt.cli import run_cli
from minigpt.cli.export import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
