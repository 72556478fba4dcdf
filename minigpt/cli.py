"""What the command-line tools share: one-line errors (``--debug`` for the traceback)."""

from __future__ import annotations

import sys
from typing import Callable

from .errors import MiniGPTError


def run_cli(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    try:
        return main(argv)
    except MiniGPTError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
