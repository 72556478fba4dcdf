"""Corpus preparation at scale, measured: wall time, MB/s, tokens/s and peak memory for corpora of
0.1, 1 and 4 GB, beside raw tiktoken on the same text with the same number of workers (the limit),
and the trainer's resident memory after 1,000 batches from the largest corpus and the smallest.

    python bench/prepare_speed.py                      # 0.1, 1 and 4 GB (about 15 minutes on 2 cores)
    python bench/prepare_speed.py --sizes 0.05 0.2     # a quick look

The corpora are JSONL files (one document a line, 0.5-5 K characters each) cut from the bundled
Tiny Shakespeare, written to a temporary folder that is deleted afterwards. Each preparation and
each baseline runs in a fresh process; its peak memory is ``getrusage``'s maxrss of that process
and of its children (the workers), whichever is larger.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PREPARE = """
import json, resource, sys, time
from minigpt.data.corpus import prepare_corpus
start = time.perf_counter()
meta = prepare_corpus(sys.argv[1], sys.argv[2], "gpt2", workers=int(sys.argv[3]), progress=False)
seconds = time.perf_counter() - start
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"seconds": seconds, "tokens": meta["train_tokens"] + meta["val_tokens"], "peak_kb": peak}))
"""

# raw tiktoken: the same documents, parsed outside the timer and encoded by tiktoken alone, nothing
# written. Two forms: tiktoken's own batch encoder with one thread per worker, in one process; and
# one process per worker, each encoding its own share of the file (no data passes between processes).
RAW = """
import json, resource, sys, time
from minigpt.data.tokenizers import GPT2Tokenizer
enc, threads, begin, end = GPT2Tokenizer()._enc, int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
encoding, tokens, batch, size, began = 0.0, 0, [], 0, time.perf_counter()
def flush():
    global encoding, tokens, batch, size
    start = time.perf_counter()
    if threads > 1:
        tokens += sum(len(ids) for ids in enc.encode_ordinary_batch(batch, num_threads=threads))
    else:
        tokens += sum(len(enc.encode_ordinary(text)) for text in batch)
    encoding += time.perf_counter() - start
    batch, size = [], 0
with open(sys.argv[1], "rb") as f:
    f.seek(begin)
    while f.tell() < end:
        line = f.readline()
        if not line:
            break
        batch.append(json.loads(line)["text"]); size += len(line)
        if size >= 1 << 24:
            flush()
flush()
print(json.dumps({"seconds": encoding, "with_parsing": time.perf_counter() - began, "tokens": tokens,
                  "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def raw_processes(corpus: Path, workers: int) -> dict:
    """``workers`` processes at once, each encoding its share of the lines; the limit is the slowest one."""
    size, bounds = corpus.stat().st_size, [0]
    with open(corpus, "rb") as f:
        for k in range(1, workers):
            f.seek(k * size // workers)
            f.readline()  # to the start of the next line
            bounds.append(f.tell())
    bounds.append(size)
    procs = [subprocess.Popen([sys.executable, "-c", RAW, str(corpus), "1", str(a), str(b)], stdout=subprocess.PIPE,
                              text=True, cwd=REPO) for a, b in zip(bounds, bounds[1:])]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return {"seconds": max(r["seconds"] for r in results), "with_parsing": max(r["with_parsing"] for r in results),
            "tokens": sum(r["tokens"] for r in results)}


TRAIN = """
import json, resource, sys, torch
from minigpt.data.loader import Windows, load_meta, open_split
from minigpt.train.pretrain import PretrainConfig, train
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
cfg = PretrainConfig(data_dir=sys.argv[1], out_dir=sys.argv[2], n_layer=1, n_head=2, n_embd=8, block_size=64,
                     batch_size=8, max_iters=1000, eval_interval=1000, eval_iters=2, log_interval=100,
                     progress=False, plot=False, device="cpu")
train(cfg)
after_training = rss()
windows = Windows(open_split(sys.argv[1], "train", load_meta(sys.argv[1])), 1024, torch.device("cpu"))
for seed in range(1000):  # the data path alone, with long windows: 1,000 batches of 64 x 1,025 tokens
    windows.batch(64, seed)
print(json.dumps({"trainer_mb": after_training, "data_path_mb": rss()}))
"""


def child(script: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_corpus(path: Path, gigabytes: float, seed: int = 0) -> int:
    """A JSONL file of about ``gigabytes`` of documents cut from Tiny Shakespeare; returns its size."""
    text = (REPO / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    rng, target, size = random.Random(seed), int(gigabytes * 1e9), 0
    with open(path, "w", encoding="utf-8") as f:
        while size < target:
            lines = []
            for _ in range(2000):
                start = rng.randrange(len(text) - 5000)
                lines.append(json.dumps({"text": text[start:start + rng.randint(500, 5000)]}) + "\n")
            block = "".join(lines)
            f.write(block)
            size += len(block.encode())
    return path.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.1, 1.0, 4.0], help="corpus sizes in GB")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-trainer", action="store_true", help="skip the trainer's memory rows")
    parser.add_argument("--work", help="folder for the corpora (default: a temporary one, deleted afterwards)")
    args = parser.parse_args()
    print(f"CPU: {os.cpu_count()} cores, {args.workers} workers; corpora of {args.sizes} GB", flush=True)
    rows, prepared = [], {}
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        root = Path(scratch)
        for gb in args.sizes:
            corpus = root / f"corpus_{gb}GB.jsonl"
            size = make_corpus(corpus, gb)
            ours = child(PREPARE, str(corpus), str(root / f"prepared_{gb}"), str(args.workers))
            threads = child(RAW, str(corpus), str(args.workers), "0", str(size))
            processes = raw_processes(corpus, args.workers)
            prepared[gb] = root / f"prepared_{gb}"
            rows.append((gb, size, ours, threads, processes))
            print(f"  {gb} GB done: ours {ours['seconds']:.1f} s, raw tiktoken {threads['seconds']:.1f} s (threads), "
                  f"{processes['seconds']:.1f} s (processes)", flush=True)
        print()
        print("| corpus | bytes | wall time | MB/s | tokens/s | peak memory | raw tiktoken, threads | raw tiktoken, "
              "processes | the same, reading and parsing included | ours / raw processes | ours / raw with parsing |")
        print("|-------:|------:|----------:|-----:|---------:|------------:|------:|------:|------:|------:|------:|")
        for gb, size, ours, threads, processes in rows:
            rates = [threads["tokens"] / threads["seconds"], processes["tokens"] / processes["seconds"],
                     processes["tokens"] / processes["with_parsing"]]
            mine = ours["tokens"] / ours["seconds"]
            print(f"| {gb:g} GB | {size:,} | {ours['seconds']:.1f} s | {size / 1e6 / ours['seconds']:.1f} | "
                  f"{mine:,.0f} | {ours['peak_kb'] / 1024:,.0f} MB | {rates[0]:,.0f} | {rates[1]:,.0f} | {rates[2]:,.0f} | "
                  f"{mine / rates[1]:.0%} | {mine / rates[2]:.0%} |")
        print("(tokens/s everywhere; the raw rows time tiktoken only, parsing outside the timer, except the last)")
        if args.no_trainer:
            return 0
        small, large = min(prepared), max(prepared)
        memory = {}
        for gb in (small, large):
            memory[gb] = child(TRAIN, str(prepared[gb]), str(root / f"run_{gb}"))
            (root / f"corpus_{gb}GB.jsonl").unlink(missing_ok=True)
        print()
        print("| peak resident memory | from the {:g} GB corpus | from the {:g} GB corpus | difference |".format(small, large))
        print("|----------------------|---------------------:|---------------------:|-----------:|")
        for key, what in (("trainer_mb", "trainer, 1,000 steps of 8 x 64 tokens (1-layer model)"),
                          ("data_path_mb", "then 1,000 more batches of 64 x 1,025 tokens")):
            print(f"| {what} | {memory[small][key]:,.0f} MB | {memory[large][key]:,.0f} MB | "
                  f"{memory[large][key] - memory[small][key]:+,.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
