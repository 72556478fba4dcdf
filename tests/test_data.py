import subprocess
import sys

import numpy as np
import pytest
import torch

from minigpt import GPT2Tokenizer, MiniGPTError
from minigpt.checkpoint import load_checkpoint, save_checkpoint, write_json
from minigpt.data.corpus import _pieces, prepare_corpus, split_documents, token_dtype
from minigpt.data.loader import RandomWindows, load_meta, open_tokens


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_char_prepare_round_trips_and_splits_on_a_line(tmp_path):
    text = "".join(f"line {i}: héllo 世界\n" for i in range(500))
    meta = prepare_corpus(write(tmp_path / "in.txt", text), tmp_path / "out", "char", progress=False)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == len(set(text))
    train, val = open_tokens(tmp_path / "out", "train", meta), open_tokens(tmp_path / "out", "val", meta)
    chars = meta["tokenizer"]["chars"]
    decoded = "".join(chars[i] for i in np.concatenate([train, val]))
    assert decoded == text
    assert "".join(chars[i] for i in train).endswith("\n")
    assert len(val) == pytest.approx(0.1 * len(text), rel=0.05)


def test_gpt2_prepare_equals_whole_text_encoding(tmp_path, monkeypatch):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n  All:\nSpeak, speak.\n" * 300
    monkeypatch.setattr("minigpt.data.corpus.CHUNK_CHARS", 1000)  # force many pieces
    pieces = list(_pieces(text, 1000))
    assert len(pieces) > 10 and "".join(pieces) == text
    meta = prepare_corpus(write(tmp_path / "in.txt", text), tmp_path / "out", "gpt2", progress=False)
    tok = GPT2Tokenizer()
    train, val = open_tokens(tmp_path / "out", "train", meta), open_tokens(tmp_path / "out", "val", meta)
    assert train[-1] == val[-1] == tok.eot_token  # each split ends its document
    cut = len(tok.decode(train[:-1].tolist()))
    assert train[:-1].tolist() == tok.encode(text[:cut])
    assert val[:-1].tolist() == tok.encode(text[cut:])


def test_folder_is_split_by_document(tmp_path):
    for i in range(10):
        write(tmp_path / "books" / f"book{i}.txt", f"book {i} " * 200)
    meta = prepare_corpus(tmp_path / "books", tmp_path / "out", "gpt2", val_fraction=0.2, progress=False)
    assert set(meta["train_documents"]).isdisjoint(meta["val_documents"])
    assert len(meta["val_documents"]) == 2 and len(meta["train_documents"]) == 8
    again = prepare_corpus(tmp_path / "books", tmp_path / "out2", "gpt2", val_fraction=0.2, progress=False)
    assert again["val_documents"] == meta["val_documents"] and again["source_sha256"] == meta["source_sha256"]
    docs = [(f"d{i}", "x") for i in range(3)]
    train, val = split_documents(docs, 0.99)
    assert len(train) >= 1 and len(val) >= 1


def test_token_dtype():
    assert token_dtype(65) == np.uint16 and token_dtype(50257) == np.uint16 and token_dtype(70000) == np.uint32


def test_random_windows_are_shifted_and_a_function_of_the_seed():
    tokens = np.arange(1000, dtype=np.uint16)
    windows = RandomWindows(tokens, 16, torch.device("cpu"))
    x, y = windows.batch(4, seed=3)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(y, x + 1)
    # the same seed draws the same windows (a resumed run redraws its batches), another seed others
    again = RandomWindows(tokens, 16, torch.device("cpu")).batch(4, seed=3)
    assert torch.equal(again[0], x) and not torch.equal(windows.batch(4, seed=4)[0], x)
    # the starts are torch.randint's draws from a generator seeded with the batch seed
    starts = torch.randint(1000 - 16 - 1, (4,), generator=torch.Generator().manual_seed(3))
    assert x[:, 0].tolist() == starts.tolist()
    with pytest.raises(MiniGPTError, match="fewer than block_size"):
        RandomWindows(tokens[:10], 16, torch.device("cpu"))


def run_prepare(*args):
    return subprocess.run([sys.executable, "-m", "minigpt.data", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("setup,message", [
    (lambda p: write(p / "in.txt", "  \n\n "), "the corpus is empty"),
    (lambda p: (p / "in.txt"), "input not found"),
    (lambda p: (p / "in.txt").write_bytes(b"ok \xff\xfe") and p / "in.txt", "not UTF-8"),
    (lambda p: (p / "empty_dir").mkdir() or p / "empty_dir", "no .txt files"),
])
def test_prepare_errors_are_one_line(tmp_path, setup, message):
    path = setup(tmp_path)
    proc = run_prepare("--input", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_characters_outside_a_char_vocab(tmp_path):
    prepare_corpus(write(tmp_path / "a.txt", "abc abc\n" * 50), tmp_path / "a", "char", progress=False)
    proc = run_prepare("--input", str(write(tmp_path / "b.txt", "abc\nabz\n" * 50)), "--out", str(tmp_path / "b"),
                       "--char_vocab_from", str(tmp_path / "a" / "meta.json"))
    assert proc.returncode == 2 and "b.txt:2: character 'z'" in proc.stderr and proc.stderr.count("\n") == 1


def test_load_meta_errors(tmp_path):
    with pytest.raises(MiniGPTError, match="no meta.json"):
        load_meta(tmp_path)
    write_json(tmp_path / "meta.json", {"tokenizer": {"kind": "char"}})
    with pytest.raises(MiniGPTError, match="missing key 'vocab_size'"):
        load_meta(tmp_path)


def test_truncated_and_foreign_checkpoints_are_clear_errors(tmp_path):
    from minigpt import GPT, GPTConfig
    from minigpt.checkpoint import save_tensors

    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8))
    save_checkpoint(tmp_path / "c.safetensors", model, {"iter_num": 3})
    data = (tmp_path / "c.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(MiniGPTError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.safetensors")
    save_tensors(tmp_path / "plain.safetensors", {"x": torch.zeros(2)})
    with pytest.raises(MiniGPTError, match="not a minigpt checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors")
    with pytest.raises(MiniGPTError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    other = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=2, n_head=1, n_embd=8))
    with pytest.raises(MiniGPTError, match="does not fit the model"):
        load_checkpoint(tmp_path / "c.safetensors").load_model(other)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files behind


def test_training_texts_of_a_classification_config_become_a_corpus(tmp_path):
    """--texts_of: the config's training split, one document per text; val and test texts stay out.
    --char_unknown: the vocabulary gets a stand-in that later reads characters the corpus lacks."""
    from minigpt.config_io import build_config
    from minigpt.data.tokenizers import tokenizer_from_meta
    from minigpt.train.classify import ClassifyConfig, load_splits

    rows = [f"{'pos' if i % 3 else 'neg'}\treview {i} {'好' if i % 2 else '坏'}" for i in range(60)]
    write(tmp_path / "reviews.tsv", "\n".join(rows) + "\n")
    config = write(tmp_path / "c.toml", f'task = "classify"\ntrain_file = "{tmp_path / "reviews.tsv"}"\n'
                                        'format = "tsv"\nheader = false\ntext_column = "1"\nlabel_column = "0"\n'
                                        'split = "0.6,0.2,0.2"\n')
    proc = run_prepare("--texts_of", str(config), "--out", str(tmp_path / "lm"), "--char_unknown", "\ufffd")
    assert proc.returncode == 0, proc.stderr
    meta = load_meta(tmp_path / "lm")
    train, val, test, _ = load_splits(build_config(ClassifyConfig, str(config), []))
    assert len(meta["train_documents"]) + len(meta["val_documents"]) == len(train.texts) == 36
    tok = tokenizer_from_meta(meta["tokenizer"])
    corpus = tok.decode(np.concatenate([open_tokens(tmp_path / "lm", s, meta) for s in ("train", "val")]).tolist())
    assert sorted(corpus.splitlines()) == sorted(train.texts)
    assert not set(corpus.splitlines()) & set(val.texts + test.texts)
    assert tok.decode(tok.encode("review 7 好!")) == "review 7 好\ufffd"  # '!' was never seen
    proc = run_prepare("--input", str(config), "--texts_of", str(config), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
    pretraining = write(tmp_path / "p.toml", 'data_dir = "x"\n')
    proc = run_prepare("--texts_of", str(pretraining), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "p.toml: not a classification config" in proc.stderr
