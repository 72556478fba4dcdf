"""A run folder is never lost: ``--overwrite`` reads and checks everything before the old run makes
way (and puts it back if the new one fails before its first checkpoint), one training at a time
holds a folder, a full disk or a file-size limit at a checkpoint leaves the last one whole, and
Ctrl-C during start-up is one line."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minigpt.checkpoint import LAST, load_checkpoint
from minigpt.cli import run_cli
from minigpt.cli import train as train_cli
from minigpt.config_schema import build_config
from minigpt.device import memory_errors
from minigpt.errors import MiniGPTError
from minigpt.locks import hold_lock
from minigpt.train import loop as loop_module
from minigpt.train.loop import SET_ASIDE, Distributed, OldRun, prepare_out_dir, run_files
from minigpt.train.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parents[2]
TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=2", "--eval_iters=1",
        "--max_iters=4", "--eval_interval=2", "--warmup_iters=1", "--progress=false", "--plot=false", "--device=cpu"]


@pytest.fixture(scope="module")
def char_data(tmp_path_factory, char_corpus) -> Path:
    return char_corpus(tmp_path_factory.mktemp("data"), 20_000)


def files(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (the lock file aside), by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".minigpt.lock"}


def train_args(data: Path, out: Path, *extra) -> list[str]:
    return [f"--data_dir={data}", f"--out_dir={out}", *TINY, *extra]


def cli(capsys, args) -> tuple[int, str]:
    capsys.readouterr()
    code = run_cli(train_cli.main, [str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture
def old_run(char_data, tmp_path, capsys) -> tuple[Path, dict]:
    out = tmp_path / "run"
    assert cli(capsys, train_args(char_data, out))[0] == 0
    return out, files(out)


# ----------------------------------------------------------------------------- --overwrite


def test_overwrite_with_a_wrong_data_dir_keeps_the_old_run(old_run, tmp_path, capsys):
    out, before = old_run
    code, err = cli(capsys, train_args(tmp_path / "typo", out, "--overwrite"))
    assert code == 2 and "no meta.json" in err
    assert files(out) == before  # on af71134 the run was deleted before data_dir was opened


def test_overwrite_continuing_from_the_run_it_replaces(old_run, char_data, capsys):
    """--init_from=OUT --out_dir=OUT --overwrite: the weights are read before the old files make way."""
    out, _ = old_run
    weights = load_checkpoint(out / LAST).model
    code, err = cli(capsys, train_args(char_data, out, f"--init_from={out}", "--overwrite", "--learning_rate=1e-9",
                                       "--min_lr=0", "--grad_clip=0"))
    assert code == 0, err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "val_loss" in r] == [0, 2, 4]  # the new run's evaluations only
    new = load_checkpoint(out / LAST).model  # a learning rate of 1e-9: the new run starts from the old weights
    assert all(torch.allclose(new[k], v, atol=1e-6) for k, v in weights.items())
    assert not (out / SET_ASIDE).exists()


def test_a_failure_before_the_first_checkpoint_puts_the_old_run_back(old_run, char_data, capsys, monkeypatch):
    out, before = old_run

    def fail(self):
        raise KeyboardInterrupt  # Ctrl-C while the new run starts: after the old files were set aside

    monkeypatch.setattr(loop_module.Run, "start", fail)
    code, err = cli(capsys, train_args(char_data, out, "--overwrite", "--seed=7"))
    assert code == 130 and err.strip() == f"interrupted: {out / LAST} is as last saved; continue with --resume"
    assert files(out) == before


def test_a_run_killed_while_its_predecessor_was_set_aside_gets_it_back(old_run, char_data):
    """SIGKILL between setting aside and the first checkpoint: the next start restores the old run
    (and what the killed run wrote before dying goes)."""
    out, before = old_run
    OldRun(out, run_files()).set_aside()
    (out / "metrics.jsonl").write_text('{"iter": 0}\n')  # the killed run's first line
    cfg = build_config(PretrainConfig, None, train_args(char_data, out, "--resume", "--max_iters=6"))
    prepare_out_dir(cfg, Distributed(enabled=False))
    assert files(out) == before


# ----------------------------------------------------------------------------- one run at a time


def test_a_second_training_into_a_held_folder_is_refused(char_data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with hold_lock(out, "training run"):
        code, err = cli(capsys, train_args(char_data, out))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: {out} is in use by another training run (pid {os.getpid()}")
    assert files(out) == {}


GATED_TRAIN = """
import pathlib, runpy, sys, time
from minigpt.train import loop
gate = pathlib.Path(sys.argv.pop(1))
original = loop.Run.start
def gated_start(self):                     # holding the folder, wait for the test's go before training
    while not gate.exists():
        time.sleep(0.02)
    original(self)
loop.Run.start = gated_start
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


def test_two_trainings_started_at_once_one_runs_and_matches_a_lone_run(char_data, tmp_path):
    """Two train.py processes into one out_dir: exactly one trains, the other exits with the lock error,
    and the survivor's files are those of a lone run (checkpoints byte for byte; metrics but timing).
    The one that takes the folder first waits before its first step until the other has ended, so the
    two overlap whatever the machine's load."""
    out, gate = tmp_path / "run", tmp_path / "go"
    args = train_args(char_data, out, "--max_iters=30", "--eval_interval=10")
    procs = [subprocess.Popen([sys.executable, "-c", GATED_TRAIN, str(gate), *args], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    first_done = None
    while first_done is None:
        first_done = next((p for p in procs if p.poll() is not None), None)
        time.sleep(0.05)
    gate.touch()
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2] and first_done.returncode == 2, results
    loser = next(err for code, err in results if code == 2).strip().splitlines()
    assert len(loser) == 1 and "is in use by another training run (pid " in loser[0], loser
    together = files(out)
    metrics = lambda folder: [{k: v for k, v in json.loads(line).items() if k not in ("tok_per_s", "mfu")}
                              for line in (folder / "metrics.jsonl").read_text().splitlines()]
    together_metrics = metrics(out)
    os.rename(out, tmp_path / "together")
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    alone = files(out)
    assert {k: v for k, v in together.items() if k != "metrics.jsonl"} == \
        {k: v for k, v in alone.items() if k != "metrics.jsonl"}
    assert together_metrics == metrics(out)


# ----------------------------------------------------------------------------- full disks, Ctrl-C, memory


def test_a_full_disk_at_a_checkpoint_leaves_the_last_one_whole(old_run, char_data, capsys, monkeypatch):
    out, before = old_run

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("minigpt.files.save_file", full)
    code, err = cli(capsys, train_args(char_data, out, "--resume", "--max_iters=6"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "cannot write the checkpoint at iteration" in lines[0]
    assert "No space left on device" in lines[0] and "the previous one is left as it was" in lines[0]
    assert load_checkpoint(out / LAST).meta["iter_num"] == 4
    assert {k: v for k, v in files(out).items() if k != "metrics.jsonl"} == \
        {k: v for k, v in before.items() if k != "metrics.jsonl"}


def test_a_file_size_limit_at_a_checkpoint_is_one_line_not_a_core_dump(old_run, char_data):
    """Past ``ulimit -f`` a write raises SIGXFSZ, which kills the process unless ignored; ignored, the
    write fails with EFBIG and the run stops with one line, the last checkpoint whole."""
    out, before = old_run
    limit = (out / LAST).stat().st_size // 2

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *train_args(char_data, out, "--resume",
                                                                                  "--max_iters=6")],
                          cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and proc.returncode != -signal.SIGXFSZ, proc.stderr
    assert len(lines) == 1 and "cannot write the checkpoint at iteration 6" in lines[0], proc.stderr
    assert files(out)[LAST] == before[LAST]


def test_ctrl_c_during_start_up_is_one_line(char_data, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("minigpt.train.pretrain.pretrain_task", interrupted)
    code, err = cli(capsys, train_args(char_data, tmp_path / "run"))
    assert code == 130 and err.strip() == "interrupted before the first checkpoint; nothing was saved"
    assert not (tmp_path / "run").exists()  # the folder it made for the run (and its lock) is gone again


def test_a_failed_allocation_is_one_error_naming_what_was_sized():
    with pytest.raises(MiniGPTError, match=r"out of memory training with batch_size=9 \(DefaultCPUAllocator: can't"):
        with memory_errors("training with batch_size=9"):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you "
                               "tried to allocate 64000000000 bytes")
    with pytest.raises(RuntimeError, match="shape mismatch"):  # anything else passes through
        with memory_errors("training"):
            raise RuntimeError("shape mismatch")


def test_pretraining_counts_and_replaces_the_files_a_classifier_run_left(char_data, tmp_path, capsys):
    """A folder that held a classification run (its report only, say) holds a run for pretraining too,
    and --overwrite sets the report aside with the rest: no stale report.json beside the new LM."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "report.json").write_text("{}")
    assert "report.json" in run_files()
    with pytest.raises(MiniGPTError, match=r"already holds a run \(report.json\)"):
        prepare_out_dir(PretrainConfig(out_dir=str(out)), Distributed(False))
    code, err = cli(capsys, train_args(char_data, out, "--overwrite"))
    assert code == 0, err
    assert not (out / "report.json").exists() and (out / "ckpt_last.safetensors").is_file()
