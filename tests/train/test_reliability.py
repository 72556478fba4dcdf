"""Nothing lost, nothing silent: runs are never written over, diverged weights are never saved,
the best checkpoint is the best evaluation, temporary files do not pile up, files get the usual
permissions, and a run killed at random moments resumes to the same weights."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minigpt.checkpoint import BEST, LAST, load_checkpoint
from minigpt.files import atomic_path, write_json
from minigpt.cli import run_cli
from minigpt.cli import train as train_cli
from minigpt.config_schema import build_config
from minigpt.errors import MiniGPTError
from minigpt.train.finetune import ClassifyConfig, finetune
from minigpt.train.loop import Distributed, NonFiniteLoss, Task, fit, prepare_out_dir
from minigpt.train.pretrain import PretrainConfig, train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def char_data(tmp_path_factory, char_corpus) -> Path:
    return char_corpus(tmp_path_factory.mktemp("data"), 30_000)


def tiny(data_dir, out_dir, **kw) -> PretrainConfig:
    base = dict(data_dir=str(data_dir), out_dir=str(out_dir), n_layer=1, n_head=2, n_embd=16, block_size=16,
                batch_size=2, max_iters=4, lr_decay_iters=4, warmup_iters=1, eval_interval=2, eval_iters=1,
                progress=False, plot=False, device="cpu")
    return PretrainConfig(**{**base, **kw})


def test_a_second_run_into_a_used_out_dir_is_refused_until_overwrite(char_data, tmp_path):
    train(tiny(char_data, tmp_path))
    before = load_checkpoint(tmp_path / LAST).model
    with pytest.raises(MiniGPTError, match=r"already holds a run .*--resume.*--overwrite"):
        train(tiny(char_data, tmp_path, seed=7))
    assert all(torch.equal(before[k], v) for k, v in load_checkpoint(tmp_path / LAST).model.items())
    train(tiny(char_data, tmp_path, seed=7, overwrite=True))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "val_loss" in r] == [0, 2, 4]  # one run's evaluations, not two
    assert load_checkpoint(tmp_path / LAST).meta["train_config"]["seed"] == 7


def scripted_task(tmp_path, evaluate, lr=0.1, zero_at: int | None = None) -> tuple[Task, torch.nn.Module]:
    """A one-weight model whose gradient turns NaN at step ``zero_at`` while its loss stays finite."""
    torch.manual_seed(0)
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.5)
    batch = lambda it, micro: torch.tensor([[0.0 if it == zero_at else 1.0]])
    loss = lambda m, x: torch.sqrt((m(x) ** 2).sum())  # d sqrt(u²)/du = u/|u|: NaN at u = 0, where the loss is 0
    task = Task(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=lr), batch=batch, loss=loss,
                evaluate=evaluate, score="val_loss", higher_is_better=False, meta={}, units_per_step=1, unit="ex")
    return task, net


def loop_cfg(tmp_path, **kw) -> PretrainConfig:
    return PretrainConfig(**{**dict(out_dir=str(tmp_path), max_iters=8, eval_interval=2, log_interval=1, progress=False,
                                    plot=False, device="cpu", warmup_iters=0, grad_clip=0.0), **kw})


@pytest.mark.parametrize("evaluation", ["loss", "accuracy"])
def test_weights_that_diverge_just_before_an_evaluation_are_never_saved(tmp_path, evaluation):
    """The step before the evaluation at 4 has a finite loss but NaN gradients; ckpt_last stays iteration 2's."""
    def evaluate(m):
        w = m.weight.detach().sum().item()
        return {"val_loss": w} if evaluation == "loss" else {"val_loss": 1.0, "val_accuracy": 0.5}

    task, net = scripted_task(tmp_path, evaluate, zero_at=3)
    with pytest.raises(NonFiniteLoss, match=r"at iteration 4 .*stopped without saving.*ckpt_last"):
        fit(task, loop_cfg(tmp_path), Distributed(enabled=False), torch.device("cpu"), torch.float32)
    saved = load_checkpoint(tmp_path / LAST)
    assert saved.meta["iter_num"] == 2 and all(torch.isfinite(t).all() for t in saved.model.values())


def test_the_best_checkpoint_can_be_the_first_evaluation(tmp_path):
    """Iteration 0 evaluates best: it is saved, early stopping counts from it, and the report says so."""
    script = iter([0.1, 0.5, 0.6, 0.7, 0.8])
    task, net = scripted_task(tmp_path, lambda m: {"val_loss": next(script)})
    task.patience, task.restore_best = 2, True
    initial = net.weight.detach().clone()
    summary = fit(task, loop_cfg(tmp_path), Distributed(enabled=False), torch.device("cpu"), torch.float32)
    assert summary["stopped_early"] and summary["iter_num"] == 4
    assert summary["best_iter"] == 0 and summary["best_val_loss"] == 0.1
    assert load_checkpoint(tmp_path / BEST).meta["iter_num"] == 0
    assert torch.equal(net.weight, initial)  # the best (untrained) weights are restored


def classify_cfg(tmp_path, **kw) -> ClassifyConfig:
    rows = ["text,label"] + [f"{'nice' if i % 2 else 'awful'} {i},{'pos' if i % 2 else 'neg'}" for i in range(60)]
    (tmp_path / "d.csv").write_text("\n".join(rows), encoding="utf-8")
    return ClassifyConfig(**{**dict(train_file=str(tmp_path / "d.csv"), out_dir=str(tmp_path / "out"), init_from="scratch",
                                    tokenizer="char", n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=8,
                                    max_iters=4, eval_interval=2, progress=False, plot=False, device="cpu"), **kw})


def test_the_report_names_the_iteration_of_the_best_checkpoint(tmp_path):
    summary = finetune(classify_cfg(tmp_path))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    best = load_checkpoint(tmp_path / "out" / BEST).meta
    assert report["best_iter"] == best["iter_num"] == summary["best_iter"]
    assert report["best_score"] == best["best_score"]


def test_eval_only_evaluates_the_last_checkpoint_for_both_tasks(char_data, tmp_path, capsys):
    train(tiny(char_data, tmp_path / "lm"))
    records = [json.loads(line) for line in (tmp_path / "lm" / "metrics.jsonl").read_text().splitlines()]
    last_eval = [r for r in records if "val_loss" in r][-1]
    summary = train(tiny(char_data, tmp_path / "lm", eval_only=True))
    assert summary["iter_num"] == 4 and summary["val_loss"] == pytest.approx(last_eval["val_loss"], abs=1e-6)
    args = [f"--data_dir={char_data}", f"--out_dir={tmp_path / 'lm'}", "--eval_only", "--n_layer=1", "--n_head=2",
            "--n_embd=16", "--block_size=16", "--eval_iters=1", "--batch_size=2", "--device=cpu"]
    assert run_cli(train_cli.main, args) == 0
    assert f"val loss {last_eval['val_loss']:.4f}" in capsys.readouterr().out
    cfg = classify_cfg(tmp_path)
    finetune(cfg)
    summary = finetune(ClassifyConfig(**{**cfg.to_dict(), "eval_only": True}))
    assert summary["iter_num"] == 4 and 0 <= summary["val_accuracy"] <= 1
    capsys.readouterr()
    args = [f"--{k}={getattr(cfg, k)}" for k in ("task", "train_file", "out_dir", "init_from", "tokenizer", "n_layer",
                                                  "n_head", "n_embd", "block_size", "device")]
    assert run_cli(train_cli.main, [*args, "--eval_only"]) == 0  # was a KeyError on the command line
    assert f"iter 4: val_loss {summary['val_loss']:.4f}" in capsys.readouterr().out


def test_a_rerun_removes_only_its_own_stale_temporary_files(char_data, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    stale = [tmp_path / ".ckpt_last.safetensors.abc123.tmp", tmp_path / ".metrics.jsonl.x.tmp"]
    kept = [tmp_path / ".notes.txt.abc.tmp", tmp_path / "mine.tmp"]
    for path in stale + kept:
        path.write_text("left behind")
    prepare_out_dir(tiny(char_data, tmp_path), Distributed(enabled=False))
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o644


def test_train_accepts_key_space_value():
    cfg = build_config(PretrainConfig, None, ["--n_layer", "3", "--dropout", "0.25", "--compile", "false",
                                              "--learning_rate", "2e-3", "--resume", "--n_embd=64", "--progress"])
    assert (cfg.n_layer, cfg.dropout, cfg.compile, cfg.learning_rate) == (3, 0.25, "false", 2e-3)
    assert cfg.resume and cfg.progress and cfg.n_embd == 64


def test_chaos_resume_three_kills_end_at_the_uninterrupted_weights(tmp_path):
    """SIGKILL at random moments, resume after each: the same final weights, no temporary file left,
    every checkpoint met on the way loadable (bench/chaos_resume.py does 20 kills)."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "chaos_resume.py"), "--kills", "3", "--work", str(tmp_path),
                           "--seed", "0"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "chaos.json").read_text())
    assert result["kills"] == 3 and result["max_abs_diff"] <= 1e-6
    assert result["orphaned_temporaries"] == [] and result["unloadable"] == []
    assert result["checkpoints_checked"] >= 3
