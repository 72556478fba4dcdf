"""Texts longer than a classifier reads at once: head+tail truncation and sliding windows whose
logits are pooled, checked against loops written here, at training and at prediction time."""

import json
import random

import pytest
import torch

from minigpt import GPTConfig, MiniGPTError
from minigpt.data.labelled import EncodedTexts, LabelledText
from minigpt.data.padding import LongText, truncate, windows
from minigpt.data.tokenizers import CharTokenizer
from minigpt.infer.predict import classify_texts, pool_windows, predict_logits
from minigpt.loading import load_classifier
from minigpt.model.heads import ClassificationHead
from minigpt.model.model import GPTBackbone, GPTClassifier
from minigpt.train.finetune import ClassifyConfig, finetune

CPU = torch.device("cpu")


def test_head_tail_keeps_the_first_and_last_tokens():
    seq = list(range(20))
    assert truncate([seq], 8, "head_tail", 3) == [[0, 1, 2, 15, 16, 17, 18, 19]]
    assert truncate([seq[:8], seq[:5]], 8, "head_tail", 3) == [seq[:8], seq[:5]]  # short enough: untouched
    for head in range(0, 8):
        kept = truncate([seq], 8, "head_tail", head)[0]
        assert kept == seq[:head] + seq[20 - (8 - head):] and len(kept) == 8


@pytest.mark.parametrize("n,length,stride", [(5, 8, 3), (8, 8, 4), (9, 8, 4), (20, 8, 3), (21, 8, 7), (30, 6, 1)])
def test_windows_cover_the_text_with_a_fixed_stride_and_end_at_its_end(n, length, stride):
    seq = list(range(100, 100 + n))
    got = windows(seq, length, stride)
    expected, start = [], 0  # a loop: windows every `stride` until one reaches the end, then one flush with it
    if n <= length:
        expected = [seq]
    else:
        while start + length < n:
            expected.append(seq[start: start + length])
            start += stride
        expected.append(seq[n - length:])
    assert got == expected and all(len(w) == min(n, length) for w in got)
    assert sorted(set(t for w in got for t in w)) == seq


def test_every_window_starts_with_the_bos_token_when_the_texts_do():
    rule = LongText(6, long_text="windows", window_stride=3)
    bos = 99
    pieces = rule.pieces([bos, *range(12)], bos)
    assert all(p[0] == bos and len(p) <= 6 for p in pieces)
    assert [p[1:] for p in pieces] == windows(list(range(12)), 5, 3)
    assert rule.pieces([bos, 1, 2], bos) == [[bos, 1, 2]]


def tiny_classifier(seed=0, vocab=40, n_classes=3):
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=vocab, block_size=32, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    return GPTClassifier(GPTBackbone(config), ClassificationHead(16, n_classes, "last", None, 0.0)).eval()


TOK = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz ")


def encoded(texts, rule):
    return EncodedTexts(LabelledText(texts, ["x"] * len(texts), "mem"), TOK, ["x", "y", "z"], rule)


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_pooled_logits_equal_each_window_read_alone(pool):
    model = tiny_classifier()
    rng = random.Random(1)
    texts = ["".join(rng.choice("abcdefgh ") for _ in range(rng.randint(3, 60))) for _ in range(9)]
    rule = LongText(12, long_text="windows", window_stride=5, window_pool=pool)
    got = predict_logits(model, encoded(texts, rule), 3, CPU, batch_size=4)  # (N, K), batched and padded
    for i, text in enumerate(texts):
        per_window = []
        for w in windows(TOK.encode(text), 12, 5):
            with torch.no_grad():
                per_window.append(model(torch.tensor([w]))[0][0])  # one window, no padding: (K,)
        stacked = torch.stack(per_window)
        expected = stacked.mean(0) if pool == "mean" else stacked.max(0).values
        torch.testing.assert_close(got[i], expected, atol=1e-5, rtol=1e-5)


def test_a_text_that_fits_in_one_window_gets_exactly_the_truncation_logits():
    model = tiny_classifier(seed=3)
    texts = ["abc def", "a", "the quick brown fox"]  # each at most 20 characters
    truncated = predict_logits(model, encoded(texts, LongText(20)), 3, CPU)
    windowed = predict_logits(model, encoded(texts, LongText(20, long_text="windows", window_stride=7)), 3, CPU)
    assert torch.equal(truncated, windowed)


def test_pool_windows_is_differentiable_and_matches_a_loop():
    logits = torch.randn(7, 3, requires_grad=True)
    text = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    for how in ("mean", "max"):
        pooled = pool_windows(logits, text, 4, how)
        rows = [logits[text == b] for b in range(4)]
        expected = torch.stack([r.mean(0) if how == "mean" else r.max(0).values for r in rows])
        torch.testing.assert_close(pooled, expected)
        pooled.sum().backward()
        assert logits.grad is not None and torch.isfinite(logits.grad).all()
        logits.grad = None


def test_document_start_puts_the_end_of_text_token_before_every_text_and_window():
    """GPT-2 has no BOS: with document_start each text, and each of its windows, starts with <|endoftext|>
    (as every document did in pretraining); the windows after it cover the text as windows() says."""
    from minigpt.data.tokenizers import GPT2Tokenizer

    tok = GPT2Tokenizer()
    texts = ["a short one", " ".join(f"word{i}" for i in range(40))]
    data = LabelledText(texts, ["x", "x"], "input")
    for long_text, max_length in (("windows", 12), ("truncate", 12), ("truncate", 64)):
        rule = LongText(max_length, long_text=long_text, window_stride=5, document_start=True)
        enc = EncodedTexts(data, tok, ["x"], rule)
        for i, text in enumerate(texts):
            ids = tok.encode(text)
            if len(ids) + 1 <= max_length:
                expected = [[tok.eot_token, *ids]]
            elif long_text == "windows":
                expected = [[tok.eot_token, *w] for w in windows(ids, max_length - 1, 5)]
            else:
                expected = [[tok.eot_token, *ids[:max_length - 1]]]
            assert enc.pieces(i) == expected
        plain = EncodedTexts(data, tok, ["x"], LongText(max_length, long_text=long_text, window_stride=5))
        assert all(p[0] != tok.eot_token for i in range(2) for p in plain.pieces(i))


@pytest.mark.parametrize("long_text,truncate_", [("windows", "head"), ("truncate", "head_tail")])
def test_training_and_prediction_read_long_texts_the_same_way(tmp_path, long_text, truncate_):
    """The test report written at the end of training equals what the saved classifier predicts
    for those texts through classify_texts (python -m minigpt classify), under the stored rule."""
    rng = random.Random(0)
    rows = []
    for _ in range(200):
        label = rng.choice(["pos", "neg"])
        filler = " ".join(rng.choice(["plot", "cast", "scene", "music"]) for _ in range(rng.randint(2, 12)))
        word = rng.choice(["great", "superb"] if label == "pos" else ["awful", "dull"])
        rows.append({"text": f"{filler} {word} {filler}" if long_text == "windows" else f"{word} {filler} end",
                     "label": label})
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = ClassifyConfig(task="classify", train_file=str(path), out_dir=str(tmp_path / "out"), init_from="scratch",
                         tokenizer="char", n_layer=1, n_head=2, n_embd=32, block_size=48, max_length=24,
                         long_text=long_text, window_stride=10, truncate=truncate_, head_tokens=8,
                         batch_size=16, max_iters=40, eval_interval=20, learning_rate=3e-3, warmup_iters=5,
                         progress=False, plot=False, device="cpu",
                         pooling="concat" if long_text == "windows" else "mean")  # concat's 3C head saved and loaded
    summary = finetune(cfg)
    model, tok, meta = load_classifier(tmp_path / "out")
    assert LongText.from_meta(meta).to_meta() == cfg.long_text_rule(24).to_meta()
    assert meta.get("window_stride") == (10 if long_text == "windows" else None)  # only the settings that apply
    assert meta.get("head_tokens") == (8 if long_text == "truncate" else None)
    from minigpt.data.labelled import stratified_split
    test_rows = [rows[i] for i in stratified_split([r["label"] for r in rows], [0.7, 0.1, 0.2], 123)[2]]
    labels, _ = classify_texts(model, tok, [r["text"] for r in test_rows], meta, CPU)
    accuracy = sum(p == r["label"] for p, r in zip(labels, test_rows)) / len(test_rows)
    assert accuracy == pytest.approx(summary["test_accuracy"])
    assert sum(len(tok.encode(r["text"])) > 24 for r in test_rows) > len(test_rows) // 2  # the rule mattered


@pytest.mark.parametrize("kw,message", [
    ({"long_text": "windows", "window_stride": 16}, "window_stride=16 must be from 1 to 15"),
    ({"long_text": "windows", "window_stride": 40}, "window_stride=40 must be from 1 to 15"),
    ({"truncate": "head_tail", "head_tokens": 16}, "head_tokens=16 must be from 1 to 15"),
    ({"long_text": "pages"}, "long_text must be one of truncate, windows; got 'pages'"),
    ({"window_pool": "median"}, "window_pool must be one of mean, max; got 'median'"),
])
def test_a_rule_that_cannot_fit_is_a_one_line_error(kw, message):
    with pytest.raises(MiniGPTError, match=message):
        LongText(16, **kw)
    with pytest.raises(MiniGPTError, match=message):
        ClassifyConfig(task="classify", train_file="x.csv", max_length=16, **kw)


def test_a_damaged_stored_rule_names_the_checkpoint():
    with pytest.raises(MiniGPTError, match="ckpt.pt: the stored window_stride -1 is not a whole number"):
        LongText.from_meta({"max_length": 8, "long_text": "windows", "window_stride": -1}, "ckpt.pt")
    with pytest.raises(MiniGPTError, match="ckpt.pt: window_stride=9 must be from 1 to 7"):
        LongText.from_meta({"max_length": 8, "long_text": "windows", "window_stride": 9}, "ckpt.pt")
    old = LongText.from_meta({"max_length": 8, "truncate": "tail"})  # metadata from before windows
    assert old == LongText(8, "tail") and old.to_meta() == {"max_length": 8, "truncate": "tail"}  # so they resume


def test_the_training_loss_is_the_cross_entropy_of_what_prediction_reads(tmp_path):
    """The loss the loop minimises is the cross-entropy of the pooled logits that prediction gives."""
    from torch.nn import functional as F

    from minigpt.train.finetune import classification_run, load_splits
    from minigpt.train.loop import Distributed

    rng = random.Random(2)
    rows = [{"text": " ".join(rng.choice(["plot", "cast", "good", "bad"]) for _ in range(rng.randint(2, 30))),
             "label": rng.choice(["pos", "neg"])} for _ in range(60)]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = ClassifyConfig(task="classify", train_file=str(tmp_path / "r.jsonl"), out_dir=str(tmp_path / "out"),
                         init_from="scratch", tokenizer="char", n_layer=1, n_head=2, n_embd=16, block_size=32,
                         max_length=20, long_text="windows", window_stride=7, device="cpu", dropout=0.0,
                         balance="class_weights")
    task, _, model, names, val_enc, _ = classification_run(cfg, Distributed(enabled=False), CPU)
    model.eval()
    rows_ = list(range(len(val_enc)))
    assert any(len(val_enc.pieces(i)) > 1 for i in rows_)
    train_labels = [names.index(x) for x in load_splits(cfg)[0].labels]
    weights = torch.tensor([len(train_labels) / (2 * train_labels.count(c)) for c in range(2)])  # "balanced"
    with torch.no_grad():
        loss = task.loss(model, val_enc.batch(rows_, CPU))
    logits = predict_logits(model, val_enc, 2, CPU, batch_size=3)  # other batches, other padding
    assert loss.item() == pytest.approx(F.cross_entropy(logits, val_enc.labels, weight=weights).item(), rel=1e-5)
