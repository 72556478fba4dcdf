"""sample.py end to end on tiny checkpoints, and streaming decode of split UTF-8."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minigpt import GPT, GPTConfig, GPT2Tokenizer, CharTokenizer, save_hf
from minigpt.checkpoint import save_checkpoint
from minigpt.data.tokenizers import StreamDecoder
from minigpt.infer.generate import TextStream

REPO = Path(__file__).resolve().parents[2]


def test_stream_decoder_never_emits_broken_characters():
    tok = GPT2Tokenizer()
    text = "今天天气很好 🤖🎉 naïve"
    pieces = []
    dec = StreamDecoder(tok)
    for token in tok.encode(text):
        piece = dec.feed(token)
        assert "\ufffd" not in piece
        pieces.append(piece)
    pieces.append(dec.flush())
    assert "".join(pieces) == text
    assert "" in pieces  # some tokens held back part of a character


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    char = CharTokenizer.from_text("abcdefgh \n")
    m = GPT(GPTConfig(vocab_size=char.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(root / "char" / "ckpt_best.safetensors", m, {"model_config": m.config.to_dict(), "tokenizer": char.to_meta()})
    g = GPT(GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=16))
    save_hf(g, root / "hf")
    return root


def run(*args, stdin=None):
    return subprocess.run([sys.executable, str(REPO / "sample.py"), *args], capture_output=True, text=True,
                          input=stdin, timeout=120, cwd=REPO)


def test_samples_from_checkpoint_and_hf_folder(checkpoints):
    out = run("--ckpt", str(checkpoints / "char"), "--prompt", "abc", "--max_new_tokens", "10", "--num_samples", "2",
              "--top_p", "0.9", "--verbose")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("abc") >= 2 and "tokens/s" in out.stderr
    again = run("--ckpt", str(checkpoints / "char"), "--prompt", "abc", "--max_new_tokens", "10", "--num_samples", "2",
                "--top_p", "0.9")
    assert again.stdout == out.stdout  # seeded
    hf = run("--ckpt", str(checkpoints / "hf"), "--max_new_tokens", "5", "--greedy", stdin="Hello 世界")
    assert hf.returncode == 0, hf.stderr
    assert hf.stdout.startswith("Hello 世界")
    streamed = run("--ckpt", str(checkpoints / "hf"), "--prompt", "Hi", "--max_new_tokens", "5", "--greedy", "--stream")
    plain = run("--ckpt", str(checkpoints / "hf"), "--prompt", "Hi", "--max_new_tokens", "5", "--greedy", "--no-stream")
    assert streamed.returncode == plain.returncode == 0
    assert streamed.stdout == plain.stdout and streamed.stdout.startswith("Hi")


@pytest.mark.parametrize("args,message", [
    (["--prompt", ""], "zero tokens"),
    (["--prompt", "xyz"], "character 'x'"),
    (["--prompt", "a", "--max_new_tokens", "0"], "max_new_tokens"),
    (["--prompt", "a", "--top_p", "1.5"], "top_p"),
    (["--prompt", "a", "--prompt_file", "/nonexistent"], None),
])
def test_cli_errors(checkpoints, args, message):
    out = run("--ckpt", str(checkpoints / "char"), *args)
    if message is None:  # --prompt wins over --prompt_file
        assert out.returncode == 0
        return
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_missing_or_wrong_checkpoint_dirs(tmp_path):
    out = run("--ckpt", str(tmp_path / "nope"), "--prompt", "a")
    assert out.returncode == 2 and "checkpoint not found" in out.stderr
    out = run("--ckpt", str(tmp_path), "--prompt", "a")
    assert out.returncode == 2 and "no minigpt checkpoint" in out.stderr


def test_text_stream_holds_back_a_possible_stop_string_and_cuts_before_it():
    tok = CharTokenizer.from_text("abcdefXYZ")
    text = "abcXYdefXYZabc"
    stream = TextStream(tok, ["XYZ", "fX"])
    shown = ""
    for token in tok.encode(text):
        shown += stream.feed(token)
        assert "XYZ" not in shown and "fX" not in shown  # never printed, not even in part at the end
    shown += stream.flush()
    assert shown == "abcXYde"  # "fX" comes first
    plain = TextStream(tok)
    assert "".join(plain.feed(t) for t in tok.encode(text)) + plain.flush() == text


def test_streamed_and_batch_output_cut_the_stop_string_alike(checkpoints):
    free = run("--ckpt", str(checkpoints / "char"), "--prompt", "abc", "--max_new_tokens", "40", "--no-stream",
               "--temperature", "1.0", "--no_eos_stop")
    assert free.returncode == 0, free.stderr
    generated = free.stdout[len("abc"):].rstrip("\n")
    stop = generated[10:12]
    expected = "abc" + generated[: generated.index(stop)]
    outputs = []
    for mode in ("--stream", "--no-stream"):
        out = run("--ckpt", str(checkpoints / "char"), "--prompt", "abc", "--max_new_tokens", "40", mode,
                  "--temperature", "1.0", "--stop", stop)
        assert out.returncode == 0, out.stderr
        outputs.append(out.stdout)
    assert outputs[0] == outputs[1] == expected + "\n"


@pytest.mark.parametrize("name", ["data", "classify", "evaluate", "plot"])
def test_module_entry_points_name_the_command(name):
    out = subprocess.run([sys.executable, "-m", "minigpt", name, "--help"], capture_output=True, text=True, timeout=60,
                         cwd=REPO)
    assert out.returncode == 0 and f"usage: minigpt {name}" in out.stdout, out.stderr


def test_half_precision_sampling_casts_the_weights_once(checkpoints, monkeypatch, capsys):
    """--dtype bfloat16 with a compiled static-cache decode: the model's weights are cast once, so the
    compiled step's graph holds no cast of a weight (under autocast it would cast each one per token)."""
    from torch._dynamo.backends.common import aot_autograd

    from minigpt.cli import run_cli
    from minigpt.cli.sample import main

    casts, graphs = [], []

    def record(gm, example_inputs):
        graphs.append(gm)
        casts.extend(n for n in gm.graph.nodes if n.target is torch.ops.aten._to_copy.default
                     and n.kwargs.get("dtype") == torch.bfloat16)
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend=aot_autograd(fw_compiler=record),
                                                                       dynamic=False))
    torch._dynamo.reset()
    code = run_cli(main, ["--ckpt", str(checkpoints / "char"), "--prompt", "abc", "--max_new_tokens", "4", "--greedy",
                          "--dtype", "bfloat16", "--static_cache", "--compile"])
    assert code == 0 and graphs, capsys.readouterr().err
    assert not casts, [str(n) for n in casts]
