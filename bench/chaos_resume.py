"""Crash safety, measured: SIGKILL a training run at random moments, resume after each kill, and
compare the final weights with an uninterrupted run of the same config; and the same for a corpus
preparation (``--part data``), compared byte for byte with an uninterrupted one.

    python bench/chaos_resume.py                 # 20 kills (docs/RESULTS.md has the figure)
    python bench/chaos_resume.py --kills 3       # what tests/train/test_reliability.py runs
    python bench/chaos_resume.py --part data     # 10 kills during `python -m minigpt data`
    python bench/chaos_resume.py --part data --overwrite   # ... of an --overwrite over older data
    python bench/chaos_resume.py --part both     # the two

Each kill lands at a random moment of the run: one in five during start-up, two in five a few
milliseconds after the run has passed a random iteration (it logs every 5 steps), two in five
within 10 ms of an evaluation's line in metrics.jsonl, which is when the checkpoints are written,
so that some land in the middle of a write. After each one the script loads every checkpoint the folder holds
(atomic writes: none may be damaged), then starts the run again with --resume (or afresh, if it
died before its first checkpoint). At the end it checks that no temporary file is left and prints
max |Δw| against the uninterrupted run. The numbers also go to WORK/chaos.json.

The data part prepares 80 text files of Tiny Shakespeare (GPT-2 tokens, 2 workers, shards of 4K
tokens: about 80 work units, 170 shards and as many journal entries) and kills the preparation one in
five times during start-up, the others just after a random number of shards is finished. After each
kill, whatever meta.json the folder holds must describe data that opens and verifies as the trainer's
``--verify_data`` does; with ``--overwrite`` (over a preparation of the same text with another seed),
the older data must still be there byte for byte until the new preparation has finished, and the
last kill lands while its files are being moved in. Then the same command runs again. At the end the
folder must equal an uninterrupted preparation byte for byte, verify, and hold no temporary, partial
or staging file, and no killed preparation may have printed a traceback (its worker processes
included). The numbers go to WORK/chaos_data.json.
"""

from __future__ import annotations

import argparse
import hashlib
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
from minigpt.data.corpus import JOURNAL, STAGING, prepare_corpus  # noqa: E402
from minigpt.data.loader import load_meta, open_split  # noqa: E402
from minigpt.errors import MiniGPTError  # noqa: E402
from minigpt.locks import LOCK_FILE  # noqa: E402

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
                load_checkpoint(out / name)  # reads every tensor: a torn file fails here
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
    parser.add_argument("--part", choices=("train", "data", "both"), default="train",
                        help="what to kill: a training run (the default), a corpus preparation, or both in turn")
    parser.add_argument("--kills", type=int, help="kills per part (default: 20 for training, 10 for the data)")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps of the run")
    parser.add_argument("--overwrite", action="store_true",
                        help="data: prepare with --overwrite over an older preparation of the same text")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--work", help="folder for data and runs (default: a temporary one, deleted afterwards)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        code = 0
        if args.part in ("train", "both"):
            code |= chaos_train(work, args.kills or 20, args.steps, args.seed)
        if args.part in ("data", "both"):
            code |= chaos_data(work, args.kills or 10, args.overwrite, args.seed)
        return code


def chaos_train(work: Path, kills: int, steps: int, seed: int) -> int:
    """SIGKILL a training run ``kills`` times, resuming after each; 0 if it ends at the uninterrupted weights."""
    text = (REPO / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:100_000]
    (work / "input.txt").write_text(text, encoding="utf-8")
    data = work / "char"
    prepare_corpus(work / "input.txt", data, "char", progress=False)

    start = time.perf_counter()
    proc = subprocess.Popen(train_command(data, work / "straight", steps), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while not (work / "straight" / "metrics.jsonl").exists() and proc.poll() is None:
        time.sleep(0.005)
    startup_s = time.perf_counter() - start
    if proc.wait() != 0:
        raise SystemExit("the uninterrupted run failed")
    straight_s = time.perf_counter() - start
    print(f"uninterrupted run: {steps} steps in {straight_s:.1f} s ({startup_s:.1f} s to its first evaluation)")

    rng = random.Random(seed)
    out, checked, unloadable, resumed_from, mid_write = work / "chaos", 0, [], [], 0
    for kill in range(kills):
        resume = (out / LAST).exists()
        extra = ["--resume"] if resume else ["--overwrite"]
        resumed_from.append(load_checkpoint(out / LAST).meta["iter_num"] if resume else 0)
        proc = subprocess.Popen(train_command(data, out, steps, *extra), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        started = time.perf_counter()
        room = steps - 20 - resumed_from[-1]  # iterations left to kill in; the kills spread over them
        draw = rng.random()
        evaluation = draw >= 0.6  # wait for an evaluation's line: the checkpoints are written right after it
        if draw < 0.2 or room < 1:
            target, delay = None, rng.uniform(0.0, startup_s)
        else:
            target = resumed_from[-1] + rng.randint(1, max(1, room // (kills - kill)))
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
    final = subprocess.run(train_command(data, out, steps, "--resume" if (out / LAST).exists() else "--overwrite"),
                           capture_output=True, text=True)
    if final.returncode != 0:
        print(final.stderr[-2000:])
        return 1
    a, b = load_checkpoint(work / "straight" / LAST).model, load_checkpoint(out / LAST).model
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    orphans = sorted(p.name for p in out.glob(".*.tmp"))
    result = {"kills": kills, "steps": steps, "max_abs_diff": diff, "orphaned_temporaries": orphans,
              "unloadable": unloadable, "checkpoints_checked": checked, "resumed_from": resumed_from,
              "uninterrupted_s": straight_s, "startup_s": startup_s, "killed_mid_write": mid_write}
    (work / "chaos.json").write_text(json.dumps(result, indent=2))
    print("\n| kills | of them mid-write | steps | checkpoints loaded after kills | unloadable | temporaries left "
          "at the end | max abs weight diff |")
    print("|------:|------------------:|------:|-------------------------------:|-----------:|"
          "----------------------------:|--------------------:|")
    print(f"| {kills:5d} | {mid_write:17d} | {steps:5d} | {checked:30d} | {len(unloadable):10d} | "
          f"{len(orphans):28d} | {diff:19.3g} |")
    ok = diff <= 1e-6 and not orphans and not unloadable
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1



# ----------------------------------------------------------------------------- corpus preparation

DATA_FILES = 80  # text files of the corpus: one work unit and a journal entry or more each
DATA_SHARD_TOKENS = "4K"


def prepare_command(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "minigpt", "data", "--input", str(corpus), "--out", str(out), "--tokenizer", "gpt2",
            "--workers", "2", "--shard_tokens", DATA_SHARD_TOKENS, "--no_progress", *extra]


def folder_files(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder`` but the lock file (whose line names its last holder)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def finished_shards(folder: Path) -> int:
    return len(list(folder.glob("train_*.bin"))) + len(list(folder.glob("val_*.bin")))


def verify_data(folder: Path) -> str | None:
    """What the trainer's --verify_data finds wrong with a prepared folder (None: nothing)."""
    try:
        meta = load_meta(folder)
        for split in ("train", "val"):
            open_split(folder, split, meta, verify=True)
    except MiniGPTError as err:
        return str(err)
    return None


def leftovers(folder: Path) -> list[str]:
    """Temporary, partial, journal and staging files a finished preparation must not leave."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith((".tmp", ".partial")) or p.name in (JOURNAL, STAGING))


def chaos_data(work: Path, kills: int, overwrite: bool, seed: int) -> int:
    """SIGKILL a corpus preparation ``kills`` times, running the same command after each; 0 if it ends
    byte-identical to an uninterrupted preparation, with every check on the way passed."""
    text = (REPO / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    corpus = work / "corpus"
    corpus.mkdir(exist_ok=True)
    step = len(text) // DATA_FILES
    for i in range(DATA_FILES):
        (corpus / f"part{i:03d}.txt").write_text(text[i * step:(i + 1) * step], encoding="utf-8")

    start = time.perf_counter()
    straight = work / "data_straight"
    proc = subprocess.Popen(prepare_command(corpus, straight), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not (straight / JOURNAL).exists() and proc.poll() is None:
        time.sleep(0.001)
    startup_s = time.perf_counter() - start
    if proc.wait() != 0:
        raise SystemExit(f"the uninterrupted preparation failed: {proc.stderr.read().decode()[-2000:]}")
    straight_s = time.perf_counter() - start
    expected, total = folder_files(straight), finished_shards(straight)
    print(f"uninterrupted preparation: {total} shards in {straight_s:.1f} s ({startup_s:.1f} s to its journal)")

    out = work / "data_chaos"
    extra = ["--overwrite"] if overwrite else []
    old: dict[str, str] = {}
    if overwrite:  # older data in the folder: the same text with another split
        old_run = subprocess.run(prepare_command(corpus, out, "--seed", "1"), capture_output=True, text=True)
        if old_run.returncode != 0:
            raise SystemExit(f"the older preparation failed: {old_run.stderr[-2000:]}")
        old = folder_files(out)
    preparing = out / STAGING if overwrite else out  # where the shards of the preparation under fire appear

    rng = random.Random(seed)
    problems, resumed_from, mid_write, moves, old_kept = [], [], 0, 0, 0
    for kill in range(kills):
        resumed_from.append(finished_shards(preparing) if preparing.is_dir() else 0)
        proc = subprocess.Popen(prepare_command(corpus, out, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started = time.perf_counter()
        room = total - 10 - resumed_from[-1]  # shards left to kill in; the kills spread over them
        move = overwrite and kill == kills - 1  # the last kill of an --overwrite: while the new files move in
        if move:
            target, delay = None, rng.uniform(0.0, 0.002)
            while proc.poll() is None and not (preparing / "meta.json").exists():
                time.sleep(0.0002)
        elif rng.random() < 0.2 or room < 1:
            target, delay = None, rng.uniform(0.0, startup_s)
        else:
            target = resumed_from[-1] + rng.randint(1, max(1, room // (kills - kill)))
            delay = rng.uniform(0.0, 0.005)
        while proc.poll() is None and target is not None and finished_shards(preparing) < target:
            time.sleep(0.0005)
        time.sleep(delay)
        if proc.poll() is not None:
            if not move:  # it ended before the kill: a finished preparation here is a failure of the script
                print(proc.stderr.read().decode()[-2000:] or "the preparation finished before it was killed")
                return 1
            print(f"kill {kill + 1:2d}: the preparation ended before the kill (its files were moved in)")
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        delay = time.perf_counter() - started
        err = proc.stderr.read().decode()
        if "Traceback" in err:
            problems.append(f"after kill {kill + 1}: a traceback: {err[-500:]}")
        mid_write += any(p.name.endswith(".tmp") for p in out.rglob("*"))
        state = "no data"
        if (out / "meta.json").exists():
            broken = verify_data(out)
            if broken:
                problems.append(f"after kill {kill + 1}: {broken}")
            now = {k: v for k, v in folder_files(out).items() if not k.startswith(STAGING)}
            if overwrite and now.get("meta.json") == old["meta.json"]:
                state = "the older data"
                old_kept += 1
                if {k: v for k, v in now.items() if k in old} != old:
                    problems.append(f"after kill {kill + 1}: the older data changed before the new data was ready")
            else:
                state = "the new data"
        elif overwrite and (preparing / "meta.json").exists():
            state, moves = "the new data half moved in", moves + 1
        print(f"kill {kill + 1:2d} after {delay:5.2f} s: {resumed_from[-1]:3d} shards finished before, "
              f"{finished_shards(preparing) if preparing.is_dir() else 0:3d} now; the folder holds {state}")
    final = subprocess.run(prepare_command(corpus, out, *extra), capture_output=True, text=True)
    if final.returncode != 0:
        print(final.stderr[-2000:])
        return 1
    differ = sorted(k for k in set(expected) | set(folder_files(out)) if expected.get(k) != folder_files(out).get(k))
    broken = verify_data(out)
    left = leftovers(out)
    result = {"kills": kills, "overwrite": overwrite, "shards": total, "differing_files": differ,
              "verify_error": broken, "leftovers": left, "problems": problems, "resumed_from": resumed_from,
              "killed_mid_write": mid_write, "killed_mid_move": moves, "older_data_kept": old_kept,
              "uninterrupted_s": straight_s, "startup_s": startup_s}
    (work / "chaos_data.json").write_text(json.dumps(result, indent=2))
    print("\n| kills | overwrite | of them mid-write | mid-move | shards | files differing at the end | "
          "verify | leftovers | problems |")
    print("|------:|:---------:|------------------:|---------:|-------:|---------------------------:|:------:|"
          "----------:|---------:|")
    print(f"| {kills:5d} | {'yes' if overwrite else 'no':9s} | {mid_write:17d} | {moves:8d} | {total:6d} | "
          f"{len(differ):26d} | {'ok' if broken is None else 'FAIL':6s} | {len(left):9d} | {len(problems):8d} |")
    for problem in problems:
        print(problem)
    ok = not differ and broken is None and not left and not problems
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
