"""Classifiers out of minigpt and back, checked by the real clients: transformers (pipeline and
AutoModelForSequenceClassification), peft (PeftModel over the exported base) and onnxruntime."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from minigpt.checkpoint import save_checkpoint
from minigpt.files import load_tensors
from minigpt.cli import run_cli
from minigpt.cli.export import main as export_main
from minigpt.data.tokenizers import CharTokenizer, GPT2Tokenizer, HFTokenizer, bundled_gpt2_files
from minigpt.infer.predict import classify_texts
from minigpt.interop.hf_classifier import save_hf_classifier
from minigpt.loading import load_backbone, load_classifier
from minigpt.model.config import GPTConfig
from minigpt.model.heads import ClassificationHead
from minigpt.model.lora import apply_lora
from minigpt.model.model import GPT, GPTClassifier

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["hello there", "a much longer text that goes on and on for quite a while, padding the others", "x",
         "free entry to win a prize now"]
LABELS3 = ["neg", "neu", "pos"]
ARCH = {
    "gpt2": dict(),
    "llama": dict(pos_embedding="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2, tie_weights=False),
    "qwen2": dict(pos_embedding="rope", norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=True, n_kv_head=2),
}


def tiny_classifier(arch: str, n_classes: int = 3, head_bias: bool = False, lora: bool = False,
                    vocab_size: int = 50257, seed: int = 0) -> GPTClassifier:
    """Random weights everywhere (norms, biases, LoRA B included), so nothing passes by being zero or one."""
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=32, **ARCH[arch])
    model = GPTClassifier(GPT(cfg).backbone, ClassificationHead(32, n_classes, "last", None, 0.0, bias=head_bias))
    if lora:
        apply_lora(model.backbone, ("c_attn", "c_fc", "c_proj"), rank=4, alpha=8.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or name.endswith("bias") or ".ln" in name:
                p.normal_(0, 0.1) if not name.endswith("weight") else p.normal_(1.0, 0.1)
    return model.eval()


def checkpoint(tmp_path: Path, model: GPTClassifier, tok, labels: list[str], lora: bool = False) -> Path:
    meta = {"task": "classify", "model_config": model.backbone.config.to_dict(), "tokenizer": tok.to_meta(),
            "labels": labels, "head": model.head.spec(), "max_length": 64, "truncate": "head",
            "lora": {"targets": ["c_attn", "c_fc", "c_proj"], "rank": 4, "alpha": 8.0} if lora else None}
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, meta)
    return path


def export(*args: str) -> int:
    return run_cli(export_main, list(map(str, args)))


def word_level_folder(tmp_path: Path) -> Path:
    """A tokenizer.json (words and [UNK], eos </s>) whose template puts <s> before each text, as
    minigpt's classifiers then do too."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = sorted({w for t in TEXTS for w in t.replace(",", " ").split()})
    vocab = {w: i for i, w in enumerate(["[UNK]", "<s>", "</s>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    folder = tmp_path / "wordtok"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    return folder


def pipeline_probs(folder: Path, labels: list[str], texts=TEXTS) -> torch.Tensor:
    pipe = transformers.pipeline("text-classification", model=str(folder), top_k=None, device="cpu")
    out = pipe(texts, batch_size=len(texts), truncation=True)
    return torch.tensor([[{o["label"]: o["score"] for o in row}[n] for n in labels] for row in out])


def hf_logits(model, tokenizer, texts=TEXTS) -> torch.Tensor:
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    assert not bool(batch["attention_mask"].all())  # right padding is exercised
    with torch.no_grad():
        return model(**batch).logits


def minigpt_logits(model: GPTClassifier, tok, texts=TEXTS) -> torch.Tensor:
    ids = [tok.encode(t) for t in texts]
    T = max(map(len, ids))
    x = torch.tensor([i + [0] * (T - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (T - len(i)) for i in ids])
    with torch.no_grad():
        return model(x, attention_mask=mask, right_padded=True)[0]


@pytest.mark.parametrize("arch,n_classes,head_bias,lora", [
    ("gpt2", 3, False, False), ("gpt2", 2, True, True),  # a head bias folds into GPT-2's final LayerNorm
    ("llama", 3, False, False), ("llama", 2, False, True), ("qwen2", 3, False, False), ("qwen2", 2, False, True),
])
def test_hf_folder_matches_pipeline_and_automodel(tmp_path, arch, n_classes, head_bias, lora):
    model = tiny_classifier(arch, n_classes, head_bias, lora)
    tok = GPT2Tokenizer()
    labels = LABELS3[:n_classes]
    assert export(tmp_path / "hf", "--ckpt", checkpoint(tmp_path, model, tok, labels, lora), "--to", "hf") == 0
    ours, probs = classify_texts(model, tok, TEXTS, {"labels": labels, "max_length": 64, "truncate": "head"},
                                 torch.device("cpu"))
    theirs = pipeline_probs(tmp_path / "hf", labels)
    torch.testing.assert_close(theirs, probs, atol=1e-4, rtol=0)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__.lower().startswith(arch)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    torch.testing.assert_close(hf_logits(hf, hf_tok), minigpt_logits(model, tok), atol=1e-4, rtol=0)


def test_tokenizer_json_goes_with_the_folder(tmp_path):
    tok = HFTokenizer.from_folder(word_level_folder(tmp_path))
    model = tiny_classifier("llama", vocab_size=tok.vocab_size)
    save_hf_classifier(model, tok, {"labels": LABELS3, "max_length": 64, "truncate": "head"}, tmp_path)
    torch.testing.assert_close(pipeline_probs(tmp_path, LABELS3),
                               classify_texts(model, tok, TEXTS, {"labels": LABELS3, "max_length": 64,
                                                                  "truncate": "head"}, torch.device("cpu"))[1],
                               atol=1e-4, rtol=0)
    back, back_tok, _ = load_classifier(tmp_path)
    assert back_tok.encode(TEXTS[1]) == tok.encode(TEXTS[1])


@pytest.mark.parametrize("kind", ["gpt2", "tokenizer.json"])
def test_document_start_goes_with_the_folder(tmp_path, kind):
    """document_start: every text starts with the end-of-text token (the tokenizer has no BOS). minigpt's
    probabilities are the model's on [eot] + ids (a forward pass written here), differ from those without
    the token, and the exported folder's tokenizer puts it there too: transformers' pipeline agrees, and
    so does the folder read back, cut to its tail (the token stays first)."""
    if kind == "gpt2":
        tok = GPT2Tokenizer()
    else:  # a word-level tokenizer.json without a template: no BOS, end-of-text </s>
        folder = word_level_folder(tmp_path)
        data = json.loads((folder / "tokenizer.json").read_text())
        data["post_processor"] = None
        (folder / "tokenizer.json").write_text(json.dumps(data))
        tok = HFTokenizer.from_folder(folder)
        assert tok.bos_token is None
    model = tiny_classifier("gpt2", vocab_size=tok.vocab_size)
    meta = {"labels": LABELS3, "max_length": 64, "truncate": "head", "document_start": True}
    _, probs = classify_texts(model, tok, TEXTS, meta, torch.device("cpu"))
    with torch.no_grad():
        expected = torch.cat([model(torch.tensor([[tok.eot_token, *tok.encode(t)]]))[0] for t in TEXTS]).softmax(-1)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)
    without = classify_texts(model, tok, TEXTS, {**meta, "document_start": False}, torch.device("cpu"))[1]
    assert (without - probs).abs().max() > 1e-3
    save_hf_classifier(model, tok, meta, tmp_path / "hf")
    torch.testing.assert_close(pipeline_probs(tmp_path / "hf", LABELS3), probs, atol=1e-4, rtol=0)
    back, back_tok, back_meta = load_classifier(tmp_path / "hf")
    assert back_meta["document_start"] is True
    torch.testing.assert_close(classify_texts(back, back_tok, TEXTS, back_meta, torch.device("cpu"))[1], probs,
                               atol=1e-5, rtol=0)
    tail = {**meta, "max_length": 4, "truncate": "tail"}  # tail: [eot] + the last 3 tokens
    short = classify_texts(model, tok, TEXTS, tail, torch.device("cpu"))[1]
    with torch.no_grad():
        expected = torch.cat([model(torch.tensor([[tok.eot_token, *tok.encode(t)[-3:]]]))[0] for t in TEXTS])
    torch.testing.assert_close(short, expected.softmax(-1), atol=1e-5, rtol=0)
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**json.loads((tmp_path / "hf" / "config.json").read_text()),
                                                             "minigpt": {"max_length": 4, "truncate": "tail",
                                                                         "document_start": True}}))
    if kind == "gpt2":  # transformers' left truncation keeps the start token first, as minigpt does
        cfg = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
        (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({**cfg, "model_max_length": 4,
                                                                           "truncation_side": "left"}))
        torch.testing.assert_close(pipeline_probs(tmp_path / "hf", LABELS3), short, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["GPT2", "Llama"])
def test_import_of_a_transformers_classifier_and_round_trip(tmp_path, kind):
    torch.manual_seed(1)
    if kind == "GPT2":
        config = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_layer=2, n_head=2, n_embd=32,
                                         num_labels=3, pad_token_id=50256)
    else:
        config = transformers.LlamaConfig(vocab_size=50257, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                          num_labels=3, pad_token_id=50256)
    hf = getattr(transformers, f"{kind}ForSequenceClassification")(config).eval()
    hf.save_pretrained(tmp_path / "theirs")
    for mine, theirs in zip(bundled_gpt2_files(), ("vocab.json", "merges.txt")):  # GPT-2's tokenizer files
        shutil.copyfile(mine, tmp_path / "theirs" / theirs)
    model, tok, meta = load_classifier(tmp_path / "theirs")
    assert meta["labels"] == ["LABEL_0", "LABEL_1", "LABEL_2"]
    texts = TEXTS[:3]
    ids = [tok.encode(t) for t in texts]
    T = max(map(len, ids))
    x = torch.tensor([i + [50256] * (T - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (T - len(i)) for i in ids])
    with torch.no_grad():
        expected = hf(input_ids=x, attention_mask=mask).logits
    torch.testing.assert_close(model(x, attention_mask=mask, right_padded=True)[0], expected, atol=1e-5, rtol=0)
    backbone, _, (head, labels) = load_backbone(tmp_path / "theirs")  # init_from: a fine-tuning starts from its backbone
    assert all(torch.equal(a, b) for a, b in zip(backbone.state_dict().values(), model.backbone.state_dict().values()))
    assert labels == meta["labels"] and torch.equal(head.out.weight, model.head.out.weight)
    save_hf_classifier(model, tok, meta, (tmp_path / "once").mkdir() or tmp_path / "once")
    again, tok2, meta2 = load_classifier(tmp_path / "once")
    save_hf_classifier(again, tok2, meta2, (tmp_path / "twice").mkdir() or tmp_path / "twice")
    first, second = load_tensors(tmp_path / "once" / "model.safetensors"), load_tensors(tmp_path / "twice" / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    for name in ("config.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        assert (tmp_path / "once" / name).read_bytes() == (tmp_path / "twice" / name).read_bytes()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_peft_adapter_both_ways(tmp_path, arch):
    peft = pytest.importorskip("peft")
    model = tiny_classifier(arch, 2, head_bias=arch == "gpt2", lora=True)
    tok = GPT2Tokenizer()
    assert export(tmp_path / "out", "--ckpt", checkpoint(tmp_path, model, tok, ["ham", "spam"], lora=True),
                  "--to", "peft") == 0
    base = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "base")
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "out" / "adapter").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out" / "base")
    torch.testing.assert_close(hf_logits(theirs, hf_tok), minigpt_logits(model, tok), atol=1e-4, rtol=0)
    back, _, _ = load_classifier(tmp_path / "out" / "adapter")  # the base named in adapter_config.json
    torch.testing.assert_close(minigpt_logits(back, tok), minigpt_logits(model, tok), atol=1e-5, rtol=0)

    # an adapter peft itself trained and saved, over a base transformers saved
    torch.manual_seed(2)
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "base")
    targets = ["c_attn", "c_proj"] if arch == "gpt2" else ["q_proj", "v_proj", "down_proj"]
    wrapped = peft.get_peft_model(plain, peft.LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=6, target_modules=targets,
                                                          fan_in_fan_out=arch == "gpt2"))
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name or "score" in name:
                p.normal_(0, 0.2)
    wrapped.eval().save_pretrained(tmp_path / "theirs")
    ours, _, _ = load_classifier(tmp_path / "theirs", base=tmp_path / "out" / "base")
    torch.testing.assert_close(minigpt_logits(ours, tok), hf_logits(wrapped, hf_tok), atol=1e-4, rtol=0)


def test_onnx_runtime_matches(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = tiny_classifier("llama", 3, lora=True)
    tok = GPT2Tokenizer()
    assert export(tmp_path / "model.onnx", "--ckpt", checkpoint(tmp_path, model, tok, LABELS3, lora=True),
                  "--to", "onnx") == 0
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    generator = torch.Generator().manual_seed(0)
    for batch, length in ((1, 7), (5, 40)):
        ids = torch.randint(0, 50257, (batch, length), generator=generator)
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[-1, length // 2:] = 0
        with torch.no_grad():
            expected = model(ids, attention_mask=mask, right_padded=True)[0]
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", ["char", "mean", "bias", "file", "folder", "exists", "not_lora", "base"])
def test_bad_exports_are_one_line_and_leave_nothing(tmp_path, capsys, case):
    arch = "llama" if case == "bias" else "gpt2"
    tok = CharTokenizer.from_text("abcdefgh ") if case == "char" else GPT2Tokenizer()
    model = tiny_classifier(arch, 2, head_bias=case == "bias", vocab_size=tok.vocab_size, lora=case == "base")
    if case == "mean":
        model.head.pooling = "mean"
    ckpt = checkpoint(tmp_path, model, tok, ["a", "b"], lora=case == "base")
    target, fmt = tmp_path / "exported", "hf"
    if case == "file":
        target.write_text("keep me")
    if case == "folder":
        target.mkdir()
        fmt = "onnx"
    if case == "exists":
        target.mkdir()
        (target / "config.json").write_text("{}")
    if case == "not_lora":
        fmt = "peft"
    if case == "base":  # an adapter over a base it was not made for
        assert export(target, "--ckpt", ckpt, "--to", "peft") == 0
        other = tiny_classifier("gpt2", 2, vocab_size=tok.vocab_size, seed=3)
        other.backbone.h = other.backbone.h[:1]
        other.backbone.config = GPTConfig(**{**other.backbone.config.to_dict(), "n_layer": 1})
        (tmp_path / "other").mkdir()
        save_hf_classifier(other, tok, {"labels": ["a", "b"], "max_length": 64, "truncate": "head"}, tmp_path / "other")
        capsys.readouterr()
        from minigpt.cli.classify import main as classify_main
        assert run_cli(classify_main, ["--ckpt", str(target / "adapter"), "--base", str(tmp_path / "other"), "hi"]) == 2
    else:
        before = sorted(p.name for p in tmp_path.iterdir())
        assert export(target, "--ckpt", ckpt, "--to", fmt) == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing partial left beside it
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    expected = {"char": "char tokenizer", "mean": "pooling = 'mean'", "bias": "head_bias = false", "file": "is a file",
                "folder": "is a folder", "exists": "already exists", "not_lora": "strategy = \"lora\"",
                "base": "not made for this base"}[case]
    assert expected in err[0]
    if case == "file":
        assert target.read_text() == "keep me"


def test_sms_classifier_predicts_the_same_in_every_client(tmp_path):
    """A tiny LoRA classifier fine-tuned on the bundled SMS data: the test split's labels through
    minigpt, transformers' pipeline, peft and onnxruntime are identical."""
    peft, ort = pytest.importorskip("peft"), pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from minigpt.train.finetune import ClassifyConfig, finetune, load_splits

    sms = REPO / "data" / "sms_spam" / "SMSSpamCollection"
    cfg = ClassifyConfig(task="classify", train_file=str(sms), format="tsv", header=False, text_column="1",
                         label_column="0", split="0.7,0.1,0.2", split_seed=123, out_dir=str(tmp_path / "out"),
                         init_from="scratch", tokenizer="gpt2", n_layer=1, n_head=2, n_embd=32, block_size=64,
                         max_length=64, strategy="lora", lora_targets="c_attn,c_proj", batch_size=16, max_iters=30,
                         eval_interval=30, learning_rate=3e-3, warmup_iters=5, progress=False, plot=False, device="cpu")
    first = finetune(cfg)
    for fmt, path in (("hf", tmp_path / "hf"), ("peft", tmp_path / "peft"), ("onnx", tmp_path / "model.onnx")):
        assert export(path, "--ckpt", tmp_path / "out", "--to", fmt) == 0
    texts = load_splits(cfg)[2].texts
    model, tok, meta = load_classifier(tmp_path / "out")
    ours, _ = classify_texts(model, tok, texts, meta, torch.device("cpu"))

    pipe = transformers.pipeline("text-classification", model=str(tmp_path / "hf"), device="cpu")
    assert [r["label"] for r in pipe(texts, batch_size=64, truncation=True)] == ours
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    base = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "peft" / "base")
    adapted = peft.PeftModel.from_pretrained(base, tmp_path / "peft" / "adapter").eval()
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    peft_labels, onnx_labels = [], []
    for start in range(0, len(texts), 64):
        batch = hf_tok(texts[start:start + 64], return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            peft_labels += adapted(**batch).logits.argmax(-1).tolist()
        onnx_labels += session.run(None, {k: batch[k].numpy() for k in ("input_ids", "attention_mask")})[0].argmax(-1).tolist()
    assert [meta["labels"][i] for i in peft_labels] == ours
    assert [meta["labels"][i] for i in onnx_labels] == ours

    # and back in: fine-tuning goes on from the Hugging Face folder, its head kept (a learning rate of ~0
    # leaves the weights as they were, so the test split scores the same)
    again = finetune(dataclasses.replace(cfg, init_from=str(tmp_path / "hf"), out_dir=str(tmp_path / "again"),
                                         strategy="full", head_bias=False, max_iters=1, learning_rate=1e-12,
                                         min_lr=1e-12, warmup_iters=0))
    assert again["test_accuracy"] == first["test_accuracy"]
