"""Reading prepared data: windows across shards (a function of the seed), documents as window
starts, the older single-file layout, llm.c's shards without a meta.json, checks on open, and
exact resume on sharded data."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from minigpt import GPT2Tokenizer, MiniGPTError
from minigpt.checkpoint import LAST, load_checkpoint
from minigpt.files import write_json
from minigpt.data.corpus import prepare_corpus
from minigpt.data.loader import Windows, load_meta, open_split, to_device
from minigpt.train.pretrain import PretrainConfig, train

REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE = (REPO / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
CPU = torch.device("cpu")


def llmc_shard(path: Path, ids: np.ndarray) -> Path:
    """A shard as llm.c's write_datafile lays it out, written here without minigpt's code."""
    path.write_bytes(struct.pack("<256i", 20240520, 1, len(ids), *([0] * 253)) + ids.astype("<u2").tobytes())
    return path


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sharded")
    (root / "in.txt").write_text(SHAKESPEARE[:60_000], encoding="utf-8")
    prepare_corpus(root / "in.txt", root / "out", "char", shard_tokens=7_000, progress=False)
    return root / "out"


def test_windows_are_shifted_and_a_function_of_the_seed(sharded):
    tokens = open_split(sharded, "train", load_meta(sharded))
    assert len(tokens.shards) > 5
    windows = Windows(tokens, 16, CPU)
    x, y = windows.batch(8, seed=3)
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    again = Windows(open_split(sharded, "train", load_meta(sharded)), 16, CPU).batch(8, seed=3)
    assert torch.equal(again[0], x) and not torch.equal(windows.batch(8, seed=4)[0], x)
    whole = tokens.read(0, len(tokens))
    for row in x:  # each window is a real stretch of the split
        assert any(np.array_equal(whole[s:s + 16], row.numpy()) for s in np.flatnonzero(whole == row[0].item()))


def test_windows_come_from_every_shard_in_proportion_to_its_length(sharded, monkeypatch):
    tokens = open_split(sharded, "train", load_meta(sharded))
    windows, drawn = Windows(tokens, 16, CPU), []
    read = tokens.read_shard
    monkeypatch.setattr(tokens, "read_shard", lambda index, start, length: drawn.append(index) or read(index, start, length))
    for seed in range(400):
        windows.batch(50, seed)
    share = np.bincount(drawn, minlength=len(tokens.shards)) / len(drawn)
    starts = np.array([s.tokens - 17 for s in tokens.shards])  # windows that fit in each shard
    np.testing.assert_allclose(share, starts / starts.sum(), atol=0.01)
    assert tokens.shards[-1].tokens < tokens.shards[0].tokens  # the short last shard is drawn less


def test_one_shard_draws_the_windows_of_a_single_token_file(tmp_path):
    """One shard: the window starts are torch.randint's draws, as for the earlier single train.bin."""
    (tmp_path / "in.txt").write_text(SHAKESPEARE[:20_000], encoding="utf-8")
    meta = prepare_corpus(tmp_path / "in.txt", tmp_path / "out", "char", progress=False)
    tokens = open_split(tmp_path / "out", "train", meta)
    x, _ = Windows(tokens, 16, CPU).batch(4, seed=5)
    starts = torch.randint(len(tokens) - 17, (4,), generator=torch.Generator().manual_seed(5)).tolist()
    whole = tokens.read(0, len(tokens))
    assert x.tolist() == [whole[s:s + 16].tolist() for s in starts]


def test_bos_aligned_windows_start_at_a_document(tmp_path):
    tok = GPT2Tokenizer()
    lines = [json.dumps({"text": SHAKESPEARE[i:i + 500]}) for i in range(0, 50_000, 500)]
    (tmp_path / "web.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = prepare_corpus(tmp_path / "web.jsonl", tmp_path / "out", "gpt2", shard_tokens=5_000, progress=False)
    x, y = Windows(open_split(tmp_path / "out", "train", meta), 64, CPU, bos_token=tok.eot_token).batch(32, seed=0)
    assert (x[:, 0] == tok.eot_token).all()
    texts = {tuple(tok.encode(json.loads(line)["text"])[:10]) for line in lines}
    assert all(tuple(row[1:11].tolist()) in texts for row in x)  # right after it, a document's first tokens


def test_document_starts_are_scanned_once_and_again_when_a_shard_changes(tmp_path, monkeypatch):
    """bos_aligned windows need every shard's document starts: the first run scans them and keeps
    them in .index/ beside the shards; the next run (or DDP rank) reads them back without a scan,
    and a shard that changed is scanned again. A read-only folder is scanned every time."""
    import os

    from minigpt.data.loader import INDEX_DIR, TokenShards

    tok = GPT2Tokenizer()
    lines = [json.dumps({"text": SHAKESPEARE[i:i + 400]}) for i in range(0, 20_000, 400)]
    (tmp_path / "web.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = prepare_corpus(tmp_path / "web.jsonl", tmp_path / "out", "gpt2", shard_tokens=2_000, progress=False)
    scans, real_read = [], TokenShards.read_shard
    monkeypatch.setattr(TokenShards, "read_shard", lambda self, i, start, n: scans.append(i) or real_read(self, i, start, n))

    def starts():
        scans.clear()
        windows = Windows(open_split(tmp_path / "out", "train", meta), 32, CPU, bos_token=tok.eot_token)
        return [list(s) for s in windows.starts], len(scans)

    first, scanned = starts()
    assert scanned >= len(first) > 1 and len(list((tmp_path / "out" / INDEX_DIR).glob("*.npy"))) == len(first)
    again, rescanned = starts()
    assert again == first and rescanned <= len(first)  # open_split's sampled id check only, no scans
    shard = sorted((tmp_path / "out").glob("train_*.bin"))[0]
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))  # "changed"
    assert starts()[0] == first and len(list((tmp_path / "out" / INDEX_DIR).glob("*.npy"))) == len(first)
    whole = open_split(tmp_path / "out", "train", meta)
    assert all((whole.read_shard(i, 0, whole.shards[i].tokens)[np.array(p, dtype=np.int64)] == tok.eot_token).all()
               for i, p in enumerate(first))


def test_the_earlier_single_file_layout_still_reads(tmp_path):
    ids = np.arange(3000, dtype=np.uint16) % 60
    ids.tofile(tmp_path / "train.bin")
    ids[:500].tofile(tmp_path / "val.bin")
    write_json(tmp_path / "meta.json", {"tokenizer": {"kind": "char", "chars": [chr(48 + i) for i in range(60)]},
                                        "vocab_size": 60, "dtype": "uint16", "train_tokens": 3000, "val_tokens": 500})
    tokens = open_split(tmp_path, "train", load_meta(tmp_path))
    assert len(tokens) == 3000 and tokens.read(100, 5).tolist() == ids[100:105].tolist()


def test_llmc_shards_without_meta_train_as_gpt2_tokens(tmp_path):
    tok = GPT2Tokenizer()
    data = tmp_path / "fineweb10B"
    data.mkdir()
    ids = np.array([tok.eot_token] + tok.encode(SHAKESPEARE[:30_000]), dtype=np.int64)
    llmc_shard(data / "fineweb_val_000000.bin", ids[:3000])
    llmc_shard(data / "fineweb_train_000001.bin", ids[3000:12000])
    llmc_shard(data / "fineweb_train_000002.bin", ids[12000:])
    meta = load_meta(data)
    assert meta["tokenizer"]["kind"] == "gpt2"
    assert open_split(data, "train", meta).read(0, 20).tolist() == ids[3000:3020].tolist()
    summary = train(PretrainConfig(data_dir=str(data), out_dir=str(tmp_path / "run"), n_layer=1, n_head=2, n_embd=16,
                                   block_size=32, batch_size=2, max_iters=2, eval_interval=2, eval_iters=1,
                                   progress=False, plot=False, device="cpu"))
    assert summary["iter_num"] == 2


def test_a_shard_that_does_not_match_meta_is_refused(sharded, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(sharded, broken)
    name = load_meta(broken)["splits"]["train"]["shards"][1]["file"]
    data = (broken / name).read_bytes()
    (broken / name).write_bytes(data[:-10])
    with pytest.raises(MiniGPTError, match=rf"{name}: its header counts 7,000 tokens .* truncated"):
        open_split(broken, "train", load_meta(broken))
    (broken / name).write_bytes(data[:1024] + np.full(7000, 999, np.uint16).tobytes())
    with pytest.raises(MiniGPTError, match=rf"{name}: token 0 has id 999, outside the vocabulary"):
        open_split(broken, "train", load_meta(broken))


def test_the_copy_to_the_device_is_one_contiguous_block(monkeypatch):
    seen = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        seen.append((tuple(self.shape), self.is_contiguous()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    x, y = to_device(np.arange(2 * 9).reshape(2, 9).astype(np.uint16), CPU)
    assert seen[0] == ((2, 9), True)  # the whole (B, T + 1) block, contiguous, handed over once
    assert torch.equal(x[:, 1:], y[:, :-1]) and x.dtype == torch.long


def test_resume_on_sharded_data_is_exact(sharded, tmp_path):
    def cfg(out, **kw):
        base = dict(data_dir=str(sharded), out_dir=str(out), n_layer=2, n_head=2, n_embd=32, block_size=32,
                    batch_size=4, max_iters=20, lr_decay_iters=20, warmup_iters=4, eval_interval=10, eval_iters=2,
                    dropout=0.1, progress=False, plot=False, device="cpu", learning_rate=3e-3)
        return PretrainConfig(**{**base, **kw})

    train(cfg(tmp_path / "a"))
    train(cfg(tmp_path / "b", max_iters=10))
    train(cfg(tmp_path / "b", resume=True))
    a, b = load_checkpoint(tmp_path / "a" / LAST).model, load_checkpoint(tmp_path / "b" / LAST).model
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_a_minigpt_folder_that_lost_its_meta_json_is_not_read_as_gpt2_shards(sharded, tmp_path):
    """Without meta.json, minigpt's own shards (here of characters) could be of any tokenizer: refused,
    where they used to train silently as GPT-2 tokens; llm.c's shards beside no minigpt state still load."""
    import shutil

    for leftover in ("meta.json", ".prepare.json"):
        folder = tmp_path / leftover
        shutil.copytree(sharded, folder)
        (folder / "meta.json").unlink()
        if leftover == ".prepare.json":
            (folder / "train_000000.bin").rename(folder / "fineweb_train_000000.bin")  # llm.c-like names ...
            (folder / ".prepare.json").write_text("{}")  # ... but a preparation's journal beside them
        with pytest.raises(MiniGPTError, match=r"no meta.json, but it holds a minigpt preparation .* did not finish"):
            load_meta(folder)


def test_sha256_of_each_shard_is_compared_under_verify(sharded, tmp_path):
    """A shard edited in place (same size, ids still in the vocabulary) passes the size check on open;
    with verify its sha256 no longer matches meta.json's."""
    import shutil

    edited = tmp_path / "edited"
    shutil.copytree(sharded, edited)
    name = load_meta(edited)["splits"]["train"]["shards"][0]["file"]
    data = bytearray((edited / name).read_bytes())
    data[2000], data[2002] = data[2002], data[2000]  # two tokens swapped
    assert data != (edited / name).read_bytes()
    (edited / name).write_bytes(bytes(data))
    open_split(edited, "train", load_meta(edited))  # the size agrees: read without --verify_data
    with pytest.raises(MiniGPTError, match=rf"{name}: its sha256 differs from the one meta.json lists"):
        open_split(edited, "train", load_meta(edited), verify=True)
    open_split(sharded, "train", load_meta(sharded), verify=True)  # the untouched folder passes


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["splits"]["train"]["shards"][0].update(file="../../etc/passwd"), "is not a plain file name"),
    (lambda m: m["splits"]["train"]["shards"][0].update(tokens="7000"), r"shards\[0\] must be an object"),
    (lambda m: m["splits"]["val"].update(shards={"file": "x"}), "splits.val.shards is missing or not a list"),
    (lambda m: m["splits"].pop("val"), "splits.val.shards is missing"),
    (lambda m: m["splits"]["train"]["shards"][0].update(sha256=7), "sha256 must be a hex string"),
    (lambda m: m.update(vocab_size=True), "vocab_size True is not a positive integer"),
    (lambda m: m.update(vocab_size=10), "vocab_size 10 is smaller than its tokenizer's"),
    (lambda m: m["tokenizer"].pop("chars"), "meta.json: char tokenizer metadata has no 'chars'"),
])
def test_a_hand_edited_meta_json_is_a_clear_error(sharded, tmp_path, edit, message):
    import shutil

    folder = tmp_path / "data"
    shutil.copytree(sharded, folder)
    meta = json.loads((folder / "meta.json").read_text())
    edit(meta)
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(MiniGPTError, match=message):
        load_meta(folder)
