"""Corpus preparation (text -> token memmaps) and random-window batch sampling for pretraining.

``prepare_corpus`` turns a UTF-8 text file, or a folder of them, into ``train.bin`` / ``val.bin``
(flat arrays of token ids, uint16 when the vocabulary fits, else uint32) and ``meta.json``.
A single file is split at the 90% mark (on a line boundary); a folder is split by document, so no
book is cut in two and the validation set is text the model never saw in part.

Run ``python -m minigpt.data --help`` for the command line.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import atomic_path, read_json, write_json
from .errors import MiniGPTError
from .tokenizer import CharTokenizer, GPT2Tokenizer, tokenizer_from_meta

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
    if tokenizer == "char":
        if char_vocab_from is not None:
            tok = tokenizer_from_meta(read_json(char_vocab_from)["tokenizer"])
        else:
            tok = CharTokenizer.from_text("".join(t for _, t in docs), unknown=char_unknown)
    elif tokenizer == "gpt2":
        tok = GPT2Tokenizer()
    else:
        raise MiniGPTError(f"unknown tokenizer {tokenizer!r}; expected 'char' or 'gpt2'")

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


# ----------------------------------------------------------------------------- sampling


def load_meta(data_dir: str | Path) -> dict:
    data_dir = Path(data_dir)
    meta_path = data_dir / "meta.json"
    if not meta_path.is_file():
        raise MiniGPTError(
            f"{data_dir}: no meta.json; prepare the data first: python -m minigpt.data --input TEXT --out {data_dir}"
        )
    meta = read_json(meta_path)
    for key in ("tokenizer", "vocab_size", "dtype"):
        if key not in meta:
            raise MiniGPTError(f"{meta_path}: missing key {key!r}")
    return meta


def open_tokens(data_dir: str | Path, split: str, meta: dict) -> np.memmap:
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise MiniGPTError(f"{path} not found; prepare the data first (python -m minigpt.data --help)")
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")


class RandomWindows:
    """Random (x, y) windows of ``block_size`` tokens from a token file; y is x shifted by one.

    The windows come from a private, seeded ``torch.Generator``, whose state is saved in checkpoints
    so a resumed run draws exactly the batches it would have drawn.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, device: torch.device, seed: int):
        if len(tokens) <= block_size + 1:
            raise MiniGPTError(
                f"split has {len(tokens)} tokens, fewer than block_size + 2 = {block_size + 2}; "
                f"use a smaller block_size or more text"
            )
        self.tokens, self.block_size, self.batch_size, self.device = tokens, block_size, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.block_size
        starts = torch.randint(len(self.tokens) - T - 1, (self.batch_size,), generator=self.generator).tolist()
        window = np.stack([self.tokens[s: s + T + 1] for s in starts]).astype(np.int64)  # (B, T + 1)
        batch = torch.from_numpy(window)
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T) inputs and next-token targets
        if self.device.type == "cuda":  # pinned host memory lets the copy overlap with compute
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minigpt.data",
        description="Tokenise a UTF-8 text file or a folder of .txt files into train.bin, val.bin and meta.json.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="a text file, or a folder of .txt files (split by document)")
    source.add_argument("--texts_of", metavar="CONFIG",
                        help="the training texts (labels dropped, one document each) of a classification config: "
                             "in-domain text for continued pretraining (python train.py ... --init_from=...)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tokenizer", default="char", choices=["char", "gpt2"], help="default: char")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="share held out for validation (default 0.1)")
    parser.add_argument("--char_vocab_from", help="meta.json whose character vocabulary to reuse")
    parser.add_argument("--seed", type=int, default=0, help="order in which documents are drawn for val")
    parser.add_argument("--char_unknown", metavar="CHAR",
                        help="char tokenizer: add this character (e.g. U+FFFD, $'\\ufffd' in bash) to stand for "
                             "any character outside the vocabulary when the model later reads other text")
    args = parser.parse_args(argv)
    if args.char_unknown is not None and (len(args.char_unknown) != 1 or args.tokenizer != "char"):
        parser.error("--char_unknown takes one character, with --tokenizer char")
    docs = None
    if args.texts_of:
        from .classify import training_documents  # classification data reading lives there

        docs = training_documents(args.texts_of)
    meta = prepare_corpus(args.input or f"{args.texts_of} (training texts)", args.out, args.tokenizer,
                          args.val_fraction, args.char_vocab_from, args.seed, char_unknown=args.char_unknown, docs=docs)
    print(f"{args.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, "
          f"vocabulary {meta['vocab_size']:,} ({meta['tokenizer']['kind']}), stored as {meta['dtype']}")
    return 0


if __name__ == "__main__":
    from .cli import run_cli

    sys.exit(run_cli(main))
