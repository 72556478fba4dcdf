"""Load a trained model (a minigpt checkpoint or a Hugging Face GPT-2 folder) and generate text."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .checkpoint import load_checkpoint
from .config import GPTConfig
from .device import autocast, resolve_device, resolve_dtype
from .errors import MiniGPTError
from .generate import generate
from .model import GPT
from .tokenizer import GPT2Tokenizer, tokenizer_from_meta


def load_model(path: str | Path, device: torch.device | str = "cpu"):
    """(model in eval mode, tokenizer) from a checkpoint file, a training out_dir (its best, else
    last checkpoint), or a Hugging Face GPT-2 directory (which uses the GPT-2 tokenizer)."""
    path = Path(path)
    if path.is_dir():
        for name in ("ckpt_best.safetensors", "ckpt_last.safetensors"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            if (path / "config.json").is_file():
                return GPT.from_pretrained(path).to(device).eval(), GPT2Tokenizer()
            raise MiniGPTError(f"{path} holds no minigpt checkpoint (ckpt_*.safetensors) nor a Hugging Face config.json")
    ckpt = load_checkpoint(path)
    model = GPT(GPTConfig.from_dict(ckpt.meta["model_config"]))
    ckpt.load_model(model)
    return model.to(device).eval(), tokenizer_from_meta(ckpt.meta["tokenizer"])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python sample.py", description="Generate text from a trained model.")
    parser.add_argument("--ckpt", required=True, help="checkpoint file, training out_dir, or Hugging Face GPT-2 folder")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top_k", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        raise MiniGPTError(f"--max_new_tokens must be at least 1, got {args.max_new_tokens}")
    device = resolve_device(args.device)
    dtype = resolve_dtype(device, args.dtype)
    model, tok = load_model(args.ckpt, device)
    ids = tok.encode(args.prompt)
    if not ids:
        raise MiniGPTError("the prompt encodes to zero tokens; give at least one character")
    idx = torch.tensor([ids] * args.num_samples, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    with autocast(device, dtype):
        out = generate(model, idx, args.max_new_tokens, args.temperature, args.top_k, generator=gen)
    for k, row in enumerate(out.tolist()):
        if k:
            print("\n" + "-" * 40)
        print(tok.decode(row))
    return 0
