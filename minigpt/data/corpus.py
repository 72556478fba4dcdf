"""Corpus preparation: text -> token files for pretraining.

``prepare_corpus`` turns a UTF-8 text file, or a folder of them, into ``train.bin`` / ``val.bin``
(flat arrays of token ids, uint16 when the vocabulary fits, else uint32) and ``meta.json``.
A single file is split at the 90% mark (on a line boundary); a folder is split by document, so no
book is cut in two and the validation set is text the model never saw in part.

The command line is ``python -m minigpt.data`` (``minigpt/cli/data.py``).
"""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..checkpoint import atomic_path, read_json, write_json
from ..errors import MiniGPTError
from .tokenizers import CharTokenizer, build_tokenizer, tokenizer_from_meta

CHUNK_CHARS = 1 << 20  # tokenise in ~1 MB pieces so a progress bar can move


# ----------------------------------------------------------------------------- reading text


def read_documents(input_path: str | Path) -> list[tuple[str, str]]:
    """(name, text) for a file, or for every ``*.txt`` below a folder (sorted by path)."""
    path = Path(input_path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise MiniGPTError(f"{path}: folder has no .txt files")
    else:
        raise MiniGPTError(f"input not found: {path}")
    docs = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise MiniGPTError(f"{f}: not UTF-8 text (byte {err.start}: {err.reason})") from None
        docs.append((str(f.relative_to(path) if path.is_dir() else f.name), text))
    if not any(text.strip() for _, text in docs):
        raise MiniGPTError(f"{path}: the corpus is empty")
    return docs


def split_documents(docs: list[tuple[str, str]], val_fraction: float, seed: int = 0):
    """Train/val split. One document: cut at a line boundary near (1 - val_fraction). Several: whole
    documents, drawn in a seeded order, go to val until it holds about val_fraction of the characters."""
    if not 0 < val_fraction < 1:
        raise MiniGPTError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(docs) == 1:
        name, text = docs[0]
        cut = text.rfind("\n", 0, int(len(text) * (1 - val_fraction))) + 1 or int(len(text) * (1 - val_fraction))
        return [(name, text[:cut])], [(name, text[cut:])]
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    total = sum(len(t) for _, t in docs)
    val_ids, val_chars = set(), 0
    for i in order:
        if val_chars >= val_fraction * total or len(val_ids) == len(docs) - 1:
            break
        val_ids.add(i)
        val_chars += len(docs[i][1])
    return [d for i, d in enumerate(docs) if i not in val_ids], [d for i, d in enumerate(docs) if i in val_ids]


def _pieces(text: str, size: int = CHUNK_CHARS):
    """Cut text into ~size pieces just after a newline that is followed by a non-space character.

    GPT-2's pre-tokeniser always splits there, so tokenising the pieces separately gives exactly
    the ids of tokenising the whole text.
    """
    start = 0
    while start < len(text):
        end = start + size
        while end < len(text) and not (text[end - 1] == "\n" and not text[end].isspace()):
            end += 1
        yield text[start:end]
        start = end


def encode_documents(tokenizer, docs: list[tuple[str, str]], desc: str, progress: bool = True) -> np.ndarray:
    """Token ids of all documents, each followed by the end-of-text token when the tokenizer has one."""
    total = sum(len(t) for _, t in docs)
    ids: list[int] = []
    # disable=None: a bar on a terminal, none in logs
    with tqdm(total=total, desc=desc, unit="char", unit_scale=True, disable=None if progress else True, file=sys.stderr) as bar:
        for name, text in docs:
            offset = 0
            for piece in _pieces(text):
                try:
                    ids.extend(tokenizer.encode(piece))
                except MiniGPTError as err:
                    if isinstance(tokenizer, CharTokenizer):
                        pos = offset + next(i for i, ch in enumerate(piece) if ch not in tokenizer.stoi)
                        line = text.count("\n", 0, pos) + 1
                        raise MiniGPTError(
                            f"{name}:{line}: character {text[pos]!r} (U+{ord(text[pos]):04X}) is not in the "
                            f"character vocabulary ({tokenizer.vocab_size} characters)"
                        ) from None
                    raise MiniGPTError(f"{name}: {err}") from None
                offset += len(piece)
                bar.update(len(piece))
            if tokenizer.eot_token is not None:
                ids.append(tokenizer.eot_token)
    return np.asarray(ids, dtype=np.int64)


# ----------------------------------------------------------------------------- preparing


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _write_tokens(path: Path, ids: np.ndarray, dtype: np.dtype) -> None:
    with atomic_path(path) as tmp:
        ids.astype(dtype).tofile(tmp)


def prepare_corpus(
    input_path: str | Path,
    out_dir: str | Path,
    tokenizer: str = "char",
    val_fraction: float = 0.1,
    char_vocab_from: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    char_unknown: str | None = None,
    docs: list[tuple[str, str]] | None = None,
) -> dict:
    """Tokenise a corpus into ``out_dir/{train,val}.bin`` + ``meta.json``; returns the meta dict.

    tokenizer: "char" (vocabulary from the corpus, or from ``char_vocab_from``, a meta.json whose
    vocabulary must then cover every character) or "gpt2". ``char_unknown``: a character added to a
    vocabulary built from the corpus to stand, later, for any character the corpus lacks (so that a
    model trained on it can read, say, classification texts with characters it never saw).
    ``docs``: (name, text) documents to use instead of reading ``input_path`` (then only a label).
    """
    if docs is None:
        docs = read_documents(input_path)
    train_docs, val_docs = split_documents(docs, val_fraction, seed)
    if tokenizer == "char" and char_vocab_from is not None:
        tok = tokenizer_from_meta(read_json(char_vocab_from)["tokenizer"])
    else:
        tok = build_tokenizer(tokenizer, "".join(t for _, t in docs) if tokenizer == "char" else "", char_unknown)

    train_ids = encode_documents(tok, train_docs, "train", progress)
    val_ids = encode_documents(tok, val_docs, "val", progress)
    dtype = token_dtype(tok.vocab_size)
    out = Path(out_dir)
    _write_tokens(out / "train.bin", train_ids, dtype)
    _write_tokens(out / "val.bin", val_ids, dtype)
    digest = hashlib.sha256()
    for name, text in docs:
        digest.update(name.encode() + b"\0" + text.encode("utf-8") + b"\0")
    meta = {
        "tokenizer": tok.to_meta(),
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "train_tokens": int(train_ids.size),
        "val_tokens": int(val_ids.size),
        "val_fraction": val_fraction,
        "source": str(input_path),
        "source_sha256": digest.hexdigest(),
        "train_documents": [n for n, _ in train_docs],
        "val_documents": [n for n, _ in val_docs],
    }
    write_json(out / "meta.json", meta)
    return meta
