"""``python -m minigpt.evaluate --ckpt OUT --input FILE``: sliding-window perplexity and bits per byte."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..device import DEVICE_HELP, DTYPES, resolve_device, resolve_dtype
from ..errors import MiniGPTError
from ..infer import perplexity
from ..loading import load_model
from . import ArgumentParser


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="python -m minigpt.evaluate", description=perplexity.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint file, training out_dir, or Hugging Face GPT-2 folder")
    p.add_argument("--input", required=True, help="UTF-8 text file to score")
    p.add_argument("--stride", type=int, default=None, help="window step in tokens (default block_size // 2)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    args = p.parse_args(argv)
    path = Path(args.input)
    if not path.is_file():
        raise MiniGPTError(f"input not found: {path}")
    device = resolve_device(args.device)
    model, tok = load_model(args.ckpt, device)
    text = path.read_text(encoding="utf-8")
    result = perplexity.score_text(model, tok, text, args.stride, device, resolve_dtype(device, args.dtype))
    print(f"{path}: {result['tokens']:,} tokens, loss {result['loss']:.4f}, perplexity {result['perplexity']:.2f}, "
          f"{result['bits_per_byte']:.4f} bits/byte")
    return 0
