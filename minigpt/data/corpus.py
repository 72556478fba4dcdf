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
  (``bos_aligned`` in the loader).
- **Resumable.** A journal (``.prepare.json``) records, every few tens of megabytes and at each
  finished shard, how far the output is complete; run again after an interruption (even SIGKILL),
  preparation continues from there and ends byte-identical to an uninterrupted run.

The command line is ``python -m minigpt.data`` (``minigpt/cli/data.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from ..checkpoint import output_dir, read_json, remove_stale_temporaries, write_json
from ..errors import MiniGPTError, MiniGPTWarning
from .shards import ShardWriter, token_dtype
from .sources import (Source, Unit, find_sources, gzip_units, line_number, parquet_file, parquet_units, plain_units,
                      unit_records, unit_text)
from .tokenizers import (CharTokenizer, Tokenizer, UnknownCharacter, build_tokenizer, document_start,
                         tokenizer_from_meta)

log = logging.getLogger(__name__)

FORMAT = "minigpt-shards-1"
JOURNAL = ".prepare.json"
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


def units(plan: Plan, single_cut: int | None) -> Iterator[tuple[Unit, str | None]]:
    """(unit, split of its document or None for records) for the whole corpus, in order."""
    index = 0
    for i, source in enumerate(plan.sources):
        if source.kind == "txt":
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


def memory_units(documents: list[tuple[str, str]]) -> tuple[Source, list[Unit]]:
    """In-memory documents (e.g. a classification config's training texts) as JSONL units."""
    lines = [json.dumps({"text": text}, ensure_ascii=False) for _, text in documents]
    source = Source(Path("<documents>"), "documents", "jsonl", sum(len(line.encode()) + 1 for line in lines))
    chunk, out, offset = 4096, [], 0
    for k in range(0, len(lines), chunk):
        data = ("\n".join(lines[k:k + chunk]) + "\n").encode()
        out.append(Unit(len(out), 0, offset, offset + len(data), k + 1, data))
        offset += len(data)
    return source, out


# ----------------------------------------------------------------------------- workers

_worker: dict = {}  # the plan and tokenizer of this worker process (set by _init)


def _init(plan: Plan, tokenizer_meta: dict | None) -> None:
    _worker["plan"] = plan
    _worker["tok"] = tokenizer_from_meta(tokenizer_meta) if tokenizer_meta else None


def _documents(plan: Plan, unit: Unit, split: str | None) -> Iterator[tuple[str, str, bool, object]]:
    """(split, text, begins a document, where) for the pieces of a unit; ``where(position)`` names
    the file and line of a character in the text."""
    source = plan.sources[unit.source]
    if split is not None:  # a stretch of a text file
        text = unit_text(source, unit)
        yield split, text, unit.document_start, \
            lambda pos: f"{source.path}:{line_number(source.path, unit.start + len(text[:pos].encode()))}"
        return
    for key, text, where in unit_records(source, unit, plan.text_field):
        yield ("val" if draw(plan.seed, key) < plan.val_probability else "train"), text, True, lambda pos, w=where: w()


def _tokenize(job: tuple[Unit, str | None]) -> dict:
    """A unit's tokens per split (each document led by ``document_start``), with its counts."""
    unit, split = job
    tok = _worker["tok"]
    dtype = token_dtype(tok.vocab_size)
    first = document_start(tok)
    lead = np.array([first], dtype=dtype) if first is not None else None  # put before each document
    out = {name: {"ids": [], "documents": 0, "bytes": 0, "nonblank": 0} for name in SPLITS}
    try:
        for name, text, starts, where in _documents(_worker["plan"], unit, split):
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
    return out


def _characters(job: tuple[Unit, str | None]) -> dict:
    """The set of characters in a unit (the char tokenizer's first pass)."""
    unit, split = job
    try:
        return {"chars": sorted({ch for _, text, _, _ in _documents(_worker["plan"], unit, split) for ch in set(text)})}
    except MiniGPTError as err:
        return {"error": str(err)}


class Workers:
    """``fn`` over jobs in order, by ``n`` processes (or this one when n = 1), at most 2n jobs in flight."""

    def __init__(self, n: int, plan: Plan, tokenizer_meta: dict | None):
        self.n, self.plan, self.tokenizer_meta = n, plan, tokenizer_meta
        self.pool = None

    def __enter__(self) -> "Workers":
        _init(self.plan, self.tokenizer_meta)
        if self.n > 1:
            method = "fork" if sys.platform.startswith("linux") else "spawn"  # workers never touch torch
            self.pool = multiprocessing.get_context(method).Pool(self.n, _init, (self.plan, self.tokenizer_meta))
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def map(self, fn, jobs) -> Iterator[tuple[object, dict]]:
        """(job, result) in job order."""
        if self.pool is None:
            for job in jobs:
                yield job, _checked(fn(job))
            return
        pending: deque = deque()
        for job in jobs:
            pending.append((job, self.pool.apply_async(fn, (job,))))
            if len(pending) >= 2 * self.n:
                done_job, result = pending.popleft()
                yield done_job, _checked(result.get())
        while pending:
            done_job, result = pending.popleft()
            yield done_job, _checked(result.get())


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
) -> dict:
    """Tokenise a corpus into ``out_dir``: ``train_*.bin`` / ``val_*.bin`` shards and ``meta.json``,
    which it returns. See the module docstring for the split, the order and resuming.

    tokenizer: "char" (vocabulary from the corpus, or from ``char_vocab_from``, a meta.json whose
    vocabulary must then cover every character) or "gpt2". ``char_unknown``: a character added to a
    vocabulary built from the corpus to stand, later, for any character the corpus lacks.
    ``documents``: (name, text) documents to use instead of reading ``inputs`` (then only a label).
    """
    started = time.perf_counter()
    if not 0 < val_fraction < 1:
        raise MiniGPTError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if shard_tokens < 1 or workers < 1:
        raise MiniGPTError(f"shard_tokens and workers must be at least 1, got {shard_tokens} and {workers}")
    if documents is not None:
        source, memory = memory_units(documents)
        sources = [source]
    else:
        sources = find_sources([inputs] if isinstance(inputs, (str, Path)) else list(inputs))
        memory = None
    out = output_dir(out_dir, "--out")
    fingerprint = {
        "inputs": [[str(s.path), s.name, s.kind, s.size] + ([s.path.stat().st_mtime_ns] if memory is None else [])
                   for s in sources],
        "documents": hashlib.sha256(json.dumps(documents).encode()).hexdigest() if documents is not None else None,
        "tokenizer": tokenizer, "char_vocab_from": str(char_vocab_from) if char_vocab_from else None,
        "char_unknown": char_unknown, "val_fraction": val_fraction, "val_tokens": val_tokens, "seed": seed,
        "shard_tokens": shard_tokens, "text_field": text_field,
    }
    journal = _open_journal(out, fingerprint, overwrite)

    single = len(sources) == 1 and sources[0].kind == "txt" and memory is None
    if val_tokens is not None:
        val_fraction = _fraction_for(val_tokens, sources, memory, text_field, tokenizer, seed)
    plan = Plan(sources, seed, val_fraction, {} if single else split_files(sources, val_fraction, seed), text_field)
    cut = line_cut(sources[0], val_fraction) if single else None
    jobs = (lambda: ((u, None) for u in memory)) if memory is not None else (lambda: units(plan, cut))
    total_bytes = sum(s.size * (GZIP_RATIO if s.kind == "jsonl.gz" else 1) for s in sources)  # for the progress bar

    tok_meta = journal.get("tokenizer")
    if tok_meta is None:
        if tokenizer == "char" and char_vocab_from is not None:
            tok_meta = read_json(char_vocab_from, "--char_vocab_from file").get("tokenizer")
            if not isinstance(tok_meta, dict) or tok_meta.get("kind") != "char":
                raise MiniGPTError(f"{char_vocab_from}: has no character vocabulary (its tokenizer is not 'char')")
        elif tokenizer == "char":
            tok_meta = _vocabulary(plan, jobs, workers, char_unknown, progress, total_bytes)
        else:
            tok_meta = build_tokenizer(tokenizer).to_meta()
        journal["tokenizer"] = tok_meta
    tok = tokenizer_from_meta(tok_meta)
    dtype = token_dtype(tok.vocab_size)

    progress_state = journal.setdefault("splits", {name: {"done": [], "partial_tokens": 0, "documents": 0, "bytes": 0,
                                                          "nonblank": 0} for name in SPLITS})
    writers = {name: ShardWriter(out, name, dtype, shard_tokens, progress_state[name]["done"],
                                 progress_state[name]["partial_tokens"]) for name in SPLITS}
    counts = {name: {k: progress_state[name][k] for k in ("documents", "bytes", "nonblank")} for name in SPLITS}
    next_unit, read_bytes = journal.get("next_unit", 0), journal.get("input_bytes", 0)

    def save_journal(unit_index: int) -> None:
        for name, w in writers.items():
            w.sync()
            progress_state[name] = {"done": list(w.done), "partial_tokens": w.count, **counts[name]}
        journal.update(next_unit=unit_index, input_bytes=read_bytes)
        write_json(out / JOURNAL, journal)

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
            bar.update(size)
            written = writers["train"].tokens + writers["val"].tokens
            bar.set_postfix(tokens=f"{written:,}", tok_s=f"{written / max(time.perf_counter() - started, 1e-9):,.0f}")
            finished = sum(len(w.done) for w in writers.values())
            if since_journal >= JOURNAL_EVERY or finished != shards_before:
                save_journal(unit.index + 1)
                since_journal, shards_before = 0, finished
    shards = {name: w.close() for name, w in writers.items()}
    return _finish(out, shards, counts, tok, dtype, sources, memory is not None, plan, val_fraction, val_tokens,
                   seed, shard_tokens, text_field, started)


def _unit_bytes(unit: Unit, sources: list[Source]) -> int:
    """How far a unit moves the progress bar: its bytes (decompressed, for gzip)."""
    source = sources[unit.source]
    if unit.data is not None:
        return len(unit.data)
    if source.kind == "parquet":
        return source.size // max(1, parquet_file(source.path).metadata.num_row_groups)
    return unit.end - unit.start


def _open_journal(out: Path, fingerprint: dict, overwrite: bool) -> dict:
    """The journal of an unfinished preparation of the same input into ``out`` (to continue), or a
    new one; a finished preparation is replaced only with ``overwrite``."""
    ours = [*out.glob("train_*.bin"), *out.glob("val_*.bin"), *out.glob(".*.partial"), out / "train.bin",
            out / "val.bin", out / "meta.json", out / JOURNAL]
    journal_path = out / JOURNAL
    if overwrite:
        for path in ours:
            path.unlink(missing_ok=True)
    elif journal_path.exists():
        journal = read_json(journal_path)
        if journal.get("fingerprint") != fingerprint:
            raise MiniGPTError(f"{out} holds an unfinished preparation of other input or options; finish it with its "
                               f"own command, or start afresh with --overwrite")
        _reconcile(out, journal)
        log.info(f"{out}: continuing an interrupted preparation at unit {journal.get('next_unit', 0)}")
        return journal
    elif (out / "meta.json").exists() or any(p.exists() for p in ours):
        raise MiniGPTError(f"{out} already holds prepared data (meta.json, shards); use another --out, or --overwrite")
    remove_stale_temporaries(out, ["meta.json", JOURNAL])
    return {"fingerprint": fingerprint}


def _reconcile(out: Path, journal: dict) -> None:
    """A kill between a shard's rename and the next journal entry leaves it under its final name
    while the journal still calls it partial: give it back its partial name (it is rewritten the same)."""
    for name, state in journal.get("splits", {}).items():
        current = f"{name}_{len(state['done']):06d}.bin"
        if (out / current).exists() and not (out / f".{current}.partial").exists():
            os.replace(out / current, out / f".{current}.partial")


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


def _fraction_for(val_tokens: int, sources: list[Source], memory, text_field: str, tokenizer: str, seed: int) -> float:
    """The val fraction that gives about ``val_tokens`` tokens: their share of the corpus's tokens,
    estimated from its size and the tokens per byte of its first work unit."""
    if val_tokens < 1:
        raise MiniGPTError(f"val_tokens must be at least 1, got {val_tokens}")
    plan = Plan(sources, seed, 0.0, {i: "train" for i, s in enumerate(sources) if s.kind == "txt"}, text_field)
    first = next(iter(((u, None) for u in memory) if memory is not None else units(plan, None)))
    sample = "".join(text for _, text, _, _ in _documents(plan, *first))
    if tokenizer == "gpt2":
        per_byte = len(build_tokenizer("gpt2").encode(sample)) / max(1, len(sample.encode()))
    else:
        per_byte = len(sample) / max(1, len(sample.encode()))
    estimate = per_byte * sum(s.size * (GZIP_RATIO if s.kind == "jsonl.gz" else 1) for s in sources)
    if val_tokens >= estimate:
        raise MiniGPTError(f"val_tokens {val_tokens:,} is not below the corpus's estimated {estimate:,.0f} tokens")
    return val_tokens / estimate


def _finish(out: Path, shards: dict, counts: dict, tok: Tokenizer, dtype: np.dtype, sources: list[Source],
            from_memory: bool, plan: Plan, val_fraction: float, val_tokens: int | None, seed: int, shard_tokens: int,
            text_field: str, started: float) -> dict:
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
                                                        else "records") for i, s in enumerate(sources)}
                  if not from_memory else {}},
        "sources": [{"name": s.name, "kind": s.kind, "bytes": s.size} for s in sources] if not from_memory else [],
        "shard_tokens": shard_tokens,
        "text_field": text_field,
    }  # no timings or dates: the file is the same byte for byte however the run went
    write_json(out / "meta.json", meta)
    (out / JOURNAL).unlink(missing_ok=True)
    elapsed = time.perf_counter() - started
    return {**meta, "elapsed_s": elapsed}


def read_texts(inputs: str | Path | Sequence[str | Path], text_field: str = "text") -> Iterator[str]:
    """The text of every document of ``inputs`` (any format ``sources.py`` reads), in order, unsplit."""
    found = find_sources([inputs] if isinstance(inputs, (str, Path)) else list(inputs))
    plan = Plan(found, 0, 0.0, {i: "train" for i, s in enumerate(found) if s.kind == "txt"}, text_field)
    for unit, split in units(plan, None):
        for _, text, starts, _ in _documents(plan, unit, split):
            yield text
