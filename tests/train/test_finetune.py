"""Fine-tuning a classifier through the shared loop: early stopping, end to end, errors, zero-shot scoring."""

import json
import random

import pytest
import torch

from minigpt import GPT, GPTConfig, MiniGPTError
from minigpt.checkpoint import BEST, load_checkpoint
from minigpt.data.tokenizers import CharTokenizer
from minigpt.infer.predict import calibrate_scores, few_shot_prompts, score_label_words
from minigpt.loading import load_classifier
from minigpt.train.finetune import ClassifyConfig, finetune
from minigpt.train.loop import Distributed, Task, fit
from minigpt.train.pretrain import PretrainConfig



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
    cfg = PretrainConfig(out_dir=str(tmp_path), max_iters=100, eval_interval=2, log_interval=1, progress=False,
                      plot=False, device="cpu", warmup_iters=0)
    summary = fit(task, cfg, Distributed(enabled=False), torch.device("cpu"), torch.float32)
    # evaluations at iterations 0, 2, 4, 6, 8, 10, 12: the 7th (0.605) is the third without beating 0.61
    assert summary["stopped_early"] and summary["iter_num"] == 12 and summary["best_val_accuracy"] == 0.61
    assert load_checkpoint(tmp_path / BEST).meta["iter_num"] == 6
    assert torch.equal(net.weight, weights_at_eval[3])


def test_finetune_end_to_end_and_predict(tmp_path):
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


def test_epochs_set_the_steps_without_changing_the_config(tmp_path):
    rows = ["text,label"] + [f"{'good' if i % 2 else 'bad'} {i},{'pos' if i % 2 else 'neg'}" for i in range(50)]
    (tmp_path / "d.csv").write_text("\n".join(rows), encoding="utf-8")
    cfg = ClassifyConfig(train_file=str(tmp_path / "d.csv"), out_dir=str(tmp_path / "out"), init_from="scratch",
                         tokenizer="char", n_layer=1, n_head=1, n_embd=8, block_size=16, batch_size=7, epochs=2.0,
                         eval_interval=100, progress=False, plot=False, device="cpu", split="0.7,0.3")
    summary = finetune(cfg)
    assert summary["iter_num"] == round(2.0 * 35 / 7) == 10  # 2 passes over 35 training texts, 7 a step
    assert cfg.max_iters == 2000  # the caller's config is left as it was
    assert load_checkpoint(tmp_path / "out" / "ckpt_last.safetensors").meta["train_config"]["max_iters"] == 10


@pytest.mark.parametrize("content,kw,message", [
    ("text,label\nhello,a\n", dict(text_column="body"), "no text column 'body'"),
    ("", {}, "empty"),
    ("text,label\nhello,a\nworld,a\n", {}, "at least 2 classes"),
])
def test_finetune_bad_input(tmp_path, content, kw, message):
    (tmp_path / "d.csv").write_text(content, encoding="utf-8")
    cfg = ClassifyConfig(task="classify", train_file=str(tmp_path / "d.csv"), out_dir=str(tmp_path / "o"),
                         init_from="scratch", progress=False, device="cpu", **kw)
    with pytest.raises(MiniGPTError, match=message):
        finetune(cfg)


def test_label_word_scores_equal_sequence_log_probabilities():
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
