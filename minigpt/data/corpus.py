"""Corpus preparation: text of any size -> token shards for pretraining, in bounded memory.

``prepare_corpus`` streams the documents of ``sources.py`` (text files, JSONL, gzipped JSONL,
parquet), splits them into train and val by document, tokenises them in worker processes and
writes fixed-size shards in llm.c's layout (``shards.py``) with a ``meta.json`` that lists them.

- **Split.** Whole files (``.txt``, two or more) are drawn in a seeded order until val holds
  ``val_fraction`` of their bytes, with at least one on each side; a corpus of one text file is
  cut at a line boundary near ``1 - val_fraction`` of its bytes. Records (JSONL lines, parquet
  rows) go to val with probability ``val_fraction``, decided by a seeded hash of their file and
  position. ``val_tokens`` sets that fraction from the corpus's estimated size instead.
- **Order.** Work units are cut at fixed places and their results consumed in order, so the
  output is the same byte for byte for any number of workers.
- **Documents** begin with the tokenizer's beginning-of-text token, or else its end-of-text token
  (GPT-2's ``<|endoftext|>``, as in llm.c's FineWeb shards), so a window may start at a document
  (``bos_aligned`` in the loader). Documents held in memory (a classification config's training
  texts) come after the files, as records of a source of their own named ``documents``, split and
  ordered like JSONL lines. A record whose text is excluded (``exclude``: that classifier's val and
  test texts, which the same review elsewhere would leak) is left out and counted.
- **Resumable.** A journal (``.prepare.json``) records, every few tens of megabytes and at each
  finished shard, how far the output is complete, with each finished shard's size and sha256; run
  again after an interruption (even SIGKILL), preparation checks those shards and continues from
  there, ending byte-identical to an uninterrupted run. It continues only the same preparation: the
  journal's fingerprint holds the options, each file's size and time, and the sha256 of the
  documents held in memory, of the texts excluded and of the tokenizer. A shard deleted or changed in between is an error
  naming it (its tokens cannot be recovered without starting afresh).
- **Safe to overwrite.** One preparation at a time holds the output folder (``locks.hold_lock``).
  ``overwrite`` over data already there prepares into ``.staging/`` inside the folder and moves the
  new files in only once they are complete, so a preparation that fails leaves the old data as it
  was; run the same command again to continue it (a staging folder of other input or options is
  discarded). A move that was interrupted is finished by the next run into the folder.

The command line is ``python -m minigpt data`` (``minigpt/cli/data.py``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from ..files import output_dir, read_json, remove_stale_temporaries, write_json
from ..errors import MiniGPTError, MiniGPTWarning
from ..locks import LOCK_FILE, hold_lock
from . import sources as sources_module
from .shards import ShardChanged, ShardWriter, token_dtype, write_failed
from .sources import (Source, Unit, find_sources, gzip_units, line_number, parquet_file, parquet_units, plain_units,
                      unit_records, unit_text)
from .tokenizers import (CharTokenizer, Tokenizer, UnknownCharacter, build_tokenizer, document_start,
                         tokenizer_from_meta)

log = logging.getLogger(__name__)

FORMAT = "minigpt-shards-1"
JOURNAL = ".prepare.json"
STAGING = ".staging"  # where --overwrite prepares beside the data it replaces
JOURNAL_EVERY = 64 << 20  # input bytes between journal entries (and at every finished shard)
SPLITS = ("train", "val")
GZIP_RATIO = 4  # about how many bytes of JSONL a byte of gzip holds (for estimates only)


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs besides its unit: the sources and how documents are assigned."""

    sources: list[Source]
    seed: int
    val_probability: float  # for records
    file_split: dict[int, str]  # source index -> split, for whole-file documents
    text_field: str
    excluded: frozenset[bytes] = frozenset()  # text_key of the records left out (held-out texts of a classifier)


def text_key(text: str) -> bytes:
    """What identifies a record's text for ``exclude``: a hash of it without surrounding whitespace."""
    return hashlib.blake2b(text.strip().encode("utf-8", "surrogatepass"), digest_size=16).digest()


# ----------------------------------------------------------------------------- the split


def draw(seed: int, key: str) -> float:
    """A number in [0, 1) fixed by ``seed`` and a document's key (its file and position)."""
    digest = hashlib.blake2b(f"{seed}\0{key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def split_files(sources: list[Source], val_fraction: float, seed: int) -> dict[int, str]:
    """Train or val for each whole-file document: in the order of their draws, files go to val until
    it holds ``val_fraction`` of the files' bytes, keeping at least one file on each side. A single
    text file among records is drawn like a record."""
    files = [i for i, s in enumerate(sources) if s.kind == "txt"]
    if len(files) == 1:
        return {files[0]: "val" if draw(seed, sources[files[0]].name) < val_fraction else "train"}
    total = sum(sources[i].size for i in files)
    split, held = {i: "train" for i in files}, 0
    for i in sorted(files, key=lambda i: draw(seed, sources[i].name)):
        if held >= val_fraction * total or sum(v == "val" for v in split.values()) == len(files) - 1:
            break
        split[i], held = "val", held + sources[i].size
    return split


def line_cut(source: Source, val_fraction: float) -> int:
    """The byte at which a one-file corpus is cut into train and val: just after the last newline
    before ``1 - val_fraction`` of its bytes (or the first after it), else at a character boundary."""
    target = int(source.size * (1 - val_fraction))
    with open(source.path, "rb") as f:
        head = max(0, target - (1 << 20))
        f.seek(head)
        before = f.read(target - head)
        newline = before.rfind(b"\n")
        if newline >= 0:
            return head + newline + 1
        after = f.read(1 << 20)
    newline = after.find(b"\n")
    if 0 <= newline < len(after) - 1:
        return target + newline + 1
    cut = target
    with open(source.path, "rb") as f:
        f.seek(cut)
        while cut < source.size and (f.read(1)[0] & 0xC0) == 0x80:  # not inside a multi-byte character
            cut += 1
    return cut


# ----------------------------------------------------------------------------- work units


def units(plan: Plan, single_cut: int | None, memory: Sequence[Unit] = ()) -> Iterator[tuple[Unit, str | None]]:
    """(unit, split of its document or None for records) for the whole corpus, in order; ``memory``:
    the units of the source of kind ``documents`` (``memory_units``)."""
    index = 0
    for i, source in enumerate(plan.sources):
        if source.kind == "documents":
            for unit in memory:
                yield dataclasses.replace(unit, index=index), None
                index += 1
        elif source.kind == "txt":
            ranges = [(0, single_cut, "train"), (single_cut, source.size, "val")] if single_cut is not None \
                else [(0, source.size, plan.file_split[i])]
            for begin, end, split in ranges:
                for unit in plain_units(source, i, index, begin, end):
                    yield unit, split
                    index += 1
        elif source.kind == "jsonl":
            for unit in plain_units(source, i, index):
                yield unit, None
                index += 1
        elif source.kind == "jsonl.gz":
            for unit in gzip_units(source, i, index):
                yield unit, None
                index += 1
        else:
            for unit in parquet_units(source, i, index):
                yield unit, None
                index += 1


def memory_units(documents: list[tuple[str, str]], source_index: int, text_field: str) -> tuple[Source, list[Unit]]:
    """In-memory documents (e.g. a classification config's training texts) as the JSONL units, each
    text under ``text_field``, of a source of kind ``documents`` at ``source_index``."""
    lines = [json.dumps({text_field: text}, ensure_ascii=False) for _, text in documents]
    source = Source(Path("<documents>"), "documents", "documents", sum(len(line.encode()) + 1 for line in lines))
    chunk, out, offset = 4096, [], 0
    for k in range(0, len(lines), chunk):
        data = ("\n".join(lines[k:k + chunk]) + "\n").encode()
        out.append(Unit(len(out), source_index, offset, offset + len(data), k + 1, data))
        offset += len(data)
    return source, out


def corpus_sources(inputs: str | Path | Sequence[str | Path], documents: list[tuple[str, str]] | None,
                   text_field: str) -> tuple[list[Source], list[Unit]]:
    """The sources of a corpus, the files of ``inputs`` then (if given) the in-memory ``documents``,
    and the units of the latter."""
    sources = find_sources([inputs] if isinstance(inputs, (str, Path)) else list(inputs))
    if documents is None:
        return sources, []
    source, memory = memory_units(documents, len(sources), text_field)
    return [*sources, source], memory


# ----------------------------------------------------------------------------- workers

_worker: dict = {}  # the plan and tokenizer of this worker process (set by _init)


def _init(plan: Plan, tokenizer_meta: dict | None, in_worker: bool = False) -> None:
    _worker["plan"] = plan
    _worker["tok"] = tokenizer_from_meta(tokenizer_meta) if tokenizer_meta else None
    if in_worker:
        # Ctrl-C reaches every process of the terminal's group: the parent alone handles it (and stops
        # the workers), so a worker prints no traceback of its own
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        parent = multiprocessing.parent_process()
        if parent is not None:  # a parent killed outright (SIGKILL) leaves no worker behind
            threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])  # ready when the parent process is gone
    os._exit(1)


def _documents(plan: Plan, unit: Unit, split: str | None,
               left_out: list[str] | None = None) -> Iterator[tuple[str, str, bool, object]]:
    """(split, text, begins a document, where) for the pieces of a unit; ``where(position)`` names
    the file and line of a character in the text. A record whose text is one of ``plan.excluded`` is
    skipped (and appended to ``left_out``)."""
    source = plan.sources[unit.source]
    if split is not None:  # a stretch of a text file
        text, begin = unit_text(source, unit)
        yield split, text, unit.document_start, \
            lambda pos: f"{source.path}:{line_number(source.path, begin + len(text[:pos].encode()))}"
        return
    for key, text, where in unit_records(source, unit, plan.text_field):
        if plan.excluded and text_key(text) in plan.excluded:
            if left_out is not None:
                left_out.append(key)
            continue
        yield ("val" if draw(plan.seed, key) < plan.val_probability else "train"), text, True, lambda pos, w=where: w()


def _tokenize(job: tuple[Unit, str | None]) -> dict:
    """A unit's tokens per split (each document led by ``document_start``), with its counts."""
    unit, split = job
    tok = _worker["tok"]
    dtype = token_dtype(tok.vocab_size)
    first = document_start(tok)
    lead = np.array([first], dtype=dtype) if first is not None else None  # put before each document
    out = {name: {"ids": [], "documents": 0, "bytes": 0, "nonblank": 0} for name in SPLITS}
    left_out: list[str] = []
    try:
        for name, text, starts, where in _documents(_worker["plan"], unit, split, left_out):
            part = out[name]
            if starts and lead is not None:
                part["ids"].append(lead)
            try:
                part["ids"].append(tok.encode_array(text))
            except UnknownCharacter as err:
                raise MiniGPTError(f"{where(err.position)}: character {err.char!r} (U+{ord(err.char):04X}) is not in "
                                   f"the character vocabulary ({tok.vocab_size} characters)") from None
            part["documents"] += int(starts)
            part["bytes"] += len(text) if text.isascii() else len(text.encode("utf-8"))
            part["nonblank"] += int(bool(text) and not text.isspace())
    except MiniGPTError as err:
        return {"error": str(err)}
    for part in out.values():  # in the shards' dtype: a quarter of int64's bytes to send back
        part["ids"] = np.concatenate(part["ids"]).astype(dtype, copy=False) if part["ids"] else np.zeros(0, dtype)
    return {**out, "excluded": len(left_out)}


def _characters(job: tuple[Unit, str | None]) -> dict:
    """The set of characters in a unit (the char tokenizer's first pass)."""
    unit, split = job
    try:
        return {"chars": sorted({ch for _, text, _, _ in _documents(_worker["plan"], unit, split) for ch in set(text)})}
    except MiniGPTError as err:
        return {"error": str(err)}


class Workers:
    """``fn`` over jobs in order, by ``n`` processes (or this one when n = 1), at most 2n jobs in flight.

    The processes start from a fork server (or are spawned where there is none), never forked from
    this process: a fork of a process that has used pyarrow's threads can hang. They ignore Ctrl-C,
    which this process turns into KeyboardInterrupt, and exit when it dies. An error in a worker
    comes back as its job's result; a worker that dies (killed, out of memory) is a ``MiniGPTError``,
    never a wait without end.
    """

    def __init__(self, n: int, plan: Plan, tokenizer_meta: dict | None):
        self.n, self.plan, self.tokenizer_meta = n, plan, tokenizer_meta
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "Workers":
        _init(self.plan, self.tokenizer_meta)
        if self.n > 1:
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(method)
            if method == "forkserver":
                context.set_forkserver_preload([__name__])  # imported once by the server, not by each worker
            try:
                with _sigint_blocked():  # the fork server and the workers start with Ctrl-C held off
                    self.pool = ProcessPoolExecutor(self.n, mp_context=context, initializer=_init,
                                                    initargs=(self.plan, self.tokenizer_meta, True))
                    self.pool.submit(int).result()  # the first job starts the fork server, and a worker
            except BaseException:
                self.__exit__(*sys.exc_info())
                raise
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is None:
            return
        if exc[0] is not None:  # an error or Ctrl-C: stop now rather than after the jobs already queued
            for process in list((getattr(self.pool, "_processes", None) or {}).values()):
                process.terminate()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = None

    def map(self, fn, jobs) -> Iterator[tuple[object, dict]]:
        """(job, result) in job order."""
        if self.pool is None:
            for job in jobs:
                yield job, _checked(fn(job))
            return
        pending: deque = deque()
        for job in jobs:
            pending.append((job, self.pool.submit(fn, job)))
            if len(pending) >= 2 * self.n:
                done_job, future = pending.popleft()
                yield done_job, _checked(_result(future))
        while pending:
            done_job, future = pending.popleft()
            yield done_job, _checked(_result(future))


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT held off in this thread for the duration (processes started meanwhile inherit the mask);
    one that arrives meanwhile is delivered when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _result(future) -> dict:
    try:
        return future.result()
    except BrokenProcessPool:
        raise MiniGPTError("a worker process died (killed, or out of memory?); run the same command again to "
                           "continue, with fewer --workers if it happens again") from None


def _checked(result: dict) -> dict:
    if "error" in result:
        raise MiniGPTError(result["error"])
    return result


# ----------------------------------------------------------------------------- preparing


def prepare_corpus(
    inputs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    tokenizer: str = "char",
    val_fraction: float = 0.1,
    char_vocab_from: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    char_unknown: str | None = None,
    documents: list[tuple[str, str]] | None = None,
    workers: int = 1,
    shard_tokens: int = 100_000_000,
    text_field: str = "text",
    val_tokens: int | None = None,
    overwrite: bool = False,
    exclude: Iterable[str] | None = None,
) -> dict:
    """Tokenise a corpus into ``out_dir``: ``train_*.bin`` / ``val_*.bin`` shards and ``meta.json``,
    which it returns. See the module docstring for the split, the order, resuming and ``overwrite``.

    tokenizer: "char" (vocabulary from the corpus, or from ``char_vocab_from``, a meta.json whose
    vocabulary must then cover every character), "gpt2", or the path of a Hugging Face folder or
    tokenizer.json. ``char_unknown``: a character added to a vocabulary built from the corpus to
    stand, later, for any character the corpus lacks. ``documents``: (name, text) documents held in
    memory, prepared after those of ``inputs`` (which may then be empty). ``exclude``: texts that no
    record may be (a classifier's val and test texts): a JSONL line, parquet row or document whose
    text equals one, up to surrounding whitespace, is left out (counted in ``excluded_documents``).
    One preparation at a time holds ``out_dir``; a second one is a ``MiniGPTError`` naming the first
    one's pid.
    """
    started = time.perf_counter()
    if not 0 < val_fraction < 1:
        raise MiniGPTError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if shard_tokens < 1 or workers < 1:
        raise MiniGPTError(f"shard_tokens and workers must be at least 1, got {shard_tokens} and {workers}")
    if not 0 <= seed < 2**64:
        raise MiniGPTError(f"seed must be in [0, 2**64), got {seed}")
    if val_tokens is not None and val_tokens < 1:
        raise MiniGPTError(f"val_tokens must be at least 1, got {val_tokens}")
    sources, memory = corpus_sources(inputs, documents, text_field)
    if not sources:
        raise MiniGPTError("nothing to prepare: no input files and no documents")
    out = output_dir(out_dir, "--out")
    _refuse_outputs_as_inputs(out, [s for s in sources if s.kind != "documents"])
    excluded = frozenset(map(text_key, exclude or ()))
    fingerprint = {
        "excluded": hashlib.sha256(b"".join(sorted(excluded))).hexdigest() if excluded else None,
        "inputs": [[str(s.path), s.name, s.kind, s.size] + ([s.path.stat().st_mtime_ns] if s.kind != "documents" else [])
                   for s in sources],
        "documents": hashlib.sha256(json.dumps(documents).encode()).hexdigest() if documents is not None else None,
        "tokenizer": tokenizer, "char_vocab_from": str(char_vocab_from) if char_vocab_from else None,
        "char_unknown": char_unknown, "val_fraction": val_fraction, "val_tokens": val_tokens, "seed": seed,
        "shard_tokens": shard_tokens, "text_field": text_field,
        "unit_bytes": sources_module.UNIT_BYTES,  # where units are cut: the journal counts them
    }

    # What can be checked before the folder is touched: the tokenizer, the estimate of --val_tokens
    given_tokenizer = _given_tokenizer(tokenizer, char_vocab_from)  # None: the corpus's characters, collected below
    fingerprint["tokenizer_meta"] = hashlib.sha256(json.dumps(given_tokenizer, sort_keys=True).encode()).hexdigest() \
        if given_tokenizer is not None else None  # a tokenizer.json (or vocabulary) changed in between is other input
    single = len(sources) == 1 and sources[0].kind == "txt"
    if val_tokens is not None:
        val_fraction = _fraction_for(val_tokens, sources, memory, text_field, given_tokenizer, seed)
    plan = Plan(sources, seed, val_fraction, {} if single else split_files(sources, val_fraction, seed), text_field,
                excluded)
    cut = line_cut(sources[0], val_fraction) if single else None

    def jobs() -> Iterator[tuple[Unit, str | None]]:
        return units(plan, cut, memory)

    total_bytes = sum(s.size * (GZIP_RATIO if s.kind == "jsonl.gz" else 1) for s in sources)  # for the progress bar

    with hold_lock(out, "data preparation"):
        done = _complete_replacement(out, fingerprint)
        if done is not None:
            return {**done, "elapsed_s": time.perf_counter() - started}
        folder, journal = _open_target(out, fingerprint, overwrite)

        tok_meta = journal.get("tokenizer") or given_tokenizer
        if tok_meta is None:
            tok_meta = _vocabulary(plan, jobs, workers, char_unknown, progress, total_bytes)
        journal["tokenizer"] = tok_meta
        tok = tokenizer_from_meta(tok_meta)
        dtype = token_dtype(tok.vocab_size)

        def open_writers() -> dict[str, ShardWriter]:  # (each checks the shards the journal lists)
            state = journal.setdefault("splits", {name: {"done": [], "partial_tokens": 0, "documents": 0, "bytes": 0,
                                                         "nonblank": 0} for name in SPLITS})
            return {name: ShardWriter(folder, name, dtype, shard_tokens, state[name]["done"],
                                      state[name]["partial_tokens"], state[name].get("partial_sha256"))
                    for name in SPLITS}

        try:
            writers = open_writers()
        except ShardChanged as err:
            if folder == out:
                raise
            # a staging folder is this command's alone: one that no longer matches its journal starts again
            log.info(f"{err.path}: {err.what} since the staged preparation recorded it; starting that afresh")
            _remove(folder)
            folder.mkdir()
            journal = {"fingerprint": fingerprint, "tokenizer": tok_meta}
            writers = open_writers()
        progress_state = journal["splits"]
        counts = {name: {k: progress_state[name][k] for k in ("documents", "bytes", "nonblank")} for name in SPLITS}
        next_unit, read_bytes = journal.get("next_unit", 0), journal.get("input_bytes", 0)
        left_out = journal.get("excluded", 0)

        def save_journal(unit_index: int) -> None:
            for name, w in writers.items():
                w.sync()
                progress_state[name] = {"done": list(w.done), "partial_tokens": w.count,
                                        "partial_sha256": w.partial_sha256, **counts[name]}
            journal.update(next_unit=unit_index, input_bytes=read_bytes, excluded=left_out)
            _write_json(folder / JOURNAL, journal)

        save_journal(next_unit)  # from here on, whatever happens, the same command continues
        bar = tqdm(total=total_bytes, initial=read_bytes, desc="tokenize", unit="B", unit_scale=True, file=sys.stderr,
                   disable=None if progress else True, dynamic_ncols=True)
        since_journal, shards_before = 0, sum(len(w.done) for w in writers.values())
        with bar, Workers(workers, plan, tok_meta) as pool:
            todo = (job for job in jobs() if job[0].index >= next_unit)
            for (unit, _), result in pool.map(_tokenize, todo):
                for name in SPLITS:
                    writers[name].write(result[name]["ids"])
                    for key in ("documents", "bytes", "nonblank"):
                        counts[name][key] += result[name][key]
                size = _unit_bytes(unit, sources)
                read_bytes, since_journal = read_bytes + size, since_journal + size
                left_out += result["excluded"]
                bar.update(size)
                written = writers["train"].tokens + writers["val"].tokens
                bar.set_postfix(tokens=f"{written:,}",
                                tok_s=f"{written / max(time.perf_counter() - started, 1e-9):,.0f}")
                finished = sum(len(w.done) for w in writers.values())
                if since_journal >= JOURNAL_EVERY or finished != shards_before:
                    save_journal(unit.index + 1)
                    since_journal, shards_before = 0, finished
        shards = {name: w.close() for name, w in writers.items()}
        meta = _finish(folder, shards, counts, tok, dtype, sources, plan, val_fraction, val_tokens,
                       seed, shard_tokens, text_field, left_out, keep_journal=folder != out)
        if folder != out:
            _replace(out, folder)
    return {**meta, "elapsed_s": time.perf_counter() - started}


def _unit_bytes(unit: Unit, sources: list[Source]) -> int:
    """How far a unit moves the progress bar: its bytes (decompressed, for gzip)."""
    source = sources[unit.source]
    if unit.data is not None:
        return len(unit.data)
    if source.kind == "parquet":
        return source.size // max(1, parquet_file(source.path).metadata.num_row_groups)
    return unit.end - unit.start


def _given_tokenizer(tokenizer: str, char_vocab_from: str | Path | None) -> dict | None:
    """The tokenizer's metadata when it does not depend on the corpus (None: the char tokenizer of
    the corpus's characters)."""
    if tokenizer == "char" and char_vocab_from is not None:
        meta = read_json(char_vocab_from, "--char_vocab_from file").get("tokenizer")
        if not isinstance(meta, dict) or meta.get("kind") != "char":
            raise MiniGPTError(f"{char_vocab_from}: has no character vocabulary (its tokenizer is not 'char')")
        return meta
    if tokenizer == "char":
        return None
    return build_tokenizer(tokenizer).to_meta()


# ----------------------------------------------------------------------------- the output folder
# A preparation writes into --out itself, or with --overwrite over data already there into
# --out/.staging, whose files replace the old ones only once the new preparation has finished.

DATA_FILES = ("meta.json", JOURNAL, "train_*.bin", "val_*.bin", ".train_*.bin.partial", ".val_*.bin.partial",
              "train.bin", "val.bin")  # what a preparation (or an earlier minigpt version) writes
SHARD_NAME = re.compile(r"(train|val)_\d{6}\.bin")


def _data_files(folder: Path) -> list[Path]:
    """The prepared data in ``folder``: finished or not, of this version or an earlier one."""
    return sorted({p for pattern in DATA_FILES for p in folder.glob(pattern) if p.is_file()})


def _refuse_outputs_as_inputs(out: Path, sources: list[Source]) -> None:
    """An input that is one of the files preparing into ``out`` writes or replaces (a glob such as
    'DIR/*' with --out DIR) is an error before anything is read."""
    out = out.resolve()
    ours = DATA_FILES + (LOCK_FILE, ".meta.json.*.tmp", f"{JOURNAL}.*.tmp")
    for source in sources:
        path = source.path.resolve()
        if (path.parent == out and any(fnmatch.fnmatch(path.name, pattern) for pattern in ours)) \
                or out / STAGING in path.parents:
            raise MiniGPTError(f"input {source.path} is a file that preparing into {out} writes; leave it out of "
                               f"--input (does a glob match the output folder?), or use another --out")


def _read_journal(folder: Path) -> dict | None:
    """The journal in ``folder`` (None if there is none), checked to be whole."""
    path = folder / JOURNAL
    if not path.exists():
        return None
    journal = read_json(path, "journal")
    try:
        whole = isinstance(journal["fingerprint"], dict) and isinstance(journal["tokenizer"], dict) \
            and isinstance(journal["next_unit"], int) and isinstance(journal["input_bytes"], int) \
            and all(isinstance(journal["splits"][name]["partial_tokens"], int)
                    and all(SHARD_NAME.fullmatch(e["file"]) and isinstance(e["tokens"], int)
                            and isinstance(e["sha256"], str) for e in journal["splits"][name]["done"])
                    for name in SPLITS)
    except (KeyError, TypeError):
        whole = False
    if not whole:
        raise MiniGPTError(f"{path}: the journal of an interrupted preparation is damaged; start afresh with "
                           f"--overwrite")
    return journal


def _open_target(out: Path, fingerprint: dict, overwrite: bool) -> tuple[Path, dict]:
    """The folder this preparation writes into, and its journal: the journal of an unfinished
    preparation of the same input and options (to continue), or a new one.

    With ``overwrite`` over data already in ``out``: ``out/.staging`` (an interrupted overwrite of the
    same input continues there; another one is discarded). Otherwise ``out``, where an unfinished
    preparation of other input, or finished data, is refused.
    """
    staging = out / STAGING
    remove_stale_temporaries(out, ["meta.json", JOURNAL])
    if overwrite and _data_files(out):
        try:
            journal = _read_journal(staging)
        except MiniGPTError:
            journal = None
        if journal is not None and journal["fingerprint"] == fingerprint:
            _continue(staging, journal)
        else:
            _remove(staging)
            staging.mkdir()
            journal = {"fingerprint": fingerprint}
        remove_stale_temporaries(staging, ["meta.json", JOURNAL])
        return staging, journal
    if overwrite:
        _remove(staging)  # it was to replace data that is no longer there
    journal = _read_journal(out)
    if journal is not None:
        if journal["fingerprint"] != fingerprint:
            raise MiniGPTError(f"{out} holds an unfinished preparation of other input or options; finish it with its "
                               f"own command, or start afresh with --overwrite")
        _continue(out, journal)
        return out, journal
    if _data_files(out):
        waiting = " (an interrupted --overwrite waits in its .staging folder: run that command again to finish " \
                  "it)" if staging.exists() else ""
        raise MiniGPTError(f"{out} already holds prepared data (meta.json, shards); use another --out, or "
                           f"--overwrite{waiting}")
    return out, {"fingerprint": fingerprint}


def _continue(folder: Path, journal: dict) -> None:
    """Make ``folder`` what its journal says, to continue from there. A kill between a shard's rename
    and the next journal entry leaves it under its final name while the journal still calls it
    partial: it gets back its partial name (and is rewritten the same); any later shard is dropped
    (it is written again). Whether the finished shards are still intact, ShardWriter checks."""
    for name, state in journal["splits"].items():
        current = len(state["done"])
        for path in folder.glob(f"{name}_*.bin"):
            index = path.name[len(name) + 1:-len(".bin")]
            if not index.isdigit() or int(index) < current:
                continue
            partial = folder / f".{name}_{current:06d}.bin.partial"
            if int(index) == current and not partial.exists():
                os.replace(path, partial)
            else:
                path.unlink()
    log.info(f"{folder}: continuing an interrupted preparation at unit {journal['next_unit']}")


def _complete_replacement(out: Path, fingerprint: dict) -> dict | None:
    """An --overwrite stopped while its new files were moving in (``.staging`` holds its meta.json):
    finish the move, so that the folder holds one whole preparation again. Returns the meta.json when
    that preparation was this one (nothing is left to do)."""
    staging = out / STAGING
    if not (staging / "meta.json").is_file():
        return None
    try:
        journal = _read_journal(staging)
    except MiniGPTError:
        journal = None
    log.info(f"{out}: finishing the replacement of its data by a preparation that an interrupted --overwrite ended")
    _replace(out, staging)
    return read_json(out / "meta.json") if journal is not None and journal["fingerprint"] == fingerprint else None


def _replace(out: Path, staging: Path) -> None:
    """The finished preparation in ``staging`` replaces the data in ``out``. In an order that makes an
    interruption harmless: out's meta.json goes first (the folder no longer claims whole data), then
    the old files that no new one replaces, then the new shards move in, and their meta.json last;
    until then ``staging/meta.json`` is there for the next run to finish the move."""
    meta = read_json(staging / "meta.json")
    new = [entry["file"] for split in SPLITS for entry in meta["splits"][split]["shards"]]
    if not all(SHARD_NAME.fullmatch(name) for name in new):
        raise MiniGPTError(f"{staging / 'meta.json'}: damaged (shard names); start afresh with --overwrite")
    (out / "meta.json").unlink(missing_ok=True)
    for path in _data_files(out):
        if path.name not in new:
            path.unlink()
    for name in new:
        if (staging / name).exists():
            os.replace(staging / name, out / name)
        elif not (out / name).is_file():
            raise MiniGPTError(f"{staging / name} is missing; start afresh with --overwrite")
    _sync_folder(out)
    (staging / JOURNAL).unlink(missing_ok=True)  # before meta.json: a run finding one without the other redoes it
    os.replace(staging / "meta.json", out / "meta.json")
    _sync_folder(out)
    _remove(staging)


def _remove(path: Path) -> None:
    """Delete a staging folder (or whatever took its name)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _sync_folder(folder: Path) -> None:
    """Put the folder's renames on disk (where the file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, obj) -> None:
    """``write_json``, with a failed write (a full disk) as a one-line error; the file stays as it was."""
    try:
        write_json(path, obj)
    except OSError as err:
        raise write_failed(path, err) from None


# ----------------------------------------------------------------------------- the passes


def _vocabulary(plan: Plan, jobs, workers: int, unknown: str | None, progress: bool, total: int) -> dict:
    """The char tokenizer of the corpus: a first pass collecting every character."""
    chars: set[str] = set()
    with Workers(workers, plan, None) as pool, tqdm(total=total, desc="characters", unit="B", unit_scale=True,
                                                    file=sys.stderr, disable=None if progress else True) as bar:
        for (unit, _), result in pool.map(_characters, jobs()):
            chars.update(result["chars"])
            bar.update(_unit_bytes(unit, plan.sources))
    if not chars:
        raise MiniGPTError(f"{plan.sources[0].path if plan.sources else 'the input'}: the corpus is empty")
    return CharTokenizer.from_text("".join(sorted(chars)), unknown=unknown).to_meta()


SAMPLE_BYTES = 1 << 20  # text read to estimate the tokens per byte of a corpus (from its first units)


def _fraction_for(val_tokens: int, sources: list[Source], memory: list[Unit], text_field: str, tok_meta: dict | None,
                  seed: int) -> float:
    """The val fraction that gives about ``val_tokens`` tokens: their share of the corpus's tokens,
    estimated from its size and the tokens per byte of its first megabyte or so, counted with the
    tokenizer the shards get (document-start tokens included), or in characters for a vocabulary
    still to be collected from the corpus."""
    plan = Plan(sources, seed, 0.0, {i: "train" for i, s in enumerate(sources) if s.kind == "txt"}, text_field)
    tok = tokenizer_from_meta(tok_meta) if tok_meta is not None and tok_meta.get("kind") != "char" else None
    lead = int(tok is not None and document_start(tok) is not None)
    tokens = sample = 0  # tokens of the first units, and their bytes of input (JSON and all, as the total counts)
    for job in units(plan, None, memory):
        for _, text, starts, _ in _documents(plan, *job):
            tokens += (len(tok.encode(text)) if tok is not None else len(text)) + lead * int(starts)
        sample += _unit_bytes(job[0], sources)
        if sample >= SAMPLE_BYTES:
            break
    if not tokens:
        raise MiniGPTError(f"{sources[0].path if sources else 'the input'}: the corpus is empty; --val_tokens has "
                           f"nothing to estimate its size from")
    estimate = tokens / sample * sum(s.size * (GZIP_RATIO if s.kind == "jsonl.gz" else 1) for s in sources)
    if val_tokens >= estimate:
        raise MiniGPTError(f"val_tokens {val_tokens:,} is not below the corpus's estimated {estimate:,.0f} tokens")
    return val_tokens / estimate


def _finish(folder: Path, shards: dict, counts: dict, tok: Tokenizer, dtype: np.dtype, sources: list[Source],
            plan: Plan, val_fraction: float, val_tokens: int | None, seed: int, shard_tokens: int,
            text_field: str, excluded: int, keep_journal: bool) -> dict:
    """Write meta.json into ``folder``. The journal goes, unless ``keep_journal`` (in a staging folder it
    tells a later run which preparation this was, should the move into --out be interrupted)."""
    tokens = {name: sum(s["tokens"] for s in shards[name]) for name in SPLITS}
    if not counts["train"]["nonblank"] + counts["val"]["nonblank"]:
        raise MiniGPTError(f"{sources[0].path if sources else 'the input'}: the corpus is empty")
    for name in SPLITS:
        if not tokens[name]:
            raise MiniGPTError(f"the {name} split came out empty ({counts['train']['documents'] + counts['val']['documents']} "
                               f"documents); give more documents or another val_fraction")
    share = tokens["val"] / (tokens["train"] + tokens["val"])
    if not val_fraction / 2 <= share <= max(2 * val_fraction, val_fraction + 0.05):
        warnings.warn(f"val holds {share:.0%} of the tokens ({tokens['val']:,} of {tokens['train'] + tokens['val']:,}) "
                      f"where {val_fraction:.0%} was asked for: the corpus has few documents, or some very long ones",
                      MiniGPTWarning, stacklevel=3)
    meta = {
        "format": FORMAT,
        "tokenizer": tok.to_meta(),
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "train_tokens": tokens["train"],
        "val_tokens": tokens["val"],
        "splits": {name: {"tokens": tokens[name], "documents": counts[name]["documents"], "bytes": counts[name]["bytes"],
                          "shards": shards[name]} for name in SPLITS},
        "split": {"val_fraction": val_fraction, "val_tokens": val_tokens, "seed": seed,
                  "files": {s.name: plan.file_split.get(i, "cut at a line" if len(sources) == 1 and s.kind == "txt"
                                                        else "records") for i, s in enumerate(sources)}},
        "sources": [{"name": s.name, "kind": s.kind, "bytes": s.size} for s in sources],
        "excluded_documents": excluded,  # records left out: their text is one of those excluded
        "shard_tokens": shard_tokens,
        "text_field": text_field,
    }  # no timings or dates: the file is the same byte for byte however the run went
    _write_json(folder / "meta.json", meta)
    if not keep_journal:
        (folder / JOURNAL).unlink(missing_ok=True)
    return meta


def read_texts(inputs: str | Path | Sequence[str | Path], text_field: str = "text",
               documents: list[tuple[str, str]] | None = None, exclude: Iterable[str] = ()) -> Iterator[str]:
    """The text of every document of ``inputs`` (any format ``sources.py`` reads), then of
    ``documents``, in order, unsplit, leaving out the records that ``exclude`` names: the documents
    ``prepare_corpus`` with the same arguments prepares."""
    found, memory = corpus_sources(inputs, documents, text_field)
    plan = Plan(found, 0, 0.0, {i: "train" for i, s in enumerate(found) if s.kind == "txt"}, text_field,
                frozenset(map(text_key, exclude)))
    for unit, split in units(plan, None, memory):
        for _, text, _, _ in _documents(plan, unit, split):
            yield text
