"""Pretraining end to end on tiny shapes: exact resume, crash safety, DDP, errors, schedule."""

import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from minigpt import GPT, GPTConfig, MiniGPTError, load_model, save_hf
from minigpt.checkpoint import BEST, LAST, load_checkpoint
from minigpt.config_schema import build_config, config_help, read_toml
from minigpt.data.corpus import prepare_corpus
from minigpt.data.loader import load_meta
from minigpt.model.layers import CausalSelfAttention
from minigpt.train import task_of
from minigpt.train.finetune import ClassifyConfig, load_backbone
from minigpt.train.loop import Distributed, NonFiniteLoss, Task, fit, learning_rate
from minigpt.train.pretrain import PretrainConfig, continued_model, train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def char_data(tmp_path_factory, char_corpus) -> Path:
    return char_corpus(tmp_path_factory.mktemp("data"), 60_000)


def tiny_cfg(data_dir, out_dir, **kw) -> PretrainConfig:
    base = dict(data_dir=str(data_dir), out_dir=str(out_dir), n_layer=2, n_head=2, n_embd=32, block_size=32,
                batch_size=4, max_iters=20, lr_decay_iters=20, warmup_iters=4, eval_interval=10, eval_iters=2,
                log_interval=5, dropout=0.1, progress=False, plot=False, device="cpu", learning_rate=3e-3)
    return PretrainConfig(**{**base, **kw})


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model


def test_resume_is_exact(char_data, tmp_path):
    straight = train(tiny_cfg(char_data, tmp_path / "a"))
    assert straight["iter_num"] == 20
    train(tiny_cfg(char_data, tmp_path / "b", max_iters=10))
    assert load_checkpoint(tmp_path / "b" / LAST).meta["iter_num"] == 10
    resumed = train(tiny_cfg(char_data, tmp_path / "b", resume=True))
    assert resumed["iter_num"] == 20
    a, b = weights(tmp_path / "a" / LAST), weights(tmp_path / "b" / LAST)
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= 1e-6, key
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], abs=1e-6)


def test_training_lowers_loss_and_writes_outputs(char_data, tmp_path):
    summary = train(tiny_cfg(char_data, tmp_path, max_iters=40, lr_decay_iters=40, plot=True, dropout=0.0))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert evals[0]["iter"] == 0 and evals[-1]["iter"] == 40
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    assert evals[0]["val_loss"] == pytest.approx(math.log(load_checkpoint(tmp_path / LAST).meta["model_config"]["vocab_size"]), abs=0.3)
    steps = [r for r in records if "train_loss" in r]
    assert all(r["tok_per_s"] > 0 and 0 < r["mfu"] for r in steps)
    assert (tmp_path / "loss.png").stat().st_size > 10_000
    best = load_checkpoint(tmp_path / BEST).meta
    assert best["score_name"] == "val_loss"
    assert best["best_score"] == pytest.approx(min(r["val_loss"] for r in evals))
    assert summary["best_val_loss"] == best["best_score"]


def test_init_from_continues_pretraining_from_the_checkpoint(char_data, tmp_path):
    first = train(tiny_cfg(char_data, tmp_path / "a", max_iters=10, lr_decay_iters=10, dropout=0.0))
    # The model keys of the second config differ on purpose: the checkpoint's architecture wins.
    train(tiny_cfg(char_data, tmp_path / "b", init_from=str(tmp_path / "a" / LAST), n_layer=3, n_embd=48,
                   max_iters=5, lr_decay_iters=5, eval_interval=5, dropout=0.0))
    evals = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    # iteration 0 of the continued run evaluates the first run's final weights on the same batches
    assert evals[0]["iter"] == 0 and evals[0]["val_loss"] == pytest.approx(first["val_loss"], abs=1e-6)
    continued = load_checkpoint(tmp_path / "b" / LAST).meta["model_config"]
    assert continued == load_checkpoint(tmp_path / "a" / LAST).meta["model_config"]


def test_init_from_with_another_tokenizer_is_an_error(char_data, tmp_path):
    train(tiny_cfg(char_data, tmp_path / "a", max_iters=2, lr_decay_iters=2, eval_interval=2))
    (tmp_path / "other.txt").write_text("xyz xyz zyx " * 500, encoding="utf-8")
    prepare_corpus(tmp_path / "other.txt", tmp_path / "other", "char", progress=False)
    with pytest.raises(MiniGPTError, match="tokenizer"):
        train(tiny_cfg(tmp_path / "other", tmp_path / "b", init_from=str(tmp_path / "a")))


def test_learning_rate_schedule():
    cfg = PretrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110, lr_decay_iters=110)
    assert learning_rate(0, cfg) == pytest.approx(1 / 11)
    assert learning_rate(9, cfg) == pytest.approx(10 / 11)
    assert learning_rate(10, cfg) == pytest.approx(1.0)
    assert learning_rate(60, cfg) == pytest.approx(0.55)  # half way down the cosine
    assert learning_rate(110, cfg) == pytest.approx(0.1)
    assert learning_rate(500, cfg) == pytest.approx(0.1)
    flat = PretrainConfig(learning_rate=0.3, decay_lr=False)
    assert learning_rate(0, flat) == learning_rate(1000, flat) == 0.3


def test_non_finite_loss_stops_without_overwriting(char_data, tmp_path):
    train(tiny_cfg(char_data, tmp_path, max_iters=10))
    before = weights(tmp_path / LAST)
    # the loss is read at log lines (every 5 steps here), so the run stops at the first one after it broke
    with pytest.raises(NonFiniteLoss, match=r"loss is \S+ at iteration 15;.*ckpt_last"):
        train(tiny_cfg(char_data, tmp_path, resume=True, learning_rate=1e30, warmup_iters=0, decay_lr=False, grad_clip=0.0))
    after = weights(tmp_path / LAST)
    assert load_checkpoint(tmp_path / LAST).meta["iter_num"] == 10
    assert all(torch.equal(before[k], after[k]) for k in before)


def run_train(args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def cli_args(data_dir, out_dir, **kw):
    base = dict(data_dir=data_dir, out_dir=out_dir, n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4,
                eval_iters=2, log_interval=1, progress="false", plot="false", device="cpu")
    return [f"--{k}={v}" for k, v in {**base, **kw}.items()]


def wait_for(path: Path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sigkill_leaves_a_loadable_checkpoint_and_resume_works(char_data, tmp_path):
    proc = run_train(cli_args(char_data, tmp_path, max_iters=100_000, lr_decay_iters=100_000, eval_interval=3))
    wait_for(tmp_path / LAST, proc)
    time.sleep(1.0)  # let it write a few more checkpoints, and likely be killed mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = load_checkpoint(tmp_path / LAST)
    done = ckpt.meta["iter_num"]
    assert done >= 3 and done % 3 == 0
    proc = run_train(cli_args(char_data, tmp_path, max_iters=done + 3, lr_decay_iters=100_000, eval_interval=3) + ["--resume"])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert load_checkpoint(tmp_path / LAST).meta["iter_num"] == done + 3


def test_sigint_saves_then_exits(char_data, tmp_path):
    proc = run_train(cli_args(char_data, tmp_path, max_iters=100_000, lr_decay_iters=100_000, eval_interval=100_000))
    wait_for(tmp_path / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err
    meta = load_checkpoint(tmp_path / LAST).meta
    assert meta["iter_num"] >= 1


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_ddp_two_processes_match_one_process(char_data, tmp_path, optimizer):
    common = dict(max_iters=4, lr_decay_iters=4, eval_interval=100, dropout=0.0, log_interval=1, optimizer=optimizer)
    single = run_train(cli_args(char_data, tmp_path / "one", gradient_accumulation_steps=2, **common))
    out, err = single.communicate(timeout=300)
    assert single.returncode == 0, err
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "train.py"),
         *cli_args(char_data, tmp_path / "two", gradient_accumulation_steps=2, **common)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    def losses(out_dir):
        records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
        return [r["train_loss"] for r in records if "train_loss" in r]

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    # same global batch, same batches: per-step losses agree to float32 reduction-order noise
    assert one == pytest.approx(two, abs=1e-4)
    # weights: Adam divides by sqrt(v), so a parameter whose gradient is pure float noise can take a
    # full-size step either way; single elements may differ by ~lr, so compare the mean difference
    a, b = weights(tmp_path / "one" / LAST), weights(tmp_path / "two" / LAST)
    diffs = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert diffs.mean().item() < 1e-5


def test_two_nodes_match_one_process(char_data, tmp_path):
    """Training across machines as docs/GPU.md documents it: two torchrun launchers ("nodes" on
    localhost, one process each, c10d rendezvous, gloo) give one process's losses and weights for
    the same global batch."""
    common = dict(max_iters=3, lr_decay_iters=3, eval_interval=100, dropout=0.0, log_interval=1,
                  gradient_accumulation_steps=2)
    single = run_train(cli_args(char_data, tmp_path / "one", **common))
    assert single.wait(timeout=300) == 0, single.communicate()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}",
         "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=minigpt-test", str(REPO / "train.py"),
         *cli_args(char_data, tmp_path / "two", **common)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    results = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in results]
    losses = lambda out: [r["train_loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                          if "lr" in r]  # the step rows
    assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / "two"), abs=1e-4)
    a, b = weights(tmp_path / "one" / LAST), weights(tmp_path / "two" / LAST)
    assert torch.cat([(a[k] - b[k]).abs().flatten() for k in a]).mean().item() < 1e-5


@pytest.mark.parametrize("args,message", [
    (["--n_layers=3"], "unknown key 'n_layers'; did you mean 'n_layer'"),
    (["--n_layer=three"], "n_layer expects int"),
    (["--dropout=true"], "dropout expects float"),
    (["--batch_size=0"], "batch_size must be at least 1"),
])
def test_cli_config_errors_are_one_line(args, message, tmp_path):
    proc = run_train(["configs/shakespeare_char.toml", *args])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_config_file_and_data(tmp_path):
    proc = run_train([str(tmp_path / "nope.toml")])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "config file not found" in err
    proc = run_train(["--data_dir=" + str(tmp_path), "--max_iters=1"])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "no meta.json" in err


def test_toml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('n_layer = "six"\n')
    with pytest.raises(ValueError, match=r"bad.toml: n_layer expects int"):
        build_config(PretrainConfig, str(bad), [])
    bad.write_text("learning_rat = 1e-3\n")
    with pytest.raises(ValueError, match=r"bad.toml: unknown key 'learning_rat'; did you mean 'learning_rate'"):
        build_config(PretrainConfig, str(bad), [])
    bad.write_text("n_layer = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        build_config(PretrainConfig, str(bad), [])
    good = tmp_path / "good.toml"
    good.write_text("n_layer = 3\nlearning_rate = 1\ncompile = false\n")
    cfg = build_config(PretrainConfig, str(good), ["--n_layer=5", "--resume"])
    assert (cfg.n_layer, cfg.learning_rate, cfg.resume) == (5, 1.0, True)


def test_help_lists_every_key():
    proc = run_train(["--help"])
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    for key in PretrainConfig.__dataclass_fields__:
        assert f"--{key}=" in out


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    """Each file in configs/ builds under the schema of its task: no misspelt key, no wrong type. A
    pipeline's data config (tables of command-line options) parses under those commands' parsers."""
    tables = read_toml(path)
    if all(isinstance(v, dict) for v in tables.values()):
        import importlib.util

        from minigpt.cli import data as data_cli, tokenizer as tokenizer_cli
        spec = importlib.util.spec_from_file_location("imdb_pipeline", path.parents[1] / "bench" / "imdb_pipeline.py")
        pipeline = sys.modules.setdefault("imdb_pipeline", importlib.util.module_from_spec(spec))
        spec.loader.exec_module(pipeline)
        parsers = {"tokenizer": tokenizer_cli.parser(), "corpus": data_cli.parser()}
        assert set(tables) == set(parsers)
        for name, options in tables.items():
            args = parsers[name].parse_args(["--input", "x", "--out", "y", *pipeline.flags(options)])
            assert all(getattr(args, key) == value for key, value in options.items())
        return
    cfg = build_config(task_of(str(path)).schema, str(path), [])
    assert cfg.out_dir.startswith("out-")  # results land in a git-ignored folder


def backends_and_dropouts(model: torch.nn.Module) -> set[tuple[str, float]]:
    return {(m.backend, m.dropout) for m in model.modules() if isinstance(m, CausalSelfAttention)}


def test_init_from_honours_the_configs_run_time_choices(char_data, tmp_path):
    """attn_backend and dropout are run-time choices: init_from takes the weights, not them."""
    train(tiny_cfg(char_data, tmp_path / "a", max_iters=2, lr_decay_iters=2, eval_interval=2))
    cfg = tiny_cfg(char_data, tmp_path / "b", init_from=str(tmp_path / "a"), attn_backend="manual", dropout=0.25)
    model = continued_model(cfg, load_meta(char_data), torch.device("cpu"))
    assert backends_and_dropouts(model) == {("manual", 0.25)}
    assert model.config.attn_backend == "manual" and model.config.dropout == 0.25
    train(dataclasses.replace(cfg, max_iters=4, lr_decay_iters=4, eval_interval=2))
    saved = load_checkpoint(tmp_path / "b" / LAST).meta["model_config"]
    assert (saved["attn_backend"], saved["dropout"]) == ("manual", 0.25)


def test_a_hugging_face_folder_takes_the_run_time_choices(tmp_path):
    save_hf(GPT(GPTConfig(vocab_size=50257, block_size=16, n_layer=1, n_head=2, n_embd=8)), tmp_path / "hf")
    model, _ = load_model(tmp_path / "hf", attn_backend="manual", dropout=0.1)
    assert backends_and_dropouts(model) == {("manual", 0.1)}
    (tmp_path / "d.csv").write_text("text,label\na,x\nb,y\n", encoding="utf-8")
    cfg = ClassifyConfig(train_file=str(tmp_path / "d.csv"), init_from=str(tmp_path / "hf"), attn_backend="manual",
                         dropout=0.2)
    backbone, *_ = load_backbone(cfg, [], torch.device("cpu"))
    assert backends_and_dropouts(backbone) == {("manual", 0.2)} and backbone.config.attn_backend == "manual"


def test_resume_may_change_the_attention_backend_but_not_the_architecture(char_data, tmp_path):
    train(tiny_cfg(char_data, tmp_path / "a", dropout=0.0))
    train(tiny_cfg(char_data, tmp_path / "b", max_iters=10, dropout=0.0))
    resumed = train(tiny_cfg(char_data, tmp_path / "b", resume=True, attn_backend="manual", dropout=0.0))
    assert resumed["iter_num"] == 20
    assert load_checkpoint(tmp_path / "b" / LAST).meta["model_config"]["attn_backend"] == "manual"
    a, b = weights(tmp_path / "a" / LAST), weights(tmp_path / "b" / LAST)
    for key in a:  # the two backends compute the same function up to float rounding
        assert (a[key] - b[key]).abs().max().item() <= 1e-4, key
    with pytest.raises(MiniGPTError, match=r"architecture differs.*n_layer: 2 != 3"):
        train(tiny_cfg(char_data, tmp_path / "b", resume=True, max_iters=30, n_layer=3))


def test_layer_norm_eps_is_settable_from_toml(tmp_path):
    (tmp_path / "c.toml").write_text("layer_norm_eps = 1e-6\nn_layer = 1\n", encoding="utf-8")
    cfg = build_config(PretrainConfig, tmp_path / "c.toml", [])
    model = GPT(cfg.model_config(vocab_size=10))
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    assert eps == {1e-6}
    assert build_config(PretrainConfig, None, ["--layer_norm_eps=1e-3"]).model_config(10).layer_norm_eps == 1e-3
    assert "--layer_norm_eps=1e-05" in config_help(PretrainConfig)


def test_throughput_windows_leave_out_compilation_evaluation_and_checkpoints(tmp_path, monkeypatch):
    """A fake clock: every step takes 1 s, the first 50 s more (compilation), every evaluation 100 s
    (with its checkpoints). Every tokens/s row must then read units_per_step / 1 s, and MFU the FLOPs
    of a step over the measured peak; the first window, which held only the compiling step, is marked."""
    import minigpt.train.loop as loop

    clock = {"now": 0.0, "steps": 0}
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    monkeypatch.setattr(loop, "measure_matmul_peak", lambda device, dtype: 1e6)
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)

    def loss(m, b):
        clock["now"] += 1.0 + (50.0 if clock["steps"] == 0 else 0.0)
        clock["steps"] += 1
        return torch.nn.functional.cross_entropy(m(b[0]), b[1])

    def evaluate(m):
        clock["now"] += 100.0
        return {"val_loss": 1.0}

    task = Task(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), batch=lambda it, micro: (x, y),
                loss=loss, evaluate=evaluate, score="val_loss", higher_is_better=False, meta={}, units_per_step=8,
                flops_per_step=4e6)
    for log_interval in (1, 3):
        out = tmp_path / str(log_interval)
        out.mkdir()
        cfg = PretrainConfig(out_dir=str(out), max_iters=12, eval_interval=4, log_interval=log_interval,
                             progress=False, plot=False, device="cpu", warmup_iters=0)
        clock["steps"] = 0
        fit(task, cfg, Distributed(enabled=False), torch.device("cpu"), torch.float32)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "train_loss" in line]
        timed = [r for r in rows if "warmup" not in r]
        assert [r["iter"] for r in rows if "warmup" in r] == ([1] if log_interval == 1 else [])
        assert timed and all(r["tok_per_s"] == pytest.approx(8.0) and r["mfu"] == pytest.approx(4.0) for r in timed)


def test_best_and_last_of_one_evaluation_are_one_file(char_data, tmp_path):
    """When an evaluation improves, ckpt_best is a hard link to the ckpt_last just written (no second
    write); the next ckpt_last is a new file, so the best stays the best."""
    train(tiny_cfg(char_data, tmp_path, max_iters=4, eval_interval=2, dropout=0.0))
    best, last = load_checkpoint(tmp_path / BEST).meta, load_checkpoint(tmp_path / LAST).meta
    assert last["iter_num"] == 4
    if best["iter_num"] == 4:
        assert os.path.samefile(tmp_path / BEST, tmp_path / LAST)
    else:
        assert not os.path.samefile(tmp_path / BEST, tmp_path / LAST) and best["iter_num"] == 2
    assert not list(tmp_path.glob(".*link"))
