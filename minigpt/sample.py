"""Load a trained model (a minigpt checkpoint or a Hugging Face GPT-2 folder) and generate text."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .checkpoint import find_checkpoint, load_checkpoint
from .config import GPTConfig
from .device import autocast, resolve_device, resolve_dtype
from .errors import MiniGPTError
from .generate import check_sampling_args, stream
from .model import GPT
from .tokenizer import GPT2Tokenizer, StreamDecoder, tokenizer_from_meta


def load_model(path: str | Path, device: torch.device | str = "cpu"):
    """(model in eval mode, tokenizer) from a checkpoint file, a training out_dir (its best, else
    last checkpoint), or a Hugging Face GPT-2 directory (which uses the GPT-2 tokenizer)."""
    path = Path(path)
    if not path.exists():
        raise MiniGPTError(f"checkpoint not found: {path}")
    if path.is_dir():
        found = find_checkpoint(path)
        if found is None:
            if (path / "config.json").is_file():
                return GPT.from_pretrained(path).to(device).eval(), GPT2Tokenizer()
            raise MiniGPTError(f"{path} holds no minigpt checkpoint (ckpt_*.safetensors) nor a Hugging Face config.json")
        path = found
    ckpt = load_checkpoint(path)
    model = GPT(GPTConfig.from_dict(ckpt.meta["model_config"]))
    ckpt.load_model(model)
    return model.to(device).eval(), tokenizer_from_meta(ckpt.meta["tokenizer"])


def read_prompt(args) -> str:
    if args.prompt is not None:
        return args.prompt
    if args.prompt_file is not None:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise MiniGPTError(f"prompt file not found: {path}")
        return path.read_text(encoding="utf-8")
    if not sys.stdin.isatty():
        return sys.stdin.read()
    return "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python sample.py",
        description="Generate text from a minigpt checkpoint (file or training out_dir) or a Hugging Face GPT-2 folder. "
                    "The prompt comes from --prompt, --prompt_file, or standard input.",
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint file, training out_dir, or Hugging Face GPT-2 folder")
    parser.add_argument("--prompt", help="text to continue (default: standard input if piped, else a newline)")
    parser.add_argument("--prompt_file", help="read the prompt from this UTF-8 file")
    parser.add_argument("--num_samples", type=int, default=1, help="independent samples, generated as one batch")
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy")
    parser.add_argument("--top_k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling: smallest set with this mass, in (0, 1]")
    parser.add_argument("--min_p", type=float, default=None, help="drop tokens below min_p x the top probability")
    parser.add_argument("--repetition_penalty", type=float, default=None, help="CTRL-style penalty for seen tokens (e.g. 1.2)")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--stop", action="append", default=[], help="stop a sample when this text appears (repeatable)")
    parser.add_argument("--no_eos_stop", action="store_true", help="do not stop at the end-of-text token")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                        help="print tokens as they come (default: on when writing to a terminal, one sample only)")
    parser.add_argument("--no_cache", action="store_true", help="recompute the whole context every step (for checking)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    parser.add_argument("--verbose", action="store_true", help="print tokens/s at the end")
    args = parser.parse_args(argv)
    check_sampling_args(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty)
    if args.num_samples < 1:
        raise MiniGPTError(f"--num_samples must be at least 1, got {args.num_samples}")

    device = resolve_device(args.device)
    dtype = resolve_dtype(device, args.dtype)
    model, tok = load_model(args.ckpt, device)
    prompt = read_prompt(args)
    ids = tok.encode(prompt)
    if not ids:
        raise MiniGPTError("the prompt encodes to zero tokens; give at least one character")
    stop_ids = [] if args.no_eos_stop or tok.eot_token is None else [tok.eot_token]
    live = args.stream if args.stream is not None else (sys.stdout.isatty() and args.num_samples == 1)

    decoders = [StreamDecoder(tok) for _ in range(args.num_samples)]
    texts = ["" for _ in range(args.num_samples)]
    start, n_tokens = time.perf_counter(), 0
    if live:
        sys.stdout.write(prompt)
    with autocast(device, dtype):
        for next_ids, done in stream(
            model, [ids] * args.num_samples, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
            top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty, do_sample=not args.greedy,
            stop_token_ids=stop_ids, stop_strings=args.stop, decode=tok.decode, seed=args.seed, use_cache=not args.no_cache,
        ):
            for row, (token, row_done) in enumerate(zip(next_ids.tolist(), done.tolist())):
                if row_done or token in stop_ids:
                    continue
                n_tokens += 1
                piece = decoders[row].feed(token)  # holds back a split multi-byte character
                texts[row] += piece
                if live:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
    elapsed = time.perf_counter() - start
    for row in range(args.num_samples):
        texts[row] += decoders[row].flush()
        for s in args.stop:  # cut the text at the stop string
            if s in texts[row]:
                texts[row] = texts[row][: texts[row].index(s)]
    if live:
        print()
    else:
        for row, text in enumerate(texts):
            if row:
                print("\n" + "-" * 40)
            print(prompt + text)
    if args.verbose:
        print(f"[{n_tokens} tokens in {elapsed:.2f}s: {n_tokens / elapsed:.1f} tokens/s]", file=sys.stderr)
    return 0
