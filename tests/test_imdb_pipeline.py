"""The IMDb pipeline (bench/imdb_pipeline.py) end to end on a few hundred made-up reviews: tokenizer ->
leak-free corpus -> pretraining -> fine-tuning with windows -> baselines -> report, then run again
(every stage skipped), with tiny settings so it takes seconds of training."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_bench
from minigpt.checkpoint import load_checkpoint
from minigpt.config_schema import read_toml
from minigpt.locks import hold_lock

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "bench" / "imdb_pipeline.py"

POS = ["great", "wonderful", "superb", "moving", "brilliant"]
NEG = ["awful", "boring", "dreadful", "dull", "terrible"]
FILLER = ["the", "plot", "cast", "film", "scene", "music", "ending", "director", "was", "and", "a", "story"]


def review(rng: random.Random, words: list[str]) -> str:
    body = [rng.choice(FILLER) for _ in range(rng.randint(10, 60))]
    for _ in range(2):
        body.insert(rng.randrange(len(body)), rng.choice(words))
    return " ".join(body).capitalize() + ".<br /><br />" + " ".join(rng.choice(FILLER) for _ in range(5))


def imdb_like(folder: Path, n_labelled: int = 300, n_unsup: int = 300) -> None:
    rng = random.Random(0)
    folder.mkdir()
    with open(folder / "train.jsonl", "w", encoding="utf-8") as f:
        for i in range(n_labelled):
            label = "pos" if i % 2 else "neg"
            f.write(json.dumps({"label": label, "id": i, "text": review(rng, POS if label == "pos" else NEG)}) + "\n")
    with open(folder / "unsup.jsonl", "w", encoding="utf-8") as f:
        for i in range(n_unsup):
            f.write(json.dumps({"id": i, "text": review(rng, rng.choice([POS, NEG]))}) + "\n")


TINY = ["--tokenizer", "vocab_size=400",
        "--lm", "n_layer=1", "n_head=2", "n_embd=32", "block_size=64", "batch_size=8", "max_iters=30",
        "eval_interval=15", "eval_iters=2", "warmup_iters=5", "compile=false", "dtype=float32",
        "--classifier", "max_length=32", "window_stride=16", "head_tokens=8", "batch_size=8", "epochs=0", "max_iters=30",
        "eval_interval=15", "warmup_iters=5", "compile=false", "dtype=float32", "learning_rate=3e-3"]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PIPELINE), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def test_the_pipeline_runs_end_to_end_and_resumes_by_skipping_what_is_done(tmp_path):
    pytest.importorskip("sklearn")
    imdb_like(tmp_path / "imdb")
    work = tmp_path / "work"
    done = run("--data", str(tmp_path / "imdb"), "--work", str(work), *TINY)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((work / "pipeline.json").read_text())
    assert set(record["stages"]) == {"tokenizer", "corpus", "lm", "classifier", "tfidf", "nbsvm"}
    assert all(e["done"] and e["seconds"] > 0 for e in record["stages"].values())
    report = json.loads((work / "classifier" / "report.json").read_text())
    assert report["split"] == "test" and report["n"] == 30
    table = (work / "report.md").read_text()
    for stage in ("tokenizer", "corpus", "lm", "classifier", "tfidf", "nbsvm"):
        assert f"| {stage} |" in table
    assert f"{report['accuracy']:.2%}" in table and "val loss" in table
    classifier_config = (work / "configs" / "classifier.toml").read_text()
    assert 'long_text = "windows"' in classifier_config and f'init_from = "{work / "lm"}"' in classifier_config

    again = run("--data", str(tmp_path / "imdb"), "--work", str(work), *TINY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done before") == 6
    assert json.loads((work / "pipeline.json").read_text())["stages"]["lm"]["runs"] == 1

    changed = run("--data", str(tmp_path / "imdb"), "--work", str(work), *TINY, "max_iters=31")
    assert changed.returncode != 0 and "stage classifier was done with other settings" in changed.stderr


def test_a_stage_interrupted_continues_from_its_checkpoint(tmp_path):
    """The LM stage stopped by SIGINT (passed on to it by the pipeline) saves ckpt_last, and the next
    run resumes it from there."""
    import signal
    import time

    imdb_like(tmp_path / "imdb")
    work = tmp_path / "work"
    lm = [*TINY[:TINY.index("--classifier")], "max_iters=4000", "eval_interval=2000", "log_interval=5"]
    proc = subprocess.Popen([sys.executable, str(PIPELINE), "--data", str(tmp_path / "imdb"), "--work", str(work), *lm],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not any('"iter": 10,' in line for line in _lines(work / "lm" / "metrics.jsonl")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "stage lm stopped (exit 130)" in err, err[-2000:]
    record = json.loads((work / "pipeline.json").read_text())
    assert not record["stages"]["lm"]["done"] and record["stages"]["lm"]["runs"] == 1
    assert "saved" in err and (work / "lm" / "ckpt_last.safetensors").is_file()
    stopped_at = load_checkpoint(work / "lm" / "ckpt_last.safetensors").meta["iter_num"]
    again = run("--data", str(tmp_path / "imdb"), "--work", str(work), *TINY, "max_iters=30",
                "--lm", f"max_iters={stopped_at + 10}")  # (a shorter run than the one interrupted)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "lm.toml --resume" in again.stdout and again.stdout.count("done before") == 2  # tokenizer, corpus
    lm_entry = json.loads((work / "pipeline.json").read_text())["stages"]["lm"]
    assert lm_entry["done"] and lm_entry["runs"] == 2
    assert json.loads(_lines(work / "lm" / "metrics.jsonl")[-1])["iter"] == stopped_at + 10


def test_the_plan_with_ablations_lists_each_one_change(tmp_path):
    imdb_like(tmp_path / "imdb", 10, 10)
    listed = run("--data", str(tmp_path / "imdb"), "--work", str(tmp_path / "work"), "--ablations", "--list")
    assert listed.returncode == 0, listed.stderr
    names = [line.split(":")[0] for line in listed.stdout.splitlines() if line and not line.startswith(" ")]
    assert names == ["tokenizer", "corpus", "lm", "classifier", "tfidf", "nbsvm", "clf-head", "clf-head_tail",
                     "clf-scratch", "clf-epoch2", "corpus-gpt2", "lm-gpt2", "clf-gpt2", "lm-2x", "clf-lm-2x"]
    configs = tmp_path / "work" / "configs"
    assert 'long_text = "truncate"' in (configs / "clf-head_tail.toml").read_text()
    assert 'init_from = "scratch"' in (configs / "clf-scratch.toml").read_text()
    epoch2 = read_toml(configs / "clf-epoch2.toml")
    first = read_toml(configs / "classifier.toml")
    assert epoch2["init_from"] == str(tmp_path / "work" / "classifier")
    assert (epoch2["learning_rate"], epoch2["min_lr"]) == (first["learning_rate"] / 2, first["min_lr"] / 2)
    gpt2_lm, lm = read_toml(configs / "lm-gpt2.toml"), read_toml(configs / "lm.toml")
    assert gpt2_lm["data_dir"] == str(tmp_path / "work" / "lm-data-gpt2")
    step_cost = load_bench("imdb_pipeline").GPT2_STEP_COST
    assert gpt2_lm["max_iters"] == round(lm["max_iters"] / step_cost) < lm["max_iters"]  # the same time
    lm_2x = read_toml(configs / "lm-2x.toml")
    assert lm_2x["init_from"] == str(tmp_path / "work" / "lm") and lm_2x["max_iters"] == lm["max_iters"]
    assert lm_2x["seed"] != lm.get("seed", 1337)  # other windows than the first run's
    rates = ("learning_rate", "min_lr", "muon_lr")
    assert [lm_2x[k] for k in rates] == [lm[k] / 2 for k in rates]
    assert read_toml(configs / "clf-lm-2x.toml")["init_from"] == str(tmp_path / "work" / "lm-2x")


def test_only_runs_the_named_stages_and_nothing_before_them(tmp_path):
    imdb_like(tmp_path / "imdb", 60, 10)
    work = tmp_path / "work"
    done = run("--data", str(tmp_path / "imdb"), "--work", str(work), "--only", "tfidf")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "=== tfidf:" in done.stdout and "=== tokenizer" not in done.stdout
    assert list(json.loads((work / "pipeline.json").read_text())["stages"]) == ["tfidf"]
    assert not (work / "tokenizer").exists() and (work / "tfidf.json").is_file()


def test_a_second_pipeline_in_the_same_folder_is_a_one_line_error(tmp_path):
    imdb_like(tmp_path / "imdb", 10, 10)
    work = tmp_path / "work"
    work.mkdir()
    with hold_lock(work, "IMDb pipeline"):  # as a running pipeline holds it
        second = run("--data", str(tmp_path / "imdb"), "--work", str(work), "--only", "tfidf")
    assert second.returncode != 0 and "Traceback" not in second.stderr
    assert second.stderr.strip().splitlines()[-1].startswith(f"{work} is in use by another IMDb pipeline (pid ")
    assert not (work / "pipeline.json").exists() and not (work / "configs").exists()


def test_bad_settings_are_one_line_errors(tmp_path):
    missing = run("--data", str(tmp_path / "nowhere"), "--work", str(tmp_path / "work"))
    assert missing.returncode != 0 and "train.jsonl not found" in missing.stderr
    imdb_like(tmp_path / "imdb", 10, 10)
    bad = run("--data", str(tmp_path / "imdb"), "--work", str(tmp_path / "work"), "--lm", "n_layer")
    assert bad.returncode != 0 and "--lm takes KEY=VALUE, got 'n_layer'" in bad.stderr
    typo = run("--data", str(tmp_path / "imdb"), "--work", str(tmp_path / "work"), "--only", "lm-gtp2")
    assert typo.returncode != 0 and typo.stderr.strip().splitlines()[-1].startswith("--only: no stage 'lm-gtp2'")
    assert "(more with --ablations)" in typo.stderr
