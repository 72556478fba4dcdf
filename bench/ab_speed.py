"""Before/after: training and decoding speed of this tree against an earlier commit, side by side.

    python bench/ab_speed.py --before 835177c^        # the commit before a change (about 10 minutes)
    python bench/ab_speed.py --before HEAD~3 --rounds 3 --only train --scale 2

A change that should not slow the CPU is checked here. The earlier commit is unpacked into a temporary
folder (``git archive``); each measurement runs in a fresh process with ``PYTHONPATH`` set to one tree
or the other, in the order before, after, after, before, ... (round by round), so a machine whose speed
drifts weighs on both alike. Rows, through interfaces both trees have:
  train  ``train.py`` end to end (data loader, loop, logging) on Tiny Shakespeare, prepared in the temporary
         folder: the baby GPT (characters, 4x4x128, 200 steps) and 6x384 on GPT-2 BPE tokens (fp32 eager,
         24 steps; ``--scale`` multiplies both): the median of the tokens/s of its log lines (the
         first left out), so a burst of load on a shared machine moves one line, not the row.
  decode ``minigpt.infer.generate.generate``, greedy, 6x384 with the GPT-2 vocabulary, a 16-token prompt and
         128 new tokens, batch 1 and 8: the dynamic KV cache and the static one (eager).
The table gives each side's median over the rounds and the ratio after / before (>1: the change is faster).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRAIN = {  # row -> (config, overrides, data folder name, steps, log_interval)
    "train baby char 4x4x128": ("shakespeare_char.toml", [], "char", 200, 10),
    "train 6x384 gpt2-bpe T256 B8": ("english_gpt2_small.toml", ["--dtype=float32", "--compile=false"], "gpt2", 24, 2),
}
DECODE = {  # row -> (batch, static cache)
    "decode 6x384 b1 dynamic": (1, False), "decode 6x384 b1 static": (1, True),
    "decode 6x384 b8 dynamic": (8, False), "decode 6x384 b8 static": (8, True),
}
DECODE_CODE = """
import sys, time, torch
from minigpt import GPT, GPTConfig
from minigpt.infer.generate import generate
batch, static = int(sys.argv[1]), sys.argv[2] == "1"
torch.manual_seed(0)
model = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=1024)).eval()
prompts = torch.randint(0, 50257, (batch, 16)).tolist()
kw = dict(static_cache=True) if static else {}
generate(model, prompts, 16, do_sample=False, **kw)  # warm-up
start = time.perf_counter()
generate(model, prompts, 128, do_sample=False, **kw)
print(batch * 128 / (time.perf_counter() - start))
"""


def unpack(rev: str, into: Path) -> Path:
    """The tree of ``rev`` (tracked files) in ``into``."""
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def python(tree: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})


def train_rate(tree: Path, row: str, data: dict[str, Path], scale: float, work: Path) -> float:
    """Tokens/s of a train row: the median over the run's log lines (each the mean of its interval), the
    first line left out (it holds the first step's allocations and, before 835177c, the evaluation)."""
    config, overrides, kind, steps, log_interval = TRAIN[row]
    steps = round(steps * scale)
    out = work / "run"
    python(tree, [str(tree / "train.py"), str(tree / "configs" / config), f"--data_dir={data[kind]}",
                  f"--out_dir={out}", f"--max_iters={steps}", f"--lr_decay_iters={steps}", f"--eval_interval={steps}",
                  "--eval_iters=2", f"--log_interval={log_interval}", "--progress=false", "--plot=false",
                  "--overwrite=true", *overrides], cwd=work)
    rates = [r["tok_per_s"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if "tok_per_s" in r]
    return statistics.median(rates[1:])


def measure(row: str, tree: Path, data: dict[str, Path], scale: float, work: Path) -> float:
    """Tokens per second of ``tree``: trained (train rows) or generated (decode rows)."""
    if row in TRAIN:
        return train_rate(tree, row, data, scale, work)
    batch, static = DECODE[row]
    out = python(tree, ["-c", DECODE_CODE, str(batch), "1" if static else "0"], cwd=work)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="the earlier commit (anything git understands)")
    p.add_argument("--after", default=str(ROOT), help="the tree to compare (default: this working tree; a copy "
                   "keeps edits made during the run out of it)")
    p.add_argument("--rounds", type=int, default=2, help="before/after pairs per row")
    p.add_argument("--scale", type=float, default=1.0, help="multiply each train row's steps (200 baby, 24 6x384)")
    p.add_argument("--only", default="", help="rows whose name contains this")
    p.add_argument("--json", help="write the measurements here")
    args = p.parse_args()
    rows = [r for r in (*TRAIN, *DECODE) if args.only in r]
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        before, after = unpack(args.before, work / "before"), Path(args.after).resolve()
        data = {}
        for kind, tokenizer in (("char", "char"), ("gpt2", "gpt2")):
            data[kind] = work / f"data-{kind}"
            python(ROOT, ["-m", "minigpt", "data", "--input", str(ROOT / "data" / "tinyshakespeare" / "input.txt"),
                          "--out", str(data[kind]), "--tokenizer", tokenizer, "--no_progress"], cwd=work)
        results = {row: {"before": [], "after": []} for row in rows}
        for round_ in range(args.rounds):
            for row in rows:
                for side in ("before", "after") if round_ % 2 == 0 else ("after", "before"):
                    speed = measure(row, before if side == "before" else after, data, args.scale, work)
                    results[row][side].append(speed)
                    print(f"  round {round_ + 1} {row:30s} {side:6s} {speed:10.2f}", flush=True)
    rev = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, capture_output=True, text=True).stdout
    print(f"\nbefore = {rev.strip()}, after = {args.after}; medians of {args.rounds} alternated runs each")
    print("| row | unit | before | after | after / before |\n|---|---|---|---|---|")
    for row, sides in results.items():
        b, a = statistics.median(sides["before"]), statistics.median(sides["after"])
        print(f"| {row} | tokens/s | {b:,.1f} | {a:,.1f} | {a / b:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"before": args.before, "results": results}, indent=2))


if __name__ == "__main__":
    main()
