"""What the command-line tools share: one-line errors and warnings (``--debug`` for the traceback)."""

from __future__ import annotations

import sys
import warnings
from typing import Callable

from .errors import MiniGPTError, MiniGPTWarning


def run_cli(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    default_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # minigpt's own warnings: one line
        if issubclass(category, MiniGPTWarning) and not debug:
            print(f"warning: {message}", file=sys.stderr)
        else:
            default_show(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        return main(argv)
    except MiniGPTError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = default_show
