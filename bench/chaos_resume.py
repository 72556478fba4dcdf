"""Crash safety, measured: SIGKILL a training run at random moments, resume after each kill, and
compare the final weights with an uninterrupted run of the same config.

    python bench/chaos_resume.py                 # 20 kills (docs/RESULTS.md has the figure)
    python bench/chaos_resume.py --kills 3       # what tests/test_reliability.py runs

Each kill lands at a random moment of the run: one in five during start-up, two in five a few
milliseconds after the run has passed a random iteration (it logs every 5 steps), two in five
within 10 ms of an evaluation's line in metrics.jsonl, which is when the checkpoints are written,
so that some land in the middle of a write. After each one the script loads every checkpoint the folder holds
(atomic writes: none may be damaged), then starts the run again with --resume (or afresh, if it
died before its first checkpoint). At the end it checks that no temporary file is left and prints
max |Δw| against the uninterrupted run. The numbers also go to WORK/chaos.json.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minigpt.checkpoint import BEST, LAST, load_checkpoint  # noqa: E402
from minigpt.data.corpus import prepare_corpus  # noqa: E402
from minigpt.errors import MiniGPTError  # noqa: E402

MODEL = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--dropout=0.1",
         "--eval_iters=2", "--log_interval=5", "--progress=false", "--plot=false", "--device=cpu"]


def train_command(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), f"--data_dir={data}", f"--out_dir={out}", f"--max_iters={steps}",
            f"--lr_decay_iters={steps}", "--warmup_iters=10", "--eval_interval=10", *MODEL, *extra]


def checkpoints_load(out: Path) -> tuple[int, list[str]]:
    """(checkpoints found, those that do not load)."""
    found, broken = 0, []
    for name in (LAST, BEST):
        if (out / name).exists():
            found += 1
            try:
                load_checkpoint(out / name).model
            except MiniGPTError as err:
                broken.append(f"{name}: {err}")
    return found, broken


def last_iteration(out: Path, evaluation: bool = False) -> int:
    """The latest iteration metrics.jsonl reports (of an evaluation, if asked), or 0."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines[-3:]]
        return max((r["iter"] for r in records if not evaluation or "val_loss" in r), default=0)
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps of the run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--work", help="folder for data and runs (default: a temporary one, deleted afterwards)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        text = (REPO / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:100_000]
        (work / "input.txt").write_text(text, encoding="utf-8")
        data = work / "char"
        prepare_corpus(work / "input.txt", data, "char", progress=False)

        start = time.perf_counter()
        proc = subprocess.Popen(train_command(data, work / "straight", args.steps), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while not (work / "straight" / "metrics.jsonl").exists() and proc.poll() is None:
            time.sleep(0.005)
        startup_s = time.perf_counter() - start
        if proc.wait() != 0:
            raise SystemExit("the uninterrupted run failed")
        straight_s = time.perf_counter() - start
        print(f"uninterrupted run: {args.steps} steps in {straight_s:.1f} s ({startup_s:.1f} s to its first evaluation)")

        rng = random.Random(args.seed)
        out, checked, unloadable, resumed_from, mid_write = work / "chaos", 0, [], [], 0
        for kill in range(args.kills):
            resume = (out / LAST).exists()
            extra = ["--resume"] if resume else ["--overwrite"]
            resumed_from.append(load_checkpoint(out / LAST).meta["iter_num"] if resume else 0)
            proc = subprocess.Popen(train_command(data, out, args.steps, *extra), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
            started = time.perf_counter()
            room = args.steps - 20 - resumed_from[-1]  # iterations left to kill in; the kills spread over them
            draw = rng.random()
            evaluation = draw >= 0.6  # wait for an evaluation's line: the checkpoints are written right after it
            if draw < 0.2 or room < 1:
                target, delay = None, rng.uniform(0.0, startup_s)
            else:
                target = resumed_from[-1] + rng.randint(1, max(1, room // (args.kills - kill)))
                delay = rng.uniform(0.0, 0.01 if evaluation else 0.03)
            while proc.poll() is None and target is not None and last_iteration(out, evaluation) < target:
                time.sleep(0.001)
            time.sleep(delay)
            if proc.poll() is not None:  # it ended before the kill: a finished run here is a failure of the script
                print(proc.stderr.read().decode()[-2000:] or "the run finished before it was killed")
                return 1
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            delay = time.perf_counter() - started
            mid_write += any(out.glob(".*.tmp"))  # killed while writing: the next run must clear it away
            found, broken = checkpoints_load(out)
            checked += found
            unloadable += [f"after kill {kill + 1}: {b}" for b in broken]
            reached = load_checkpoint(out / LAST).meta["iter_num"] if (out / LAST).exists() and not broken else "-"
            print(f"kill {kill + 1:2d} after {delay:5.2f} s: resumed from iteration {resumed_from[-1]:3d}, "
                  f"ckpt_last now at {reached}; {found} checkpoint(s) load" + (f", {len(broken)} do not" if broken else ""))
        final = subprocess.run(train_command(data, out, args.steps, "--resume" if (out / LAST).exists() else "--overwrite"),
                               capture_output=True, text=True)
        if final.returncode != 0:
            print(final.stderr[-2000:])
            return 1
        a, b = load_checkpoint(work / "straight" / LAST).model, load_checkpoint(out / LAST).model
        diff = max((a[k] - b[k]).abs().max().item() for k in a)
        orphans = sorted(p.name for p in out.glob(".*.tmp"))
        result = {"kills": args.kills, "steps": args.steps, "max_abs_diff": diff, "orphaned_temporaries": orphans,
                  "unloadable": unloadable, "checkpoints_checked": checked, "resumed_from": resumed_from,
                  "uninterrupted_s": straight_s, "startup_s": startup_s, "killed_mid_write": mid_write}
        (work / "chaos.json").write_text(json.dumps(result, indent=2))
        print("\n| kills | of them mid-write | steps | checkpoints loaded after kills | unloadable | temporaries left "
              "at the end | max abs weight diff |")
        print("|------:|------------------:|------:|-------------------------------:|-----------:|"
              "----------------------------:|--------------------:|")
        print(f"| {args.kills:5d} | {mid_write:17d} | {args.steps:5d} | {checked:30d} | {len(unloadable):10d} | "
              f"{len(orphans):28d} | {diff:19.3g} |")
        ok = diff <= 1e-6 and not orphans and not unloadable
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
