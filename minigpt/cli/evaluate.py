"""``python -m minigpt evaluate --ckpt OUT --input FILE ...``: sliding-window perplexity and bits per byte."""

from __future__ import annotations

import argparse
import math

from ..data.corpus import read_texts
from ..data.loader import load_meta, open_split
from ..data.tokenizers import same_tokenizer
from ..device import DEVICE_HELP, DTYPES, resolve_device, resolve_dtype
from ..interop.hf import HF_FAMILIES
from ..errors import MiniGPTError
from ..infer import perplexity
from ..loading import load_model
from . import ArgumentParser


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="minigpt evaluate", description=perplexity.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_argument_group("the model")
    model.add_argument("--ckpt", required=True, help=f"checkpoint file, training out_dir, or Hugging Face folder ({HF_FAMILIES})")
    model.add_argument("--stride", type=int, default=None, help="window step in tokens (default block_size // 2)")
    text = p.add_argument_group("the text")
    source = text.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH",
                        help="text to score: files, folders or globs of .txt, .jsonl(.gz) or .parquet documents")
    source.add_argument("--data", metavar="DIR", help="a prepared data folder (python -m minigpt data) to score")
    text.add_argument("--split", default="val", choices=["train", "val"], help="with --data: which split (default val)")
    text.add_argument("--text_field", default="text", help="the key (JSONL) or column (parquet) holding the text")
    system = p.add_argument_group("system")
    system.add_argument("--device", default="auto", help=DEVICE_HELP)
    system.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    args = p.parse_args(argv)
    if args.stride is not None and args.stride < 1:
        raise MiniGPTError(f"--stride must be at least 1, got {args.stride}")
    device = resolve_device(args.device)
    dtype = resolve_dtype(device, args.dtype)
    model, tok = load_model(args.ckpt, device)
    if args.data is not None:
        meta = load_meta(args.data)
        if not same_tokenizer(meta["tokenizer"], tok.to_meta()):
            raise MiniGPTError(f"{args.data} was prepared with a {meta['tokenizer'].get('kind')} tokenizer that differs "
                               f"from the model's ({tok.to_meta()['kind']})")
        tokens = open_split(args.data, args.split, meta)
        result = perplexity.perplexity(model, tokens, args.stride, device=device, dtype=dtype)  # read window by window
        split = meta.get("splits", {}).get(args.split)
        n_bytes = split.get("bytes") if isinstance(split, dict) else None
        usable = isinstance(n_bytes, (int, float)) and not isinstance(n_bytes, bool) and n_bytes > 0
        result["bits_per_byte"] = result["nll_sum"] / math.log(2) / n_bytes if usable else None
        what = f"{args.data} ({args.split})"
    else:
        result = perplexity.score_texts(model, tok, read_texts(args.input, args.text_field), args.stride, device, dtype)
        what = ", ".join(args.input)
    per_byte = f", {result['bits_per_byte']:.4f} bits/byte" if result["bits_per_byte"] is not None else ""
    print(f"{what}: {result['tokens']:,} tokens, loss {result['loss']:.4f}, perplexity {result['perplexity']:.2f}{per_byte}")
    return 0
