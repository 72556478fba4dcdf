"""Prepared data for training and evaluation: ``meta.json``, a split's token shards, random windows.

A split is read as one sequence over its shards. Nothing is memory-mapped: each window is read
with ``os.pread`` from a file kept open, so the trainer's resident memory does not grow with the
corpus, however many batches it draws (nanoGPT issue #287). Three layouts are read:

- minigpt's shards (``train_000000.bin`` ..., listed in meta.json; llm.c's header layout);
- shards written by llm.c's or modded-nanogpt's FineWeb scripts (``*_train_*.bin``, ``*_val_*.bin``)
  in a folder without meta.json, read as GPT-2 tokens;
- the single ``train.bin`` / ``val.bin`` files of earlier minigpt versions (raw tokens), one shard each.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_path, plain_file_name, read_json
from ..errors import MiniGPTError
from .shards import HEADER_BYTES, LAYOUTS, read_header, sha256
from .tokenizers import GPT2Tokenizer, tokenizer_from_meta

TOKEN_DTYPES = tuple(LAYOUTS)
SAMPLE_CHUNKS, CHUNK_TOKENS = 64, 1 << 14  # the ids checked when a split is opened: 64 runs of 16 K spread over it
SCAN_TOKENS = 1 << 24  # tokens read at a time when a whole shard is scanned
INDEX_DIR = ".index"  # beside the shards: where each shard's document starts are kept once scanned


@dataclass(frozen=True)
class Shard:
    path: Path
    offset: int  # bytes before the first token (the header)
    tokens: int


def load_meta(data_dir: str | Path) -> dict:
    """The description of a prepared data folder: its meta.json, checked key by key, or one made up
    for a folder of llm.c GPT-2 shards that has none."""
    data_dir = Path(data_dir)
    meta_path = data_dir / "meta.json"
    if not meta_path.is_file():
        return _foreign_meta(data_dir)
    meta = read_json(meta_path)
    if not isinstance(meta, dict):
        raise MiniGPTError(f"{meta_path}: not a JSON object; prepare the data again")
    for key in ("tokenizer", "vocab_size", "dtype"):
        if key not in meta:
            raise MiniGPTError(f"{meta_path}: missing key {key!r}")
    if meta["dtype"] not in TOKEN_DTYPES:
        raise MiniGPTError(f"{meta_path}: dtype {meta['dtype']!r} is not one of {', '.join(TOKEN_DTYPES)}")
    if not _whole(meta["vocab_size"], 1):
        raise MiniGPTError(f"{meta_path}: vocab_size {meta['vocab_size']!r} is not a positive integer")
    try:
        tokenizer = tokenizer_from_meta(meta["tokenizer"])
    except MiniGPTError as err:
        raise MiniGPTError(f"{meta_path}: {err}") from None
    if tokenizer.vocab_size > meta["vocab_size"]:
        raise MiniGPTError(f"{meta_path}: vocab_size {meta['vocab_size']:,} is smaller than its tokenizer's "
                           f"{tokenizer.vocab_size:,} tokens; prepare the data again")
    if "splits" in meta:
        _check_splits(meta["splits"], meta_path)
    return meta


def _whole(value, low: int) -> bool:
    """An int (not a bool) of at least ``low``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_splits(splits, meta_path: Path) -> None:
    """meta.json's list of shards: for train and val, files named plainly (inside the folder) with
    their token counts and, optionally, sha256."""
    for split in ("train", "val"):
        shards = splits.get(split, {}).get("shards") if isinstance(splits, dict) and isinstance(splits.get(split), dict) \
            else None
        if not isinstance(shards, list):
            raise MiniGPTError(f"{meta_path}: splits.{split}.shards is missing or not a list; prepare the data again")
        for i, entry in enumerate(shards):
            where = f"{meta_path}: splits.{split}.shards[{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not _whole(entry.get("tokens"), 0):
                raise MiniGPTError(f"{where} must be an object with a 'file' name and a whole number of 'tokens', "
                                   f"got {entry!r}")
            if not plain_file_name(entry["file"]):
                raise MiniGPTError(f"{where}: file {entry['file']!r} is not a plain file name in the folder")
            if not isinstance(entry.get("sha256", ""), str):
                raise MiniGPTError(f"{where}: sha256 must be a hex string, got {entry['sha256']!r}")


OUR_SHARD = re.compile(r"(train|val)_\d{6}\.bin")  # how minigpt names its shards
PREPARATION_STATE = (".prepare.json", ".staging")  # a minigpt preparation in progress or interrupted


def _foreign_meta(data_dir: Path) -> dict:
    """A folder without meta.json is read as llm.c's or modded-nanogpt's GPT-2 shards
    (``PREFIX_train_000001.bin``) only when it holds nothing of a minigpt preparation, whose shards
    without their meta.json could be of any tokenizer."""
    ours = [p.name for p in data_dir.iterdir() if OUR_SHARD.fullmatch(p.name) or p.name.endswith(".partial")
            or p.name in PREPARATION_STATE] if data_dir.is_dir() else []
    if ours:
        raise MiniGPTError(f"{data_dir}: no meta.json, but it holds a minigpt preparation ({', '.join(sorted(ours)[:3])}"
                           f"{', ...' if len(ours) > 3 else ''}) that did not finish or was damaged; run its "
                           f"python -m minigpt data command again to finish it (or prepare afresh with --overwrite)")
    if _foreign_shards(data_dir, "train"):
        return {"tokenizer": GPT2Tokenizer().to_meta(), "vocab_size": 50257, "dtype": "uint16", "foreign": True}
    raise MiniGPTError(f"{data_dir}: no meta.json; prepare the data first: python -m minigpt data --input TEXT --out {data_dir}")


def _foreign_shards(data_dir: Path, split: str) -> list[Path]:
    """llm.c's shards of ``split``: ``PREFIX_train_000001.bin`` (a prefix before the split's name)."""
    if not data_dir.is_dir():
        return []
    return sorted(p for p in data_dir.glob(f"*_{split}_*.bin") if p.is_file() and not OUR_SHARD.fullmatch(p.name))


class TokenShards:
    """One split's tokens as one sequence over its shard files, read on demand."""

    def __init__(self, shards: list[Shard], dtype: np.dtype, name: str):
        self.shards, self.dtype, self.name = shards, np.dtype(dtype), name
        self.starts = np.cumsum([0] + [s.tokens for s in shards])  # global index of each shard's first token
        self._files: dict[int, int] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __del__(self) -> None:
        for fd in getattr(self, "_files", {}).values():
            os.close(fd)

    def read_shard(self, index: int, start: int, length: int) -> np.ndarray:
        """``length`` tokens of shard ``index`` from its token ``start``."""
        shard = self.shards[index]
        if index not in self._files:
            self._files[index] = os.open(shard.path, os.O_RDONLY)
        size = self.dtype.itemsize
        data = os.pread(self._files[index], length * size, shard.offset + start * size)
        if len(data) != length * size:
            raise MiniGPTError(f"{shard.path}: ends before token {start + length:,}; it changed or was truncated")
        return np.frombuffer(data, dtype=self.dtype)

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the whole split, across shard boundaries."""
        parts, end = [], start + length
        while start < end:
            index = int(np.searchsorted(self.starts, start, side="right")) - 1
            stop = min(end, int(self.starts[index + 1]))
            parts.append(self.read_shard(index, start - int(self.starts[index]), stop - start))
            start = stop
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def check_ids(self, vocab_size: int, everything: bool = False) -> None:
        """Every id below ``vocab_size``: all of them, or SAMPLE_CHUNKS runs spread over each shard."""
        for index, shard in enumerate(self.shards):
            n = shard.tokens
            if everything or n <= SAMPLE_CHUNKS * CHUNK_TOKENS:
                runs = [(s, min(n, s + SCAN_TOKENS)) for s in range(0, n, SCAN_TOKENS)]
            else:
                step = (n - CHUNK_TOKENS) // (SAMPLE_CHUNKS - 1)
                runs = [(i * step, i * step + CHUNK_TOKENS) for i in range(SAMPLE_CHUNKS)]
            for begin, end in runs:
                ids = self.read_shard(index, begin, end - begin)
                if ids.size and int(ids.max()) >= vocab_size:
                    where = begin + int(np.argmax(ids >= vocab_size))
                    raise MiniGPTError(f"{shard.path}: token {where:,} has id {int(ids[where - begin])}, outside the "
                                       f"vocabulary of {vocab_size:,}; the file does not belong to this meta.json "
                                       f"(prepare the data again)")

    def positions_of(self, token: int, index: int) -> np.ndarray:
        """Where ``token`` occurs in shard ``index``: scanned in pieces once, then read from the index
        kept beside the shard (``.index/``), so later runs and each DDP rank do not scan every shard
        again. The index names the shard's size and modification time; a changed shard is scanned anew."""
        shard = self.shards[index]
        path = Path(shard.path)
        saved = path.parent / INDEX_DIR / f"{path.name}.{token}.npy"
        stat = path.stat()
        stamp = np.array([stat.st_size, stat.st_mtime_ns, shard.offset, shard.tokens], dtype=np.int64)
        try:
            kept = np.load(saved)
            if kept.dtype == np.int64 and kept.ndim == 1 and len(kept) >= 4 and np.array_equal(kept[:4], stamp):
                return kept[4:]
        except (OSError, ValueError):  # none yet, or unreadable: scan
            pass
        n, found = shard.tokens, []
        for begin in range(0, n, SCAN_TOKENS):
            found.append(begin + np.flatnonzero(self.read_shard(index, begin, min(SCAN_TOKENS, n - begin)) == token))
        positions = np.concatenate(found).astype(np.int64) if found else np.zeros(0, dtype=np.int64)
        try:
            with atomic_path(saved) as tmp, open(tmp, "wb") as f:
                np.save(f, np.concatenate([stamp, positions]))
        except (OSError, MiniGPTError):  # a read-only data folder: it is scanned again next time
            pass
        return positions


def open_split(data_dir: str | Path, split: str, meta: dict, verify: bool = False) -> TokenShards:
    """The shards of ``split``, checked against meta.json: each holds the tokens it should (its size
    agrees), and its ids lie in the vocabulary (a sample of them; with ``verify`` all of them, and
    each shard's sha256 against the one meta.json lists)."""
    data_dir = Path(data_dir)
    dtype = np.dtype(meta["dtype"])
    if "splits" in meta:
        shards = []
        for entry in meta["splits"][split]["shards"]:
            path = data_dir / entry["file"]
            if not path.is_file():
                raise MiniGPTError(f"{path} not found; meta.json lists it (prepare the data again)")
            file_dtype, count = read_header(path)
            if count != entry["tokens"] or file_dtype != dtype:
                raise MiniGPTError(f"{path} holds {count:,} {file_dtype.name} tokens but meta.json says "
                                   f"{entry['tokens']:,} {dtype.name}: from another preparation (prepare the data again)")
            if verify and entry.get("sha256") and sha256(path) != entry["sha256"]:
                raise MiniGPTError(f"{path}: its sha256 differs from the one meta.json lists: the file changed after "
                                   f"it was prepared (prepare the data again)")
            shards.append(Shard(path, HEADER_BYTES, count))
    elif meta.get("foreign"):
        paths = _foreign_shards(data_dir, split)
        if not paths:
            raise MiniGPTError(f"{data_dir}: no *{split}_*.bin shards")
        shards = []
        for path in paths:
            file_dtype, count = read_header(path)
            if file_dtype != dtype:
                raise MiniGPTError(f"{path}: {file_dtype.name} tokens; without a meta.json only GPT-2 (uint16) shards are read")
            shards.append(Shard(path, HEADER_BYTES, count))
    else:
        shards = [_legacy_shard(data_dir, split, meta, dtype)]
    if not any(s.tokens for s in shards):
        raise MiniGPTError(f"{data_dir}: the {split} split holds no tokens (prepare the data with more text)")
    tokens = TokenShards(shards, dtype, f"{data_dir / split}")
    tokens.check_ids(meta["vocab_size"], everything=verify)
    return tokens


def _legacy_shard(data_dir: Path, split: str, meta: dict, dtype: np.dtype) -> Shard:
    """The raw ``{split}.bin`` of an earlier minigpt version, checked against meta.json."""
    path = data_dir / f"{split}.bin"
    if not path.is_file():
        raise MiniGPTError(f"{path} not found; prepare the data first (python -m minigpt data --help)")
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise MiniGPTError(f"{path}: {size:,} bytes is not a whole number of {dtype.name} tokens; the file is damaged "
                           f"(prepare the data again)")
    expected = meta.get(f"{split}_tokens")
    if expected is not None and size // dtype.itemsize != expected:
        raise MiniGPTError(f"{path} holds {size // dtype.itemsize:,} tokens but meta.json says {expected:,}: it is "
                           f"truncated or from another preparation (prepare the data again)")
    return Shard(path, 0, size // dtype.itemsize)


def to_device(window: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) from one (B, T + 1) block of ids: copied to the device once, contiguous and pinned on the
    way to a GPU (so the copy can overlap compute), widened to int64 there, then sliced."""
    block = torch.from_numpy(np.ascontiguousarray(window, dtype=np.int32))  # (B, T + 1)
    if device.type == "cuda":
        block = block.pin_memory().to(device, non_blocking=True)
    else:
        block = block.to(device)
    block = block.long()
    return block[:, :-1], block[:, 1:]  # (B, T) inputs and next-token targets


class Windows:
    """Random windows of ``block_size + 1`` tokens from a split, drawn across its shards in
    proportion to their lengths; x is a window's first block_size tokens, y the same shifted by one.

    A batch is a pure function of its seed: the trainer seeds each one from the step number, so a
    resumed run draws exactly the batches it would have drawn. With ``bos_token``, every window
    starts at a document: at that token, which begins each document in minigpt's and llm.c's shards.
    """

    def __init__(self, tokens: TokenShards, block_size: int, device: torch.device, bos_token: int | None = None):
        self.tokens, self.block_size, self.device, self.bos = tokens, block_size, device, bos_token
        span = block_size + 1
        if bos_token is None:
            counts = [max(0, s.tokens - span) for s in tokens.shards]  # window starts per shard
            self.starts = None
        else:
            self.starts = [p[p + span <= s.tokens] for s, p in
                           ((s, tokens.positions_of(bos_token, i)) for i, s in enumerate(tokens.shards))]
            counts = [len(p) for p in self.starts]
        if not sum(counts):
            what = "documents that start a full window" if bos_token is not None else "tokens"
            raise MiniGPTError(f"{tokens.name} has too few {what} for block_size + 2 = {block_size + 2} "
                               f"({len(tokens):,} tokens); use a smaller block_size or more text")
        self.cumulative = np.cumsum(counts)

    def batch(self, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        picks = torch.randint(int(self.cumulative[-1]), (batch_size,), generator=generator).tolist()
        span, rows = self.block_size + 1, []
        for g in picks:
            index = int(np.searchsorted(self.cumulative, g, side="right"))
            within = g - (int(self.cumulative[index - 1]) if index else 0)
            start = within if self.starts is None else int(self.starts[index][within])
            rows.append(self.tokens.read_shard(index, start, span))
        return to_device(np.stack(rows), self.device)  # (B, T + 1) -> x, y
