"""What a vocabulary costs a training step: the same language model at several vocabulary sizes,
timed side by side on this machine, and how many steps of each fit the time of the config's run.

    python bench/vocab_cost.py                                  # configs/imdb_lm.toml at 8,192 and 50,257
    python bench/vocab_cost.py configs/imdb_lm.toml --vocab 8192 16384 32768 50257

Each row builds the config's model (its shape, dtype, optimizer and torch.compile setting) with that
many vocabulary rows and times full training steps (forward, backward, optimizer) on random tokens
of batch_size x block_size, with the allocator set as the trainer sets it. The rows run in
alternation, a few steps at a time, so that a machine whose speed drifts (a shared host) hits every
row alike; each row's figure is the median over the rounds. "equal-time steps" is max_iters scaled by the first row's cost: the steps a run at that
vocabulary can take in the time the config's run takes at the first size. The IMDb pipeline's
GPT-2-BPE ablation (bench/imdb_pipeline.py --ablations) trains its LM for that many steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from minigpt.config_schema import build_config
from minigpt.device import autocast, keep_freed_host_memory, resolve_dtype, seed_everything
from minigpt.model.model import GPT
from minigpt.train.optim import optimizer_for
from minigpt.train.pretrain import PretrainConfig
from train_speed import cpu_name  # bench/ is the script's folder, so on sys.path

CPU = torch.device("cpu")


def stepper(cfg: PretrainConfig, vocab_size: int, dtype: torch.dtype):
    """One training step of cfg's model at vocab_size rows, as a function of no arguments."""
    seed_everything(cfg.seed)
    model = GPT(cfg.model_config(vocab_size=vocab_size))
    optimizer = optimizer_for(model, [(model, 1.0)], cfg, CPU)
    call = torch.compile(model) if cfg.compiles(CPU) else model
    x = torch.randint(0, vocab_size, (cfg.batch_size, cfg.block_size))
    y = torch.randint(0, vocab_size, (cfg.batch_size, cfg.block_size))

    def step() -> None:
        with autocast(CPU, dtype):
            loss = call(x, y)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default="configs/imdb_lm.toml", help="a pretraining config (default "
                   "configs/imdb_lm.toml)")
    p.add_argument("--vocab", type=int, nargs="+", default=[8192, 50257], help="vocabulary sizes; the first is the "
                   "reference (default 8192 50257: the IMDb domain tokenizer and GPT-2's BPE)")
    p.add_argument("--rounds", type=int, default=5, help="alternations over the rows (default 5)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per row and round (default 3)")
    args = p.parse_args()
    if any(v < 2 for v in args.vocab) or args.rounds < 1 or args.steps < 1:
        raise SystemExit("--vocab sizes must be at least 2, --rounds and --steps at least 1")
    cfg = build_config(PretrainConfig, args.config)
    dtype = resolve_dtype(CPU, cfg.dtype)
    keep_freed_host_memory()  # as the trainer does: a big vocabulary's logits would otherwise fault in afresh each step
    rows = {}
    for vocab in args.vocab:
        model, step = stepper(cfg, vocab, dtype)
        for _ in range(2):  # warm-up: compilation, the allocator, the optimizer's state
            step()
        rows[vocab] = (model.num_parameters(), step, [])
    for _ in range(args.rounds):
        for _, step, times in rows.values():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times.append((time.perf_counter() - start) / args.steps)
    tokens = cfg.batch_size * cfg.block_size
    print(f"{args.config}: {cfg.n_layer} x {cfg.n_head} x {cfg.n_embd}, {tokens:,} tokens a step, {dtype}, "
          f"compile {cfg.compiles(CPU)}, optimizer {cfg.optimizer}; {cpu_name()}, {torch.get_num_threads()} threads; "
          f"median of {args.rounds} rounds x {args.steps} steps")
    print(f"| vocabulary | parameters | s/step | tokens/s | cost vs {args.vocab[0]:,} | equal-time steps "
          f"(of {cfg.max_iters:,}) |")
    print("|---|---|---|---|---|---|")
    reference = statistics.median(rows[args.vocab[0]][2])
    for vocab, (params, _, times) in rows.items():
        seconds = statistics.median(times)
        print(f"| {vocab:,} | {params:,} | {seconds:.3f} | {tokens / seconds:,.0f} | {seconds / reference:.2f}x | "
              f"{round(cfg.max_iters * reference / seconds):,} |")


if __name__ == "__main__":
    main()
