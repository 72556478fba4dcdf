"""Corpus preparation: sources of every format, shards in llm.c's layout, the split, the same bytes
for any number of workers, and a preparation killed mid-shard that ends as an uninterrupted one."""

from __future__ import annotations

import gzip
import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minigpt import GPT2Tokenizer, MiniGPTError, MiniGPTWarning
from minigpt.cli import data as data_cli
from minigpt.cli import run_cli
from minigpt.config_schema import build_config
from minigpt.data import corpus, sources
from minigpt.data.corpus import prepare_corpus
from minigpt.data.loader import load_meta, open_split
from minigpt.data.shards import token_dtype
from minigpt.data.tokenizers import tokenizer_from_meta
from minigpt.train.finetune import ClassifyConfig, load_splits

REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE = (REPO / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text, encoding="utf-8")
    return path


def split_ids(out: Path, split: str) -> np.ndarray:
    meta = load_meta(out)
    shards = open_split(out, split, meta)
    return shards.read(0, len(shards)).astype(np.int64)


def llmc_read(path: Path) -> tuple[int, int, np.ndarray]:
    """llm.c's format read independently: 256 little-endian int32 (magic, version, count), then the tokens."""
    raw = path.read_bytes()
    magic, version, count = struct.unpack("<3i", raw[:12])
    assert struct.unpack("<256i", raw[:1024])[3:] == (0,) * 253
    width = {1: "<u2", 7: "<u4"}[version]
    return magic, version, np.frombuffer(raw[1024:], dtype=width)[:count]


def documents(out: Path) -> list[list[int]]:
    """Each document's ids, from the shards of both splits (each document begins with the end-of-text token)."""
    eot = GPT2Tokenizer().eot_token
    docs = []
    for split in ("train", "val"):
        ids = split_ids(out, split).tolist()
        starts = [i for i, t in enumerate(ids) if t == eot] + [len(ids)]
        docs += [ids[a + 1:b] for a, b in zip(starts, starts[1:])]
    return docs


def folder_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


# ----------------------------------------------------------------------------- text files


def test_char_prepare_round_trips_and_splits_on_a_line(tmp_path):
    text = "".join(f"line {i}: héllo 世界\n" for i in range(500))
    meta = prepare_corpus(write(tmp_path / "in.txt", text), tmp_path / "out", "char", progress=False)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == len(set(text))
    chars = meta["tokenizer"]["chars"]
    train, val = ("".join(chars[i] for i in split_ids(tmp_path / "out", s)) for s in ("train", "val"))
    assert train + val == text and train.endswith("\n")
    assert len(val.encode()) == pytest.approx(0.1 * len(text.encode()), rel=0.05)


def test_gpt2_shards_equal_whole_document_encoding(tmp_path, monkeypatch):
    """Work units are cut where GPT-2's pre-tokeniser splits, so the ids equal the whole text's."""
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n  All:\nSpeak, speak.\n" * 300
    monkeypatch.setattr(sources, "UNIT_BYTES", 1000)  # many units
    out = tmp_path / "out"
    meta = prepare_corpus(write(tmp_path / "in.txt", text), out, "gpt2", progress=False)
    tok = GPT2Tokenizer()
    cut = sources.Source(tmp_path / "in.txt", "in.txt", "txt", len(text.encode()))
    cut = corpus.line_cut(cut, 0.1)
    assert split_ids(out, "train").tolist() == [tok.eot_token] + tok.encode(text[:cut])
    assert split_ids(out, "val").tolist() == [tok.eot_token] + tok.encode(text[cut:])
    assert meta["splits"]["train"]["documents"] == meta["splits"]["val"]["documents"] == 1


def test_units_cut_near_blank_lines_still_encode_as_the_whole_text(tmp_path, monkeypatch):
    """A speech follows a blank line ("mine.\n\nMARCIUS:"): GPT-2 splits "\n\n" before a letter in two,
    but a piece ending in "\n\n" keeps it as one token. Units end only at a lone newline, so the
    shards hold the whole text's ids however small the units."""
    text = SHAKESPEARE[:60_000]
    monkeypatch.setattr(sources, "UNIT_BYTES", 1500)
    out = tmp_path / "out"
    prepare_corpus(write(tmp_path / "in.txt", text), out, "gpt2", progress=False)
    tok = GPT2Tokenizer()
    cut = corpus.line_cut(sources.Source(tmp_path / "in.txt", "in.txt", "txt", len(text.encode())), 0.1)
    assert split_ids(out, "train").tolist() == [tok.eot_token] + tok.encode(text[:cut])
    assert split_ids(out, "val").tolist() == [tok.eot_token] + tok.encode(text[cut:])


def test_folder_is_split_by_document(tmp_path):
    for i in range(10):
        write(tmp_path / "books" / f"book{i}.txt", f"book {i} " * 200)
    meta = prepare_corpus(tmp_path / "books", tmp_path / "out", "gpt2", val_fraction=0.2, progress=False)
    files = meta["split"]["files"]
    assert sorted(files.values()).count("val") == 2 and sorted(files.values()).count("train") == 8
    again = prepare_corpus(tmp_path / "books", tmp_path / "out2", "gpt2", val_fraction=0.2, progress=False)
    assert again["split"]["files"] == files
    tok = GPT2Tokenizer()
    assert sorted(map(tuple, documents(tmp_path / "out"))) == sorted(tuple(tok.encode(f"book {i} " * 200)) for i in range(10))
    assert (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"]) == (8, 2)


def test_shards_have_llmc_headers_and_split_at_shard_tokens(tmp_path):
    text = SHAKESPEARE[:50_000]
    meta = prepare_corpus(write(tmp_path / "in.txt", text), tmp_path / "out", "gpt2", shard_tokens=3000, progress=False)
    shards = meta["splits"]["train"]["shards"]
    assert len(shards) > 3 and all(s["tokens"] == 3000 for s in shards[:-1]) and 0 < shards[-1]["tokens"] <= 3000
    whole = []
    for entry in shards:
        magic, version, ids = llmc_read(tmp_path / "out" / entry["file"])
        assert (magic, version) == (20240520, 1) and len(ids) == entry["tokens"]
        whole += ids.tolist()
    assert whole == split_ids(tmp_path / "out", "train").tolist()
    assert token_dtype(50257) == np.uint16 and token_dtype(70000) == np.uint32


def test_same_bytes_with_one_and_two_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "UNIT_BYTES", 5000)
    for i in range(6):
        write(tmp_path / "books" / f"b{i}.txt", SHAKESPEARE[i * 9000:(i + 1) * 9000])
    lines = [json.dumps({"text": SHAKESPEARE[i:i + 400], "id": i}) for i in range(0, 40_000, 400)]
    write(tmp_path / "books" / "web.jsonl", "\n".join(lines) + "\n")
    for workers in (1, 2):
        prepare_corpus(tmp_path / "books", tmp_path / f"w{workers}", "gpt2", workers=workers, shard_tokens=4000,
                       progress=False)
    assert folder_bytes(tmp_path / "w1") == folder_bytes(tmp_path / "w2")
    for workers in (1, 2):  # the char tokenizer's vocabulary pass too
        prepare_corpus(tmp_path / "books", tmp_path / f"c{workers}", "char", workers=workers, progress=False)
    assert folder_bytes(tmp_path / "c1") == folder_bytes(tmp_path / "c2")


# ----------------------------------------------------------------------------- records


@pytest.fixture
def web_texts() -> list[str]:
    return [SHAKESPEARE[i:i + 300] + " 🤖 中文" for i in range(0, 60_000, 300)]


def test_jsonl_gzip_and_parquet_records_decode_back_to_their_texts(tmp_path, web_texts):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    tok = GPT2Tokenizer()
    expected = sorted(tuple(tok.encode(t)) for t in web_texts)
    rows = "".join(json.dumps({"content": t, "n": i}) + "\n" for i, t in enumerate(web_texts))
    write(tmp_path / "web.jsonl", rows)
    with gzip.open(tmp_path / "web.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(rows)
    pq.write_table(pa.table({"content": web_texts, "n": list(range(len(web_texts)))}), tmp_path / "web.parquet",
                   row_group_size=37)
    results = {}
    for name in ("web.jsonl", "web.jsonl.gz", "web.parquet"):
        meta = prepare_corpus(tmp_path / name, tmp_path / name.replace(".", "_"), "gpt2", text_field="content",
                              progress=False)
        assert sorted(map(tuple, documents(tmp_path / name.replace(".", "_")))) == expected, name
        assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == len(web_texts)
        results[name] = meta["splits"]["val"]["documents"]
    assert results["web.jsonl"] == results["web.jsonl.gz"]  # the same position of each line: the same draw
    assert all(5 <= v <= 40 for v in results.values())  # about 10% of 200


def test_records_go_to_val_by_a_seeded_draw(tmp_path, web_texts):
    write(tmp_path / "web.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in web_texts))
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        prepare_corpus(tmp_path / "web.jsonl", tmp_path / name, "gpt2", seed=seed, progress=False)
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")
    assert split_ids(tmp_path / "a", "val").tolist() != split_ids(tmp_path / "c", "val").tolist()
    sized = prepare_corpus(tmp_path / "web.jsonl", tmp_path / "d", "gpt2", val_tokens=3000, progress=False)
    assert 1000 <= sized["val_tokens"] <= 9000  # about the asked-for size (estimated from the corpus's size)


# ----------------------------------------------------------------------------- resuming


KILLED_SCRIPT = """
import sys
from minigpt.data import corpus, sources
sources.UNIT_BYTES = 2000          # many small units
corpus.JOURNAL_EVERY = 1           # a journal entry after every unit
prepare = corpus.prepare_corpus
import time
original = corpus.ShardWriter.write
def slow_write(self, ids):         # slow enough to be killed in the middle
    time.sleep(0.01)
    original(self, ids)
corpus.ShardWriter.write = slow_write
prepare(sys.argv[1], sys.argv[2], "gpt2", shard_tokens=1500, progress=False)
"""


def test_a_preparation_killed_mid_shard_continues_to_the_same_bytes(tmp_path, monkeypatch):
    write(tmp_path / "in.txt", SHAKESPEARE[:120_000])
    monkeypatch.setattr(sources, "UNIT_BYTES", 2000)
    prepare_corpus(tmp_path / "in.txt", tmp_path / "straight", "gpt2", shard_tokens=1500, progress=False)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SCRIPT, str(tmp_path / "in.txt"), str(tmp_path / "killed")],
                            cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list((tmp_path / "killed").glob("train_000003.bin")):  # a few shards finished, more to come
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "killed" / corpus.JOURNAL).exists() and not (tmp_path / "killed" / "meta.json").exists()
    finished = {p.name: p.read_bytes() for p in (tmp_path / "killed").glob("train_*.bin")}
    prepare_corpus(tmp_path / "in.txt", tmp_path / "killed", "gpt2", shard_tokens=1500, progress=False)
    assert folder_bytes(tmp_path / "killed") == folder_bytes(tmp_path / "straight")
    assert all((tmp_path / "killed" / name).read_bytes() == data for name, data in finished.items())


def test_a_finished_preparation_is_kept_unless_overwritten(tmp_path):
    write(tmp_path / "in.txt", SHAKESPEARE[:5000])
    prepare_corpus(tmp_path / "in.txt", tmp_path / "out", "char", progress=False)
    with pytest.raises(MiniGPTError, match="already holds prepared data"):
        prepare_corpus(tmp_path / "in.txt", tmp_path / "out", "gpt2", progress=False)
    meta = prepare_corpus(tmp_path / "in.txt", tmp_path / "out", "gpt2", progress=False, overwrite=True)
    assert meta["tokenizer"]["kind"] == "gpt2" and load_meta(tmp_path / "out")["tokenizer"]["kind"] == "gpt2"


def test_few_documents_far_from_the_val_fraction_warn(tmp_path):
    write(tmp_path / "books" / "short.txt", "tiny\n" * 10)
    write(tmp_path / "books" / "long.txt", SHAKESPEARE[:20_000])
    with pytest.warns(MiniGPTWarning, match=r"val holds \d+% of the tokens"):
        prepare_corpus(tmp_path / "books", tmp_path / "out", "char", val_fraction=0.5, progress=False)


# ----------------------------------------------------------------------------- the command line


def run_prepare(*args):
    return subprocess.run([sys.executable, "-m", "minigpt", "data", *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)


@pytest.mark.parametrize("setup,message", [
    (lambda p: write(p / "in.txt", "  \n\n "), "the corpus is empty"),
    (lambda p: (p / "in.txt"), "input not found"),
    (lambda p: write(p / "in.txt", b"ok\nok \xff\xfe"), "in.txt:2: not UTF-8"),
    (lambda p: (p / "empty_dir").mkdir() or p / "empty_dir", "no .txt"),
    (lambda p: write(p / "d.jsonl", '{"text": "a"}\n{"text": \n'), "d.jsonl:2: not valid JSON"),
    (lambda p: write(p / "d.jsonl", '{"text": "a"}\n\n{"body": "b"}\n'), "d.jsonl:3: no key 'text' (--text_field)"),
    (lambda p: write(p / "d.jsonl", '{"text": "a"}\n{"text": 7}\n'), "d.jsonl:2: 'text' is int, not text"),
    (lambda p: write(p / "d.jsonl.gz", b"not gzip at all"), "d.jsonl.gz: not a readable gzip file"),
    (lambda p: write(p / "d.parquet", b"PAR1 nope"), "d.parquet: not a readable parquet file"),
    (lambda p: str(p / "*.nothing"), "matches no file"),
])
def test_prepare_errors_are_one_line(tmp_path, setup, message):
    path = setup(tmp_path)
    proc = run_prepare("--input", str(path), "--out", str(tmp_path / "out"), "--tokenizer", "gpt2")
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_characters_outside_a_char_vocab_name_their_line(tmp_path):
    prepare_corpus(write(tmp_path / "a.txt", "abc abc\n" * 50), tmp_path / "a", "char", progress=False)
    proc = run_prepare("--input", str(write(tmp_path / "b.txt", "abc\nabz\n" * 50)), "--out", str(tmp_path / "b"),
                       "--char_vocab_from", str(tmp_path / "a" / "meta.json"))
    assert proc.returncode == 2 and "b.txt:2: character 'z'" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    proc = run_prepare("--input", str(write(tmp_path / "c.txt", "abc\n" * 90 + "abz\n" * 10)), "--out", str(tmp_path / "c"),
                       "--char_vocab_from", str(tmp_path / "a" / "meta.json"))
    assert "c.txt:91: character 'z'" in proc.stderr, proc.stderr  # in the val part: still the file's own line


def test_cli_prints_a_summary(tmp_path, capsys):
    write(tmp_path / "in.txt", SHAKESPEARE[:20_000])
    assert run_cli(data_cli.main, ["--input", str(tmp_path / "in.txt"), "--out", str(tmp_path / "out"), "--workers", "2",
                                   "--shard_tokens", "5K", "--tokenizer", "gpt2", "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "train tokens in 2 shard(s)" in out and "MB/s" in out and "tokens/s" in out


def test_training_texts_of_a_classification_config_become_a_corpus(tmp_path):
    """--texts_of: the config's training split, one document per text; val and test texts stay out.
    --char_unknown: the vocabulary gets a stand-in that later reads characters the corpus lacks."""
    rows = [f"{'pos' if i % 3 else 'neg'}\treview {i} {'好' if i % 2 else '坏'}" for i in range(60)]
    write(tmp_path / "reviews.tsv", "\n".join(rows) + "\n")
    config = write(tmp_path / "c.toml", f'task = "classify"\ntrain_file = "{tmp_path / "reviews.tsv"}"\n'
                                        'format = "tsv"\nheader = false\ntext_column = "1"\nlabel_column = "0"\n'
                                        'split = "0.6,0.2,0.2"\n')
    proc = run_prepare("--texts_of", str(config), "--out", str(tmp_path / "lm"), "--char_unknown", "\ufffd")
    assert proc.returncode == 0, proc.stderr
    meta = load_meta(tmp_path / "lm")
    train, val, test, _ = load_splits(build_config(ClassifyConfig, str(config), []))
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == len(train.texts) == 36
    tok = tokenizer_from_meta(meta["tokenizer"])
    corpus_text = tok.decode(np.concatenate([split_ids(tmp_path / "lm", s) for s in ("train", "val")]).tolist())
    assert sorted(corpus_text.splitlines()) == sorted(train.texts)
    assert not set(corpus_text.splitlines()) & set(val.texts + test.texts)
    assert tok.decode(tok.encode("review 7 好!")) == "review 7 好\ufffd"  # '!' was never seen
    proc = run_prepare("--out", str(tmp_path / "x"))  # --input and --texts_of combine (test_tokenizer_training.py)
    assert proc.returncode == 2 and "give --input PATH ..., --texts_of CONFIG, or both" in proc.stderr
    pretraining = write(tmp_path / "p.toml", 'data_dir = "x"\n')
    proc = run_prepare("--texts_of", str(pretraining), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "p.toml: not a classification config" in proc.stderr
