"""``python -m minigpt data --input PATH ... --out DIR``: tokenise a corpus into shards and meta.json."""

from __future__ import annotations

import argparse
import os
import sys

from ..files import output_dir
from ..data.corpus import prepare_corpus
from ..data.tokenizers import TOKENIZER_KINDS
from ..errors import MiniGPTError
from ..train.finetune import pretraining_texts
from . import ArgumentParser, add_corpus_inputs, corpus_inputs_given

EPILOG = """examples:
  python -m minigpt data --input data/tinyshakespeare/input.txt --out data/tinyshakespeare/char
  python -m minigpt data --input books/ --tokenizer gpt2 --out data/books
  python -m minigpt data --input 'fineweb/sample/10BT/*.parquet' --tokenizer gpt2 --val_tokens 10000000 --out data/fineweb
  python -m minigpt data --input openwebtext.jsonl.gz --text_field text --tokenizer gpt2 --out data/owt
  python -m minigpt tokenizer --input ../shared/data/imdb/unsup.jsonl --texts_of configs/imdb_classifier.toml --out out-imdb-tokenizer
  python -m minigpt data --input ../shared/data/imdb/unsup.jsonl --texts_of configs/imdb_classifier.toml \
      --tokenizer out-imdb-tokenizer --out data/imdb/lm   # in-domain LM corpus: no val/test review in it

Run again after an interruption (Ctrl-C, a crash, SIGKILL, a full disk) with the same command: it
continues where it stopped and ends with the same files as an uninterrupted run. --overwrite leaves the
data already in --out as it is until the new preparation has finished; one preparation at a time holds
--out."""


def tokens(text: str) -> int:
    """An integer, optionally with a K/M/B suffix: 100M = 100,000,000."""
    scale = {"k": 10**3, "m": 10**6, "b": 10**9}.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens like 100M, got {text!r}") from None
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number of tokens, got {text!r}")
    return int(value)


def parser() -> ArgumentParser:
    parser = p = ArgumentParser(
        prog="minigpt data",
        description="Tokenise a corpus of any size into train/val token shards (llm.c's .bin layout) and meta.json: "
                    "text files (one document each), JSONL or gzipped JSONL (one document a line) and parquet "
                    "(one a row; needs pip install 'minigpt[data]'). Nothing is downloaded; the corpus is read as a "
                    "stream, in bounded memory.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    read = p.add_argument_group("what to read")
    add_corpus_inputs(read, "in-domain text for pretraining before fine-tuning on that split")
    read.add_argument("--text_field", default="text", help="the key (JSONL) or column (parquet) holding the text")
    p = p.add_argument_group("what to write")  # (the rest of the options)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tokenizer", default="char", metavar="|".join(TOKENIZER_KINDS) + "|PATH",
                   help="char (the corpus's characters; the default), gpt2 (GPT-2's BPE, bundled), or the path of a "
                        "Hugging Face folder or tokenizer.json: one trained by python -m minigpt tokenizer, or a model's "
                        "(SmolLM, Qwen2, Llama 3, ...) to continue")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--val_fraction", type=float, default=0.1, help="share of the documents held out for "
                       "validation (default 0.1)")
    split.add_argument("--val_tokens", type=tokens, help="hold out about this many tokens instead, e.g. 10M")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val draw of documents (0 to 2**64 - 1)")
    p.add_argument("--shard_tokens", type=tokens, default=100_000_000, help="tokens per shard (default 100M)")
    p.add_argument("--char_vocab_from", help="meta.json whose character vocabulary to reuse")
    p.add_argument("--char_unknown", metavar="CHAR",
                   help="char tokenizer: add this character (e.g. U+FFFD, $'\\ufffd' in bash) to stand for "
                        "any character outside the vocabulary when the model later reads other text")
    p.add_argument("--overwrite", action="store_true", help="replace data already prepared in --out (kept until the "
                   "new preparation has finished)")
    run = parser.add_argument_group("how to run")
    run.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenising processes (default: every core)")
    run.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    corpus_inputs_given(p, args)
    if args.char_unknown is not None and (len(args.char_unknown) != 1 or args.tokenizer != "char"):
        p.error("--char_unknown takes one character, with --tokenizer char")
    if args.workers < 1:
        raise MiniGPTError(f"--workers must be at least 1, got {args.workers}")
    if not 0 <= args.seed < 2**64:
        raise MiniGPTError(f"--seed must be in [0, 2**64), got {args.seed}")
    try:
        output_dir(args.out, "--out")
        docs, held_out = pretraining_texts(args.texts_of) if args.texts_of else (None, None)
        meta = prepare_corpus(args.input or [], args.out, args.tokenizer, args.val_fraction, args.char_vocab_from,
                              args.seed, progress=not args.no_progress, char_unknown=args.char_unknown, documents=docs,
                              workers=args.workers, shard_tokens=args.shard_tokens, text_field=args.text_field,
                              val_tokens=args.val_tokens, overwrite=args.overwrite, exclude=held_out)
    except KeyboardInterrupt:  # what is finished is on disk, and the journal says how far
        print(f"interrupted: preparing {args.out} stopped; run the same command again to continue", file=sys.stderr)
        return 130
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    read = sum(s["bytes"] for s in meta["splits"].values())
    print(f"{args.out}: {train['tokens']:,} train tokens in {len(train['shards'])} shard(s), {val['tokens']:,} val "
          f"tokens in {len(val['shards'])} ({train['documents']:,} + {val['documents']:,} documents); vocabulary "
          f"{meta['vocab_size']:,} ({meta['tokenizer']['kind']}), {meta['dtype']}; {read / 1e6:,.1f} MB of text in "
          f"{meta['elapsed_s']:.1f} s ({read / 1e6 / max(meta['elapsed_s'], 1e-9):.1f} MB/s, "
          f"{(train['tokens'] + val['tokens']) / max(meta['elapsed_s'], 1e-9):,.0f} tokens/s)"
          + (f"; {meta['excluded_documents']:,} document(s) left out: each the text of a val or test example of "
             f"{args.texts_of}" if meta.get("excluded_documents") else ""))
    return 0
