"""Decoding speed with and without the KV cache on this machine.

    python bench/sample_speed.py               # every row (a few minutes on 2 CPU cores)
    python bench/sample_speed.py --only 6x384  # rows whose model name contains this

Time to first token (the prompt's prefill) and decode tokens/s after it, greedy, random weights
(speed does not depend on what the weights are), prompt of 16 tokens.
"""

from __future__ import annotations

import argparse

import torch

from minigpt import GPT, GPTConfig
from minigpt.infer.generate import tokens_per_second

MODELS = {
    "6x384 (30M)": GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=1024),
    "gpt2-124M": GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="")
    parser.add_argument("--new_tokens", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, greedy, 16-token prompt\n")
    print("| model        | batch | new tokens | cache | first token (s) | decode tokens/s | cache speed-up |")
    print("|--------------|-------|------------|-------|-----------------|-----------------|----------------|")
    for name, config in MODELS.items():
        if args.only not in name:
            continue
        torch.manual_seed(0)
        model = GPT(config).eval()
        for batch in args.batch:
            prompts = [list(range(100 + row, 116 + row)) for row in range(batch)]
            for new in args.new_tokens:
                speeds = {}
                for cache in (True, False):
                    first, tok_s = tokens_per_second(model, prompts, new, use_cache=cache)
                    speeds[cache] = tok_s
                    ratio = f"{speeds[True] / tok_s:.1f}x" if not cache else ""
                    print(f"| {name:<12} | {batch:>5} | {new:>10} | {'yes' if cache else 'no':<5} | {first:>15.3f} | "
                          f"{tok_s:>15.1f} | {ratio:>14} |", flush=True)


if __name__ == "__main__":
    main()
