"""``python -m minigpt.data --input TEXT --out DIR``: tokenise a corpus into train.bin, val.bin and meta.json."""

from __future__ import annotations

from ..data.corpus import prepare_corpus
from ..data.tokenizers import TOKENIZER_KINDS
from ..train.classify import training_documents
from . import ArgumentParser


def parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m minigpt.data",
        description="Tokenise a UTF-8 text file or a folder of .txt files into train.bin, val.bin and meta.json.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="a text file, or a folder of .txt files (split by document)")
    source.add_argument("--texts_of", metavar="CONFIG",
                        help="the training texts (labels dropped, one document each) of a classification config: "
                             "in-domain text for continued pretraining (python train.py ... --init_from=...)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tokenizer", default="char", choices=TOKENIZER_KINDS, help="default: char")
    p.add_argument("--val_fraction", type=float, default=0.1, help="share held out for validation (default 0.1)")
    p.add_argument("--char_vocab_from", help="meta.json whose character vocabulary to reuse")
    p.add_argument("--seed", type=int, default=0, help="order in which documents are drawn for val")
    p.add_argument("--char_unknown", metavar="CHAR",
                   help="char tokenizer: add this character (e.g. U+FFFD, $'\\ufffd' in bash) to stand for "
                        "any character outside the vocabulary when the model later reads other text")
    return p


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.char_unknown is not None and (len(args.char_unknown) != 1 or args.tokenizer != "char"):
        p.error("--char_unknown takes one character, with --tokenizer char")
    docs = training_documents(args.texts_of) if args.texts_of else None
    meta = prepare_corpus(args.input or f"{args.texts_of} (training texts)", args.out, args.tokenizer,
                          args.val_fraction, args.char_vocab_from, args.seed, char_unknown=args.char_unknown, docs=docs)
    print(f"{args.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, "
          f"vocabulary {meta['vocab_size']:,} ({meta['tokenizer']['kind']}), stored as {meta['dtype']}")
    return 0
