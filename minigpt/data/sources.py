"""Where a corpus comes from: files, folders and globs of ``.txt``, ``.jsonl``, ``.jsonl.gz`` and
``.parquet``, read as a stream of documents, cut into ordered work units that a pool of workers
can tokenise without holding more than one unit each.

A ``.txt`` file is one document. Each line of a ``.jsonl`` / ``.jsonl.gz`` file is one document (the
string under ``text_field``), and so is each row of a ``.parquet`` file (pyarrow, the optional
``minigpt[data]`` extra). A ``Unit`` is a byte range of one file (plain files), the decompressed
lines themselves (gzip), or one row group (parquet); units are cut where tokenising the pieces
separately gives exactly the ids of the whole, so their order alone fixes the output. A byte-order
mark opening a text file is dropped (as ``utf-8-sig`` reads it); damaged gzip or parquet data is a
``MiniGPTError`` naming the file.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..errors import MiniGPTError

KINDS = {".txt": "txt", ".jsonl": "jsonl", ".jsonl.gz": "jsonl.gz", ".parquet": "parquet"}
UNIT_BYTES = 1 << 22  # about 4 MB of input per work unit
PARQUET_HINT = "reading .parquet files needs pyarrow: pip install 'minigpt[data]'"
BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark: dropped at the start of a text file, as utf-8-sig reads it


@dataclass(frozen=True)
class Source:
    """One input file."""

    path: Path
    name: str  # how its documents are named: the path relative to the input it was found under
    kind: str  # "txt", "jsonl", "jsonl.gz" or "parquet"
    size: int  # bytes on disk


def kind_of(path: Path) -> str | None:
    name = path.name.lower()
    return next((kind for suffix, kind in sorted(KINDS.items(), key=lambda kv: -len(kv[0])) if name.endswith(suffix)),
                None)


def find_sources(inputs: Sequence[str | Path]) -> list[Source]:
    """The files that ``inputs`` name, in a fixed order: each file as given, each folder's supported
    files below it (sorted by path), each glob's matches (sorted). A file named explicitly with
    another extension is read as text."""
    found: list[Source] = []
    seen: set[Path] = set()

    def add(path: Path, name: str, kind: str | None) -> None:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            found.append(Source(path, name, kind or "txt", path.stat().st_size))

    for item in inputs:
        item = os.path.expanduser(str(item))
        if any(ch in item for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                raise MiniGPTError(f"input {item!r} matches no file")
            for match in matches:
                add(match, str(match), kind_of(match))
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and kind_of(p) is not None)
            if not files:
                raise MiniGPTError(f"{path}: folder has no .txt, .jsonl, .jsonl.gz or .parquet files")
            for file in files:
                add(file, str(file.relative_to(path)), kind_of(file))
        elif path.is_file():
            add(path, path.name, kind_of(path))
        else:
            raise MiniGPTError(f"input not found: {path}")
    return found


# ----------------------------------------------------------------------------- work units


@dataclass(frozen=True)
class Unit:
    """A piece of the corpus for one worker: whole JSON lines or parquet rows, or a stretch of one
    text document. ``index`` is its place in the stream."""

    index: int
    source: int  # index into the list of sources
    start: int  # byte offset in the file (plain files), or the row group (parquet)
    end: int  # end byte offset (plain files); unused for parquet
    first_line: int  # line number of the unit's first line (gzip), or 0: counted from the file if needed
    data: bytes | None = None  # the unit's bytes when they cannot be read back from the file (gzip)
    document_start: bool = True  # a text unit that begins its document (which then gets the end-of-text prefix)


def safe_cut(block: bytes, kind: str) -> int:
    """Where in ``block`` (the bytes after a planned cut) a unit may end: after a newline. In text,
    only a lone newline between two printable ASCII characters (as in "end.\nNext"), where GPT-2's
    pre-tokeniser always splits, so the pieces encode to the ids of the whole. (After a longer run of
    whitespace it does not: "\n\n" then a letter is two pre-tokens in the whole but one at the end
    of a piece.) Returns -1 when the block has none."""
    at = 0
    while True:
        newline = block.find(b"\n", at)
        if newline < 0 or newline + 1 >= len(block):
            return -1
        if kind != "txt" or (newline > 0 and 0x21 <= block[newline - 1] <= 0x7E and 0x21 <= block[newline + 1] <= 0x7E):
            return newline + 1
        at = newline + 1


def plain_units(source: Source, source_index: int, first_index: int, begin: int = 0, end: int | None = None,
                unit_bytes: int | None = None) -> list[Unit]:
    """Byte ranges of roughly ``unit_bytes`` (default UNIT_BYTES) covering [begin, end) of a .txt or
    .jsonl file, cut safely."""
    end = source.size if end is None else end
    unit_bytes = unit_bytes or UNIT_BYTES
    units, start = [], begin
    with open(source.path, "rb") as f:
        while start < end:
            stop = start + unit_bytes
            while stop < end:
                f.seek(stop)
                cut = safe_cut(f.read(1 << 16), source.kind)
                if cut >= 0:
                    stop += cut
                    break
                stop += 1 << 16  # no safe place in this block: look further
            stop = min(stop, end)
            units.append(Unit(first_index + len(units), source_index, start, stop, 0,
                              document_start=start == begin))
            start = stop
    return units


def gzip_units(source: Source, source_index: int, first_index: int, unit_bytes: int | None = None) -> Iterator[Unit]:
    """Whole decompressed lines of a .jsonl.gz file, about ``unit_bytes`` (default UNIT_BYTES) a unit."""
    unit_bytes = unit_bytes or UNIT_BYTES
    line_no, index, lines, size, offset = 1, first_index, [], 0, 0
    try:
        with gzip.open(source.path, "rb") as f:
            for line in f:
                lines.append(line)
                size += len(line)
                if size >= unit_bytes:
                    yield Unit(index, source_index, offset, offset + size, line_no, b"".join(lines))
                    index, line_no, offset, lines, size = index + 1, line_no + len(lines), offset + size, [], 0
            if lines:
                yield Unit(index, source_index, offset, offset + size, line_no, b"".join(lines))
    # damaged bytes: zlib.error (bad deflate data), BadGzipFile (an OSError: header, CRC), EOFError (cut short)
    except (OSError, EOFError, zlib.error) as err:
        where = f"; damaged after line {line_no + len(lines) - 1}" if line_no + len(lines) > 1 else ""
        raise MiniGPTError(f"{source.path}: not a readable gzip file ({err}){where}") from None


def parquet_file(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MiniGPTError(f"{path}: {PARQUET_HINT}") from None
    try:
        return pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid (and others) for a file it cannot read
        raise MiniGPTError(f"{path}: not a readable parquet file ({err})") from None


def parquet_units(source: Source, source_index: int, first_index: int) -> list[Unit]:
    """One unit per row group."""
    groups = parquet_file(source.path).metadata.num_row_groups
    return [Unit(first_index + g, source_index, g, 0, 0) for g in range(groups)]


# ----------------------------------------------------------------------------- reading a unit


def line_number(path: Path, offset: int) -> int:
    """The line (1-based) of a plain file on which byte ``offset`` lies."""
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def unit_text(source: Source, unit: Unit) -> tuple[str, int]:
    """A text unit's characters and the byte of the file at which they begin; bytes that are not
    UTF-8 are an error naming the file and line. A byte-order mark that opens the file is no text
    (utf-8-sig drops it too): only the unit at byte 0 can hold one, so every run drops the same bytes."""
    with open(source.path, "rb") as f:
        f.seek(unit.start)
        data = f.read(unit.end - unit.start)
    skip = len(BOM) if unit.start == 0 and data.startswith(BOM) else 0
    try:
        return data[skip:].decode("utf-8"), unit.start + skip
    except UnicodeDecodeError as err:
        line = line_number(source.path, unit.start + skip + err.start)
        raise MiniGPTError(f"{source.path}:{line}: not UTF-8 text (byte {unit.start + skip + err.start}: "
                           f"{err.reason})") from None


def unit_records(source: Source, unit: Unit, text_field: str) -> Iterator[tuple[str, str, Callable[[], str]]]:
    """(document key, text, where) for each record of a JSONL or parquet unit. The key (file and
    position) is what the train/val split is drawn from; ``where()`` names the record in messages
    (for a plain file it counts lines, so it is only called when something is wrong)."""
    if source.kind == "parquet":
        file = parquet_file(source.path)
        names = file.schema_arrow.names
        if text_field not in names:
            raise MiniGPTError(f"{source.path}: no column {text_field!r} (--text_field); the columns are {names}")
        try:  # a damaged page raises OSError or ArrowInvalid (among others) only when its row group is read
            texts = file.read_row_group(unit.start, columns=[text_field]).column(0).to_pylist()
        except Exception as err:
            raise MiniGPTError(f"{source.path}: row group {unit.start}: not a readable parquet file ({err})") from None
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise MiniGPTError(f"{source.path}: row group {unit.start}, row {row}: {text_field!r} is "
                                   f"{type(text).__name__}, not text")
            yield f"{source.name}#{unit.start}:{row}", text, lambda row=row: f"{source.path}: row group {unit.start}, row {row}"
        return
    if unit.data is not None:  # gzip (start counts decompressed bytes), or documents held in memory
        data = unit.data
    else:
        with open(source.path, "rb") as f:
            f.seek(unit.start)
            data = f.read(unit.end - unit.start)
    name = source.name.removesuffix(".gz")  # a .jsonl and its gzip draw the same split
    offset = 0
    for i, raw in enumerate(data.split(b"\n")):
        line_offset = offset
        offset += len(raw) + 1
        if not raw.strip():
            continue

        def where(i=i, line_offset=line_offset) -> str:
            line = unit.first_line + i if unit.data is not None else line_number(source.path, unit.start + line_offset)
            return f"{source.path}:{line}"

        try:
            record = json.loads(raw)
        except UnicodeDecodeError as err:
            raise MiniGPTError(f"{where()}: not UTF-8 text ({err.reason})") from None
        except json.JSONDecodeError as err:
            raise MiniGPTError(f"{where()}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise MiniGPTError(f"{where()}: a JSON {type(record).__name__}, not an object with a {text_field!r} key")
        if text_field not in record:
            raise MiniGPTError(f"{where()}: no key {text_field!r} (--text_field); the keys are {sorted(record)}")
        text = record[text_field]
        if not isinstance(text, str):
            raise MiniGPTError(f"{where()}: {text_field!r} is {type(text).__name__}, not text")
        yield f"{name}@{unit.start + line_offset}", text, where
