"""Classification building blocks: padding-correct pooling, head swapping, freezing/LoRA, metrics."""

import copy
import json
import random

import numpy as np
import pytest
import torch

from minigpt import GPT, GPTConfig, MiniGPTError
from minigpt.heads import ClassificationHead, pool
from minigpt.lora import apply_lora, merge_lora, unmerge_lora
from minigpt.metrics import classification_report, confusion_matrix, format_report
from minigpt.model import GPTClassifier


def classifier(backend="sdpa", pooling="last", hidden=None, seed=0):
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=60, block_size=24, n_layer=2, n_head=2, n_embd=16, attn_backend=backend))
    head = ClassificationHead(16, 3, pooling=pooling, hidden=hidden)
    with torch.no_grad():
        head.out.weight.normal_(0, 1)
    return GPTClassifier.from_gpt(gpt, head).eval()


@pytest.mark.parametrize("backend", ["sdpa", "manual"])
@pytest.mark.parametrize("pooling", ["last", "mean", "first"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_equals_each_example_alone(backend, pooling, side):
    model = classifier(backend, pooling, hidden=8)
    texts = [torch.randint(1, 60, (n,)).tolist() for n in (5, 12, 1, 9)]
    T = max(map(len, texts))
    ids = torch.zeros(len(texts), T, dtype=torch.long)
    mask = torch.zeros(len(texts), T, dtype=torch.long)
    for row, t in enumerate(texts):
        sl = slice(0, len(t)) if side == "right" else slice(T - len(t), T)
        ids[row, sl], mask[row, sl] = torch.tensor(t), 1
    batched, _ = model(ids, mask)
    for row, t in enumerate(texts):
        alone, _ = model(torch.tensor([t]))
        torch.testing.assert_close(batched[row], alone[0], atol=1e-5, rtol=0)


def test_pooling_reads_real_tokens_only():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).view(2, 4, 1)  # value = position (+4 in row 1)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    assert pool(hidden, mask, "last").flatten().tolist() == [2.0, 7.0]
    assert pool(hidden, mask, "first").flatten().tolist() == [0.0, 5.0]
    assert pool(hidden, mask, "mean").flatten().tolist() == [1.0, 6.0]
    with pytest.raises(MiniGPTError, match="pooling"):
        pool(hidden, mask, "max")


def test_head_swap_leaves_backbone_untouched_and_heads_reload(tmp_path):
    model = classifier()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    ids = torch.randint(0, 60, (3, 10))
    spam_logits, _ = model(ids)
    model.add_head("topic", ClassificationHead(16, 5, pooling="mean"))
    topic_logits, _ = model(ids)
    assert topic_logits.shape == (3, 5)
    model.use_head("default")
    torch.testing.assert_close(model(ids)[0], spam_logits, atol=0, rtol=0)
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    model.save_head(tmp_path / "topic.safetensors", "topic", extra={"id2label": ["a", "b", "c", "d", "e"]})
    fresh = classifier()  # same backbone weights (same seed), different head
    meta = fresh.load_head(tmp_path / "topic.safetensors", "topic")
    assert meta["id2label"][0] == "a"
    torch.testing.assert_close(fresh(ids)[0], topic_logits, atol=0, rtol=0)
    with pytest.raises(MiniGPTError, match="no 'minigpt_head' metadata"):
        from minigpt.checkpoint import save_tensors
        save_tensors(tmp_path / "x.safetensors", {"a": torch.zeros(1)})
        fresh.load_head(tmp_path / "x.safetensors")


def changed_after_steps(model, steps=1):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    model.train()
    ids = torch.randint(0, 60, (4, 10))
    for _ in range(steps):
        _, loss = model(ids, labels=torch.tensor([0, 1, 2, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def test_head_only_training_changes_only_the_head():
    model = classifier(hidden=8)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    changed = changed_after_steps(model)
    assert changed == {n for n, _ in model.named_parameters() if n.startswith("heads.")}


def test_lora_changes_only_adapters_and_head_and_merges_exactly():
    model = classifier()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    n_before = sum(p.numel() for p in model.parameters())
    wrapped = apply_lora(model.backbone, targets=("c_attn", "attn.c_proj"), rank=4, alpha=8)
    assert wrapped == ["h.0.attn.c_attn", "h.0.attn.c_proj", "h.1.attn.c_attn", "h.1.attn.c_proj"]
    added = sum(p.numel() for p in model.parameters()) - n_before
    # rank r on a layer with `in` inputs and `out` outputs adds r·(in + out): c_attn 16 -> 48, c_proj 16 -> 16
    assert added == 2 * (4 * (16 + 48) + 4 * (16 + 16))
    assert len(apply_lora(classifier().backbone, targets=("c_proj",), rank=2)) == 4  # attention and MLP
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("heads.") for n in trainable)
    # step 1: B starts at zero, so A gets no gradient yet; only the B's and the head move
    first = changed_after_steps(copy.deepcopy(model), steps=1)
    assert first == {n for n in trainable if "lora_A" not in n}
    assert changed_after_steps(model, steps=2) == trainable
    model.eval()
    ids = torch.randint(0, 60, (3, 10))
    unmerged, _ = model(ids)
    merge_lora(model)
    merged, _ = model(ids)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    unmerge_lora(model)
    torch.testing.assert_close(model(ids)[0], unmerged, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(3))
def test_metrics_match_scikit_learn(seed):
    sk = pytest.importorskip("sklearn.metrics")
    rng = random.Random(seed)
    names = ["neg", "neu", "pos", "never"]
    y_true = [rng.randrange(4) for _ in range(200)]
    y_pred = [rng.choice([0, 1, 2]) for _ in range(200)]  # class 3 is never predicted
    ours = classification_report(y_true, y_pred, names)
    ref = sk.classification_report(y_true, y_pred, labels=range(4), target_names=names, output_dict=True, zero_division=0)
    for key in [*names, "macro avg", "weighted avg"]:
        for metric in ("precision", "recall", "f1-score", "support"):
            assert ours[key][metric] == pytest.approx(ref[key][metric], abs=1e-12), (key, metric)
    assert ours["accuracy"] == pytest.approx(ref["accuracy"])
    assert np.array_equal(confusion_matrix(y_true, y_pred, 4), sk.confusion_matrix(y_true, y_pred, labels=range(4)))
    assert "macro avg" in format_report(ours, names)


# ----------------------------------------------------------------------------- labelled data

from minigpt.labelled import class_weights, label_map, pad_batch, read_labelled, stratified_split  # noqa: E402

REPO_DATA = __import__("pathlib").Path(__file__).resolve().parents[1] / "data"


def test_reads_the_bundled_sms_spam_collection_completely():
    data = read_labelled(REPO_DATA / "sms_spam" / "SMSSpamCollection", text_column=1, label_column=0, fmt="tsv", header=False)
    assert len(data.texts) == 5574 and data.labels.count("spam") == 747 and data.labels.count("ham") == 4827
    assert label_map(data.labels) == ["ham", "spam"]


def test_csv_tsv_jsonl_and_bad_rows(tmp_path):
    (tmp_path / "a.csv").write_text('label,review\n1,"good, really ""good"""\n0,bad\n0,\n', encoding="utf-8")
    with pytest.raises(MiniGPTError, match=r"a.csv:4: missing text"):
        read_labelled(tmp_path / "a.csv", "review", "label")
    data = read_labelled(tmp_path / "a.csv", "review", "label", skip_bad_rows=True)
    assert data.texts == ['good, really "good"', "bad"] and data.skipped == [4]
    with pytest.raises(MiniGPTError, match=r"no text column 'text'; the columns are \['label', 'review'\]"):
        read_labelled(tmp_path / "a.csv")
    (tmp_path / "b.tsv").write_text("sentence\tlabel\nit 's fine \t1\n", encoding="utf-8")
    assert read_labelled(tmp_path / "b.tsv", "sentence", "label").texts == ["it 's fine"]
    (tmp_path / "c.jsonl").write_text('{"text": "hi", "label": "greet"}\n{"text": "x"}\n', encoding="utf-8")
    with pytest.raises(MiniGPTError, match=r"c.jsonl:2: no key 'label'"):
        read_labelled(tmp_path / "c.jsonl")
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(MiniGPTError, match="empty"):
        read_labelled(tmp_path / "empty.csv")
    with pytest.raises(MiniGPTError, match="at least 2 classes"):
        label_map(["spam", "spam"])
    with pytest.raises(MiniGPTError, match="not among the known classes"):
        label_map(["a", "b", "c"], given=["a", "b"])


def test_stratified_split_keeps_proportions_and_is_seeded():
    labels = ["a"] * 700 + ["b"] * 300
    train, val, test = stratified_split(labels, (0.7, 0.1, 0.2), seed=1)
    assert sorted(train + val + test) == list(range(1000))
    for part, size in ((train, 700), (val, 100), (test, 200)):
        assert len(part) == size and sum(labels[i] == "b" for i in part) == round(0.3 * size)
    assert stratified_split(labels, (0.7, 0.1, 0.2), seed=1)[2] == test


def test_class_weights_match_scikit_learn():
    utils = pytest.importorskip("sklearn.utils")
    y = [0] * 50 + [1] * 10 + [2] * 40
    ref = utils.class_weight.compute_class_weight("balanced", classes=np.arange(3), y=np.array(y))
    assert class_weights(y, 3).tolist() == pytest.approx(ref.tolist())


def test_pad_batch_truncates_head_or_tail():
    ids, mask = pad_batch([[1, 2, 3, 4, 5], [6]], max_length=3)
    assert ids.tolist() == [[1, 2, 3], [6, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, _ = pad_batch([[1, 2, 3, 4, 5]], max_length=3, truncate="tail")
    assert ids.tolist() == [[3, 4, 5]]


# ----------------------------------------------------------------------------- training through the shared loop

from minigpt.checkpoint import load_checkpoint  # noqa: E402
from minigpt.config import ClassifyConfig, TrainConfig  # noqa: E402
from minigpt.trainer import BEST, Distributed, Task, fit  # noqa: E402


def test_early_stopping_restores_the_best_weights(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    script = iter([0.50, 0.60, 0.58, 0.61, 0.60, 0.59, 0.605, 0.70])  # best at the 4th evaluation
    weights_at_eval = []

    def evaluate(m):
        weights_at_eval.append(net.weight.detach().clone())
        return {"val_accuracy": next(script)}

    x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    task = Task(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), batch=lambda it, micro: (x, y),
                loss=lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]), evaluate=evaluate,
                score="val_accuracy", higher_is_better=True, meta={}, units_per_step=8, unit="ex", patience=3,
                restore_best=True)
    cfg = TrainConfig(out_dir=str(tmp_path), max_iters=100, eval_interval=2, log_interval=1, progress=False,
                      plot=False, device="cpu", warmup_iters=0)
    summary = fit(task, cfg, Distributed(enabled=False), torch.device("cpu"), torch.float32)
    # evaluations at iterations 0, 2, 4, 6, 8, 10, 12: the 7th (0.605) is the third without beating 0.61
    assert summary["stopped_early"] and summary["iter_num"] == 12 and summary["best_score"] == 0.61
    assert load_checkpoint(tmp_path / BEST).meta["iter_num"] == 6
    assert torch.equal(net.weight, weights_at_eval[3])


def test_finetune_end_to_end_and_predict(tmp_path):
    from minigpt.classify import finetune, load_classifier

    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(300):
        label = rng.choice(["pos", "neg"])
        word = rng.choice(["great", "lovely", "superb"] if label == "pos" else ["awful", "dull", "bad"])
        rows.append(f"the film was {word} indeed {i % 7},{label}")
    (tmp_path / "reviews.csv").write_text("\n".join(rows), encoding="utf-8")
    cfg = ClassifyConfig(task="classify", train_file=str(tmp_path / "reviews.csv"), out_dir=str(tmp_path / "out"),
                         init_from="scratch", tokenizer="char", n_layer=1, n_head=2, n_embd=32, block_size=48,
                         batch_size=16, max_iters=60, eval_interval=20, learning_rate=3e-3, warmup_iters=5,
                         progress=False, plot=True, device="cpu", strategy="full", pooling="mean")
    summary = finetune(cfg)
    assert summary["test_accuracy"] >= 0.9
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["split"] == "test" and report["n"] == 60 and report["accuracy"] == summary["test_accuracy"]
    assert (tmp_path / "out" / "confusion.png").stat().st_size > 5_000
    model, tok, meta = load_classifier(tmp_path / "out")
    assert meta["labels"] == ["neg", "pos"]


@pytest.mark.parametrize("content,kw,message", [
    ("text,label\nhello,a\n", dict(text_column="body"), "no text column 'body'"),
    ("", {}, "empty"),
    ("text,label\nhello,a\nworld,a\n", {}, "at least 2 classes"),
])
def test_finetune_bad_input(tmp_path, content, kw, message):
    from minigpt.classify import finetune

    (tmp_path / "d.csv").write_text(content, encoding="utf-8")
    cfg = ClassifyConfig(task="classify", train_file=str(tmp_path / "d.csv"), out_dir=str(tmp_path / "o"),
                         init_from="scratch", progress=False, device="cpu", **kw)
    with pytest.raises(MiniGPTError, match=message):
        finetune(cfg)


def test_long_texts_are_truncated_to_max_length_and_counted(tmp_path):
    from minigpt.classify import Encoded
    from minigpt.labelled import LabelledText
    from minigpt.tokenizer import CharTokenizer

    data = LabelledText(["a" * 100, "b" * 3], ["x", "y"], "mem", [1, 2])
    enc = Encoded(data, CharTokenizer(["a", "b"]), ["x", "y"], max_length=10, truncate="tail")
    ids, mask, labels = enc.batch([0, 1], torch.device("cpu"))
    assert enc.n_truncated == 1 and ids.shape == (2, 10) and mask.sum().item() == 13 and labels.tolist() == [0, 1]


def test_label_word_scores_equal_sequence_log_probabilities():
    from minigpt.classify import few_shot_prompts, score_label_words
    from minigpt.tokenizer import CharTokenizer

    tok = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz :\n"))
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    prompts = few_shot_prompts(["good day"], [("bad", "no")])
    assert prompts == ["Message: bad\nLabel: no\n\nMessage: good day\nLabel:"]
    prompts = [p.lower() for p in prompts]
    scores = score_label_words(gpt, tok, prompts, ["yes", "no"], torch.device("cpu"))
    for k, word in enumerate(["yes", "no"]):
        seq = tok.encode(prompts[0] + " " + word)
        logits, _ = gpt(torch.tensor([seq[:-1]]))
        lp = torch.log_softmax(logits[0], -1)
        n = len(" " + word)
        expected = sum(lp[len(seq) - 1 - n + j, seq[len(seq) - n + j]].item() for j in range(n))
        assert scores[0, k].item() == pytest.approx(expected, abs=1e-4)


def test_calibration_removes_a_constant_label_preference():
    from minigpt.classify import calibrate_scores

    gen = torch.Generator().manual_seed(0)
    evidence = torch.randn(200, 3, generator=gen)  # what the texts say
    bias = torch.tensor([4.0, 0.0, -1.0])  # what the LM prefers regardless of the text
    log_p = (evidence + bias).log_softmax(-1)
    assert (log_p.argmax(-1) == 0).float().mean() > 0.9  # uncalibrated: nearly always label 0
    content_free = (torch.zeros(2, 3) + bias).log_softmax(-1)  # no evidence at all
    calibrated = calibrate_scores(log_p, content_free)
    assert torch.equal(calibrated.argmax(-1), evidence.argmax(-1))
    # in closed form: log_softmax(evidence) up to a per-row constant
    diff = calibrated - evidence.log_softmax(-1)
    assert torch.allclose(diff, diff[:, :1].expand_as(diff), atol=1e-5)

