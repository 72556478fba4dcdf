"""The command-line tools: each module's ``main(argv) -> exit code`` parses, calls the library and prints.

``run_cli`` is what every entry point wraps ``main`` in: a user's mistake (``MiniGPTError``) becomes one
``error:`` line and exit code 2, minigpt's warnings one ``warning:`` line each, and the library's
progress lines (the ``minigpt`` logger) are printed without disturbing a progress bar. ``--debug``
shows tracebacks and warnings in Python's own format.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

from tqdm import tqdm

from ..errors import MiniGPTError, MiniGPTWarning


_COMMAND_NAMES: list[str] = []  # the name a dispatching command runs the current one under ("minigpt sample")


@contextmanager
def command_name(name: str) -> Iterator[None]:
    """Commands run inside this call name themselves ``name`` in usage and errors (not "sample.py")."""
    _COMMAND_NAMES.append(name)
    try:
        yield
    finally:
        _COMMAND_NAMES.pop()


def program_name(default: str) -> str:
    return _COMMAND_NAMES[-1] if _COMMAND_NAMES else default


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported as one ``error:`` line like every other user error."""

    def __init__(self, *args, **kwargs):
        if _COMMAND_NAMES:
            kwargs["prog"] = _COMMAND_NAMES[-1]
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise MiniGPTError(f"{self.prog}: {message} (see --help)")


def add_corpus_inputs(p: argparse.ArgumentParser, purpose: str) -> None:
    """``--input`` and ``--texts_of``, as corpus preparation and the tokenizer trainer both read a corpus;
    ``corpus_inputs_given`` checks that one was given."""
    p.add_argument("--input", nargs="+", metavar="PATH",
                   help="files, folders (searched recursively for .txt, .jsonl, .jsonl.gz, .parquet) or globs")
    p.add_argument("--texts_of", metavar="CONFIG",
                   help=f"the training texts (labels dropped, one document each) of a classification config, after "
                        f"those of --input if given: {purpose}. Its val and test texts are left out wherever they "
                        f"occur, --input included (at least one of --input and --texts_of is needed)")


def corpus_inputs_given(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.input is None and args.texts_of is None:
        p.error("give --input PATH ..., --texts_of CONFIG, or both")


def read_stdin() -> str:
    """Standard input as UTF-8 text, or a one-line error."""
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MiniGPTError(f"standard input: not UTF-8 text (byte {err.start}: {err.reason})") from None


class _Console(logging.Handler):
    """minigpt's log lines as plain text: information on stdout, warnings on stderr, above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(record.getMessage(), file=sys.stderr if record.levelno >= logging.WARNING else sys.stdout)


@contextmanager
def console(debug: bool = False) -> Iterator[None]:
    """Print the ``minigpt`` logger and minigpt's warnings as one line each while a command runs."""
    logger = logging.getLogger("minigpt")
    handler, level, propagate = _Console(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    default_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, MiniGPTWarning) and not debug:
            print(f"warning: {message}", file=sys.stderr)
        else:
            default_show(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = default_show
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


@contextmanager
def file_size_limit_as_error() -> Iterator[None]:
    """Past the file-size limit (``ulimit -f``) a write fails with EFBIG, which the library reports
    like a full disk, instead of SIGXFSZ killing the process (only the main thread sets handlers)."""
    if not hasattr(signal, "SIGXFSZ") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGXFSZ, previous)


def run_cli(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run a command's ``main``: a ``MiniGPTError`` becomes one ``error:`` line (exit 2), Ctrl-C one
    ``interrupted`` line (exit 130; a command that can say more catches it itself)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    with console(debug), file_size_limit_as_error():
        try:
            return main(argv)
        except MiniGPTError as err:
            if debug:
                raise
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            if debug:
                raise
            print("\ninterrupted", file=sys.stderr)
            return 130
