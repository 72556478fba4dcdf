"""Time to quality: how much sooner a training recipe reaches the baseline recipe's final val loss.

    python bench/time_to_loss.py --budget 3                                    # Tiny Shakespeare characters
    python bench/time_to_loss.py --baseline configs/english_gpt2_small.toml \\
        --recipe configs/english_modern_small.toml --budget 25                  # the English corpus (GPT-2 BPE)
    python bench/time_to_loss.py --recipe configs/shakespeare_char_modern.toml --set optimizer=adamw  # an ablation

Both recipes train on the same prepared data with the same batch size and block size (the
baseline's), one after the other in this process. Each first times a few steps to size its run to
``--budget`` minutes of training (its schedule then ends at the budget, as a user would set
``max_iters``), then trains, evaluating the val loss on the same fixed batches at ``--evals`` evenly
spaced steps; evaluation time is not counted. The table gives (seconds, tokens, val loss) at each
evaluation and tokens/s (so drift of a shared machine shows), and the ratios: the recipe's time to
the baseline's final val loss (interpolated between evaluations) over the baseline's time, and the
same in tokens. ``--json`` writes every row; ``--keep DIR`` keeps both trained models as run folders
(``DIR/baseline``, ``DIR/recipe``) that fine-tuning can start from (``--init_from=DIR/recipe``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from minigpt.checkpoint import BEST, LAST
from minigpt.config_schema import build_config
from minigpt.device import resolve_device, resolve_dtype
from minigpt.train.loop import Distributed, Run
from minigpt.train.pretrain import PretrainConfig, pretrain_task

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION_STEPS = 8


def config(path: str, overrides: list[str], work: Path, name: str, **fields) -> PretrainConfig:
    cfg = build_config(PretrainConfig, path, [f"--{o}" for o in overrides])
    return dataclasses.replace(cfg, out_dir=str(work / name), progress=False, plot=False, **fields)


def new_run(cfg: PretrainConfig) -> Run:
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)  # the run logs its metrics there
    ddp, device = Distributed(enabled=False), resolve_device(cfg.device)
    run = Run(pretrain_task(cfg, ddp, device), cfg, ddp, device, resolve_dtype(device, cfg.dtype))
    run.start()
    return run


def train(name: str, cfg: PretrainConfig, budget_s: float, evals: int) -> list[dict]:
    """Size the run to the budget, train it, and return a row per evaluation."""
    probe_dir = Path(cfg.out_dir).with_name(f".{Path(cfg.out_dir).name}-probe")
    probe = new_run(dataclasses.replace(cfg, max_iters=10 * CALIBRATION_STEPS, out_dir=str(probe_dir)))
    probe.step()  # the first step allocates (and compiles, if asked): not timed
    started = time.perf_counter()
    for _ in range(CALIBRATION_STEPS):
        probe.step()
    step_s = (time.perf_counter() - started) / CALIBRATION_STEPS
    del probe
    shutil.rmtree(probe_dir)
    steps = max(evals, int(budget_s / step_s))
    cfg = dataclasses.replace(cfg, max_iters=steps, lr_decay_iters=0, warmup_iters=min(cfg.warmup_iters, steps // 10))
    run = new_run(cfg)
    tokens_per_step = run.task.units_per_step
    at = sorted({round(steps * k / evals) for k in range(evals + 1)})
    rows, seconds = [], 0.0
    for step in range(steps + 1):
        if step in at:
            loss = run.evaluate()["val_loss"]
            rows.append({"recipe": name, "step": step, "seconds": seconds, "tokens": step * tokens_per_step,
                         "val_loss": loss, "tok_per_s": step * tokens_per_step / seconds if seconds else None})
            print(f"  {name:9s} step {step:6,d}  {seconds:8.1f} s  {step * tokens_per_step:12,d} tokens  "
                  f"val {loss:.4f}", flush=True)
        if step < steps:
            started = time.perf_counter()
            run.step()
            seconds += time.perf_counter() - started
    run.save(BEST)  # the last weights are the run's model: fine-tuning's init_from reads ckpt_best
    run.save(LAST)
    return rows


def reach(rows: list[dict], target: float, key: str) -> float | None:
    """The ``key`` (seconds or tokens) at which the val loss first reaches ``target``, interpolated
    linearly between the evaluations around it; None if it never does."""
    for before, after in zip(rows, rows[1:]):
        if after["val_loss"] <= target:
            if before["val_loss"] <= target:
                return before[key]
            share = (before["val_loss"] - target) / (before["val_loss"] - after["val_loss"])
            return before[key] + share * (after[key] - before[key])
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default=str(ROOT / "configs" / "shakespeare_char.toml"),
                   help="the reference recipe (default: nanoGPT's baby GPT: GPT-2 block, AdamW, cosine)")
    p.add_argument("--recipe", default=str(ROOT / "configs" / "shakespeare_char_modern.toml"))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for the recipe (ablations)")
    p.add_argument("--budget", type=float, default=3.0, help="minutes of training per recipe")
    p.add_argument("--evals", type=int, default=12, help="evaluations per run, evenly spaced in steps")
    p.add_argument("--eval_iters", type=int, default=40, help="fixed val batches per evaluation")
    p.add_argument("--data_dir", help="prepared data for both (default: the baseline's data_dir)")
    p.add_argument("--json", help="write the rows and ratios here")
    p.add_argument("--baseline_from", metavar="JSON", help="take the baseline's rows from an earlier --json instead "
                   "of training it again (for ablations: compare tokens; seconds drift between invocations)")
    p.add_argument("--keep", metavar="DIR", help="train in DIR/baseline and DIR/recipe and keep both models "
                   "(default: a temporary folder, removed at the end)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        base = config(args.baseline, [], work, "baseline", eval_iters=args.eval_iters)
        if args.data_dir:
            base = dataclasses.replace(base, data_dir=args.data_dir)
        recipe = config(args.recipe, args.set, work, "recipe", eval_iters=args.eval_iters, data_dir=base.data_dir,
                        batch_size=base.batch_size, block_size=base.block_size,
                        gradient_accumulation_steps=base.gradient_accumulation_steps)
        print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
              f"threads; {args.budget:g} min per recipe; data {base.data_dir}, batch {base.batch_size} x "
              f"{base.block_size} tokens")
        rows = {}
        if args.baseline_from:
            rows["baseline"] = json.loads(Path(args.baseline_from).read_text())["rows"]["baseline"]
            print(f"baseline: rows of {args.baseline_from}")
        for name, cfg in (("baseline", base), ("recipe", recipe)):
            if name not in rows:
                print(f"{name}: {args.baseline if name == 'baseline' else args.recipe} "
                      f"{' '.join(args.set) if name == 'recipe' else ''}")
                rows[name] = train(name, cfg, args.budget * 60, args.evals)

    final = rows["baseline"][-1]
    target = final["val_loss"]
    when = {key: reach(rows["recipe"], target, key) for key in ("seconds", "tokens")}
    ratios = {key: (when[key] / final[key] if when[key] is not None else None) for key in when}
    print("\n| recipe | steps | seconds | tokens | final val loss | tokens/s |\n|---|---|---|---|---|---|")
    for name in rows:
        last = rows[name][-1]
        print(f"| {name} | {last['step']:,} | {last['seconds']:.0f} | {last['tokens']:,} | {last['val_loss']:.4f} | "
              f"{last['tok_per_s']:,.0f} |")
    for key in ("seconds", "tokens"):
        ratio = f"{ratios[key]:.2f}x" if ratios[key] is not None else "never reached"
        print(f"recipe's {key} to the baseline's final val loss {target:.4f}: {ratio} the baseline's")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "target": target, "ratios": ratios, "set": args.set,
                                               "baseline": args.baseline, "recipe": args.recipe,
                                               "budget_min": args.budget}, indent=2))


if __name__ == "__main__":
    main()
