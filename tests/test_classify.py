"""Classification building blocks: padding-correct pooling, head swapping, freezing/LoRA, metrics."""

import copy
import random

import numpy as np
import pytest
import torch

from minigpt import GPT, GPTConfig, MiniGPTError
from minigpt.heads import ClassificationHead, pool
from minigpt.lora import apply_lora, merge_lora, unmerge_lora
from minigpt.metrics import EarlyStopping, classification_report, confusion_matrix, format_report
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


def test_early_stopping_with_a_scripted_metric():
    model = torch.nn.Linear(1, 1, bias=False)
    stopper = EarlyStopping(patience=3, mode="max")
    script = [0.50, 0.60, 0.58, 0.61, 0.60, 0.59, 0.605, 0.70]
    stopped_at = None
    for i, value in enumerate(script):
        with torch.no_grad():
            model.weight.fill_(value)
        if stopper.update(value, model):
            stopped_at = i
            break
    assert stopped_at == 6 and stopper.best == 0.61 and stopper.best_step == 3
    stopper.restore(model)
    assert model.weight.item() == pytest.approx(0.61)


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
