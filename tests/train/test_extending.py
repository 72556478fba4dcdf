"""minigpt grows without edits to the library: a new kind of training is one ``register_task``, a new
attention kernel one ``register_attention``; both then run through the ``minigpt`` command, the
loop, the checkpoints and generation like the built-in ones."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from minigpt.checkpoint import LAST
from minigpt.cli import run_cli
from minigpt.cli.main import main as minigpt
from minigpt.config_schema import setting
from minigpt.infer.generate import SamplingConfig, generate
from minigpt.loading import load_model
from minigpt.model.attention import ATTENTION_BACKENDS, manual_attention, register_attention
from minigpt.train import TASKS, TaskSpec, register_task
from minigpt.train.config import TASK_HELP, LoopConfig
from minigpt.train.loop import Distributed, Task, fit, run_folder
from minigpt.train.plots import declared_plot


# ----------------------------------------------------------------------------- a third task


@dataclass
class MeanConfig(LoopConfig):
    """A toy task: learn the mean of a few numbers with one weight."""

    task: str = setting("mean", TASK_HELP, section="run")
    numbers: str = setting("1,2,6", "the numbers whose mean the weight learns", section="toy data")


def train_mean(cfg: MeanConfig) -> dict:
    target = torch.tensor([float(x) for x in cfg.numbers.split(",")])
    with run_folder(cfg, Distributed.from_env()):
        weight = torch.nn.Linear(1, 1, bias=False)
        task = Task(model=weight, optimizer=torch.optim.SGD(weight.parameters(), lr=cfg.learning_rate),
                    batch=lambda it, micro: target,
                    loss=lambda m, batch: ((m.weight[0, 0] - batch) ** 2).mean(),
                    evaluate=lambda m: {"val_loss": ((m.weight[0, 0] - target) ** 2).mean().item(),
                                        "val_gap": abs(m.weight[0, 0].item() - target.mean().item())},
                    score="val_gap", higher_is_better=False, meta={}, units_per_step=len(target), unit="num",
                    units="numbers", curves=("val_gap",))
        summary = fit(task, cfg, Distributed.from_env(), torch.device("cpu"), torch.float32)
        summary["answer"] = weight.weight.item()
        (Path(cfg.out_dir) / "answer.json").write_text(json.dumps({"mean": summary["answer"]}))
    return summary


MEAN = TaskSpec("mean", "the mean of some numbers, by gradient descent", MeanConfig, train_mean, ("answer.json",),
                report=lambda summary: f"learned mean {summary['answer']:.3f}")


@pytest.fixture
def mean_task():
    register_task(MEAN)  # the public way in
    yield MEAN
    del TASKS["mean"]


def test_a_task_registered_in_a_test_trains_through_minigpt_train(tmp_path, mean_task, capsys):
    config = tmp_path / "mean.toml"
    config.write_text(f'task = "mean"\nout_dir = "{tmp_path / "run"}"\nnumbers = "1,2,6"\nmax_iters = 60\n'
                      'learning_rate = 0.1\nwarmup_iters = 0\nmin_lr = 0.1\neval_interval = 20\nlog_interval = 10\n'
                      'device = "cpu"\nprogress = false\n')
    assert run_cli(minigpt, ["train", str(config)]) == 0
    out = capsys.readouterr().out
    answer = json.loads((tmp_path / "run" / "answer.json").read_text())["mean"]
    assert answer == pytest.approx(3.0, abs=1e-2) and f"learned mean {answer:.3f}" in out
    assert (tmp_path / "run" / "loss.png").is_file() and (tmp_path / "run" / LAST).is_file()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["numbers"] == 60 * 3 and "num_per_s" in records[-2] and "val_gap" in records[-1]
    assert declared_plot(tmp_path / "run", records) == ("numbers", ("val_gap",))  # what `minigpt plot` draws

    # its declared output is part of the run: a second run neither overwrites it silently nor forgets it
    assert run_cli(minigpt, ["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "answer.json" in err
    assert run_cli(minigpt, ["train", str(config), "--overwrite", "--max_iters=20"]) == 0
    assert (tmp_path / "run" / "answer.json").is_file()

    # --help lists it, with its own keys under its own section; a wrong key is the usual one-line error
    assert run_cli(minigpt, ["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert 'task = "mean": the mean of some numbers' in text and "toy data:" in text and "--numbers='1,2,6'" in text
    assert run_cli(minigpt, ["train", str(config), "--numbrs=3"]) == 2
    assert "unknown key 'numbrs'" in capsys.readouterr().err


def test_a_run_from_before_tasks_declared_their_plot_is_drawn_as_before(tmp_path):
    """No "plot" in the checkpoint (or no readable checkpoint): units and curves as such runs wrote them."""
    records = [{"iter": 0, "examples": 0, "val_loss": 0.7, "val_accuracy": 0.5},
               {"iter": 10, "examples": 160, "train_loss": 0.6, "lr": 1e-3}]
    (tmp_path / LAST).write_bytes(b"not a safetensors file")
    assert declared_plot(tmp_path, records) == ("examples", ("val_accuracy",))
    assert declared_plot(tmp_path, [{"iter": 5, "tokens": 640, "train_loss": 3.0}]) == ("tokens", ())


def test_an_unregistered_task_is_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "x.toml"
    config.write_text('task = "mean"\n')
    assert "mean" not in TASKS
    assert run_cli(minigpt, ["train", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task must be one of pretrain, classify" in err[0]


# ----------------------------------------------------------------------------- a new attention kernel


CALLS = {"toy": 0}


def toy_attention(q, k, v, mask, dropout_p):
    """The manual kernel in float64, counting its calls: another kernel behind the same seam."""
    CALLS["toy"] += 1
    return manual_attention(q.double(), k.double(), v.double(), mask, dropout_p).to(q.dtype)


@pytest.fixture
def toy_kernel():
    register_attention("toy", toy_attention)  # the public way in
    yield toy_attention
    del ATTENTION_BACKENDS["toy"]


def test_an_attention_kernel_registered_in_a_test_trains_and_generates(tmp_path, toy_kernel, char_corpus, capsys):
    (tmp_path / "data").mkdir()
    data = char_corpus(tmp_path / "data", 20_000)
    base = [f"--data_dir={data}", "--n_layer=2", "--n_head=4", "--n_kv_head=2", "--n_embd=32", "--block_size=32",
            "--batch_size=4", "--max_iters=12", "--eval_interval=6", "--eval_iters=2", "--log_interval=3",
            "--warmup_iters=2", "--dropout=0.0", "--device=cpu", "--progress=false", "--plot=false"]
    for backend in ("toy", "sdpa"):
        assert run_cli(minigpt, ["train", *base, f"--out_dir={tmp_path / backend}", f"--attn_backend={backend}"]) == 0
    assert CALLS["toy"] > 0
    records = {b: [json.loads(line) for line in (tmp_path / b / "metrics.jsonl").read_text().splitlines()]
               for b in ("toy", "sdpa")}
    losses = {b: [r.get("train_loss", r.get("val_loss")) for r in rs] for b, rs in records.items()}
    assert len(losses["toy"]) > 6 and None not in losses["toy"]
    assert losses["toy"] == pytest.approx(losses["sdpa"], abs=1e-4)  # the same training under either kernel

    # generation with the kernel: prefill, then cached steps (dynamic and static caches), greedy
    model, tok = load_model(tmp_path / "toy", "cpu", attn_backend="toy")
    reference, _ = load_model(tmp_path / "toy", "cpu", attn_backend="sdpa")
    prompts = [tok.encode("First Citizen:"), tok.encode("All:")]
    greedy = SamplingConfig(temperature=0)
    for static in (False, True):
        before = CALLS["toy"]
        ours = generate(model, prompts, 12, sampling=greedy, static_cache=static)
        assert CALLS["toy"] >= before + 12 * model.config.n_layer
        assert ours == generate(reference, prompts, 12, sampling=greedy, static_cache=static)
    capsys.readouterr()
    assert run_cli(minigpt, ["sample", "--ckpt", str(tmp_path / "toy"), "--prompt", "A", "--max_new_tokens", "5",
                             "--attn_backend", "toy", "--device", "cpu"]) == 0
