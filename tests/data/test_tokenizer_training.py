"""A domain tokenizer and a leak-free LM corpus (issue 27).

``python -m minigpt tokenizer`` trains a byte-level BPE whose ids are transformers' ids for the same
folder; data prepared with it pretrains a model that comes back from its checkpoint with the same
tokenizer; a classifier trains from scratch on it; ``python -m minigpt data --input ... --texts_of
CONFIG`` holds the unlabelled texts and the classification training split, and no val or test text
(not even one that is also in the unlabelled file, or twice in the labelled one); a tokenizer that
is not a checkpoint's own is refused where the two meet. Tiny corpora (vocabulary 400), so it all
runs in seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from minigpt import MiniGPTError, load_model
from minigpt.cli import data as data_cli
from minigpt.cli import evaluate as evaluate_cli
from minigpt.cli import run_cli
from minigpt.cli import sample as sample_cli
from minigpt.cli import tokenizer as tokenizer_cli
from minigpt.config_schema import build_config
from minigpt.data.bpe import train_bpe
from minigpt.data.corpus import prepare_corpus
from minigpt.data.loader import load_meta, open_split
from minigpt.data.tokenizers import (EOT_TEXT, GPT2Tokenizer, HFTokenizer, StreamDecoder, same_tokenizer,
                                     tokenizer_from_meta)
from minigpt.loading import load_classifier
from minigpt.train.finetune import ClassifyConfig, finetune, load_splits, pretraining_texts
from minigpt.train.pretrain import PretrainConfig, train

WORDS = ["the", "film", "was", "great", "awful", "plot", "actors", "don't", "café", "naïve", "日本", "映画", "😀",
         "🎬👍", "<br /><br />", "!!", "1984", "...", "  ", "\t", "\n"]
TEXTS = ["Ünïcödé 日本語の映画 and emoji 😀🎬👍!", "<br /><br />A  double   space\t\ttabs\n\n\nnew lines   ",
         " leading space", "trailing spaces   ", "", "unseen: zyzzyva xylophone quixotic", "don't won't I'm",
         "x" * 50, "1234567890 3.14159", "\u200b\ufeff zero width", "a\r\nb"]
TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=2, eval_iters=1, progress=False, plot=False,
            device="cpu")


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def held_out(ws: Path) -> list[str]:
    """The val and test texts of clf.toml's split, as the classifier draws them."""
    _, val, test, _ = load_splits(build_config(ClassifyConfig, str(ws / "clf.toml"), []))
    return val.texts + test.texts


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """reviews.jsonl (60 reviews, 10 of them twice, as IMDb has duplicates) with a classification config
    splitting it 0.6/0.2/0.2; unsup.jsonl (texts under "body"), which also holds two of the val/test
    reviews (one with other surrounding whitespace); and tok/: a tokenizer trained on both by the
    command (its summary line in summary.txt)."""
    root = tmp_path_factory.mktemp("ws")
    rng = random.Random(0)
    rows = [{"text": f"review {i}: {words(rng, 20)}", "label": "pos" if i % 2 else "neg"} for i in range(60)]
    rows += rows[:10]
    (root / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / "clf.toml").write_text(f'task = "classify"\ntrain_file = "{root / "reviews.jsonl"}"\nlabels = "neg,pos"\n'
                                   f'split = "0.6,0.2,0.2"\nsplit_seed = 7\n', encoding="utf-8")
    leaked = held_out(root)[:2]
    unsup = [f"unsup {i}: {words(rng, 30)}" for i in range(80)]
    unsup[10:10] = [leaked[0], f"  {leaked[1]}\n"]
    (root / "unsup.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in unsup), encoding="utf-8")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_cli(tokenizer_cli.main, ["--input", str(root / "unsup.jsonl"), "--text_field", "body", "--texts_of",
                                            str(root / "clf.toml"), "--vocab_size", "400", "--out", str(root / "tok"),
                                            "--no_progress"]) == 0
    (root / "summary.txt").write_text(out.getvalue(), encoding="utf-8")
    return root


def corpus(ws: Path) -> list[str]:
    """The documents of the LM corpus, in order: the unlabelled ones, then the training split (each
    text and a newline), less any that is a val or test text."""
    unsup = [json.loads(line)["body"] for line in (ws / "unsup.jsonl").read_text(encoding="utf-8").splitlines()]
    train_part = load_splits(build_config(ClassifyConfig, str(ws / "clf.toml"), []))[0].texts
    held = {t.strip() for t in held_out(ws)}
    return [t for t in [*unsup, *(t + "\n" for t in train_part)] if t.strip() not in held]


@pytest.fixture(scope="module")
def lm_data(ws) -> Path:
    """The LM corpus: unsup.jsonl plus the training texts of clf.toml, with the trained tokenizer."""
    assert run_cli(data_cli.main, ["--input", str(ws / "unsup.jsonl"), "--text_field", "body", "--texts_of",
                                   str(ws / "clf.toml"), "--tokenizer", str(ws / "tok"), "--out", str(ws / "lm"),
                                   "--workers", "1", "--no_progress"]) == 0
    return ws / "lm"


@pytest.fixture(scope="module")
def lm_run(ws, lm_data) -> Path:
    """A tiny language model pretrained on the LM corpus."""
    train(PretrainConfig(data_dir=str(lm_data), out_dir=str(ws / "run"), max_iters=2, eval_interval=2, **TINY))
    return ws / "run"


def decoded_documents(data: Path) -> list[str]:
    """Every document of a prepared folder (both splits), decoded; each begins with the end-of-text token."""
    meta = load_meta(data)
    tok = tokenizer_from_meta(meta["tokenizer"])
    docs = []
    for split in ("train", "val"):
        shards = open_split(data, split, meta)
        text = tok.decode(shards.read(0, len(shards)).astype(np.int64).tolist())
        assert text.startswith(EOT_TEXT)
        docs += text.split(EOT_TEXT)[1:]
    return docs


def test_the_trained_ids_are_transformers_ids_and_decode_back(ws):
    auto = AutoTokenizer.from_pretrained(ws / "tok")
    ours = HFTokenizer.from_folder(ws / "tok")
    assert ours.vocab_size == len(auto) <= 400
    assert ours.eot_token == auto.eos_token_id == auto.convert_tokens_to_ids(EOT_TEXT) == 0
    assert auto.pad_token == "<|pad|>" and auto.bos_token is None and ours.bos_token is None
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == auto(text)["input_ids"], text
        assert ours.decode(ids) == auto.decode(ids) == text
        stream = StreamDecoder(ours)
        assert "".join(stream.feed(i) for i in ids) + stream.flush() == text  # a token may hold part of a character
    special = f"one{EOT_TEXT}two"
    assert ours.encode(special, allow_special=True) == auto(special)["input_ids"]
    assert ours.encode(special) == auto(special, split_special_tokens=True)["input_ids"]  # typed text stays text
    # the command wrote what the library trains on the same documents
    assert (ws / "tok" / "tokenizer.json").read_text(encoding="utf-8") == train_bpe(corpus(ws), 400)


def test_the_summary_compares_tokens_per_document_with_gpt2(ws):
    docs, ours, gpt2 = corpus(ws), HFTokenizer.from_folder(ws / "tok"), GPT2Tokenizer()
    mean = lambda tok: sum(len(tok.encode(d)) for d in docs) / len(docs)  # noqa: E731
    line = (ws / "summary.txt").read_text(encoding="utf-8").strip()
    size = sum(len(d.encode()) for d in docs)
    assert f"vocabulary {ours.vocab_size:,} (2 special: <|endoftext|>, <|pad|>)" in line
    assert f"learned from {size / 1e6:,.1f} MB ({len(docs):,} documents)" in line
    assert f"the first {len(docs):,} documents average {mean(ours):,.1f} tokens (GPT-2: {mean(gpt2):,.1f}" in line


def test_the_lm_corpus_holds_unsup_and_training_texts_and_no_val_or_test_text(ws, lm_data, tmp_path):
    train_part = load_splits(build_config(ClassifyConfig, str(ws / "clf.toml"), []))[0].texts
    unsup = [json.loads(line)["body"] for line in (ws / "unsup.jsonl").read_text(encoding="utf-8").splitlines()]
    held = held_out(ws)
    docs = decoded_documents(lm_data)
    assert sorted(docs) == sorted(corpus(ws))
    assert not any(t in d for t in held for d in docs)
    left_out = [t for t in [*unsup, *train_part] if t.strip() in {h.strip() for h in held}]
    assert len(left_out) > 2  # the two copied into unsup.jsonl, and duplicates on both sides of the split
    assert load_meta(lm_data)["excluded_documents"] == len(left_out) == len(unsup) + len(train_part) - len(docs)
    assert same_tokenizer(load_meta(lm_data)["tokenizer"], HFTokenizer.from_folder(ws / "tok").to_meta())
    # byte for byte the same with more workers
    assert run_cli(data_cli.main, ["--input", str(ws / "unsup.jsonl"), "--text_field", "body", "--texts_of",
                                   str(ws / "clf.toml"), "--tokenizer", str(ws / "tok"), "--out", str(tmp_path / "lm2"),
                                   "--workers", "2", "--no_progress"]) == 0
    files = sorted(p.name for p in lm_data.iterdir() if p.is_file() and not p.name.startswith("."))
    assert files == sorted(p.name for p in (tmp_path / "lm2").iterdir() if p.is_file() and not p.name.startswith("."))
    assert all((lm_data / f).read_bytes() == (tmp_path / "lm2" / f).read_bytes() for f in files)


def test_the_documents_are_part_of_what_a_preparation_resumes(ws, tmp_path):
    """A preparation stopped early (here by a bad record) continues only with the same documents and
    tokenizer: another split of the classification file, or a tokenizer retrained into the same
    folder, is other input."""
    other = tmp_path / "other.toml"
    other.write_text((ws / "clf.toml").read_text(encoding="utf-8").replace("split_seed = 7", "split_seed = 8"),
                     encoding="utf-8")
    same, changed = pretraining_texts(str(ws / "clf.toml"))[0], pretraining_texts(str(other))[0]
    assert sorted(same) != sorted(changed)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "fine"}\n{oops\n', encoding="utf-8")
    tok = Path(shutil.copytree(ws / "tok", tmp_path / "tok"))

    def prepare(documents):
        prepare_corpus(bad, tmp_path / "lm", str(tok), progress=False, text_field="body", documents=documents)

    with pytest.raises(MiniGPTError, match="bad.jsonl:2: not valid JSON"):
        prepare(same)
    assert (tmp_path / "lm" / ".prepare.json").is_file()
    with pytest.raises(MiniGPTError, match="bad.jsonl:2: not valid JSON"):  # the same preparation: it continues
        prepare(same)
    with pytest.raises(MiniGPTError, match="holds an unfinished preparation of other input or options"):
        prepare(changed)
    (tok / "tokenizer.json").write_text(train_bpe(["other text"] * 3, 300), encoding="utf-8")  # retrained in place
    with pytest.raises(MiniGPTError, match="holds an unfinished preparation of other input or options"):
        prepare(same)


def test_a_model_pretrained_on_it_comes_back_with_it(ws, lm_data, lm_run, capsys):
    model, tok = load_model(lm_run)
    auto = AutoTokenizer.from_pretrained(ws / "tok")
    assert tok.to_meta() == HFTokenizer.from_folder(ws / "tok").to_meta() == load_meta(lm_data)["tokenizer"]
    assert model.config.vocab_size == tok.vocab_size == len(auto)
    for text in TEXTS:
        assert tok.encode(text) == auto(text)["input_ids"]
    assert run_cli(evaluate_cli.main, ["--ckpt", str(lm_run), "--data", str(lm_data), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert run_cli(sample_cli.main, ["--ckpt", str(lm_run), "--prompt", "the film 😀", "--greedy", "--max_new_tokens",
                                     "4", "--no_eos_stop", "--device", "cpu", "--no-stream"]) == 0
    assert capsys.readouterr().out.startswith("the film 😀")


def test_a_classifier_trains_from_scratch_on_it(ws, tmp_path):
    cfg = build_config(ClassifyConfig, str(ws / "clf.toml"), [f"--tokenizer={ws / 'tok'}", "--init_from=scratch"])
    finetune(dataclasses.replace(cfg, out_dir=str(tmp_path / "clf"), max_iters=2, eval_interval=2,
                                 **{**TINY, "block_size": 32}))
    model, tok, _ = load_classifier(tmp_path / "clf")
    reference = HFTokenizer.from_folder(ws / "tok")
    assert same_tokenizer(tok.to_meta(), reference.to_meta()) and model.backbone.config.vocab_size == reference.vocab_size
    assert [tok.encode(t) for t in TEXTS] == [reference.encode(t) for t in TEXTS]


def test_a_tokenizer_that_is_not_the_checkpoints_own_is_refused(ws, lm_data, lm_run, tmp_path):
    """Another trained tokenizer (another vocabulary) beside a model pretrained with the first one:
    continued pretraining on data prepared with it, and a classifier given it, are errors; the
    model's own tokenizer named by its path is accepted."""
    assert run_cli(tokenizer_cli.main, ["--input", str(ws / "unsup.jsonl"), "--text_field", "body", "--vocab_size",
                                        "300", "--out", str(tmp_path / "tok300"), "--no_progress"]) == 0
    prepare_corpus(ws / "unsup.jsonl", tmp_path / "lm300", str(tmp_path / "tok300"), progress=False, text_field="body")
    n, n300 = (HFTokenizer.from_folder(path).vocab_size for path in (ws / "tok", tmp_path / "tok300"))
    with pytest.raises(MiniGPTError, match=rf"uses a hf tokenizer that differs from the one .*lm300 was prepared with "
                                           rf"\(hf, {n300} tokens against its {n}\)"):
        train(PretrainConfig(data_dir=str(tmp_path / "lm300"), out_dir=str(tmp_path / "cont"), init_from=str(lm_run),
                             max_iters=1, **TINY))
    base = dict(train_file=str(ws / "reviews.jsonl"), labels="neg,pos", split="0.6,0.2,0.2", init_from=str(lm_run),
                max_iters=1, eval_interval=1, progress=False, plot=False, device="cpu", batch_size=2, eval_iters=1)
    with pytest.raises(MiniGPTError, match=rf"tokenizer .*tok300 \({n300} tokens\) is not the tokenizer of init_from "
                                           rf".*run \(hf, {n} tokens\)"):
        finetune(ClassifyConfig(out_dir=str(tmp_path / "clf300"), tokenizer=str(tmp_path / "tok300"), **base))
    finetune(ClassifyConfig(out_dir=str(tmp_path / "clf"), tokenizer=str(ws / "tok"), **base))
    assert same_tokenizer(load_classifier(tmp_path / "clf")[1].to_meta(), HFTokenizer.from_folder(ws / "tok").to_meta())
