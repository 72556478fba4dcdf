"""Labelled text for classification: CSV/TSV/JSONL readers, label maps, stratified splits, class
weights, and ``EncodedTexts`` (token ids and label ids of a split, read as a ``LongText`` rule says
and batched with right padding)."""

from __future__ import annotations

import csv
import json
import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..errors import MiniGPTError
from .padding import LongText, pad
from .tokenizers import EOT_TEXT, Tokenizer, document_start

log = logging.getLogger(__name__)

FORMATS = ("auto", "csv", "tsv", "jsonl")  # auto: from the file extension


@dataclass
class LabelledText:
    """(text, label) rows read from a file. With several text columns, ``parts`` keeps each row's
    columns and ``texts`` holds them joined by ``separator``."""

    texts: list[str]
    labels: list[str]
    source: str
    lines: list[int] = field(default_factory=list)  # the line in the file where each row starts
    skipped: list[int] = field(default_factory=list)  # lines of bad rows that were skipped
    parts: list[tuple[str, ...]] | None = None
    separator: str = "\n"

    def subset(self, indices: Sequence[int]) -> "LabelledText":
        parts = [self.parts[i] for i in indices] if self.parts is not None else None
        return LabelledText([self.texts[i] for i in indices], [self.labels[i] for i in indices], self.source,
                            [self.lines[i] for i in indices], parts=parts, separator=self.separator)

    def check_labels(self, names: Sequence[str]) -> None:
        """Every label must be one of ``names`` (the classes seen in training)."""
        known = set(names)
        for label, line in zip(self.labels, self.lines):
            if label not in known:
                raise MiniGPTError(f"{self.source}:{line}: label {label!r} is not one of the classes {list(names)}")


def _column(header: list[str] | None, spec: str, path: Path, role: str) -> int:
    """A column given by name (files with a header) or by 0-based index."""
    spec = str(spec).strip()
    if spec.isdigit():
        return int(spec)
    if header is None:
        raise MiniGPTError(f"{path}: has no header, so the {role} column must be a 0-based index, got {spec!r}")
    if spec not in header:
        raise MiniGPTError(f"{path}: no {role} column {spec!r}; the columns are {header}")
    return header.index(spec)


def _records(path: Path, fmt: str) -> Iterator[tuple[int, list[str] | dict]]:
    """(line where the record starts, fields) for each record of a CSV, TSV or JSONL file.

    CSV is read by the csv module from the file itself, so a quoted field may hold newlines; TSV
    and JSONL are one record per line (only \\n, \\r\\n or \\r end a line, never U+2028 inside a text).
    """
    try:
        with open(path, encoding="utf-8-sig", newline="" if fmt == "csv" else None) as f:
            if fmt == "csv":
                reader = csv.reader(f, strict=True)
                start = 1
                try:
                    for row in reader:
                        yield start, row
                        start = reader.line_num + 1
                except csv.Error as err:
                    raise MiniGPTError(f"{path}:{reader.line_num}: not valid CSV ({err})") from None
                return
            for line_no, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if fmt == "tsv":
                    yield line_no, line.split("\t")
                elif line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise MiniGPTError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
                    if not isinstance(row, dict):
                        raise MiniGPTError(f"{path}:{line_no}: a JSON {type(row).__name__}, not an object with the "
                                           f"text and label keys")
                    yield line_no, row
    except UnicodeDecodeError as err:
        raise MiniGPTError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None


def read_labelled(
    path: str | Path,
    text_column: str | int = "text",
    label_column: str | int = "label",
    fmt: str = "auto",
    header: bool = True,
    skip_bad_rows: bool = False,
    separator: str = "\n",
) -> LabelledText:
    """Read (text, label) rows from a .csv (RFC 4180 quoting), .tsv (tab-separated, no quoting, as
    SST-2 and the SMS Spam Collection are written) or .jsonl file.

    ``text_column`` names one column, or several separated by commas ("title,description"), whose
    texts are then joined by ``separator``. A row with a missing or empty text or label is an error
    naming its line, or is skipped (and counted in ``skipped``) with ``skip_bad_rows``.
    """
    path = Path(path)
    if path.is_dir():
        raise MiniGPTError(f"data file {path} is a folder, not a file")
    if not path.is_file():
        raise MiniGPTError(f"data file not found: {path}")
    if fmt == "auto":
        fmt = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}.get(path.suffix.lower(), "tsv")
    if fmt not in FORMATS:
        raise MiniGPTError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    text_specs = [t.strip() for t in str(text_column).split(",") if t.strip()]
    if not text_specs:
        raise MiniGPTError("text_column is empty; name the column(s) that hold the text")
    data = LabelledText([], [], str(path), parts=[] if len(text_specs) > 1 else None, separator=separator)
    records = _records(path, fmt)
    columns = None  # (text column indices, label column index) for CSV/TSV
    if fmt != "jsonl":
        names = None
        if header:
            first = next(records, None)
            if first is None:
                raise MiniGPTError(f"{path}: the file is empty")
            names = [n.strip() for n in first[1]]
        text_cols, label_col = [_column(names, t, path, "text") for t in text_specs], _column(names, label_column, path, "label")
        last = len(names) - 1 if names else max(*text_cols, label_col)  # the last column the file (or this read) has
        columns = text_cols, label_col, last
    for line_no, row in records:
        if columns is None:  # JSONL: keys by name
            for key in (*text_specs, label_column):
                if key not in row:
                    raise MiniGPTError(f"{path}:{line_no}: no key {key!r}; the keys are {sorted(row)}")
            texts, label = [row[k] for k in text_specs], row[label_column]
        else:
            if not row or row == [""]:
                continue  # a blank line
            text_cols, label_col, last = columns
            if fmt == "tsv" and text_cols == [last] and len(row) > last + 1:
                row = row[:last] + ["\t".join(row[last:])]  # a tab inside the last column, the text
            texts = [row[i] if i < len(row) else None for i in text_cols]
            label = row[label_col] if label_col < len(row) else None
        _add_row(data, path, line_no, texts, label, skip_bad_rows)
    if not data.texts:
        raise MiniGPTError(f"{path}: no usable rows" if data.skipped or fmt == "jsonl" or not header
                           else f"{path}: the file has a header line and no rows")
    if data.skipped:
        log.warning(f"{path}: skipped {len(data.skipped)} rows with a missing text or label (lines "
                    f"{', '.join(map(str, data.skipped[:10]))}{' ...' if len(data.skipped) > 10 else ''})")
    if not header and fmt != "jsonl":
        _check_no_header_row(data, path)
    return data


def _add_row(data: LabelledText, path: Path, line_no: int, texts: list, label, skip_bad_rows: bool) -> None:
    texts = [t.strip() if isinstance(t, str) else t for t in texts]
    label = str(label).strip() if label is not None and not isinstance(label, (dict, list)) else ""
    bad_text = next((i for i, t in enumerate(texts) if not isinstance(t, str) or not t), None)
    if bad_text is not None or not label:
        if skip_bad_rows:
            data.skipped.append(line_no)
            return
        what = "text" if bad_text is not None else "label"
        raise MiniGPTError(f"{path}:{line_no}: missing {what} (use skip_bad_rows to skip such rows)")
    data.texts.append(data.separator.join(texts))
    data.labels.append(label)
    data.lines.append(line_no)
    if data.parts is not None:
        data.parts.append(tuple(texts))


def _check_no_header_row(data: LabelledText, path: Path) -> None:
    """With ``header = false``, a first row whose label occurs nowhere else, in a file whose other
    labels repeat, is almost surely a header line read as data."""
    if data.lines[0] != 1 or len(data.labels) < 3:
        return
    counts = Counter(data.labels)
    first = data.labels[0]
    if counts[first] == 1 and all(n > 1 for label, n in counts.items() if label != first):
        raise MiniGPTError(f"{path}:1: the label {first!r} occurs only on the first line: a header line? "
                           f"Set header = true (or fix the line)")


def label_map(labels: Sequence[str], given: Sequence[str] | None = None) -> list[str]:
    """id -> label: the given order, or the sorted distinct labels. One class is an error."""
    names = list(given) if given else sorted(set(labels), key=lambda s: (len(s), s) if s.isdigit() else (0, s))
    if len(set(names)) < 2:
        raise MiniGPTError(f"classification needs at least 2 classes; the labels are {sorted(set(labels))}")
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise MiniGPTError(f"labels {unknown[:5]} are not among the known classes {names}")
    return names


def stratified_split(labels: Sequence[str], fractions: Sequence[float], seed: int = 0) -> list[list[int]]:
    """Index lists for each fraction (e.g. 0.7, 0.1, 0.2), each class split in the same proportions."""
    if abs(sum(fractions) - 1) > 1e-6 or any(f <= 0 for f in fractions):
        raise MiniGPTError(f"split fractions must be positive and sum to 1, got {list(fractions)}")
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    rng = random.Random(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for label in sorted(by_class):
        idx = by_class[label]
        rng.shuffle(idx)
        bounds, acc = [], 0.0
        for f in fractions[:-1]:
            acc += f
            bounds.append(round(acc * len(idx)))
        for part, (lo, hi) in zip(parts, zip([0, *bounds], [*bounds, len(idx)])):
            part.extend(idx[lo:hi])
    for part in parts:
        rng.shuffle(part)
    return parts


def downsample(data: LabelledText, seed: int) -> LabelledText:
    """Every class cut to the size of the smallest, by a seeded random choice (original order kept)."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(data.labels):
        by_class[label].append(i)
    n = min(len(v) for v in by_class.values())
    rng = random.Random(seed)
    keep = sorted(i for label in sorted(by_class) for i in rng.sample(by_class[label], n))
    return data.subset(keep)


def class_weights(label_ids: Sequence[int], n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (n / (k · count)), as scikit-learn's class_weight="balanced"."""
    counts = Counter(label_ids)
    n = len(label_ids)
    return torch.tensor([n / (n_classes * counts[c]) if counts[c] else 0.0 for c in range(n_classes)])


def text_start(tok: Tokenizer, rule: LongText) -> int | None:
    """The token before every text a classifier reads: the tokenizer's BOS (Llama's ``<s>``), or, with
    ``document_start``, the end-of-text token where there is no BOS (GPT-2's ``<|endoftext|>``)."""
    if not rule.document_start:
        return tok.bos_token
    start = document_start(tok)
    if start is None:
        raise MiniGPTError(f"document_start needs a tokenizer with a beginning- or end-of-text token; the "
                           f"{getattr(tok, 'kind', 'given')} tokenizer has neither")
    return start


class EncodedTexts:
    """Token ids and label ids of a split, batched on demand with right padding.

    A text longer than ``rule.max_length`` is read as ``rule`` says (``padding.LongText``): one
    truncated piece, or several windows. Rows of several text columns joined by ``<|endoftext|>``
    get the tokenizer's end-of-text token between their columns (a text pair), not those characters
    as text.
    """

    def __init__(self, data: LabelledText, tok: Tokenizer, names: Sequence[str], rule: LongText):
        if data.parts is not None and data.separator == EOT_TEXT:
            if tok.eot_token is None:
                raise MiniGPTError(f"{data.source}: text_separator {EOT_TEXT} needs a tokenizer with an end-of-text "
                                   f"token; the {getattr(tok, 'kind', 'given')} tokenizer has none")
            self.ids = [sum(([tok.eot_token] + tok.encode(p) for p in row[1:]), tok.encode(row[0])) for row in data.parts]
        else:
            encode = getattr(tok, "encode_batch", None)
            self.ids = encode(data.texts) if encode else [tok.encode(t) for t in data.texts]
        empty = next((i for i, x in enumerate(self.ids) if not x), None)
        start = text_start(tok, rule)
        if start is not None:  # before every text, as before every document in the model's pretraining
            self.ids = [[start] + x if x else x for x in self.ids]
        if empty is not None:
            where = f"line {data.lines[empty]}" if data.lines else f"text {empty + 1}"
            raise MiniGPTError(f"{data.source}: {where} encodes to no tokens; a text needs at least one character")
        self.labels = torch.tensor([list(names).index(label) for label in data.labels])
        self.rule, self.bos = rule, start
        self.max_length = rule.max_length
        self.n_truncated = sum(len(x) > rule.max_length for x in self.ids)  # texts longer than one piece

    def __len__(self) -> int:
        return len(self.ids)

    def pieces(self, index: int) -> list[list[int]]:
        """What the classifier reads of text ``index``: one token list, or its windows."""
        return self.rule.pieces(self.ids[index], self.bos)

    def batch(self, indices: Sequence[int], device: torch.device,
              multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids (W, T), attention mask (W, T), label ids (B,), text (W,)) for these B examples, on
        ``device``: W pieces (one per text, or each text's windows), right-padded to a multiple of
        ``multiple`` tokens (at most max_length); ``text[w]`` is the example (0..B-1) of piece w."""
        pieces = [self.pieces(i) for i in indices]
        text = torch.tensor([b for b, ps in enumerate(pieces) for _ in ps], dtype=torch.long)
        ids, mask = pad([p for ps in pieces for p in ps], multiple=multiple, limit=self.max_length)
        W, T = ids.shape
        block = torch.cat([ids.flatten(), mask.flatten(), self.labels[list(indices)], text])  # one copy, not four
        if device.type == "cuda":  # from pinned memory, without waiting: the GPU still runs the last step
            block = block.pin_memory().to(device, non_blocking=True)
        else:
            block = block.to(device)
        return (block[:W * T].view(W, T), block[W * T:2 * W * T].view(W, T),
                block[2 * W * T:2 * W * T + len(indices)], block[2 * W * T + len(indices):])
