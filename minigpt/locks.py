"""One process at a time in a run folder or a prepared-data folder.

``hold_lock(folder, what)`` takes an exclusive ``fcntl.flock`` on ``folder/.minigpt.lock`` for as
long as the ``with`` block runs, and writes the holder's pid and command line into the file. A
second process that wants the same folder gets a ``MiniGPTError`` naming that pid. The kernel
drops the lock when its holder exits, however it exits (a crash, SIGKILL), so a lock file left
behind is stale by construction: the next process takes it without a word. The file itself is left
in place, because deleting it would let two processes lock two different files of the same name.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import MiniGPTError

LOCK_FILE = ".minigpt.lock"


def holder(folder: str | Path) -> str:
    """What the lock file of ``folder`` says about its holder (pid and command), or ''."""
    try:
        return (Path(folder) / LOCK_FILE).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


@contextmanager
def hold_lock(folder: str | Path, what: str) -> Iterator[Path]:
    """Hold ``folder``'s lock for the duration; ``what`` names the work in the error a second
    process gets ("training run", "data preparation"). The folder must exist."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise MiniGPTError(f"{path}: cannot create the lock file ({err.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise MiniGPTError(f"{path}: cannot lock ({err.strerror})") from None
            who = holder(folder) or "another process"
            raise MiniGPTError(f"{folder} is in use by another {what} ({who}); wait for it to end, or use another "
                               f"folder") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:200]}\n".encode("utf-8", "replace"), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same, only the holder's description is missing
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
