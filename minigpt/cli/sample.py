"""``python sample.py --ckpt OUT --prompt "..."``: generate text from a checkpoint or a Hugging Face folder."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

from ..files import read_text
from ..device import DEVICE_HELP, DTYPES, resolve_device, resolve_dtype
from ..errors import MiniGPTError
from ..infer.generate import SamplingConfig, TextStream, check_batch_fits, check_max_new_tokens, stream
from ..interop.hf import HF_FAMILIES
from ..loading import load_model
from ..model.config import ATTENTION_BACKENDS
from . import ArgumentParser, read_stdin


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        return args.prompt
    if args.prompt_file is not None:
        return read_text(args.prompt_file, "prompt file")
    if not sys.stdin.isatty():
        return read_stdin()
    return "\n"


def parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python sample.py",
        description="Generate text from a minigpt checkpoint (file or training out_dir) or a Hugging Face folder "
                    f"({HF_FAMILIES}). "
                    "The prompt comes from --prompt, --prompt_file, or standard input.",
    )
    g = p.add_argument_group("what to read")
    g.add_argument("--ckpt", required=True, help=f"checkpoint file, training out_dir, or Hugging Face folder ({HF_FAMILIES})")
    g.add_argument("--prompt", help="text to continue (default: standard input if piped, else a newline)")
    g.add_argument("--prompt_file", help="read the prompt from this UTF-8 file")
    g = p.add_argument_group("what to generate")
    g.add_argument("--num_samples", type=int, default=1, help="independent samples, generated as one batch")
    g.add_argument("--max_new_tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy")
    g.add_argument("--top_k", type=int, default=None, help="sample among the k most likely tokens")
    g.add_argument("--top_p", type=float, default=None, help="nucleus sampling: smallest set with this mass, in (0, 1]")
    g.add_argument("--min_p", type=float, default=None, help="drop tokens below min_p x the top probability")
    g.add_argument("--repetition_penalty", type=float, default=None, help="CTRL-style penalty for seen tokens (e.g. 1.2)")
    g.add_argument("--greedy", action="store_true", help="always take the most likely token")
    g.add_argument("--stop", action="append", default=[], help="stop a sample when this text appears (repeatable)")
    g.add_argument("--no_eos_stop", action="store_true", help="do not stop at the end-of-text token")
    g.add_argument("--seed", type=int, default=1337)
    g = p.add_argument_group("how to run")
    g.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="print tokens as they come (default: on when writing to a terminal, one sample only)")
    g.add_argument("--no_cache", action="store_true", help="recompute the whole context every step (for checking)")
    g.add_argument("--static_cache", action="store_true", help="a KV cache of fixed shape (for CUDA graphs)")
    g.add_argument("--compile", action="store_true", help="with --static_cache: compile the one-token decode step "
                   "(CUDA graphs on a GPU; it pays off on long samples)")
    g.add_argument("--attn_backend", choices=ATTENTION_BACKENDS, default=None,
                   help="attention backend (default: the checkpoint's)")
    g = p.add_argument_group("system")
    g.add_argument("--device", default="auto", help=DEVICE_HELP)
    g.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="auto: bfloat16 (or float16) on a GPU, float32 on a CPU; a half dtype casts the weights once")
    g.add_argument("--verbose", action="store_true", help="print tokens/s at the end")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    check_max_new_tokens(args.max_new_tokens)
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                              repetition_penalty=args.repetition_penalty, do_sample=not args.greedy,
                              stop_strings=args.stop)  # checked here, once, before the model is read
    if args.num_samples < 1:
        raise MiniGPTError(f"--num_samples must be at least 1, got {args.num_samples}")
    if args.stream and args.num_samples > 1:
        raise MiniGPTError(f"--stream shows one sample as it is written; for --num_samples {args.num_samples} "
                           f"leave it off (the samples are printed one after another at the end)")
    if not 0 <= args.seed < 2 ** 64:  # what a torch generator holds
        raise MiniGPTError(f"--seed must be in [0, 2**64), got {args.seed}")
    if args.compile and not args.static_cache:
        raise MiniGPTError("--compile compiles the static cache's decode step: add --static_cache")

    device = resolve_device(args.device)
    dtype = resolve_dtype(device, args.dtype)
    model, tok = load_model(args.ckpt, device, attn_backend=args.attn_backend)
    if dtype != torch.float32:  # half-precision inference: the weights cast once, not under autocast at every
        model = model.to(dtype)  # token (a compiled decode step would replay every weight's cast); the cache follows
    prompt = read_prompt(args)
    ids = ([tok.bos_token] if tok.bos_token is not None else []) + tok.encode(prompt)  # as the model saw texts begin
    if not ids:
        raise MiniGPTError("the prompt encodes to zero tokens; give at least one character")
    # before a list of num_samples prompts and texts is made: a batch that cannot fit is refused at once
    check_batch_fits(model, args.num_samples, len(ids), args.max_new_tokens, dtype, args.static_cache)
    stop_ids = [] if args.no_eos_stop or tok.eot_token is None else [tok.eot_token]
    live = args.stream if args.stream is not None else (sys.stdout.isatty() and args.num_samples == 1)

    texts = [TextStream(tok, args.stop) for _ in range(args.num_samples)]  # each cut before its stop string
    pieces: list[list[str]] = [[] for _ in range(args.num_samples)]
    start, n_tokens = time.perf_counter(), 0
    if live:
        sys.stdout.write(prompt)
    sampling = dataclasses.replace(sampling, stop_token_ids=stop_ids, seed=args.seed)
    for next_ids, done in stream(model, [ids] * args.num_samples, args.max_new_tokens, sampling, decode=tok.decode,
                                 use_cache=not args.no_cache, static_cache=args.static_cache,
                                 compile_decode=args.compile):
        for row, (token, row_done) in enumerate(zip(next_ids.tolist(), done.tolist())):
            if row_done or token in stop_ids:
                continue
            n_tokens += 1
            pieces[row].append(texts[row].feed(token))
            if live:
                sys.stdout.write(pieces[row][-1])
                sys.stdout.flush()
    elapsed = time.perf_counter() - start
    for row in range(args.num_samples):
        pieces[row].append(texts[row].flush())
    if live:
        print(pieces[0][-1])  # what was held back to the end, and the closing newline
    else:
        for row in range(args.num_samples):
            if row:
                print("\n" + "-" * 40)
            print(prompt + "".join(pieces[row]))
    if args.verbose:
        print(f"[{n_tokens} tokens in {elapsed:.2f}s: {n_tokens / elapsed:.1f} tokens/s]", file=sys.stderr)
    return 0
