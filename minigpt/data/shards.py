"""Token shards in llm.c's ``.bin`` layout: a header of 256 little-endian int32 (magic, version,
token count, then zeros) followed by the tokens, uint16 for vocabularies that fit (magic 20240520,
version 1: GPT-2's shards) and uint32 otherwise (magic 20240801, version 7: llm.c's Llama-3 shards).
Shards written by llm.c's or modded-nanogpt's FineWeb scripts read as ours do, and ours load in their tools.

A shard is written as a ``.partial`` file that grows token by token and is renamed to its final
name once full, with the count in its header, so a finished shard is never half written and a
preparation that is interrupted can continue from the partial one, after checking that the shards
it finished are still the bytes its journal recorded.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import numpy as np

from ..files import current_umask
from ..errors import MiniGPTError

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
LAYOUTS = {  # token dtype -> (magic, version), as llm.c's dev/data/data_common.py writes them
    "uint16": (20240520, 1),
    "uint32": (20240801, 7),
}


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def header(dtype: np.dtype, tokens: int) -> bytes:
    magic, version = LAYOUTS[np.dtype(dtype).name]
    values = np.zeros(HEADER_INTS, dtype="<i4")
    values[:3] = magic, version, tokens
    return values.tobytes()


def read_header(path: Path) -> tuple[np.dtype, int]:
    """(token dtype, token count) of a shard, checked against the file's size."""
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise MiniGPTError(f"{path}: {len(raw)} bytes, shorter than the {HEADER_BYTES}-byte shard header; damaged")
    magic, version, count = (int(v) for v in np.frombuffer(raw, dtype="<i4")[:3])
    layout = next((name for name, mv in LAYOUTS.items() if mv == (magic, version)), None)
    if layout is None:
        raise MiniGPTError(f"{path}: header magic {magic} version {version} is not a token shard "
                           f"(expected {LAYOUTS['uint16']} or {LAYOUTS['uint32']})")
    dtype = np.dtype(layout)
    expected = HEADER_BYTES + count * dtype.itemsize
    if path.stat().st_size != expected:
        raise MiniGPTError(f"{path}: its header counts {count:,} tokens ({expected:,} bytes) but the file has "
                           f"{path.stat().st_size:,} bytes: truncated or damaged (prepare the data again)")
    return dtype, count


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def write_failed(path: Path, err: OSError) -> MiniGPTError:
    """The one-line error for a write that failed (a full disk, a file-size limit, ...): what is finished
    stays, and the same command continues from it."""
    hint = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some of your disk quota",
            errno.EFBIG: "raise the file-size limit (ulimit -f)"}.get(err.errno, "fix the cause")
    return MiniGPTError(f"{path}: cannot write ({err.strerror or err}); the finished part is kept: {hint} and run the "
                        f"same command again to continue")


class ShardChanged(MiniGPTError):
    """A shard that a journal recorded was deleted or changed since (``what`` says which)."""

    def __init__(self, path: Path, what: str):
        super().__init__(f"{path}: {what} since the interrupted preparation recorded it in its journal; that part "
                         f"of the output is lost: start afresh with --overwrite")
        self.path, self.what = path, what


class ShardWriter:
    """One split's shards of ``shard_tokens`` tokens each: ``PREFIX_000000.bin``, ``PREFIX_000001.bin``, ...

    To continue an interrupted preparation, pass what its journal recorded: the finished shards (each is
    checked against its size and sha256) and the tokens of the partial one that were on disk (checked
    against their sha256, ``partial_sha256``, when the journal has it). A shard that was deleted or
    changed since is an error naming it: its tokens cannot be told apart from those of other input.
    A failed write (a full disk) is an error too; what the journal vouches for stays as it was.
    """

    def __init__(self, folder: Path, prefix: str, dtype: np.dtype, shard_tokens: int,
                 done: list[dict] | None = None, partial_tokens: int = 0, partial_sha256: str | None = None):
        self.folder, self.prefix, self.dtype, self.shard_tokens = folder, prefix, np.dtype(dtype), shard_tokens
        self.done: list[dict] = list(done or [])  # finished shards: {"file", "tokens", "sha256"}
        self.count = partial_tokens  # tokens in the partial shard
        self._file = None
        self._digest = hashlib.sha256()  # of the partial shard's tokens so far (the journal records it)
        for entry in self.done:
            self._check_finished(entry)
        if partial_tokens or (folder / self.partial_name).exists():
            self._open(keep=partial_tokens, keep_sha256=partial_sha256)

    @property
    def name(self) -> str:
        return f"{self.prefix}_{len(self.done):06d}.bin"

    @property
    def partial_name(self) -> str:
        return f".{self.name}.partial"

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.done) + self.count

    @property
    def partial_sha256(self) -> str:
        """sha256 of the partial shard's tokens written so far (its header excluded)."""
        return self._digest.hexdigest()

    def _check_finished(self, entry: dict) -> None:
        """A finished shard is still what the journal says: its size, then its sha256."""
        path = self.folder / entry["file"]
        if not path.is_file():
            raise ShardChanged(path, "deleted")
        size = HEADER_BYTES + entry["tokens"] * self.dtype.itemsize
        if path.stat().st_size != size:
            raise ShardChanged(path, f"changed ({path.stat().st_size:,} bytes, not {size:,})")
        if sha256(path) != entry["sha256"]:
            raise ShardChanged(path, "changed (its sha256 differs)")

    def _open(self, keep: int = 0, keep_sha256: str | None = None) -> None:
        """Open the partial shard, keeping its first ``keep`` tokens (those a journal vouches for, whose
        sha256 is ``keep_sha256`` if known)."""
        path = self.folder / self.partial_name
        self._digest = hashlib.sha256()
        if keep:
            if not path.is_file() or path.stat().st_size < HEADER_BYTES + keep * self.dtype.itemsize:
                raise ShardChanged(path, "deleted or cut short")
            with open(path, "rb") as f:  # the kept tokens, read back: the digest continues from them
                f.seek(HEADER_BYTES)
                left = keep * self.dtype.itemsize
                while left:
                    block = f.read(min(left, 1 << 24))
                    self._digest.update(block)
                    left -= len(block)
            if keep_sha256 is not None and self._digest.hexdigest() != keep_sha256:
                raise ShardChanged(path, "changed (the sha256 of its first tokens differs)")
        try:
            self._file = open(path, "r+b" if path.exists() else "w+b")
            self._file.truncate(HEADER_BYTES + keep * self.dtype.itemsize)
            if keep == 0:
                self._file.seek(0)
                self._file.write(header(self.dtype, 0))
            self._file.seek(0, os.SEEK_END)
        except OSError as err:
            self._abandon()
            raise write_failed(path, err) from None
        self.count = keep

    def _abandon(self) -> None:
        """Close the partial shard after a failed write, dropping what could not be written (the journal
        never vouched for it, so the next run cuts it off)."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # the same failure again, from flushing the buffer; the file is closed all the same
            self._file = None

    def write(self, ids: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=self.dtype)
        while len(ids):
            if self._file is None:
                self._open()
            room = self.shard_tokens - self.count
            data = ids[:room].tobytes()
            try:
                self._file.write(data)
            except OSError as err:
                self._abandon()
                raise write_failed(self.folder / self.partial_name, err) from None
            self._digest.update(data)
            self.count += min(room, len(ids))
            ids = ids[room:]
            if self.count == self.shard_tokens:
                self.finish_shard()

    def sync(self) -> None:
        """Put what was written on disk (before a journal says it is there)."""
        if self._file is not None:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as err:
                self._abandon()
                raise write_failed(self.folder / self.partial_name, err) from None

    def finish_shard(self) -> None:
        """Write the count into the header and give the partial shard its final name."""
        if self._file is None:
            return
        try:
            self._file.seek(0)
            self._file.write(header(self.dtype, self.count))
        except OSError as err:
            self._abandon()
            raise write_failed(self.folder / self.partial_name, err) from None
        self.sync()
        self._file.close()
        self._file = None
        path = self.folder / self.name
        os.chmod(self.folder / self.partial_name, 0o666 & ~current_umask())
        os.replace(self.folder / self.partial_name, path)
        self.done.append({"file": self.name, "tokens": self.count, "sha256": sha256(path)})
        self.count = 0
        self._digest = hashlib.sha256()

    def close(self) -> list[dict]:
        """Finish the last, partly filled shard; the list of finished shards."""
        if self._file is not None and self.count:
            self.finish_shard()
        elif self._file is not None:
            self._file.close()
            (self.folder / self.partial_name).unlink()
            self._file = None
        return self.done
