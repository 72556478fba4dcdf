"""Fine-tuning GPT backbones as text classifiers, and predicting with them.

    python train.py configs/finetune_sms_spam.toml            # task = "classify": train, then report
    python -m minigpt.classify --ckpt OUT "some text"          # label and class probabilities
    python -m minigpt.classify --ckpt OUT --file texts.txt --out predictions.csv

Training shares ``trainer.fit`` with pretraining (progress bar, checkpoints, resume, early stopping,
plots). At the end the best checkpoint (by the chosen val metric) is restored and evaluated on the
test split: ``OUT/report.json``, ``OUT/report.txt`` and ``OUT/confusion.png``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .checkpoint import LAST, find_checkpoint, load_checkpoint, write_json
from .config import ClassifyConfig, GPTConfig, build_config, config_class
from .device import autocast, resolve_dtype, seed_everything
from .errors import MiniGPTError
from .heads import ClassificationHead
from .labelled import (LabelledText, class_weights, downsample, label_map, pad_batch, read_labelled,
                       stratified_split)
from .lora import apply_lora, merge_lora
from .metrics import classification_report, format_report
from .model import GPT, GPTBackbone, GPTClassifier, adamw, decay_groups, set_dropout
from .sample import load_model
from .tokenizer import CharTokenizer, GPT2Tokenizer, tokenizer_from_meta
from .trainer import Task, batch_seed, fit, setup_distributed

# ----------------------------------------------------------------------------- model assembly


def load_backbone(cfg: ClassifyConfig, texts: list[str], device: torch.device):
    """(backbone, tokenizer, description) from ``init_from``: scratch, a minigpt checkpoint, or HF GPT-2."""
    if cfg.init_from == "scratch":
        # characters the training texts lack (in val, test or later inputs) read as U+FFFD
        tok = CharTokenizer.from_text("".join(texts), unknown="\ufffd") if cfg.tokenizer == "char" else GPT2Tokenizer()
        gpt = GPT(cfg.model_config(vocab_size=tok.vocab_size))
        return gpt.backbone.to(device), tok, "randomly initialised"
    gpt, tok = load_model(cfg.init_from, device)
    set_dropout(gpt, cfg.dropout)
    return gpt.backbone, tok, f"pretrained from {cfg.init_from}"


def configure_trainable(model: GPTClassifier, cfg: ClassifyConfig) -> list[str]:
    """Freeze per strategy (and wrap LoRA layers); returns the LoRA-wrapped layer names."""
    backbone = model.backbone
    if cfg.strategy == "full":
        return []
    for p in backbone.parameters():
        p.requires_grad_(False)
    if cfg.strategy == "last_n":
        if cfg.n_last > len(backbone.h):
            raise MiniGPTError(f"n_last={cfg.n_last} but the backbone has only {len(backbone.h)} blocks")
        for module in [*backbone.h[-cfg.n_last:], backbone.ln_f]:
            for p in module.parameters():
                p.requires_grad_(True)
    if cfg.strategy == "lora":
        return apply_lora(backbone, tuple(t.strip() for t in cfg.lora_targets.split(",") if t.strip()),
                          cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
    return []


def optimizer_for(model: GPTClassifier, cfg: ClassifyConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW: decay on ≥2-D weights; the head's groups run at head_lr_scale × the schedule."""
    groups = [*decay_groups(model.backbone.parameters(), cfg.weight_decay, lr_scale=1.0),
              *decay_groups(model.heads.parameters(), cfg.weight_decay, lr_scale=cfg.head_lr_scale)]
    return adamw(groups, cfg.learning_rate, (cfg.beta1, cfg.beta2), device.type)


def build_classifier(meta: dict) -> GPTClassifier:
    """An untrained classifier shaped as a checkpoint's ``meta`` describes (for loading its weights)."""
    backbone = GPTBackbone(GPTConfig.from_dict(meta["model_config"]))
    spec = dict(meta["head"])
    head = ClassificationHead(spec.pop("n_embd"), **spec)
    model = GPTClassifier(backbone, head)
    if meta.get("lora"):
        apply_lora(backbone, tuple(meta["lora"]["targets"]), meta["lora"]["rank"], meta["lora"]["alpha"])
    return model


# ----------------------------------------------------------------------------- data


def load_splits(cfg: ClassifyConfig) -> tuple[LabelledText, LabelledText, LabelledText | None, list[str]]:
    """(train, val, test or None, class names) as the config asks."""
    read = lambda path: read_labelled(path, cfg.text_column, cfg.label_column, cfg.format, cfg.header, cfg.skip_bad_rows)
    data = read(cfg.train_file)
    names = label_map(data.labels, [s.strip() for s in cfg.labels.split(",")] if cfg.labels else None)
    if cfg.balance == "downsample":
        data = downsample(data, cfg.split_seed)
    if cfg.val_file:
        train, val = data, read(cfg.val_file)
        test = read(cfg.test_file) if cfg.test_file else None
    else:
        fractions = [float(x) for x in cfg.split.split(",")]
        parts = stratified_split(data.labels, fractions, cfg.split_seed)
        train, val = data.subset(parts[0]), data.subset(parts[1])
        test = data.subset(parts[2]) if len(parts) == 3 else (read(cfg.test_file) if cfg.test_file else None)
    for part in (val, test):
        if part is not None:
            part.check_labels(names)
    return train, val, test, names


def training_documents(config_path: str) -> list[tuple[str, str]]:
    """The training split of a classification config as (name, text) documents, labels dropped: the
    in-domain unlabeled text for continued pretraining before fine-tuning on that same split (the
    val and test texts stay unseen)."""
    if config_class(config_path) is not ClassifyConfig:
        raise MiniGPTError(f'{config_path}: not a classification config (it has no task = "classify")')
    train = load_splits(build_config(ClassifyConfig, config_path, []))[0]
    return [(f"train[{i}]", text + "\n") for i, text in enumerate(train.texts)]


class Encoded:
    """Token ids and label ids of a split, batched on demand with right padding."""

    def __init__(self, data: LabelledText, tok, names: list[str], max_length: int, truncate: str):
        encode = getattr(tok, "encode_batch", None)
        self.ids = encode(data.texts) if encode else [tok.encode(t) for t in data.texts]
        self.labels = torch.tensor([names.index(label) for label in data.labels])
        self.max_length, self.truncate = max_length, truncate
        self.n_truncated = sum(len(x) > max_length for x in self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, mask = pad_batch([self.ids[i] for i in indices], self.max_length, self.truncate)
        return ids.to(device), mask.to(device), self.labels[list(indices)].to(device)


def epoch_indices(n: int, batch_size: int, it: int, micro: int, micros_per_step: int, seed: int) -> list[int]:
    """Indices of micro-batch ``micro`` of step ``it``: consecutive slices of a seeded permutation per
    epoch, a pure function of the step (so resume is exact)."""
    start = (it * micros_per_step + micro) * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
        out.extend(perm[offset: offset + batch_size - len(out)])
    return out


@torch.no_grad()
def predict_logits(model: GPTClassifier, data: Encoded, device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """Class logits (N, K) for a whole split, in order."""
    order = sorted(range(len(data)), key=lambda i: len(data.ids[i]))  # similar lengths share a batch
    logits = torch.empty(len(data), model.head.n_classes)
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        ids, mask, _ = data.batch(chunk, device)
        logits[chunk] = model(ids, mask)[0].float().cpu()
    return logits


# ----------------------------------------------------------------------------- training


def finetune(cfg: ClassifyConfig) -> dict:
    """Fine-tune as configured, restore the best checkpoint, evaluate on the test split, write reports."""
    ddp, device = setup_distributed(cfg)
    dtype = resolve_dtype(device, cfg.dtype)
    seed_everything(cfg.seed)
    train, val, test, names = load_splits(cfg)
    backbone, tok, origin = load_backbone(cfg, train.texts, device)
    max_length = cfg.max_length or backbone.config.block_size
    if max_length > backbone.config.block_size:
        raise MiniGPTError(f"max_length {max_length} exceeds the backbone's block_size {backbone.config.block_size}")
    head = ClassificationHead(backbone.config.n_embd, len(names), cfg.pooling, cfg.head_hidden or None, cfg.head_dropout)
    model = GPTClassifier(backbone, head.to(device))
    lora = configure_trainable(model, cfg)
    train_enc, val_enc = (Encoded(d, tok, names, max_length, cfg.truncate) for d in (train, val))
    test_enc = Encoded(test, tok, names, max_length, cfg.truncate) if test is not None else None
    weights = class_weights(train_enc.labels.tolist(), len(names)).to(device) if cfg.balance == "class_weights" else None
    sampler_probs = None
    if cfg.balance == "sampler":  # every class drawn equally often
        per_class = class_weights(train_enc.labels.tolist(), len(names))
        sampler_probs = per_class[train_enc.labels]
    micros = cfg.gradient_accumulation_steps
    if cfg.epochs > 0:
        cfg.max_iters = max(1, round(cfg.epochs * len(train_enc) / (cfg.batch_size * micros)))

    def batch(it: int, micro: int):
        if sampler_probs is not None:
            gen = torch.Generator().manual_seed(batch_seed(cfg.seed, it, micro))
            indices = torch.multinomial(sampler_probs, cfg.batch_size, replacement=True, generator=gen).tolist()
        else:
            indices = epoch_indices(len(train_enc), cfg.batch_size, it, micro, micros, cfg.seed)
        return train_enc.batch(indices, device)

    def evaluate(m) -> dict[str, float]:
        logits = predict_logits(model, val_enc, device)
        report = classification_report(val_enc.labels.tolist(), logits.argmax(-1).tolist(), names)
        return {"val_loss": F.cross_entropy(logits, val_enc.labels).item(), "val_accuracy": report["accuracy"],
                "val_macro_f1": report["macro avg"]["f1-score"]}

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    meta = {"task": "classify", "model_config": backbone.config.to_dict(), "tokenizer": tok.to_meta(), "labels": names,
            "head": head.describe(), "max_length": max_length, "truncate": cfg.truncate,
            "lora": {"targets": [t.strip() for t in cfg.lora_targets.split(",") if t.strip()], "rank": cfg.lora_rank,
                     "alpha": cfg.lora_alpha} if lora else None}
    task = Task(
        model=model, optimizer=optimizer_for(model, cfg, device), batch=batch,
        loss=lambda m, b: m(b[0], b[1], b[2], weights)[1], evaluate=evaluate,
        score=f"val_{cfg.metric}", higher_is_better=cfg.metric != "loss", meta=meta,
        units_per_step=cfg.batch_size * micros, unit="ex", patience=cfg.patience or None, restore_best=True,
        banner=(f"classifier: {len(names)} classes {names} | backbone {origin} | {cfg.strategy} fine-tuning, "
                f"{trainable:,} of {sum(p.numel() for p in model.parameters()):,} parameters trained | "
                f"train {len(train_enc):,} / val {len(val_enc):,} / test {len(test_enc) if test_enc else 0:,} texts, "
                f"{train_enc.n_truncated} truncated to {max_length} tokens"),
    )
    try:
        summary = fit(task, cfg, ddp, device, dtype)
    finally:
        if ddp.enabled:
            dist.destroy_process_group()
    if not ddp.master:
        return summary

    out_dir = Path(cfg.out_dir)
    final = test_enc or val_enc
    split = "test" if test_enc else "val"
    model.eval()
    with autocast(device, dtype):
        logits = predict_logits(model, final, device)
    report = classification_report(final.labels.tolist(), logits.argmax(-1).tolist(), names)
    report.update(split=split, n=len(final), best_iter=summary["iter_num"], **{k: summary[k] for k in ("best_score", "score_name")})
    write_json(out_dir / "report.json", report)
    text = format_report(report, names)
    (out_dir / "report.txt").write_text(f"{split} set, best checkpoint by {task.score}\n\n{text}\n", encoding="utf-8")
    print(f"\n{split} set ({len(final):,} texts), best checkpoint by {task.score}:\n{text}")
    if cfg.plot:
        from .plot import plot_confusion

        png = plot_confusion(report["confusion_matrix"], names, out_dir / "confusion.png", title=f"{split} set")
        if png:
            print(f"confusion matrix: {png}")
    summary.update(test_accuracy=report["accuracy"], report=report)
    return summary


# ----------------------------------------------------------------------------- prediction


def load_classifier(path: str | Path, device: torch.device | str = "cpu"):
    """(classifier in eval mode with LoRA merged, tokenizer, meta) from a classification checkpoint or out_dir."""
    path = Path(path)
    if path.is_dir():
        path = find_checkpoint(path) or path / LAST  # (a missing checkpoint is reported by load_checkpoint)
    ckpt = load_checkpoint(path)
    if ckpt.meta.get("task") != "classify":
        raise MiniGPTError(f"{path} is not a classifier checkpoint (it was trained for {ckpt.meta.get('task', 'pretraining')!r})")
    model = build_classifier(ckpt.meta)
    ckpt.load_model(model)
    merge_lora(model)
    return model.to(device).eval(), tokenizer_from_meta(ckpt.meta["tokenizer"]), ckpt.meta


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m minigpt.classify",
                                     description="Classify texts with a fine-tuned checkpoint: label and class probabilities.")
    parser.add_argument("texts", nargs="*", help="texts to classify (or --file, or standard input: one text per line)")
    parser.add_argument("--ckpt", required=True, help="classification checkpoint or its out_dir")
    parser.add_argument("--file", help="a text file with one text per line")
    parser.add_argument("--out", help="write a CSV (text, label, one probability column per class) instead of printing")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    from .device import resolve_device

    device = resolve_device(args.device)
    model, tok, meta = load_classifier(args.ckpt, device)
    texts = list(args.texts)
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise MiniGPTError(f"file not found: {path}")
        texts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts and not sys.stdin.isatty():
        texts = [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not texts:
        raise MiniGPTError("no text to classify: give texts as arguments, --file, or standard input")
    names = meta["labels"]
    data = LabelledText(texts, [names[0]] * len(texts), "input", list(range(1, len(texts) + 1)))
    probs = F.softmax(predict_logits(model, Encoded(data, tok, names, meta["max_length"], meta["truncate"]), device), -1)
    if args.out:
        with open(args.out, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label", *[f"p_{n}" for n in names]])
            for text, p in zip(texts, probs.tolist()):
                writer.writerow([text, names[max(range(len(p)), key=p.__getitem__)], *[f"{x:.6f}" for x in p]])
        print(f"wrote {len(texts)} predictions to {args.out}")
        return 0
    for text, p in zip(texts, probs.tolist()):
        best = max(range(len(p)), key=p.__getitem__)
        shown = ", ".join(f"{n} {x:.3f}" for n, x in zip(names, p))
        print(f"{names[best]}\t({shown})\t{text[:80]}")
    return 0


if __name__ == "__main__":
    from .cli import run_cli

    sys.exit(run_cli(main))


# ----------------------------------------------------------------------------- zero/few-shot baseline


@torch.no_grad()
def score_label_words(model: GPT, tok, prompts: list[str], label_words: list[str], device: torch.device) -> torch.Tensor:
    """log P(label word | prompt) under a language model, for every prompt and label: (N, K).

    Each label word is scored as the sum of its tokens' log-probabilities after the prompt (with a
    leading space, as a word follows "Label:"). Prompts are cut from the left to fit the block.
    """
    block = model.config.block_size
    word_ids = [tok.encode(" " + w) for w in label_words]
    scores = torch.empty(len(prompts), len(label_words))
    for n, prompt in enumerate(prompts):
        context = tok.encode(prompt)
        for k, ids in enumerate(word_ids):
            seq = (context + ids)[-block:]
            x = torch.tensor([seq[:-1]], device=device)
            log_probs = F.log_softmax(model(x)[0][0].float(), dim=-1)  # (T, V)
            targets = seq[-len(ids):]
            positions = range(len(seq) - 1 - len(ids), len(seq) - 1)
            scores[n, k] = sum(log_probs[p, t].item() for p, t in zip(positions, targets))
    return scores


def calibrate_scores(scores: torch.Tensor, content_free_scores: torch.Tensor) -> torch.Tensor:
    """Contextual calibration (Zhao et al., 2021, "Calibrate Before Use"): a small LM tends to prefer
    one label word whatever the text; divide that prior out. ``scores`` (N, K) and
    ``content_free_scores`` (M, K) are label-word log-probabilities, the latter for M content-free
    texts ("N/A", "") in the same prompt. Returns log P(label | text) - mean log P(label | content-free),
    each row renormalised over the K labels first."""
    prior = content_free_scores.log_softmax(-1).mean(0)  # (K,)
    return scores.log_softmax(-1) - prior  # (N, K)


def few_shot_prompts(texts: list[str], examples: list[tuple[str, str]], instruction: str = "") -> list[str]:
    """"Message: ...\\nLabel: ..." blocks for the k examples, then the text to classify."""
    shots = "".join(f"Message: {t}\nLabel: {w}\n\n" for t, w in examples)
    return [f"{instruction}{shots}Message: {t}\nLabel:" for t in texts]
