import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from minigpt import GPT, GPTConfig, MiniGPTError
from minigpt.infer.perplexity import perplexity


def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()


def test_short_text_is_one_window():
    m = model()
    ids = torch.randint(0, 30, (11,)).tolist()
    out = perplexity(m, ids, progress=False)
    _, loss = m(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))
    assert out["tokens"] == 10
    assert out["loss"] == pytest.approx(loss.item(), abs=1e-6)
    assert out["perplexity"] == pytest.approx(math.exp(loss.item()), rel=1e-6)


@pytest.mark.parametrize("stride", [1, 5, 8, 16])
def test_sliding_window_scores_every_token_once(stride):
    m = model()
    data = torch.randint(0, 30, (70,))
    out = perplexity(m, data.tolist(), stride=stride, progress=False)
    assert out["tokens"] == 69

    def nll(context, target) -> float:
        logits, _ = m(context[None])
        return F.cross_entropy(logits[0, -1:], target[None], reduction="sum").item()

    if stride == 1:  # every target sees the longest context the model allows
        expected = sum(nll(data[max(0, j + 1 - 16): j + 1], data[j + 1]) for j in range(69))
    elif stride == 16:  # non-overlapping windows: the context restarts every 16 tokens
        expected = sum(nll(data[(j // 16) * 16: j + 1], data[j + 1]) for j in range(69))
    else:
        return
    assert out["nll_sum"] == pytest.approx(expected, rel=1e-5)


def test_errors():
    with pytest.raises(MiniGPTError, match="stride"):
        perplexity(model(), [1, 2, 3], stride=17, progress=False)
    with pytest.raises(MiniGPTError, match="two tokens"):
        perplexity(model(), [1], progress=False)


def test_cli_reports_missing_checkpoint(tmp_path):
    (tmp_path / "t.txt").write_text("hello")
    proc = subprocess.run([sys.executable, "-m", "minigpt", "evaluate", "--ckpt", str(tmp_path), "--input", str(tmp_path / "t.txt")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no minigpt checkpoint" in proc.stderr


def test_cli_scores_documents_of_any_format_and_prepared_splits(tmp_path):
    import json

    from minigpt.checkpoint import save_checkpoint
    from minigpt.data.corpus import prepare_corpus
    from minigpt.data.loader import open_split
    from minigpt.data.tokenizers import CharTokenizer

    text = "the quick brown fox jumps over the lazy dog\n" * 40
    tok = CharTokenizer.from_text(text)
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    save_checkpoint(tmp_path / "run" / "ckpt_best.safetensors", m, {"model_config": m.config.to_dict(),
                                                                     "tokenizer": tok.to_meta()})
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")

    def evaluate(*args):
        proc = subprocess.run([sys.executable, "-m", "minigpt", "evaluate", "--ckpt", str(tmp_path / "run"), *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    expected = perplexity(m, tok.encode(text), progress=False)
    for source in ("t.txt", "t.jsonl"):  # one document either way: the same tokens, the same score
        assert f"loss {expected['loss']:.4f}" in evaluate("--input", str(tmp_path / source))
    meta = prepare_corpus(tmp_path / "t.txt", tmp_path / "data", "char", progress=False)
    out = evaluate("--data", str(tmp_path / "data"), "--split", "val")
    val = open_split(tmp_path / "data", "val", meta)
    score = perplexity(m, val.read(0, len(val)), progress=False)
    bits = score["nll_sum"] / math.log(2) / meta["splits"]["val"]["bytes"]
    assert f"{score['tokens']:,} tokens, loss {score['loss']:.4f}" in out and f"{bits:.4f} bits/byte" in out
