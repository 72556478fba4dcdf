"""A user's mistakes, fed to every command-line tool: each must end with exactly one line on stderr
that names the offending file, key or value, a non-zero exit code, and no traceback.

The tools run in this process through the entry points the scripts use (``run_cli(main, argv)``),
so the table stays fast. Each case builds its argv from a shared workspace of small, valid inputs
(prepared data, a language-model run, a classifier run, a Hugging Face folder) and breaks one thing.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from minigpt import GPT, GPTConfig, save_hf
from minigpt.checkpoint import LAST
from minigpt.files import save_tensors
from minigpt.cli import data as data_cli
from minigpt.cli import classify as classify_cli
from minigpt.cli import evaluate as evaluate_cli
from minigpt.cli import plot as plot_cli
from minigpt.cli import run_cli
from minigpt.cli import sample as sample_cli
from minigpt.cli import tokenizer as tokenizer_cli
from minigpt.cli import train as train_cli
from minigpt.data.corpus import prepare_corpus

REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE = (REPO / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:20_000]
TOOLS = {"train": train_cli.main, "sample": sample_cli.main, "data": data_cli.main, "classify": classify_cli.main,
         "evaluate": evaluate_cli.main, "plot": plot_cli.main, "tokenizer": tokenizer_cli.main}
TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=2", "--eval_iters=1",
        "--progress=false", "--plot=false", "--device=cpu"]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else lambda t: path.write_text(t, encoding="utf-8"))(text)
    return path


def reviews(n: int = 40) -> str:
    return "text,label\n" + "".join(f"{'good' if i % 2 else 'bad'} film {i},{'pos' if i % 2 else 'neg'}\n"
                                    for i in range(n))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """The workspace every case starts from; cases that break something copy what they break."""
    root = tmp_path_factory.mktemp("ws")
    write(root / "input.txt", SHAKESPEARE)
    prepare_corpus(root / "input.txt", root / "char", "char", progress=False)
    write(root / "lm.toml", f'data_dir = "{root / "char"}"\nmax_iters = 2\neval_interval = 2\n')
    assert run_cli(train_cli.main, [str(root / "lm.toml"), f"--out_dir={root / 'lm'}", *TINY]) == 0
    write(root / "reviews.csv", reviews())
    write(root / "clf.toml", f'task = "classify"\ntrain_file = "{root / "reviews.csv"}"\ninit_from = "scratch"\n'
                             f'tokenizer = "char"\nmax_iters = 2\neval_interval = 2\nsplit = "0.5,0.25,0.25"\n')
    assert run_cli(train_cli.main, [str(root / "clf.toml"), f"--out_dir={root / 'clf'}", *TINY]) == 0
    torch.manual_seed(0)
    save_hf(GPT(GPTConfig(vocab_size=50257, block_size=16, n_layer=1, n_head=2, n_embd=8)), root / "hf")
    write(root / "latin1.txt", "café".encode("latin-1"))
    write(root / "empty.txt", "")
    (root / "folder").mkdir()
    return root


def copy(ws: Path, name: str, to: Path) -> Path:
    shutil.copytree(ws / name, to / name) if (ws / name).is_dir() else shutil.copy(ws / name, to / name)
    return to / name


# ----------------------------------------------------------------------------- the cases
# (id, tool, argv(ws, tmp) -> list, what the one line must contain). Broken inputs are made in tmp.


def lm_args(ws, tmp, *extra):
    return [str(ws / "lm.toml"), f"--out_dir={tmp / 'run'}", *TINY, *extra]


def clf_args(ws, tmp, *extra, csv: str | None = None, suffix: str = "csv"):
    train_file = write(tmp / f"d.{suffix}", csv) if csv is not None else ws / "reviews.csv"
    return [str(ws / "clf.toml"), f"--out_dir={tmp / 'run'}", f"--train_file={train_file}", *TINY, *extra]


def broken_data(ws, tmp, damage) -> list:
    data = copy(ws, "char", tmp)
    damage(data)
    return [str(ws / "lm.toml"), f"--data_dir={data}", f"--out_dir={tmp / 'run'}", *TINY]


def cut_file(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def fill_shard(path: Path, token: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:1024] + np.full((len(data) - 1024) // 2, token, np.uint16).tobytes())


def meta_shard_tokens(data: Path, tokens: int) -> None:
    meta = json.loads((data / "meta.json").read_text())
    meta["splits"]["train"]["shards"][0]["tokens"] = tokens
    (data / "meta.json").write_text(json.dumps(meta))


def legacy_data(ws, tmp, damage) -> list:
    """ws/char in the single-file layout of earlier versions (raw train.bin / val.bin), then damaged."""
    data = tmp / "legacy"
    data.mkdir()
    meta = json.loads((ws / "char" / "meta.json").read_text())
    for split in ("train", "val"):
        (data / f"{split}.bin").write_bytes((ws / "char" / f"{split}_000000.bin").read_bytes()[1024:])
    (data / "meta.json").write_text(json.dumps({k: meta[k] for k in ("tokenizer", "vocab_size", "dtype", "train_tokens",
                                                                     "val_tokens")}))
    damage(data)
    return [str(ws / "lm.toml"), f"--data_dir={data}", f"--out_dir={tmp / 'run'}", *TINY]


def meta_with(data: Path, **changes) -> None:
    meta = json.loads((data / "meta.json").read_text())
    meta.update(changes)
    for key, value in changes.items():
        if value is None:
            meta.pop(key)
    (data / "meta.json").write_text(json.dumps(meta))


def meta_shard(data: Path, **changes) -> None:
    meta = json.loads((data / "meta.json").read_text())
    meta["splits"]["train"]["shards"][0].update(changes)
    (data / "meta.json").write_text(json.dumps(meta))


def swap_tokens(path: Path) -> None:
    """Two tokens of a shard swapped: the same size and ids, other content."""
    data = bytearray(path.read_bytes())
    data[1024:1026], data[1030:1032] = data[1030:1032], data[1024:1026]
    assert bytes(data) != path.read_bytes()
    path.write_bytes(bytes(data))


HELD = []  # descriptors of the folders locked by the cases (released when the test process ends)


def locked(folder: Path) -> Path:
    """``folder``, locked as a running training would hold it."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".minigpt.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"pid {os.getpid()}: train.py\n".encode())
    HELD.append(fd)
    return folder


def resumed_clf(ws, tmp) -> list[str]:
    """Overrides that resume a copy of the workspace's classifier run for two more steps."""
    return [f"--out_dir={copy(ws, 'clf', tmp)}", "--resume", "--max_iters=4"]


def out_dir_with_run(ws, tmp) -> Path:
    copy(ws, "lm", tmp)
    return tmp / "lm"


def other_vocab(ws, tmp) -> list:
    """Data of the same vocabulary size as ws/char but other characters."""
    chars = sorted(set(SHAKESPEARE))
    table = str.maketrans(chars[-1], "~")  # one character swapped for another: same size, another vocabulary
    write(tmp / "other.txt", SHAKESPEARE.translate(table))
    prepare_corpus(tmp / "other.txt", tmp / "other", "char", progress=False)
    run = out_dir_with_run(ws, tmp)
    return [str(ws / "lm.toml"), f"--data_dir={tmp / 'other'}", f"--out_dir={run}", "--resume", "--max_iters=4", *TINY]


def damaged_checkpoint(ws, tmp, meta_change=None, cut=False) -> Path:
    run = out_dir_with_run(ws, tmp)
    path = run / LAST
    data = path.read_bytes()
    if cut:
        path.write_bytes(data[: len(data) // 2])
    if meta_change is not None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata()
        header["minigpt"] = meta_change(header["minigpt"])
        save_tensors(path, load_file(str(path)), metadata=header)
    (run / "ckpt_best.safetensors").unlink()
    return run


def drop_key(key):
    def change(text):
        meta = json.loads(text)
        meta.pop(key)
        return json.dumps(meta)
    return change


def hf_variant(ws, tmp, config_change=None, weights=None) -> Path:
    folder = copy(ws, "hf", tmp)
    if config_change:
        config = json.loads((folder / "config.json").read_text())
        config_change(config)
        (folder / "config.json").write_text(json.dumps(config))
    if weights:
        weights(folder)
    return folder


def pickled_code(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    torch.save({"fn": print}, folder / "pytorch_model.bin")  # a function: refused by weights_only


def index_outside(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder.parent / "elsewhere.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte": "../elsewhere.safetensors"}}))


def index_shard_number(folder: Path) -> None:
    """model.safetensors replaced by an index whose weight_map gives a number, not a file name, as a shard."""
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte": 5}}))


def set_key(key, value):
    """A meta_change for damaged_checkpoint: the 'minigpt' metadata with ``key`` set to ``value``."""
    def change(text):
        return json.dumps({**json.loads(text), key: value})
    return change


LLAMA = dict(model_type="llama", hidden_size=8, num_attention_heads=2, max_position_embeddings=16, num_hidden_layers=1)


def llama_variant(ws, tmp, **changes) -> Path:
    """ws/hf with its config relabelled as a one-layer llama of the same size, then ``changes`` applied."""
    return hf_variant(ws, tmp, lambda c: c.update(LLAMA, **changes))


def hf_folder(tmp: Path, name: str, vocab_size: int = 50257, nan: bool = False) -> Path:
    """A fresh one-layer Hugging Face folder tmp/name (every weight NaN if ``nan``)."""
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8))
    if nan:
        for p in model.parameters():
            p.data.fill_(float("nan"))
    save_hf(model, tmp / name)
    return tmp / name


def damaged_gzip(tmp: Path) -> Path:
    """A .jsonl.gz corpus whose first deflate block has the reserved block type (bits 1-2 of byte 10 set)."""
    lines = "".join(json.dumps({"text": SHAKESPEARE[i:i + 300]}) + "\n" for i in range(0, 18_000, 300))
    data = gzip.compress(lines.encode(), mtime=0)
    return write(tmp / "d.jsonl.gz", data[:10] + bytes([data[10] | 6]) + data[11:])


def damaged_parquet(tmp: Path) -> Path:
    """A parquet corpus of four row groups with 64 bytes XOR-ed 0xA5 in the middle of the file (row group 2)."""
    path = tmp / "d.parquet"
    pq.write_table(pa.table({"text": [SHAKESPEARE[i:i + 500] for i in range(0, 20_000, 500)]}), path, row_group_size=10)
    data = path.read_bytes()
    mid = len(data) // 2
    path.write_bytes(data[:mid] + bytes(x ^ 0xA5 for x in data[mid:mid + 64]) + data[mid + 64:])
    return path


WORD_LEVEL = '{"model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}}'


def tokenizer_folder(tmp: Path, config_text: str | bytes) -> Path:
    """tmp/tok: a one-word WordLevel tokenizer.json with ``config_text`` as its tokenizer_config.json."""
    write(tmp / "tok" / "tokenizer.json", WORD_LEVEL)
    write(tmp / "tok" / "tokenizer_config.json", config_text)
    return tmp / "tok"


def trained_tokenizer(ws: Path, tmp: Path) -> Path:
    """tmp/tok: a byte-level BPE of 300 tokens trained on the workspace's text."""
    assert run_cli(tokenizer_cli.main, ["--input", str(ws / "input.txt"), "--vocab_size", "300", "--out",
                                        str(tmp / "tok"), "--no_progress"]) == 0
    return tmp / "tok"


def bpe_data(ws: Path, tmp: Path) -> Path:
    """tmp/bpe: the workspace's text prepared with ``trained_tokenizer``."""
    prepare_corpus(ws / "input.txt", tmp / "bpe", str(trained_tokenizer(ws, tmp)), progress=False)
    return tmp / "bpe"


CASES = [
    # --- train.py: keys and values
    ("unknown-key", "train", lambda ws, t: lm_args(ws, t, "--n_layers=3"), "unknown key 'n_layers'; did you mean 'n_layer'"),
    ("not-an-int", "train", lambda ws, t: lm_args(ws, t, "--n_layer=three"), "n_layer expects int, got 'three'"),
    ("bool-for-float", "train", lambda ws, t: lm_args(ws, t, "--dropout=true"), "dropout expects float"),
    ("batch-0", "train", lambda ws, t: lm_args(ws, t, "--batch_size=0"), "batch_size must be at least 1, got 0"),
    ("lr-nan", "train", lambda ws, t: lm_args(ws, t, "--learning_rate=nan"), "learning_rate must be a finite number"),
    ("lr-negative", "train", lambda ws, t: lm_args(ws, t, "--learning_rate=-1"), "learning_rate must be greater than 0"),
    ("min-lr-above-lr", "train", lambda ws, t: lm_args(ws, t, "--learning_rate=0.01", "--min_lr=0.1"), "min_lr (0.1) must not exceed learning_rate"),
    ("grad-clip-nan", "train", lambda ws, t: lm_args(ws, t, "--grad_clip=nan"), "grad_clip must be a finite number"),
    ("beta1-above-1", "train", lambda ws, t: lm_args(ws, t, "--beta1=1.5"), "beta1 must be in [0, 1), got 1.5"),
    ("beta2-negative", "train", lambda ws, t: lm_args(ws, t, "--beta2=-0.1"), "beta2 must be in [0, 1)"),
    ("dropout-1", "train", lambda ws, t: lm_args(ws, t, "--dropout=1.0"), "dropout must be in [0, 1), got 1.0"),
    ("dropout-inf", "train", lambda ws, t: lm_args(ws, t, "--dropout=inf"), "dropout must be a finite number"),
    ("weight-decay-negative", "train", lambda ws, t: lm_args(ws, t, "--weight_decay=-1"), "weight_decay must be at least 0"),
    ("embd-not-divisible", "train", lambda ws, t: lm_args(ws, t, "--n_embd=30", "--n_head=4"), "n_embd (30) must be divisible by GPTConfig.n_head (4)"),
    ("backend", "train", lambda ws, t: lm_args(ws, t, "--attn_backend=flash"), "attn_backend must be one of sdpa, manual; got 'flash'"),
    ("pos-embedding", "train", lambda ws, t: lm_args(ws, t, "--pos_embedding=alibi"), "pos_embedding must be one of"),
    ("activation", "train", lambda ws, t: lm_args(ws, t, "--activation=relu"), "activation must be one of"),
    ("dtype", "train", lambda ws, t: lm_args(ws, t, "--dtype=float8"), "dtype must be one of auto, float32"),
    ("device", "train", lambda ws, t: lm_args(ws, t, "--device=tpu"), "unknown device 'tpu'"),
    ("fp16-on-cpu", "train", lambda ws, t: lm_args(ws, t, "--dtype=float16"), "dtype 'float16' is not supported on the CPU"),
    ("out-dir-empty", "train", lambda ws, t: lm_args(ws, t, "--out_dir="), "out_dir is empty"),
    ("resume-and-overwrite", "train", lambda ws, t: lm_args(ws, t, "--resume", "--overwrite"), "resume and overwrite exclude each other"),
    ("task", "train", lambda ws, t: lm_args(ws, t, "--task=regress"), "task must be one of pretrain, classify; got 'regress'"),
    ("layer-norm-eps-0", "train", lambda ws, t: lm_args(ws, t, "--layer_norm_eps=0"), "layer_norm_eps must be in (0, 1)"),
    ("max-iters-negative", "train", lambda ws, t: lm_args(ws, t, "--max_iters=-5"), "max_iters must be at least 1, got -5"),
    ("eval-interval-0", "train", lambda ws, t: lm_args(ws, t, "--eval_interval=0"), "eval_interval must be at least 1"),
    ("warmup-negative", "train", lambda ws, t: lm_args(ws, t, "--warmup_iters=-1"), "warmup_iters must be at least 0"),
    ("seed-negative", "train", lambda ws, t: lm_args(ws, t, "--seed=-1"), "seed must be in [0, "),
    ("key-without-value", "train", lambda ws, t: [*lm_args(ws, t), "--n_layer"], "--n_layer needs a value"),
    ("stray-word", "train", lambda ws, t: [*lm_args(ws, t), "stray"], "expected --key=value or --key value, got 'stray'"),
    # --- train.py: the config file
    ("config-missing", "train", lambda ws, t: [str(t / "nope.toml")], "config file not found: "),
    ("config-not-toml", "train", lambda ws, t: [str(write(t / "c.toml", "n_layer = \n"))], "c.toml: not valid TOML"),
    ("config-not-utf8", "train", lambda ws, t: [str(write(t / "c.toml", b"n_layer = 2 # caf\xe9\n"))], "c.toml: not UTF-8 text"),
    ("config-is-folder", "train", lambda ws, t: [str(ws / "folder")], "is a folder, not a file"),
    ("config-unknown-key", "train", lambda ws, t: [str(write(t / "c.toml", "lerning_rate = 1e-3\n"))], "c.toml: unknown key 'lerning_rate'; did you mean 'learning_rate'"),
    ("config-wrong-type", "train", lambda ws, t: [str(write(t / "c.toml", 'n_layer = "six"\n'))], "c.toml: n_layer expects int, got 'six'"),
    ("config-table", "train", lambda ws, t: [str(write(t / "c.toml", "[model]\nn_layer = 2\n"))], "c.toml: unknown key 'model'"),
    # --- train.py: the prepared data
    ("no-meta", "train", lambda ws, t: lm_args(ws, t, f"--data_dir={t}"), "no meta.json; prepare the data first"),
    ("meta-not-json", "train", lambda ws, t: broken_data(ws, t, lambda d: (d / "meta.json").write_text("{")), "meta.json is not valid JSON"),
    ("meta-missing-key", "train", lambda ws, t: broken_data(ws, t, lambda d: meta_with(d, vocab_size=None)), "meta.json: missing key 'vocab_size'"),
    ("meta-bad-dtype", "train", lambda ws, t: broken_data(ws, t, lambda d: meta_with(d, dtype="float64")), "meta.json: dtype 'float64' is not one of"),
    ("shard-truncated", "train", lambda ws, t: broken_data(ws, t, lambda d: cut_file(d / "train_000000.bin", 2000)), "train_000000.bin: its header counts"),
    ("shard-not-a-shard", "train", lambda ws, t: broken_data(ws, t, lambda d: (d / "val_000000.bin").write_bytes(b"\0" * 2048)), "val_000000.bin: header magic 0 version 0 is not a token shard"),
    ("shard-outside-vocab", "train", lambda ws, t: broken_data(ws, t, lambda d: fill_shard(d / "val_000000.bin", 999)), "val_000000.bin: token 0 has id 999, outside the vocabulary"),
    ("shard-missing", "train", lambda ws, t: broken_data(ws, t, lambda d: (d / "val_000000.bin").unlink()), "val_000000.bin not found; meta.json lists it"),
    ("shard-other-count", "train", lambda ws, t: broken_data(ws, t, lambda d: meta_shard_tokens(d, 5)), "train_000000.bin holds"),
    ("legacy-bin-truncated", "train", lambda ws, t: legacy_data(ws, t, lambda d: cut_file(d / "train.bin", 2000)), "train.bin holds 1,000 tokens but meta.json says"),
    ("legacy-bin-odd-size", "train", lambda ws, t: legacy_data(ws, t, lambda d: (d / "val.bin").write_bytes((d / "val.bin").read_bytes() + b"\0")), "bytes is not a whole number of uint16 tokens"),
    ("legacy-bin-missing", "train", lambda ws, t: legacy_data(ws, t, lambda d: (d / "val.bin").unlink()), "val.bin not found"),
    ("block-above-split", "train", lambda ws, t: lm_args(ws, t, "--block_size=4096"), "has too few tokens for block_size + 2 = 4098"),
    # --- train.py: out_dir and resuming
    ("out-dir-holds-a-run", "train", lambda ws, t: lm_args(ws, t, f"--out_dir={out_dir_with_run(ws, t)}"), "already holds a run (ckpt_last.safetensors"),
    ("resume-nothing", "train", lambda ws, t: lm_args(ws, t, "--resume"), "no ckpt_last.safetensors to resume from"),
    ("resume-other-shape", "train", lambda ws, t: lm_args(ws, t, f"--out_dir={out_dir_with_run(ws, t)}", "--resume", "--max_iters=4", "--n_layer=3"), "architecture differs from the config's (checkpoint != config): n_layer: 1 != 3"),
    ("resume-done", "train", lambda ws, t: lm_args(ws, t, f"--out_dir={out_dir_with_run(ws, t)}", "--resume", "--max_iters=1"), "is at iteration 2 and max_iters is 1: nothing left to train"),
    ("resume-other-vocab", "train", other_vocab, "trained with another tokenizer (char) than the data reads with (char, another vocabulary)"),
    ("out-dir-is-file", "train", lambda ws, t: lm_args(ws, t, f"--out_dir={write(t / 'f', 'x')}"), "is a file, not a folder"),
    ("out-dir-under-file", "train", lambda ws, t: lm_args(ws, t, f"--out_dir={write(t / 'f', 'x') / 'run'}"), "lies under a file"),
    ("out-dir-not-creatable", "train", lambda ws, t: lm_args(ws, t, "--out_dir=/proc/minigpt-nope/run"), "/proc/minigpt-nope/run cannot be created"),
    ("eval-only-nothing", "train", lambda ws, t: lm_args(ws, t, "--eval_only"), "no ckpt_last.safetensors to evaluate"),
    ("init-from-missing", "train", lambda ws, t: lm_args(ws, t, f"--init_from={t / 'nope'}"), "checkpoint not found: "),
    ("init-from-classifier", "train", lambda ws, t: lm_args(ws, t, f"--init_from={ws / 'clf'}"), "is a classifier checkpoint, not a language model"),
    ("init-from-other-tokenizer", "train", lambda ws, t: lm_args(ws, t, f"--init_from={ws / 'hf'}"), "uses a gpt2 tokenizer that differs from the one"),
    ("init-from-on-trained-tokenizer", "train", lambda ws, t: lm_args(ws, t, f"--init_from={ws / 'lm'}", f"--data_dir={bpe_data(ws, t)}"), "uses a char tokenizer that differs from the one"),
    ("init-from-empty-folder", "train", lambda ws, t: lm_args(ws, t, f"--init_from={ws / 'folder'}"), "holds no minigpt checkpoint"),
    ("ckpt-meta-not-json", "train", lambda ws, t: lm_args(ws, t, f"--init_from={damaged_checkpoint(ws, t, lambda m: m[:-5])}"), "the 'minigpt' metadata is not valid JSON"),
    ("ckpt-truncated", "train", lambda ws, t: lm_args(ws, t, f"--init_from={damaged_checkpoint(ws, t, cut=True)}"), "is not a readable safetensors file (truncated or corrupt?)"),
    ("ckpt-no-model-config", "train", lambda ws, t: lm_args(ws, t, f"--init_from={damaged_checkpoint(ws, t, drop_key('model_config'))}"), "metadata has no 'model_config'"),
    # --- train.py, task = "classify"
    ("train-file-missing", "train", lambda ws, t: clf_args(ws, t, f"--train_file={t / 'nope.csv'}"), "data file not found: "),
    ("train-file-empty", "train", lambda ws, t: clf_args(ws, t, csv=""), "d.csv: the file is empty"),
    ("header-only", "train", lambda ws, t: clf_args(ws, t, csv="text,label\n"), "d.csv: the file has a header line and no rows"),
    ("no-text-column", "train", lambda ws, t: clf_args(ws, t, "--text_column=body"), "no text column 'body'; the columns are ['text', 'label']"),
    ("no-label-column", "train", lambda ws, t: clf_args(ws, t, "--label_column=y"), "no label column 'y'"),
    ("one-class", "train", lambda ws, t: clf_args(ws, t, csv="text,label\na,x\nb,x\nc,x\n"), "at least 2 classes; the labels are ['x']"),
    ("row-without-text", "train", lambda ws, t: clf_args(ws, t, csv=reviews().replace("good film 3,pos", ",pos")), "d.csv:5: missing text"),
    ("val-label-unseen", "train", lambda ws, t: clf_args(ws, t, f"--val_file={write(t / 'v.csv', 'text,label' + chr(10) + 'meh,neutral' + chr(10))}"), "v.csv:2: label 'neutral' is not one of the classes"),
    ("split-sum", "train", lambda ws, t: clf_args(ws, t, "--split=0.5,0.6"), "split must be 2 or 3 fractions summing to 1, got '0.5,0.6'"),
    ("split-words", "train", lambda ws, t: clf_args(ws, t, "--split=half,half"), "split must be comma-separated fractions, got 'half,half'"),
    ("strategy", "train", lambda ws, t: clf_args(ws, t, "--strategy=adapter"), "strategy must be one of full, head, last_n, lora; got 'adapter'"),
    ("pooling", "train", lambda ws, t: clf_args(ws, t, "--pooling=maximum"), "pooling must be one of last, mean, first, max, concat; got 'maximum'"),
    ("metric", "train", lambda ws, t: clf_args(ws, t, "--metric=auc"), "metric must be one of"),
    ("balance", "train", lambda ws, t: clf_args(ws, t, "--balance=smote"), "balance must be one of"),
    ("truncate", "train", lambda ws, t: clf_args(ws, t, "--truncate=middle"), "truncate must be one of head, tail, head_tail; got 'middle'"),
    ("window-stride-0", "train", lambda ws, t: clf_args(ws, t, "--long_text=windows", "--window_stride=0"), "window_stride must be at least 1, got 0"),
    ("window-stride-window", "train", lambda ws, t: clf_args(ws, t, "--long_text=windows", "--max_length=8", "--window_stride=8"), "window_stride=8 must be from 1 to 7: windows of max_length=8 tokens must overlap or touch"),
    ("window-stride-block", "train", lambda ws, t: clf_args(ws, t, "--long_text=windows"), "window_stride=128 must be from 1 to 15"),
    ("document-start-char", "train", lambda ws, t: clf_args(ws, t, "--document_start=true"), "document_start needs a tokenizer with a beginning- or end-of-text token; the char tokenizer has neither"),
    ("head-tail-too-long", "train", lambda ws, t: clf_args(ws, t, "--truncate=head_tail", "--max_length=8", "--head_tokens=8"), "head_tokens=8 must be from 1 to 7: the head is part of max_length=8"),
    ("tokenizer", "train", lambda ws, t: clf_args(ws, t, "--tokenizer=bpe"), "tokenizer must be one of char, gpt2, or the path of a tokenizer folder or tokenizer.json; got 'bpe' (no such file or folder)"),
    ("clf-tokenizer-not-init-from", "train", lambda ws, t: clf_args(ws, t, f"--init_from={ws / 'lm'}", f"--tokenizer={trained_tokenizer(ws, t)}"), "is not the tokenizer of init_from"),
    ("format", "train", lambda ws, t: clf_args(ws, t, "--format=xml"), "format must be one of auto, csv, tsv, jsonl; got 'xml'"),
    ("epochs-negative", "train", lambda ws, t: clf_args(ws, t, "--epochs=-1"), "epochs must be at least 0, got -1.0"),
    ("max-length-above-block", "train", lambda ws, t: clf_args(ws, t, "--max_length=512"), "max_length 512 exceeds the backbone's block_size 16"),
    ("n-last-too-many", "train", lambda ws, t: clf_args(ws, t, "--strategy=last_n", "--n_last=9"), "n_last=9 but the backbone has only 1 blocks"),
    ("lora-targets", "train", lambda ws, t: clf_args(ws, t, "--strategy=lora", "--lora_targets=qkv"), "no nn.Linear named any of ('qkv',)"),
    ("head-lr-scale-0", "train", lambda ws, t: clf_args(ws, t, "--head_lr_scale=0"), "head_lr_scale must be greater than 0"),
    ("layer-lr-decay-above-1", "train", lambda ws, t: clf_args(ws, t, "--layer_lr_decay=1.5"), "layer_lr_decay must be in (0, 1]"),
    ("jsonl-not-object", "train", lambda ws, t: clf_args(ws, t, csv='{"text": "a", "label": "x"}\n[1, 2]\n', suffix="jsonl"), "d.jsonl:2: a JSON list, not an object"),
    ("jsonl-not-json", "train", lambda ws, t: clf_args(ws, t, csv='{"text": "a", "label": "x"}\n{"text": \n', suffix="jsonl"), "d.jsonl:2: not valid JSON"),
    ("jsonl-missing-key", "train", lambda ws, t: clf_args(ws, t, csv='{"text": "a", "label": "x"}\n{"text": "b"}\n', suffix="jsonl"), "d.jsonl:2: no key 'label'"),
    ("csv-open-quote", "train", lambda ws, t: clf_args(ws, t, csv='text,label\n"unclosed,x\nb,y\n'), "d.csv:3: not valid CSV"),
    ("header-read-as-row", "train", lambda ws, t: clf_args(ws, t, "--header=false", "--text_column=0", "--label_column=1"), "reviews.csv:1: the label 'label' occurs only on the first line: a header line?"),
    ("train-file-not-utf8", "train", lambda ws, t: clf_args(ws, t, f"--train_file={ws / 'latin1.txt'}", csv=None), "latin1.txt: not UTF-8 text"),
    ("split-empty", "train", lambda ws, t: clf_args(ws, t, "--split=0.98,0.01,0.01", csv="text,label\na,x\nb,y\nc,x\nd,y\n"), "the val split is empty"),
    ("labels-incomplete", "train", lambda ws, t: clf_args(ws, t, "--labels=pos,meh"), "labels ['neg'] are not among the known classes"),
    ("pair-without-eot", "train", lambda ws, t: clf_args(ws, t, "--text_column=text,label", "--text_separator=<|endoftext|>"), "needs a tokenizer with an end-of-text token"),
    # --- sample.py
    ("sample-ckpt-missing", "sample", lambda ws, t: ["--ckpt", str(t / "nope"), "--prompt", "a"], "checkpoint not found: "),
    ("sample-empty-folder", "sample", lambda ws, t: ["--ckpt", str(ws / "folder"), "--prompt", "a"], "holds no minigpt checkpoint"),
    ("sample-classifier", "sample", lambda ws, t: ["--ckpt", str(ws / "clf"), "--prompt", "a"], "is a classifier checkpoint, not a language model"),
    ("sample-empty-prompt", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--prompt", ""], "the prompt encodes to zero tokens"),
    ("sample-unknown-char", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--prompt", "€"], "character '€' (U+20AC)"),
    ("sample-max-new-0", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--max_new_tokens", "0"], "max_new_tokens must be at least 1, got 0"),
    ("sample-top-p", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--top_p", "1.5"], "top_p must be in (0, 1], got 1.5"),
    ("sample-top-p-nan", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--top_p", "nan"], "top_p must be a finite number"),
    ("sample-temperature", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--temperature", "-1"], "temperature must be ≥ 0, got -1"),
    ("sample-temperature-nan", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--temperature", "nan"], "temperature must be a finite number"),
    ("sample-top-k", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--top_k", "0"], "top_k must be at least 1"),
    ("sample-min-p", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--min_p", "2"], "min_p must be in [0, 1]"),
    ("sample-repetition", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--repetition_penalty", "0"], "repetition_penalty must be positive"),
    ("sample-empty-stop", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--stop", ""], "a stop string is empty"),
    ("sample-stream-several", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--stream", "--num_samples", "2"], "--stream shows one sample"),
    ("sample-num-samples-0", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--num_samples", "0"], "--num_samples must be at least 1"),
    ("sample-seed-negative", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--seed", "-1"], "--seed must be in [0, 2**64), got -1"),
    ("sample-prompt-file-missing", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--prompt_file", str(t / "p.txt")], "prompt file not found: "),
    ("sample-prompt-file-latin1", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--prompt_file", str(ws / "latin1.txt")], "latin1.txt: not UTF-8 text (byte 3"),
    ("sample-prompt-file-folder", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--prompt_file", str(ws / "folder")], "prompt file " ),
    ("sample-dtype", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--dtype", "float8"], "argument --dtype: invalid choice: 'float8'"),
    ("sample-device", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--device", "tpu"], "unknown device 'tpu'"),
    ("sample-not-an-int", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--max_new_tokens", "many"], "argument --max_new_tokens: invalid int value: 'many'"),
    ("sample-unknown-flag", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--beam", "4"], "unrecognized arguments: --beam 4"),
    ("sample-no-ckpt", "sample", lambda ws, t: ["--prompt", "a"], "the following arguments are required: --ckpt"),
    ("sample-backend", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--attn_backend", "flash"], "argument --attn_backend: invalid choice: 'flash'"),
    ("sample-compile-alone", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--compile"], "--compile compiles the static cache's decode step"),
    ("sample-ckpt-truncated", "sample", lambda ws, t: ["--ckpt", str(damaged_checkpoint(ws, t, cut=True))], "is not a readable safetensors file"),
    ("hf-shape-mismatch", "sample", lambda ws, t: ["--ckpt", str(hf_variant(ws, t, lambda c: c.update(n_embd=16)))], "the model expects (48,) (do the config and the weights belong together?)"),
    ("hf-pickle-refused", "sample", lambda ws, t: ["--ckpt", str(hf_variant(ws, t, weights=pickled_code))], "pytorch_model.bin: refused or unreadable as a weights-only pickle"),
    ("hf-shard-outside", "sample", lambda ws, t: ["--ckpt", str(hf_variant(ws, t, weights=index_outside))], "shard '../elsewhere.safetensors' lies outside"),
    ("hf-config-not-json", "sample", lambda ws, t: ["--ckpt", str(hf_variant(ws, t, weights=lambda f: (f / "config.json").write_text("{,")))], "config.json is not valid JSON"),
    ("hf-model-type", "sample", lambda ws, t: ["--ckpt", str(hf_variant(ws, t, lambda c: c.update(model_type="bert")))], "config model_type 'bert' is not supported"),
    ("hf-bad-shape-in-config", "sample", lambda ws, t: ["--ckpt", str(hf_variant(ws, t, lambda c: c.update(n_head=3)))], "n_embd (8) must be divisible by GPTConfig.n_head (3)"),
    # --- python -m minigpt data
    ("data-input-missing", "data", lambda ws, t: ["--input", str(t / "nope.txt"), "--out", str(t / "o")], "input not found: "),
    ("data-empty", "data", lambda ws, t: ["--input", str(ws / "empty.txt"), "--out", str(t / "o")], "the corpus is empty"),
    ("data-not-utf8", "data", lambda ws, t: ["--input", str(ws / "latin1.txt"), "--out", str(t / "o")], "latin1.txt:1: not UTF-8 text"),
    ("data-empty-folder", "data", lambda ws, t: ["--input", str(ws / "folder"), "--out", str(t / "o")], "folder has no .txt"),
    ("data-out-is-file", "data", lambda ws, t: ["--input", str(ws / "input.txt"), "--out", str(write(t / "f", "x"))], "is a file, not a folder"),
    ("data-out-empty", "data", lambda ws, t: ["--input", str(ws / "input.txt"), "--out", ""], "--out is empty"),
    ("data-vocab-missing", "data", lambda ws, t: ["--input", str(ws / "input.txt"), "--out", str(t / "o"), "--char_vocab_from", str(t / "meta.json")], "not found: "),
    ("data-char-outside", "data", lambda ws, t: ["--input", str(write(t / "z.txt", "abc\n€\n")), "--out", str(t / "o"), "--char_vocab_from", str(ws / "char" / "meta.json")], "z.txt:2: character '€' (U+20AC)"),
    ("data-val-fraction", "data", lambda ws, t: ["--input", str(ws / "input.txt"), "--out", str(t / "o"), "--val_fraction", "1.5"], "val_fraction must be in (0, 1), got 1.5"),
    ("data-val-fraction-nan", "data", lambda ws, t: ["--input", str(ws / "input.txt"), "--out", str(t / "o"), "--val_fraction", "nan"], "val_fraction must be in (0, 1), got nan"),
    ("data-char-unknown", "data", lambda ws, t: ["--input", str(ws / "input.txt"), "--out", str(t / "o"), "--char_unknown", "ab"], "--char_unknown takes one character"),
    ("data-tokenizer", "data", lambda ws, t: ["--input", str(ws / "input.txt"), "--out", str(t / "o"), "--tokenizer", "bpe"], "unknown tokenizer 'bpe'; expected char, gpt2, or the path"),
    ("data-texts-of-pretraining", "data", lambda ws, t: ["--texts_of", str(ws / "lm.toml"), "--out", str(t / "o")], "lm.toml: not a classification config"),
    ("data-jsonl-bad-line", "data", lambda ws, t: ["--input", str(write(t / "w.jsonl", '{"text": "a"}' + chr(10) + "{oops" + chr(10))), "--out", str(t / "o")], "w.jsonl:2: not valid JSON"),
    ("data-jsonl-no-field", "data", lambda ws, t: ["--input", str(write(t / "w.jsonl", '{"body": "a"}' + chr(10))), "--out", str(t / "o")], "w.jsonl:1: no key 'text' (--text_field)"),
    ("data-glob-nothing", "data", lambda ws, t: ["--input", str(t / "*.jsonl"), "--out", str(t / "o")], "matches no file"),
    ("data-out-holds-data", "data", lambda ws, t: ["--input", str(ws / "input.txt"), "--out", str(copy(ws, "char", t))], "already holds prepared data"),
    ("data-shard-tokens", "data", lambda ws, t: ["--input", str(ws / "input.txt"), "--out", str(t / "o"), "--shard_tokens", "lots"], "expected a number of tokens like 100M, got 'lots'"),
    ("data-workers-0", "data", lambda ws, t: ["--input", str(ws / "input.txt"), "--out", str(t / "o"), "--workers", "0"], "--workers must be at least 1"),
    ("data-no-out", "data", lambda ws, t: ["--input", str(ws / "input.txt")], "the following arguments are required: --out"),
    # --- python -m minigpt tokenizer
    ("tokenizer-empty-corpus", "tokenizer", lambda ws, t: ["--input", str(ws / "empty.txt"), "--out", str(t / "tok")], "empty.txt: the corpus is empty"),
    ("tokenizer-vocab-too-small", "tokenizer", lambda ws, t: ["--input", str(ws / "input.txt"), "--vocab_size", "257", "--out", str(t / "tok")], "vocab_size must be at least 258 (the 256 bytes and 2 special tokens"),
    ("tokenizer-out-exists", "tokenizer", lambda ws, t: ["--input", str(ws / "input.txt"), "--out", str(copy(ws, "char", t))], "already exists; choose another path or pass --overwrite"),
    ("tokenizer-out-is-file", "tokenizer", lambda ws, t: ["--input", str(ws / "input.txt"), "--out", str(write(t / "f", "x"))], "is a file; a folder is written there"),
    ("tokenizer-special-twice", "tokenizer", lambda ws, t: ["--input", str(ws / "input.txt"), "--pad_token", "<|endoftext|>", "--out", str(t / "tok")], "special token '<|endoftext|>' is given twice"),
    ("tokenizer-no-input", "tokenizer", lambda ws, t: ["--out", str(t / "tok")], "give --input PATH ..., --texts_of CONFIG, or both"),
    ("tokenizer-jsonl-bad-line", "tokenizer", lambda ws, t: ["--input", str(write(t / "w.jsonl", '{"text": "a"}' + chr(10) + "{oops" + chr(10))), "--out", str(t / "tok")], "w.jsonl:2: not valid JSON"),
    ("tokenizer-texts-of-pretraining", "tokenizer", lambda ws, t: ["--texts_of", str(ws / "lm.toml"), "--out", str(t / "tok")], "lm.toml: not a classification config"),
    # --- python -m minigpt classify
    ("classify-language-model", "classify", lambda ws, t: ["--ckpt", str(ws / "lm"), "good"], "is a language-model checkpoint, not a classifier"),
    ("classify-hf-folder", "classify", lambda ws, t: ["--ckpt", str(ws / "hf"), "good"], "is a Hugging Face language model, not a classifier"),
    ("classify-empty-text", "classify", lambda ws, t: ["--ckpt", str(ws / "clf"), "good", ""], "input: text 2 encodes to no tokens"),
    ("classify-file-missing", "classify", lambda ws, t: ["--ckpt", str(ws / "clf"), "--file", str(t / "t.txt")], "--file not found: "),
    ("classify-file-latin1", "classify", lambda ws, t: ["--ckpt", str(ws / "clf"), "--file", str(ws / "latin1.txt")], "latin1.txt: not UTF-8 text"),
    ("classify-out-folder", "classify", lambda ws, t: ["--ckpt", str(ws / "clf"), "good", "--out", str(ws / "folder")], "--out " ),
    ("classify-out-under-file", "classify", lambda ws, t: ["--ckpt", str(ws / "clf"), "good", "--out", str(write(t / "f", "x") / "p.csv")], "its folder cannot be written to"),
    ("classify-ckpt-missing", "classify", lambda ws, t: ["--ckpt", str(t / "nope"), "good"], "checkpoint not found: "),
    ("classify-no-ckpt", "classify", lambda ws, t: ["good"], "the following arguments are required: --ckpt"),
    # --- python -m minigpt evaluate
    ("evaluate-input-missing", "evaluate", lambda ws, t: ["--ckpt", str(ws / "lm"), "--input", str(t / "x.txt")], "input not found: "),
    ("evaluate-input-latin1", "evaluate", lambda ws, t: ["--ckpt", str(ws / "lm"), "--input", str(ws / "latin1.txt")], "latin1.txt:1: not UTF-8 text"),
    ("evaluate-data-other-tokenizer", "evaluate", lambda ws, t: ["--ckpt", str(ws / "hf"), "--data", str(ws / "char")], "was prepared with a char tokenizer that differs from the model's (gpt2)"),
    ("evaluate-no-input", "evaluate", lambda ws, t: ["--ckpt", str(ws / "lm")], "one of the arguments --input --data is required"),
    ("evaluate-stride-0", "evaluate", lambda ws, t: ["--ckpt", str(ws / "lm"), "--input", str(ws / "input.txt"), "--stride", "0"], "--stride must be at least 1, got 0"),
    ("evaluate-stride-above-block", "evaluate", lambda ws, t: ["--ckpt", str(ws / "lm"), "--input", str(ws / "input.txt"), "--stride", "99"], "stride must be in [1, block_size=16], got 99"),
    ("evaluate-classifier", "evaluate", lambda ws, t: ["--ckpt", str(ws / "clf"), "--input", str(ws / "input.txt")], "is a classifier checkpoint"),
    ("evaluate-one-token", "evaluate", lambda ws, t: ["--ckpt", str(ws / "lm"), "--input", str(write(t / "a.txt", "a"))], "need at least two tokens"),
    ("evaluate-unknown-char", "evaluate", lambda ws, t: ["--ckpt", str(ws / "lm"), "--input", str(write(t / "a.txt", "a€b"))], "character '€' (U+20AC)"),
    # --- python -m minigpt plot
    ("plot-no-metrics", "plot", lambda ws, t: [str(t)], "metrics.jsonl not found"),
    ("plot-bad-line", "plot", lambda ws, t: [str(write(t / "metrics.jsonl", '{"iter": 1}\n{oops\n').parent)], "metrics.jsonl:2: not a JSON line"),
    # --- second sweep (issue 23): training runs, run folders, reading prepared data
    ("seed-2-64", "train", lambda ws, t: lm_args(ws, t, f"--seed={2 ** 64}"), "seed must be in [0, 9223372036853727232], got 18446744073709551616"),
    ("batch-too-large", "train", lambda ws, t: lm_args(ws, t, "--batch_size=100000000000"), "a micro-batch's logits (batch_size 100000000000 x block_size 16"),
    ("pad-vocab-too-large", "train", lambda ws, t: lm_args(ws, t, "--pad_vocab_multiple=100000000000"), "the embedding (100,000,000,000 rows with pad_vocab_multiple"),
    ("clf-batch-too-large", "train", lambda ws, t: clf_args(ws, t, "--batch_size=100000000000"), "a micro-batch's activations (batch_size 100000000000 x max_length 16"),
    ("clf-resume-relabelled", "train", lambda ws, t: clf_args(ws, t, *resumed_clf(ws, t), "--labels=pos,neg"), "the checkpoint's labels differs from the config's (checkpoint != config): ['neg', 'pos'] != ['pos', 'neg']"),
    ("clf-resume-other-layer-decay", "train", lambda ws, t: clf_args(ws, t, *resumed_clf(ws, t), "--layer_lr_decay=0.5"), "its optimizer state does not fit this run's parameter groups"),
    ("clf-resume-other-pooling", "train", lambda ws, t: clf_args(ws, t, *resumed_clf(ws, t), "--pooling=mean"), "the checkpoint's head.pooling differs from the config's (checkpoint != config): 'last' != 'mean'"),
    ("clf-resume-other-max-length", "train", lambda ws, t: clf_args(ws, t, *resumed_clf(ws, t), "--max_length=8"), "the checkpoint's max_length differs from the config's (checkpoint != config): 16 != 8"),
    ("clf-resume-other-truncate", "train", lambda ws, t: clf_args(ws, t, *resumed_clf(ws, t), "--truncate=tail"), "the checkpoint's truncate differs from the config's (checkpoint != config): 'head' != 'tail'"),
    ("run-folder-in-use", "train", lambda ws, t: lm_args(ws, t, f"--out_dir={locked(t / 'busy')}"), "busy is in use by another training run (pid "),
    ("meta-deleted", "train", lambda ws, t: broken_data(ws, t, lambda d: (d / "meta.json").unlink()), "no meta.json, but it holds a minigpt preparation (train_000000.bin, val_000000.bin)"),
    ("meta-shard-outside", "train", lambda ws, t: broken_data(ws, t, lambda d: meta_shard(d, file="../../x.bin")), "splits.train.shards[0]: file '../../x.bin' is not a plain file name"),
    ("meta-shard-tokens-text", "train", lambda ws, t: broken_data(ws, t, lambda d: meta_shard(d, tokens="many")), "splits.train.shards[0] must be an object with a 'file' name and a whole number of 'tokens'"),
    ("meta-not-an-object", "train", lambda ws, t: broken_data(ws, t, lambda d: (d / "meta.json").write_text("[1]")), "meta.json: not a JSON object"),
    ("shard-edited-verify", "train", lambda ws, t: [*broken_data(ws, t, lambda d: swap_tokens(d / "train_000000.bin")), "--verify_data"], "train_000000.bin: its sha256 differs from the one meta.json lists"),
    # --- second sweep (issue 23): corpus preparation (python -m minigpt data)
    ("data-gzip-damaged", "data", lambda ws, t: ["--input", str(damaged_gzip(t)), "--out", str(t / "o")], "d.jsonl.gz: not a readable gzip file ("),
    ("data-parquet-damaged-page", "data", lambda ws, t: ["--input", str(damaged_parquet(t)), "--out", str(t / "o")], "d.parquet: row group 2: not a readable parquet file (Corrupt snappy"),
    ("data-val-tokens-empty", "data", lambda ws, t: ["--input", str(ws / "empty.txt"), "--out", str(t / "o"), "--val_tokens", "10"], "empty.txt: the corpus is empty"),
    ("data-seed-negative", "data", lambda ws, t: ["--input", str(ws / "input.txt"), "--out", str(t / "o"), "--seed", "-1"], "--seed must be in [0, 2**64), got -1"),
    ("data-seed-2-to-64", "data", lambda ws, t: ["--input", str(ws / "input.txt"), "--out", str(t / "o"), "--seed", str(2**64)], "--seed must be in [0, 2**64), got 18446744073709551616"),
    ("data-input-glob-is-output", "data", lambda ws, t: ["--input", f"{copy(ws, 'char', t)}/*", "--out", str(t / "char"), "--overwrite"], "is a file that preparing into"),
    ("data-journal-damaged", "data", lambda ws, t: ["--input", str(ws / "input.txt"), "--out", str(write(t / "o" / ".prepare.json", "[]").parent)], ".prepare.json: the journal of an interrupted preparation is damaged"),
    # --- second sweep (issue 23): sampling, Hugging Face folders, tokenizers
    ("sample-tokenizer-larger", "sample", lambda ws, t: ["--ckpt", str(hf_folder(t, "v97", vocab_size=97))], "the tokenizer (gpt2) has 50,257 tokens but the model's vocabulary has 97"),
    ("sample-nan-weights", "sample", lambda ws, t: ["--ckpt", str(hf_folder(t, "nan", nan=True))], "hold NaN or infinite values"),
    ("sample-tokenizer-fingerprint", "sample", lambda ws, t: ["--ckpt", str(damaged_checkpoint(ws, t, set_key("tokenizer", {"kind": "hf", "tokenizer_json": "{}", "sha256": "0" * 64})))], "does not match its sha256 fingerprint"),
    ("sample-num-samples-huge", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--prompt", "a", "--num_samples", str(10 ** 12)], "num_samples 1,000,000,000,000 (the batch) needs at least"),
    ("sample-seed-2-64", "sample", lambda ws, t: ["--ckpt", str(ws / "lm"), "--seed", str(2 ** 64)], "--seed must be in [0, 2**64), got 18446744073709551616"),
    ("hf-config-not-object", "sample", lambda ws, t: ["--ckpt", str(hf_variant(ws, t, weights=lambda f: (f / "config.json").write_text("[1]")))], "config.json: not a JSON object"),
    ("hf-config-bool-as-string", "sample", lambda ws, t: ["--ckpt", str(hf_variant(ws, t, lambda c: c.update(scale_attn_weights="false")))], "config 'scale_attn_weights' must be true or false, got 'false'"),
    ("hf-config-activation-list", "sample", lambda ws, t: ["--ckpt", str(hf_variant(ws, t, lambda c: c.update(activation_function=["gelu"])))], "config 'activation_function' must be a string"),
    ("hf-config-eps-string", "sample", lambda ws, t: ["--ckpt", str(hf_variant(ws, t, lambda c: c.update(layer_norm_epsilon="1e-5")))], "config 'layer_norm_epsilon' must be a finite number, got '1e-5'"),
    ("hf-rope-scaling-string", "sample", lambda ws, t: ["--ckpt", str(llama_variant(ws, t, rope_scaling="linear"))], "config 'rope_scaling' must be an object (or null), got 'linear'"),
    ("hf-rope-theta-string", "sample", lambda ws, t: ["--ckpt", str(llama_variant(ws, t, rope_theta="fast"))], "config 'rope_theta' must be a finite number, got 'fast'"),
    ("hf-config-huge-positions", "sample", lambda ws, t: ["--ckpt", str(hf_variant(ws, t, lambda c: c.update(n_positions=10 ** 12)))], "backbone.wpe.weight has shape (16, 8), the model expects (1000000000000, 8)"),
    ("hf-config-huge-layers", "sample", lambda ws, t: ["--ckpt", str(hf_variant(ws, t, lambda c: c.update(n_layer=10 ** 9)))], "config has 1,000,000,000 layers (n_layer / num_hidden_layers) but the weights hold 1 blocks"),
    ("hf-index-shard-not-a-name", "sample", lambda ws, t: ["--ckpt", str(hf_variant(ws, t, weights=index_shard_number))], "weight_map names the shard of 'wte' as 5"),
    ("data-tokenizer-config-not-json", "data", lambda ws, t: ["--input", str(ws / "input.txt"), "--out", str(t / "o"), "--tokenizer", str(tokenizer_folder(t, '{"eos_token": '))], "tokenizer_config.json is not valid JSON"),
    ("data-tokenizer-config-not-utf8", "data", lambda ws, t: ["--input", str(ws / "input.txt"), "--out", str(t / "o"), "--tokenizer", str(tokenizer_folder(t, b'{"eos_token": "caf\xe9"}'))], "tokenizer_config.json: not UTF-8 text"),
    ("data-tokenizer-config-eos-int", "data", lambda ws, t: ["--input", str(ws / "input.txt"), "--out", str(t / "o"), "--tokenizer", str(tokenizer_folder(t, '{"eos_token": 2}'))], "tokenizer_config.json: eos_token must be the token's text (a string, or an object with a string 'content'), got 2"),
]


def test_the_table_is_large():
    assert len(CASES) >= 80 and len({c[0] for c in CASES}) == len(CASES)
    assert {c[1] for c in CASES} == set(TOOLS)


@pytest.mark.parametrize("name,tool,argv,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(name, tool, argv, message, ws, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    args = [str(a) for a in argv(ws, tmp_path)]
    capsys.readouterr()
    code = run_cli(TOOLS[tool], args)
    err = capsys.readouterr().err
    assert code != 0, f"exit 0 for {args}"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
