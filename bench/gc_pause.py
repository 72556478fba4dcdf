"""What Python's garbage collector costs a training run, with and without the loop's ``gc.freeze``.

    python bench/gc_pause.py                  # 2 rounds x (eager, compiled) x (freeze, no freeze), ~4 min
    python bench/gc_pause.py --steps 600 --rounds 3 --no-compile

After its first step the training loop calls ``gc.collect(); gc.freeze()`` (minigpt/train/loop.py,
``freeze_heap``, as nanochat does): everything alive then (torch's modules, the model, compiled graphs)
moves to the collector's permanent generation, and a full collection no longer walks it. This bench
trains the baby GPT of configs/shakespeare_char.toml on Tiny Shakespeare characters through the real
loop, each setting in a fresh process (the heap is per process), settings alternated round by round,
and times every collection after the first step with ``gc.callbacks``: collections of each
generation, the time they took in all and per step, the longest pause, and the step time; and, right
after the first step, how many objects a full collection walks, how many the freeze took out of it,
and what one full collection then takes (the pause a generation-2 collection would cost).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("freeze", "no freeze")


def measure(setting: str, compiled: bool, steps: int, data_dir: str, out_dir: str) -> dict:
    """In the child process: train ``steps`` steps, timing every collection after the first step."""
    import gc

    from minigpt.config_schema import build_config
    from minigpt.train import run
    from minigpt.train import loop
    from minigpt.train.pretrain import PretrainConfig

    if setting == "no freeze":
        loop.freeze_heap = lambda: None
    done, pauses, started, counts = [0], [], {}, {}
    real_step = loop.Run.step

    def step(self) -> None:
        real_step(self)
        done[0] += 1
        if done[0] == 1:
            counts.update(frozen=gc.get_freeze_count(), walked=len(gc.get_objects()))
            full = time.perf_counter()
            gc.collect()  # what one full collection costs from now on (not counted among the pauses)
            counts["full_ms"] = 1e3 * (time.perf_counter() - full)
            done.append(time.perf_counter())  # the steady state starts after the first step

    def timer(phase: str, info: dict) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
        elif len(done) > 1 and "t" in started:
            pauses.append((info["generation"], time.perf_counter() - started["t"]))

    loop.Run.step = step
    gc.callbacks.append(timer)
    cfg = build_config(PretrainConfig, str(ROOT / "configs" / "shakespeare_char.toml"),
                       [f"--data_dir={data_dir}", f"--out_dir={out_dir}", f"--max_iters={steps}",
                        f"--eval_interval={steps}", "--eval_iters=1", "--progress=false", "--plot=false",
                        f"--compile={'true' if compiled else 'false'}", "--overwrite=true"])
    run(cfg)
    seconds = time.perf_counter() - done[1]
    gc.callbacks.remove(timer)
    return {"collections": [sum(g == k for g, _ in pauses) for k in range(3)],
            "gc_ms": 1e3 * sum(t for _, t in pauses), "longest_ms": 1e3 * max((t for _, t in pauses), default=0.0),
            "step_ms": 1e3 * seconds / (steps - 1), **counts}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400, help="training steps per run")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager rows only")
    p.add_argument("--child", nargs=4, metavar=("SETTING", "COMPILED", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        setting, compiled, data_dir, out_dir = args.child
        print(json.dumps(measure(setting, compiled == "1", args.steps, data_dir, out_dir)))
        return

    with tempfile.TemporaryDirectory() as work:
        data_dir = str(Path(work) / "char")
        subprocess.run([sys.executable, "-m", "minigpt", "data", "--input", str(ROOT / "data" / "tinyshakespeare" /
                        "input.txt"), "--out", data_dir, "--no_progress"], check=True, capture_output=True)
        results: dict[tuple[str, bool], list[dict]] = {}
        for round_ in range(args.rounds):
            for compiled in (False, True) if args.compile else (False,):
                for setting in SETTINGS if round_ % 2 == 0 else SETTINGS[::-1]:
                    out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", setting,
                                          "1" if compiled else "0", data_dir, str(Path(work) / "run")],
                                         check=True, capture_output=True, text=True, cwd=ROOT)
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    results.setdefault((setting, compiled), []).append(row)
                    print(f"  round {round_ + 1} {'compiled' if compiled else 'eager':8s} {setting:9s} "
                          f"gc {row['gc_ms']:7.1f} ms  step {row['step_ms']:6.2f} ms", flush=True)

    print(f"\n{platform.processor() or platform.machine()}, torch {__import__('torch').__version__}, "
          f"{args.steps} steps per run, medians over {args.rounds} rounds (gen0/1/2: collections after step 1)")
    print(f"| {'mode':8s} | {'setting':9s} | {'gen0/1/2':>14s} | {'gc ms':>7s} | {'gc ms/step':>10s} | "
          f"{'longest ms':>10s} | {'step ms':>7s} | {'walked':>9s} | {'frozen':>9s} | {'full gc ms':>10s} |")
    print("|" + "|".join("-" * (w + 2) for w in (8, 9, 14, 7, 10, 10, 7, 9, 9, 10)) + "|")
    for (setting, compiled), rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in ("gc_ms", "longest_ms", "step_ms", "walked", "frozen", "full_ms")}
        gens = "/".join(str(round(statistics.median(r["collections"][g] for r in rows))) for g in range(3))
        print(f"| {'compiled' if compiled else 'eager':8s} | {setting:9s} | {gens:>14s} | {med['gc_ms']:7.1f} | "
              f"{med['gc_ms'] / (args.steps - 1):10.3f} | {med['longest_ms']:10.2f} | {med['step_ms']:7.2f} | "
              f"{med['walked']:9,.0f} | {med['frozen']:9,.0f} | {med['full_ms']:10.1f} |")


if __name__ == "__main__":
    main()
