"""Labelled text for classification: CSV/TSV/JSONL readers, label maps, stratified splits, class
weights, and ``EncodedTexts`` (token ids and label ids of a split, batched with right padding)."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..errors import MiniGPTError
from .padding import pad, truncate
from .tokenizers import Tokenizer

FORMATS = ("auto", "csv", "tsv", "jsonl")  # auto: from the file extension


@dataclass
class LabelledText:
    texts: list[str]
    labels: list[str]
    source: str
    lines: list[int] = field(default_factory=list)  # line number of each row in the file
    skipped: list[int] = field(default_factory=list)  # line numbers of bad rows that were skipped

    def subset(self, indices: Sequence[int]) -> "LabelledText":
        return LabelledText([self.texts[i] for i in indices], [self.labels[i] for i in indices], self.source,
                            [self.lines[i] for i in indices])

    def check_labels(self, names: Sequence[str]) -> None:
        """Every label must be one of ``names`` (the classes seen in training)."""
        known = set(names)
        for label, line in zip(self.labels, self.lines):
            if label not in known:
                raise MiniGPTError(f"{self.source}:{line}: label {label!r} is not one of the classes {list(names)}")


def _column(header: list[str] | None, spec: str | int, path: Path, role: str) -> int:
    """A column given by name (files with a header) or by 0-based index."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return int(spec)
    if header is None:
        raise MiniGPTError(f"{path}: has no header, so the {role} column must be a 0-based index, got {spec!r}")
    if spec not in header:
        raise MiniGPTError(f"{path}: no {role} column {spec!r}; the columns are {header}")
    return header.index(spec)


def read_labelled(
    path: str | Path,
    text_column: str | int = "text",
    label_column: str | int = "label",
    fmt: str = "auto",
    header: bool = True,
    skip_bad_rows: bool = False,
) -> LabelledText:
    """Read (text, label) rows from a .csv (RFC 4180 quoting), .tsv (tab-separated, no quoting, as
    SST-2 and the SMS Spam Collection are written) or .jsonl file. A row with a missing or empty
    text or label is an error naming its line, or is skipped and counted with ``skip_bad_rows``."""
    path = Path(path)
    if not path.is_file():
        raise MiniGPTError(f"data file not found: {path}")
    if fmt == "auto":
        fmt = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}.get(path.suffix.lower(), "tsv")
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise MiniGPTError(f"{path}: not UTF-8 text (byte {err.start})") from None
    if not raw.strip():
        raise MiniGPTError(f"{path}: the file is empty")
    data = LabelledText([], [], str(path))

    def add(line_no: int, text, label) -> None:
        text = text.strip() if isinstance(text, str) else text
        label = str(label).strip() if label is not None else ""
        if not text or not isinstance(text, str) or not label:
            if skip_bad_rows:
                data.skipped.append(line_no)
                return
            what = "text" if not text or not isinstance(text, str) else "label"
            raise MiniGPTError(f"{path}:{line_no}: missing {what} (use skip_bad_rows to skip such rows)")
        data.texts.append(text)
        data.labels.append(label)
        data.lines.append(line_no)

    if fmt == "jsonl":
        for line_no, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise MiniGPTError(f"{path}:{line_no}: not a JSON object") from None
            for spec in (text_column, label_column):
                if spec not in row:
                    raise MiniGPTError(f"{path}:{line_no}: no key {spec!r}; the keys are {sorted(row)}")
            add(line_no, row[text_column], row[label_column])
    elif fmt in ("csv", "tsv"):
        lines = raw.splitlines()
        if fmt == "csv":
            rows = list(csv.reader(lines))
        else:
            rows = [line.split("\t") for line in lines]
        names = rows[0] if header else None
        t_col, l_col = _column(names, text_column, path, "text"), _column(names, label_column, path, "label")
        first = 1 if header else 0
        for line_no, row in enumerate(rows[first:], start=first + 1):
            if not row or row == [""]:
                continue
            if fmt == "tsv" and len(row) > max(t_col, l_col) + 1 and t_col == len(names or row) - 1:
                row = row[:t_col] + ["\t".join(row[t_col:])]  # a tab inside the last (text) column
            get = lambda i: row[i] if i < len(row) else None
            add(line_no, get(t_col), get(l_col))
    else:
        raise MiniGPTError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not data.texts:
        raise MiniGPTError(f"{path}: no usable rows")
    return data


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


class EncodedTexts:
    """Token ids and label ids of a split, batched on demand with right padding."""

    def __init__(self, data: LabelledText, tok: Tokenizer, names: Sequence[str], max_length: int, keep: str = "head"):
        encode = getattr(tok, "encode_batch", None)
        self.ids = encode(data.texts) if encode else [tok.encode(t) for t in data.texts]
        self.labels = torch.tensor([list(names).index(label) for label in data.labels])
        self.max_length, self.keep = max_length, keep
        self.n_truncated = sum(len(x) > max_length for x in self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids (B, T), attention mask (B, T), label ids (B,)) of these examples, on ``device``."""
        ids, mask = pad(truncate([self.ids[i] for i in indices], self.max_length, self.keep))
        return ids.to(device), mask.to(device), self.labels[list(indices)].to(device)
