"""Perplexity of a trained model on a held-out text file (e.g. WikiText-2 test).

    python -m minigpt.evaluate --ckpt OUT_DIR --input ../shared/data/wikitext2/test.txt

The text is tokenised with the model's own tokenizer and scored with overlapping windows of
``block_size`` tokens moved by ``stride``: every token is predicted exactly once, with at least
``block_size - stride`` tokens of context (except at the very start). Reports the mean loss per
token, its perplexity, and bits per UTF-8 byte (comparable across tokenizers).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .device import autocast, resolve_device, resolve_dtype
from .errors import MiniGPTError
from .model import GPT


@torch.no_grad()
def perplexity(model: GPT, ids: list[int], stride: int | None = None, batch_size: int = 8,
               device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32,
               progress: bool = True) -> dict:
    """Sum of next-token negative log-likelihoods over ``ids`` with a sliding window."""
    T = model.config.block_size
    stride = stride or T // 2
    if not 0 < stride <= T:
        raise MiniGPTError(f"stride must be in [1, block_size={T}], got {stride}")
    if len(ids) < 2:
        raise MiniGPTError("need at least two tokens to measure perplexity")
    data = torch.tensor(ids, dtype=torch.long)
    # window k covers data[begin : begin + T + 1]; it scores the targets not scored by window k - 1
    windows, scored_until, begin = [], 0, 0
    while scored_until < len(data) - 1:
        end = min(begin + T, len(data) - 1)  # last input position (exclusive)
        first_new = scored_until - begin  # index inside the window of the first unscored target
        windows.append((begin, end, first_new))
        scored_until = end
        begin = max(0, end - T + stride) if end < len(data) - 1 else end
    total_nll, total_tokens = 0.0, 0
    model.eval()
    # windows of equal length (all but possibly the last) run batch_size at a time
    for i in tqdm(range(0, len(windows), batch_size), desc="eval", unit="batch", disable=None if progress else True, file=sys.stderr):
        group = windows[i: i + batch_size]
        lengths = {end - begin for begin, end, _ in group}
        runs = [group] if len(lengths) == 1 else [[w] for w in group]
        for run in runs:
            x = torch.stack([data[b:e] for b, e, _ in run]).to(device)  # (n, t)
            y = torch.stack([data[b + 1: e + 1] for b, e, _ in run]).to(device)  # (n, t)
            with autocast(device, dtype):
                logits, _ = model(x)
            nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view_as(y)  # (n, t)
            for row, (_, _, first_new) in enumerate(run):
                total_nll += nll[row, first_new:].sum().item()
                total_tokens += y.size(1) - first_new
    loss = total_nll / total_tokens
    return {"tokens": total_tokens, "loss": loss, "perplexity": math.exp(loss), "nll_sum": total_nll}


def main(argv: list[str]) -> int:
    from .sample import load_model

    parser = argparse.ArgumentParser(prog="python -m minigpt.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint file, training out_dir, or Hugging Face GPT-2 folder")
    parser.add_argument("--input", required=True, help="UTF-8 text file to score")
    parser.add_argument("--stride", type=int, default=None, help="window step in tokens (default block_size // 2)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)
    path = Path(args.input)
    if not path.is_file():
        raise MiniGPTError(f"input not found: {path}")
    device = resolve_device(args.device)
    model, tok = load_model(args.ckpt, device)
    text = path.read_text(encoding="utf-8")
    result = perplexity(model, tok.encode(text), args.stride, device=device, dtype=resolve_dtype(device, args.dtype))
    bits_per_byte = result["nll_sum"] / math.log(2) / len(text.encode("utf-8"))
    print(f"{path}: {result['tokens']:,} tokens, loss {result['loss']:.4f}, perplexity {result['perplexity']:.2f}, "
          f"{bits_per_byte:.4f} bits/byte")
    return 0


if __name__ == "__main__":
    from .cli import run_cli

    sys.exit(run_cli(main))
