"""Generate text: python sample.py --ckpt OUT_DIR --prompt "..."  (see --help)."""

import sys

from minigpt.cli import run_cli
from minigpt.cli.sample import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
