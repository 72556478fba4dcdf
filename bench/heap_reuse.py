"""What glibc's heap settings cost a GPT-2-vocabulary training step: time, page faults and system time.

    python bench/heap_reuse.py              # 2 rounds of the three settings, 5 timed iterations each
    python bench/heap_reuse.py --rounds 3 --iters 3

The step is the 6x384 block-256 shape of configs/english_gpt2_small.toml (two micro-batches of 8,
fp32, eager), whose logits, their log-softmax and their gradients are 411 MB tensors each. Settings,
each in a fresh process (malloc settings are per process), alternated round by round:
  default  glibc as it is: large blocks are fresh mappings, freed heap tops are trimmed;
  trim1g   large blocks from the heap, trimmed once 1 GiB lies free at its top (minigpt's first setting);
  minigpt  minigpt.device.keep_freed_host_memory, as the trainer and bench/train_speed.py call it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import subprocess
import sys
import time

SETTINGS = ("default", "trim1g", "minigpt")


def measure(setting: str, iters: int) -> dict:
    """Run in the child process: apply `setting`, train `iters` timed iterations, report per-iteration costs."""
    if setting == "trim1g":
        mallopt = ctypes.CDLL("libc.so.6").mallopt
        mallopt(-3, ctypes.c_int(1 << 30))  # M_MMAP_THRESHOLD
        mallopt(-1, ctypes.c_int(1 << 30))  # M_TRIM_THRESHOLD
    elif setting == "minigpt":
        from minigpt.device import keep_freed_host_memory

        assert keep_freed_host_memory(), "mallopt is not available here (not glibc)"
    import torch

    from minigpt import GPT, GPTConfig
    from minigpt.model.model import adamw, decay_groups
    from train_speed import SHAPES, train_iteration  # bench/ is the script's folder, so on sys.path

    shape = SHAPES[1]  # 6x384 T256 B8, GPT-2 vocabulary
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, block_size=shape.block_size, n_layer=shape.n_layer,
                          n_head=shape.n_head, n_embd=shape.n_embd, **shape.options))
    optimizer = adamw(decay_groups(model.parameters(), 0.1), 1e-3, (0.9, 0.99), "cpu")
    x = torch.randint(0, 50257, (shape.batch_size, shape.block_size))
    y = torch.randint(0, 50257, (shape.batch_size, shape.block_size))

    def iteration() -> None:  # gradient accumulation over two micro-batches, as the config does
        train_iteration(model, optimizer, [(x, y), (x, y)], torch.float32)

    iteration()  # warm-up: the first touch of every buffer is a page fault under any setting
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(iters):
        iteration()
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": seconds / iters, "faults": (after.ru_minflt - before.ru_minflt) / iters,
            "sys": (after.ru_stime - before.ru_stime) / iters}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="times each setting runs, alternating")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per run")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.iters)))
        return

    print(f"| {'round':>5} | {'setting':<8} | {'s / iteration':>13} | {'page faults / iteration':>23} | {'system s / iteration':>20} |")
    print(f"|{'-' * 7}|{'-' * 10}|{'-' * 15}|{'-' * 25}|{'-' * 22}|")
    for round_ in range(1, args.rounds + 1):
        for setting in SETTINGS:
            out = subprocess.run([sys.executable, __file__, "--child", setting, "--iters", str(args.iters)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.splitlines()[-1])
            print(f"| {round_:>5} | {setting:<8} | {r['seconds']:>13.2f} | {r['faults']:>23,.0f} | {r['sys']:>20.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
