"""``python -m minigpt tokenizer --input PATH ... --out DIR``: train a byte-level BPE tokenizer on a corpus."""

from __future__ import annotations

import argparse
import time
from typing import Iterator

from ..files import check_new_folder, write_folder
from ..data.bpe import PAD_TEXT, check_vocab_size, save_tokenizer, special_tokens, train_bpe
from ..data.corpus import read_texts
from ..data.tokenizers import EOT_TEXT, GPT2Tokenizer, HFTokenizer
from ..errors import MiniGPTError
from ..train.finetune import pretraining_texts
from . import ArgumentParser, add_corpus_inputs, corpus_inputs_given

SAMPLE_DOCUMENTS = 1000  # the first documents, on which tokens per document are compared with GPT-2's

EPILOG = """examples:
  python -m minigpt tokenizer --input ../shared/data/imdb/unsup.jsonl --texts_of configs/imdb_classifier.toml \\
      --vocab_size 16384 --out out-imdb-tokenizer
  python -m minigpt data --input ../shared/data/imdb/unsup.jsonl --texts_of configs/imdb_classifier.toml \\
      --tokenizer out-imdb-tokenizer --out data/imdb/lm
  python -m minigpt tokenizer --input books/ 'more/*.jsonl.gz' --vocab_size 8192 --out out-books-tokenizer

DIR gets tokenizer.json and tokenizer_config.json, which python -m minigpt data --tokenizer DIR, a
classification config's tokenizer = "DIR" (init_from = "scratch") and transformers'
AutoTokenizer.from_pretrained(DIR) read; a model trained on such data keeps the tokenizer in its
checkpoint. The corpus is read once, as a stream: files of any size, in memory that grows with the
number of distinct words only. DIR is written beside itself and renamed into place when whole."""


def parser() -> ArgumentParser:
    parser = p = ArgumentParser(
        prog="minigpt tokenizer",
        description="Train a byte-level BPE tokenizer (GPT-2's scheme, with the Hugging Face tokenizers library's "
                    "trainer) on a corpus: text files, JSONL (also gzipped) and parquet as python -m minigpt data "
                    "reads them, and the training texts of a classification config.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    read = p.add_argument_group("what to read")
    add_corpus_inputs(read, "a vocabulary fit for that domain")
    read.add_argument("--text_field", default="text", help="the key (JSONL) or column (parquet) holding the text")
    p = p.add_argument_group("what to write")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (tokenizer.json, "
                   "tokenizer_config.json)")
    p.add_argument("--vocab_size", type=int, default=16384, help="tokens in all: 256 bytes, the special tokens and "
                   "the merges learned (default 16384; fewer if the corpus runs out of pairs to merge)")
    p.add_argument("--min_frequency", type=int, default=2, help="a pair is merged only if seen this often (default 2)")
    p.add_argument("--eot_token", default=EOT_TEXT, help=f"the end-of-text token, id 0: it separates documents in a "
                   f"prepared corpus and ends a sample (default {EOT_TEXT})")
    p.add_argument("--pad_token", default=PAD_TEXT, help=f"the padding token, id 1 ('' for none; default {PAD_TEXT})")
    p.add_argument("--special_tokens", nargs="+", default=[], metavar="TOKEN",
                   help="more special tokens, after those two (e.g. '<|sep|>'): each is one id, never split")
    p.add_argument("--model_max_length", type=int, default=1024, help="the longest input transformers' tokenizer "
                   "expects, written to tokenizer_config.json (default 1024)")
    p.add_argument("--overwrite", action="store_true", help="replace a folder already at --out (only once the new "
                   "one is whole)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    corpus_inputs_given(p, args)
    specials = special_tokens(args.eot_token, args.pad_token, args.special_tokens)
    check_vocab_size(args.vocab_size, specials)
    if args.min_frequency < 0:
        raise MiniGPTError(f"--min_frequency must be at least 0, got {args.min_frequency}")
    if args.model_max_length < 1:
        raise MiniGPTError(f"--model_max_length must be at least 1, got {args.model_max_length}")
    out = check_new_folder(args.out, args.overwrite)  # before the corpus is read, not after
    documents, held_out = pretraining_texts(args.texts_of) if args.texts_of else (None, [])
    texts = read_texts(args.input or [], args.text_field, documents, held_out)  # what python -m minigpt data reads
    seen = {"documents": 0, "bytes": 0}
    sample: list[str] = []

    def counted() -> Iterator[str]:
        for text in texts:
            seen["documents"] += 1
            seen["bytes"] += len(text.encode("utf-8", "surrogatepass"))
            if len(sample) < SAMPLE_DOCUMENTS:
                sample.append(text)
            yield text

    started = time.perf_counter()
    name = " ".join([*(args.input or []), *([args.texts_of] if args.texts_of else [])])
    tokenizer_json = train_bpe(counted(), args.vocab_size, specials, args.min_frequency,
                               show_progress=not args.no_progress, name=name)
    elapsed = time.perf_counter() - started
    write_folder(out, args.overwrite, lambda tmp: save_tokenizer(tmp, tokenizer_json, args.eot_token, args.pad_token,
                                                                 args.model_max_length))
    tok, gpt2 = HFTokenizer.from_folder(out), GPT2Tokenizer()
    ours = sum(map(len, tok.encode_batch(sample))) / len(sample)
    theirs = sum(map(len, gpt2.encode_batch(sample))) / len(sample)
    print(f"{out}: vocabulary {tok.vocab_size:,} ({len(specials)} special: {', '.join(specials)}) learned from "
          f"{seen['bytes'] / 1e6:,.1f} MB ({seen['documents']:,} documents) in {elapsed:.1f} s; the first "
          f"{len(sample):,} documents average {ours:,.1f} tokens (GPT-2: {theirs:,.1f}, {ours / max(theirs, 1e-9):.2f}x)")
    return 0
