"""Corpus preparation under fire: two preparations into one folder, --overwrite that fails, shards
changed between a kill and the resume, a full disk, a file-size limit, Ctrl-C with worker processes,
damaged gzip and parquet input, a worker that dies, byte-order marks, --val_tokens with a Hugging
Face tokenizer, and SIGKILLs at random moments (bench/chaos_resume.py --part data)."""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from minigpt import GPT2Tokenizer, MiniGPTError
from minigpt.cli import data as data_cli
from minigpt.cli import run_cli
from minigpt.data import corpus, sources
from minigpt.data.corpus import JOURNAL, STAGING, prepare_corpus
from minigpt.data.loader import load_meta, open_split
from minigpt.data.shards import ShardWriter
from minigpt.locks import LOCK_FILE, hold_lock

REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE = (REPO / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
GPT2 = ["--tokenizer", "gpt2", "--no_progress"]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text, encoding="utf-8")
    return path


def hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder``, but the lock file (its line names the last holder)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def verify(folder: Path) -> None:
    """The checks of the trainer's --verify_data."""
    meta = load_meta(folder)
    for split in ("train", "val"):
        open_split(folder, split, meta, verify=True)


def run_prepare(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minigpt", "data", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=REPO, **kwargs)


def one_error_line(stderr: str, text: str) -> None:
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("error: ") and text in stderr, stderr


def cli(capsys, *args) -> tuple[int, str]:
    """python -m minigpt data in this process: (exit code, stderr)."""
    capsys.readouterr()
    code = run_cli(data_cli.main, [str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture
def books(tmp_path) -> Path:
    """Eight text files of Tiny Shakespeare (200 KB)."""
    for i in range(8):
        write(tmp_path / "books" / f"b{i}.txt", SHAKESPEARE[i * 25_000:(i + 1) * 25_000])
    return tmp_path / "books"


def interrupt_after(monkeypatch, writes: int) -> None:
    """Ctrl-C (KeyboardInterrupt) in the middle of a preparation, at its ``writes + 1``-th write of tokens."""
    original, calls = ShardWriter.write, [0]

    def write_then_stop(self, ids):
        calls[0] += 1
        if calls[0] > writes:
            raise KeyboardInterrupt
        original(self, ids)

    monkeypatch.setattr(ShardWriter, "write", write_then_stop)


def fail(exc: BaseException):
    """A stand-in for a function: raises ``exc`` when called."""
    def raising(*args, **kwargs):
        raise exc
    return raising


def small_units(monkeypatch) -> None:
    """Many work units, and a journal entry after each."""
    monkeypatch.setattr(sources, "UNIT_BYTES", 4000)
    monkeypatch.setattr(corpus, "JOURNAL_EVERY", 1)


# ----------------------------------------------------------------------------- one preparation at a time

GATED_PREPARE = """
import pathlib, runpy, sys, time
from minigpt.data.shards import ShardWriter
gate = pathlib.Path(sys.argv.pop(1))
original = ShardWriter.write
def gated_write(self, ids):                # the first write waits (holding the folder) for the test's go
    while not gate.exists():
        time.sleep(0.02)
    original(self, ids)
ShardWriter.write = gated_write
sys.argv.insert(1, "data")               # python -m minigpt data ...
runpy.run_module("minigpt", run_name="__main__", alter_sys=True)
"""


def test_two_preparations_at_once_one_runs_the_other_gets_the_lock_error(tmp_path):
    """Started together into one folder: one prepares, the other stops at once with a one-line error
    naming the first one's pid; what the first one leaves equals a lone preparation byte for byte.
    The one that takes the folder first waits, before its first write, until the other has ended, so
    the two overlap whatever the machine's load."""
    write(tmp_path / "in.txt", SHAKESPEARE[:300_000])
    gate = tmp_path / "go"
    args = ["--input", tmp_path / "in.txt", "--out", tmp_path / "out", "--shard_tokens", "5K", "--workers", "1", *GPT2]
    procs = [subprocess.Popen([sys.executable, "-c", GATED_PREPARE, str(gate), *map(str, args)], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    first_done = None
    while first_done is None:
        first_done = next((p for p in procs if p.poll() is not None), None)
        time.sleep(0.05)
    gate.touch()
    results = [(*p.communicate(timeout=300), p.returncode)[::-1] for p in procs]  # (code, stderr, stdout)
    assert sorted(code for code, _, _ in results) == [0, 2], results
    assert first_done.returncode == 2
    (_, lost, _), = [r for r in results if r[0] == 2]
    one_error_line(lost, "is in use by another data preparation (pid ")
    prepare_corpus(tmp_path / "in.txt", tmp_path / "alone", "gpt2", shard_tokens=5000, progress=False)
    assert hashes(tmp_path / "out") == hashes(tmp_path / "alone")


def test_a_folder_in_use_is_refused(tmp_path):
    write(tmp_path / "in.txt", SHAKESPEARE[:5000])
    (tmp_path / "out").mkdir()
    with hold_lock(tmp_path / "out", "training run"):
        with pytest.raises(MiniGPTError, match=r"in use by another data preparation \(pid \d+"):
            prepare_corpus(tmp_path / "in.txt", tmp_path / "out", "char", progress=False)
    assert not (tmp_path / "out" / "meta.json").exists()


# ----------------------------------------------------------------------------- --overwrite


def test_overwrite_that_fails_on_its_last_record_keeps_the_old_data(tmp_path, capsys):
    """The new preparation reads everything before the old data goes: a bad last line leaves the old
    data byte for byte; the corrected input then replaces it, as a lone preparation would write it."""
    write(tmp_path / "old.txt", SHAKESPEARE[:20_000])
    out = tmp_path / "out"
    prepare_corpus(tmp_path / "old.txt", out, "char", progress=False)
    before = hashes(out)
    lines = [json.dumps({"text": SHAKESPEARE[i:i + 500]}) for i in range(0, 30_000, 500)]
    write(tmp_path / "web.jsonl", "\n".join(lines) + '\n{"text": oops}\n')
    code, err = cli(capsys, "--input", tmp_path / "web.jsonl", "--out", out, "--overwrite", "--workers", "1", *GPT2)
    assert code == 2
    one_error_line(err, "web.jsonl:61: not valid JSON")
    assert {k: v for k, v in hashes(out).items() if not k.startswith(STAGING)} == before
    verify(out)

    write(tmp_path / "web.jsonl", "\n".join(lines) + "\n")
    code, err = cli(capsys, "--input", tmp_path / "web.jsonl", "--out", out, "--overwrite", "--workers", "1", *GPT2)
    assert code == 0, err
    prepare_corpus(tmp_path / "web.jsonl", tmp_path / "alone", "gpt2", progress=False)
    assert hashes(out) == hashes(tmp_path / "alone")  # nothing of the old data, no staging folder left


def test_an_input_glob_matching_the_output_folder_is_refused_before_anything_changes(tmp_path, capsys):
    out = tmp_path / "out"
    write(out / "input.txt", SHAKESPEARE[:20_000])  # the text inside the output folder is fine ...
    prepare_corpus(out / "input.txt", out, "char", progress=False)
    before = hashes(out)
    code, err = cli(capsys, "--input", f"{out}/*", "--out", out, "--overwrite")  # ... its shards as input are not
    assert code == 2
    one_error_line(err, "is a file that preparing into")
    assert hashes(out) == before


def test_an_interrupted_overwrite_continues_where_it_stopped(tmp_path, books, monkeypatch):
    """Ctrl-C during --overwrite: the old data stays whole; the same command continues in .staging and
    ends as a lone preparation. Another command with --overwrite starts its own afresh."""
    small_units(monkeypatch)
    out = tmp_path / "out"
    prepare_corpus(books, out, "gpt2", seed=1, progress=False)
    before = hashes(out)
    interrupt_after(monkeypatch, 30)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(books, out, "gpt2", shard_tokens=3000, overwrite=True, progress=False)
    assert (out / STAGING / JOURNAL).exists() and list((out / STAGING).glob("train_*.bin"))
    assert {k: v for k, v in hashes(out).items() if not k.startswith(STAGING)} == before
    verify(out)
    monkeypatch.undo()
    small_units(monkeypatch)
    staged = {p.name: p.read_bytes() for p in (out / STAGING).glob("*_*.bin")}
    prepare_corpus(books, out, "gpt2", shard_tokens=3000, overwrite=True, progress=False)
    prepare_corpus(books, tmp_path / "alone", "gpt2", shard_tokens=3000, progress=False)
    assert hashes(out) == hashes(tmp_path / "alone")
    assert all((out / name).read_bytes() == data for name, data in staged.items())  # continued, not redone

    interrupt_after(monkeypatch, 30)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(books, out, "gpt2", shard_tokens=3000, seed=5, overwrite=True, progress=False)
    monkeypatch.undo()
    prepare_corpus(books, out, "gpt2", shard_tokens=2000, seed=5, overwrite=True, progress=False)  # other options
    prepare_corpus(books, tmp_path / "alone2", "gpt2", shard_tokens=2000, seed=5, progress=False)
    assert hashes(out) == hashes(tmp_path / "alone2")


def test_a_staged_preparation_changed_since_starts_afresh(tmp_path, books, monkeypatch):
    """.staging is the --overwrite command's alone: a shard of it deleted since is no dead end (the error
    of a folder's own resume would say: use --overwrite), the staged preparation starts again."""
    small_units(monkeypatch)
    out = tmp_path / "out"
    prepare_corpus(books, out, "gpt2", seed=1, progress=False)
    interrupt_after(monkeypatch, 30)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(books, out, "gpt2", shard_tokens=3000, overwrite=True, progress=False)
    monkeypatch.undo()
    small_units(monkeypatch)
    (out / STAGING / "train_000000.bin").unlink()
    prepare_corpus(books, out, "gpt2", shard_tokens=3000, overwrite=True, progress=False)
    prepare_corpus(books, tmp_path / "alone", "gpt2", shard_tokens=3000, progress=False)
    assert hashes(out) == hashes(tmp_path / "alone")


def test_an_interrupted_move_is_finished_by_the_next_run(tmp_path, books, monkeypatch, capsys):
    """Stopped while the new files move in (the folder then holds no meta.json): the next run into the
    folder finishes the move first; the same command then has nothing left to do."""
    out = tmp_path / "out"
    prepare_corpus(books, out, "gpt2", seed=1, progress=False)
    original = corpus._sync_folder
    monkeypatch.setattr(corpus, "_sync_folder", fail(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(books, out, "gpt2", shard_tokens=3000, overwrite=True, progress=False)
    assert not (out / "meta.json").exists() and (out / STAGING / "meta.json").exists()
    monkeypatch.setattr(corpus, "_sync_folder", original)
    monkeypatch.setattr(corpus, "Workers", None)  # no tokenizing: the preparation was done
    code, err = cli(capsys, "--input", books, "--out", out, "--shard_tokens", "3000", "--overwrite", *GPT2)
    assert code == 0, err
    monkeypatch.undo()
    prepare_corpus(books, tmp_path / "alone", "gpt2", shard_tokens=3000, progress=False)
    assert hashes(out) == hashes(tmp_path / "alone")

    monkeypatch.setattr(corpus, "_sync_folder", fail(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(books, out, "gpt2", shard_tokens=4000, overwrite=True, progress=False)
    monkeypatch.undo()
    with pytest.raises(MiniGPTError, match="already holds prepared data"):  # another command: the move ends first
        prepare_corpus(books, out, "char", progress=False)
    prepare_corpus(books, tmp_path / "alone4k", "gpt2", shard_tokens=4000, progress=False)
    assert hashes(out) == hashes(tmp_path / "alone4k")


# ----------------------------------------------------------------------------- resuming


def flip_first_token(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[1024] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "train_000001.bin").unlink(), "train_000001.bin: deleted since the interrupted preparation"),
    (lambda d: (d / "train_000000.bin").write_bytes((d / "train_000000.bin").read_bytes()[:-2]), "bytes, not"),
    (lambda d: (d / "train_000001.bin").write_bytes((d / "train_000001.bin").read_bytes()[:-1] + b"\x7f"),
     "train_000001.bin: changed (its sha256 differs)"),
    (lambda d: flip_first_token(next(d.glob(".train_*.partial"))), "the sha256 of its first tokens differs"),
])
def test_a_resume_over_changed_shards_is_an_error_naming_them(tmp_path, books, monkeypatch, damage, message):
    """The journal keeps each finished shard's size and sha256 (and the partial one's first tokens'):
    one deleted or changed since the interruption is named, instead of a silently wrong result;
    --overwrite then prepares it all again."""
    small_units(monkeypatch)
    out = tmp_path / "out"
    interrupt_after(monkeypatch, 30)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(books, out, "gpt2", shard_tokens=3000, progress=False)
    monkeypatch.undo()
    small_units(monkeypatch)
    journal = json.loads((out / JOURNAL).read_text())
    assert len(journal["splits"]["train"]["done"]) >= 2 and journal["splits"]["train"]["partial_tokens"] > 0
    damage(out)
    with pytest.raises(MiniGPTError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prepare_corpus(books, out, "gpt2", shard_tokens=3000, progress=False)
    prepare_corpus(books, out, "gpt2", shard_tokens=3000, progress=False, overwrite=True)
    prepare_corpus(books, tmp_path / "alone", "gpt2", shard_tokens=3000, progress=False)
    assert hashes(out) == hashes(tmp_path / "alone")


def test_a_kill_before_the_first_journal_entry_leaves_a_folder_that_continues(tmp_path, monkeypatch):
    """A corpus of one work unit finishes many shards before its first journal entry: the folder still
    continues (a journal is written before the first token)."""
    write(tmp_path / "in.txt", SHAKESPEARE[:100_000])
    interrupt_after(monkeypatch, 1)  # the train split's write finished shards; the val split's is interrupted
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(tmp_path / "in.txt", tmp_path / "out", "gpt2", shard_tokens=2000, progress=False)
    monkeypatch.undo()
    prepare_corpus(tmp_path / "in.txt", tmp_path / "out", "gpt2", shard_tokens=2000, progress=False)
    prepare_corpus(tmp_path / "in.txt", tmp_path / "alone", "gpt2", shard_tokens=2000, progress=False)
    assert hashes(tmp_path / "out") == hashes(tmp_path / "alone")


# ----------------------------------------------------------------------------- a full disk, Ctrl-C


class FullDisk:
    """A shard file on a disk with ``room[0]`` bytes left (shared by all the shards)."""

    def __init__(self, file, room: list[int]):
        self._file, self._room = file, room

    def write(self, data):
        if len(data) > self._room[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room[0] -= len(data)
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)


def test_a_full_disk_is_one_line_and_the_same_command_continues(tmp_path, books, monkeypatch, capsys):
    small_units(monkeypatch)
    original_open, room = ShardWriter._open, [60_000]

    def open_on_a_small_disk(self, *args, **kwargs):
        original_open(self, *args, **kwargs)
        self._file = FullDisk(self._file, room)

    monkeypatch.setattr(ShardWriter, "_open", open_on_a_small_disk)
    args = ["--input", books, "--out", tmp_path / "out", "--shard_tokens", "3000", "--workers", "1", *GPT2]
    code, err = cli(capsys, *args)
    assert code == 2
    one_error_line(err, ".partial: cannot write (No space left on device); the finished part is kept: free some "
                        "disk space and run the same command again to continue")
    journal = json.loads((tmp_path / "out" / JOURNAL).read_text())  # whole, and its finished shards intact
    done = journal["splits"]["train"]["done"]
    assert len(done) >= 2
    assert all(hashlib.sha256((tmp_path / "out" / e["file"]).read_bytes()).hexdigest() == e["sha256"] for e in done)

    monkeypatch.setattr(ShardWriter, "_open", original_open)
    monkeypatch.setattr(corpus, "write_json", fail(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    code, err = cli(capsys, *args)  # the journal itself cannot be written: the old one stays
    assert code == 2
    one_error_line(err, f"{JOURNAL}: cannot write (No space left on device)")
    assert json.loads((tmp_path / "out" / JOURNAL).read_text()) == journal
    monkeypatch.undo()
    small_units(monkeypatch)
    assert cli(capsys, *args)[0] == 0
    prepare_corpus(books, tmp_path / "alone", "gpt2", shard_tokens=3000, progress=False)
    assert hashes(tmp_path / "out") == hashes(tmp_path / "alone")


def test_a_file_size_limit_is_one_line_and_the_same_command_continues(tmp_path, books):
    """Past RLIMIT_FSIZE a write fails with EFBIG (SIGXFSZ would kill the process: it is ignored)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    args = ["--input", books, "--out", tmp_path / "out", "--shard_tokens", "40K", "--workers", "1", *GPT2]
    proc = run_prepare(*args, preexec_fn=limit, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 2, proc.stderr
    one_error_line(proc.stderr, "cannot write (File too large); the finished part is kept: raise the file-size limit")
    proc = run_prepare(*args)
    assert proc.returncode == 0, proc.stderr
    prepare_corpus(books, tmp_path / "alone", "gpt2", shard_tokens=40_000, progress=False)
    assert hashes(tmp_path / "out") == hashes(tmp_path / "alone")


@pytest.mark.xfail(strict=False, reason="known race (2026-12-03): under load the SIGINT sent once shard 3 exists is "
                   "sometimes lost and the preparation exits 0; being investigated")
def test_ctrl_c_with_two_workers_is_one_line_and_the_same_command_continues(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it: the workers ignore it, the
    preparation says 'interrupted' on one line (exit 130), no traceback from any process. On a fast
    or busy machine the preparation may finish before the signal lands: then it tries again with
    twice the text (the signal is sent once a few shards exist)."""
    for repeat in (3, 6, 12):
        books, out = tmp_path / f"books{repeat}", tmp_path / f"out{repeat}"
        for i in range(8):
            write(books / f"b{i}.txt", SHAKESPEARE[i * 125_000:(i + 1) * 125_000] * repeat)
        args = ["--input", books, "--out", out, "--shard_tokens", "2K", "--workers", "2", *GPT2]
        proc = subprocess.Popen([sys.executable, "-m", "minigpt", "data", *map(str, args)], cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.time() + 120
        while not (out / "train_000003.bin").exists():  # tokenizing, in the worker processes
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 0:  # it had finished: nothing was interrupted
            continue
        assert proc.returncode == 130, err
        assert err == f"interrupted: preparing {out} stopped; run the same command again to continue\n", err
        proc = run_prepare(*args)
        assert proc.returncode == 0, proc.stderr
        prepare_corpus(books, tmp_path / "alone", "gpt2", shard_tokens=2000, progress=False)
        assert hashes(out) == hashes(tmp_path / "alone")
        return
    pytest.fail("the preparation finished before Ctrl-C landed three times, with up to 12x the text")


# ----------------------------------------------------------------------------- damaged input, workers

HANGING = """
import sys
from minigpt.data.corpus import prepare_corpus
from minigpt.errors import MiniGPTError
if __name__ == "__main__":
    for attempt in range(int(sys.argv[3])):
        try:
            prepare_corpus(sys.argv[1], f"{sys.argv[2]}/{attempt}", "gpt2", workers=2, progress=False)
        except MiniGPTError as err:
            print(err, flush=True)
"""


def damaged_parquet(path: Path) -> Path:
    """A parquet file with a damaged page in its middle row groups (its footer is intact)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [SHAKESPEARE[i:i + 500] for i in range(0, 200_000, 500)]
    pq.write_table(pa.table({"text": rows}), path, row_group_size=40)
    column = pq.ParquetFile(path).metadata.row_group(6).column(0)
    data = bytearray(path.read_bytes())
    middle = column.data_page_offset + column.total_compressed_size // 2
    data[middle:middle + 64] = bytes(b ^ 0xA5 for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))
    return path


def test_a_damaged_parquet_page_with_two_workers_is_an_error_every_time(tmp_path):
    """Read in a worker process started after this one used pyarrow: an error, never a hang (forked
    workers once hung about one run in four)."""
    script = write(tmp_path / "hanging.py", HANGING)
    proc = subprocess.run([sys.executable, str(script), str(damaged_parquet(tmp_path / "d.parquet")),
                           str(tmp_path / "out"), "6"], capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 6 and len(set(lines)) == 1, proc.stdout
    assert lines[0].startswith(f"{tmp_path / 'd.parquet'}: row group ") and "not a readable parquet file" in lines[0]


DYING = """
import os, sys
from minigpt.data.corpus import Plan, Workers
from minigpt.errors import MiniGPTError
def die(job):
    os._exit(3)
if __name__ == "__main__":
    try:
        with Workers(2, Plan([], 0, 0.1, {}, "text"), None) as pool:
            list(pool.map(die, range(8)))
    except MiniGPTError as err:
        print(err)
"""


@pytest.mark.xfail(strict=False, reason="known race (2026-12-03): under heavy load the pool can break at submit "
                   "(BrokenProcessPool) before the death is reported as 'a worker process died'")
def test_a_worker_that_dies_is_an_error_not_a_wait(tmp_path):
    script = write(tmp_path / "dying.py", DYING)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "a worker process died" in proc.stdout, proc.stdout + proc.stderr


def damaged_gzip() -> bytes:
    """Gzipped JSON lines with a byte in the middle of the deflate stream changed so that zlib fails
    (zlib.error; some changes only fail the CRC check at the end, a gzip.BadGzipFile)."""
    lines = "".join(json.dumps({"text": SHAKESPEARE[i:i + 300]}) + "\n" for i in range(0, 60_000, 300)).encode()
    packed = gzip.compress(lines, mtime=0)
    for k in range(len(packed) // 2, len(packed)):
        damaged = packed[:k] + bytes([packed[k] ^ 0xFF]) + packed[k + 1:]
        try:
            gzip.decompress(damaged)
        except zlib.error:
            return damaged
        except (OSError, EOFError):
            pass
    raise AssertionError("no damage that zlib notices")


def test_damaged_gzip_and_parquet_are_one_line(tmp_path, capsys):
    write(tmp_path / "d.jsonl.gz", damaged_gzip())
    code, err = cli(capsys, "--input", tmp_path / "d.jsonl.gz", "--out", tmp_path / "a", *GPT2)
    assert code == 2
    one_error_line(err, "d.jsonl.gz: not a readable gzip file (Error -3 while decompressing data: ")
    assert "; damaged after line " in err
    code, err = cli(capsys, "--input", damaged_parquet(tmp_path / "d.parquet"), "--out", tmp_path / "b", "--workers", "1",
                    *GPT2)
    assert code == 2
    one_error_line(err, "not a readable parquet file")
    assert "d.parquet: row group " in err


# ----------------------------------------------------------------------------- byte-order marks, --val_tokens


def test_a_byte_order_mark_opening_a_file_is_not_text(tmp_path):
    """As utf-8-sig reads it: no character of the vocabulary, no token; one inside a text stays."""
    texts = [SHAKESPEARE[i * 3000:(i + 1) * 3000] for i in range(5)]
    for i, text in enumerate(texts):
        write(tmp_path / "books" / f"b{i}.txt", b"\xef\xbb\xbf" + text.encode())
    meta = prepare_corpus(tmp_path / "books", tmp_path / "char", "char", progress=False)
    assert "\ufeff" not in meta["tokenizer"]["chars"]
    assert meta["train_tokens"] + meta["val_tokens"] == sum(map(len, texts))
    assert meta["splits"]["train"]["bytes"] + meta["splits"]["val"]["bytes"] == sum(len(t.encode()) for t in texts)
    inside = prepare_corpus(write(tmp_path / "inside.txt", "a\ufeffb\n" * 50), tmp_path / "inside", "char",
                            progress=False)
    assert "\ufeff" in inside["tokenizer"]["chars"]

    gpt2 = GPT2Tokenizer()  # one file cut at a line: the cut and the resumable units unchanged
    prepare_corpus(write(tmp_path / "one.txt", b"\xef\xbb\xbf" + SHAKESPEARE[:20_000].encode()), tmp_path / "one",
                   "gpt2", progress=False)
    meta = load_meta(tmp_path / "one")
    ids = np.concatenate([open_split(tmp_path / "one", s, meta).read(0, meta[f"{s}_tokens"]) for s in ("train", "val")])
    assert ids[0] == gpt2.eot_token
    assert gpt2.decode([t for t in ids.tolist() if t != gpt2.eot_token]) == SHAKESPEARE[:20_000]

    records = [SHAKESPEARE[i:i + 300] for i in range(0, 30_000, 300)]
    write(tmp_path / "web.jsonl", b"\xef\xbb\xbf" + "".join(json.dumps({"text": t}) + "\n" for t in records).encode())
    meta = prepare_corpus(tmp_path / "web.jsonl", tmp_path / "web", "char", progress=False)
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 100
    assert "\ufeff" not in meta["tokenizer"]["chars"]


def test_a_byte_order_mark_keeps_line_numbers_right(tmp_path):
    prepare_corpus(write(tmp_path / "a.txt", "abc\n" * 50), tmp_path / "a", "char", progress=False)
    write(tmp_path / "b.txt", b"\xef\xbb\xbf" + b"ab\nz\n" * 30)
    with pytest.raises(MiniGPTError, match=r"b\.txt:2: character 'z'"):
        prepare_corpus(tmp_path / "b.txt", tmp_path / "b", "char", char_vocab_from=tmp_path / "a" / "meta.json",
                       progress=False)


def test_val_tokens_are_counted_with_a_tokenizer_json(tmp_path):
    """A Hugging Face tokenizer of about 3 bytes a token: --val_tokens counts its tokens, not characters."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=["</s>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([SHAKESPEARE[:300_000]], trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    write(tmp_path / "web.jsonl", "".join(json.dumps({"text": SHAKESPEARE[i:i + 400]}) + "\n"
                                          for i in range(0, 400_000, 400)))
    meta = prepare_corpus(tmp_path / "web.jsonl", tmp_path / "out", str(tmp_path / "tokenizer.json"), val_tokens=20_000,
                          progress=False)
    per_byte = (meta["train_tokens"] + meta["val_tokens"]) / 400_000
    assert per_byte < 0.6  # a tokenizer of more than one byte a token: counting characters would be far off
    assert 0.7 * 20_000 <= meta["val_tokens"] <= 1.3 * 20_000, meta["val_tokens"]


def test_val_tokens_of_an_empty_corpus_and_seeds_out_of_range_are_one_line(tmp_path, capsys):
    write(tmp_path / "empty.txt", "")
    code, err = cli(capsys, "--input", tmp_path / "empty.txt", "--out", tmp_path / "o", "--val_tokens", "10")
    assert code == 2
    one_error_line(err, "empty.txt: the corpus is empty")
    for seed in ("-1", str(2**64)):
        code, err = cli(capsys, "--input", tmp_path / "empty.txt", "--out", tmp_path / "o", "--seed", seed)
        assert code == 2
        one_error_line(err, f"--seed must be in [0, 2**64), got {seed}")
    with pytest.raises(MiniGPTError, match=r"seed must be in \[0, 2\*\*64\)"):
        prepare_corpus(tmp_path / "empty.txt", tmp_path / "o", seed=2**64)


# ----------------------------------------------------------------------------- SIGKILL at random moments


def test_chaos_resume_of_an_overwrite_ends_byte_identical(tmp_path):
    """bench/chaos_resume.py --part data (10 kills) in small: 3 SIGKILLs of a preparation with
    --overwrite over older data, the last one while the new files move in."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "chaos_resume.py"), "--part", "data", "--kills", "3",
                           "--overwrite", "--work", str(tmp_path), "--seed", "0"], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "chaos_data.json").read_text())
    assert result["differing_files"] == [] and result["verify_error"] is None
    assert result["leftovers"] == [] and result["problems"] == []
    assert result["older_data_kept"] >= 1  # checked byte for byte after a kill
