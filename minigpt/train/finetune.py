"""Fine-tuning a GPT backbone as a text classifier, as a ``Task`` of the shared loop.

    python train.py configs/finetune_sms_spam.toml        # task = "classify": train, then report

Training shares ``loop.fit`` with pretraining (progress bar, checkpoints, resume, early stopping,
plots). At the end the best checkpoint (by the chosen val metric) is restored and evaluated on the
test split: ``OUT/report.json``, ``OUT/report.txt`` and ``OUT/confusion.png``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..files import write_json
from ..config_schema import AT_LEAST_0, AT_LEAST_1, FRACTION, POSITIVE, UNIT, build_config, read_toml, setting
from ..data.labelled import (FORMATS, EncodedTexts, LabelledText, class_weights, downsample, label_map,
                             read_labelled, stratified_split)
from ..data.padding import LONG_TEXT_KEYS, LONG_TEXTS, TRUNCATIONS, WINDOW_POOLS, LongText
from ..data.tokenizers import TOKENIZER_KINDS, Tokenizer, build_tokenizer, same_tokenizer
from ..device import autocast, check_fits, memory_errors, resolve_dtype, seed_everything
from ..errors import MiniGPTError
from ..infer.predict import predict_logits, text_logits
from ..interop.hf import HF_FAMILIES
from ..loading import load_backbone as read_backbone
from ..metrics import classification_report, format_report
from ..model.heads import POOLINGS, ClassificationHead
from ..model.lora import apply_lora
from ..model.model import GPT, GPTBackbone, GPTClassifier
from .config import TASK_HELP, LoopConfig, ModelFields
from .loop import Distributed, Task, batch_seed, distributed, fit, run_folder
from .optim import layer_lr_scales, optimizer_for
from .plots import plot_confusion
from .registry import TaskSpec

STRATEGIES = ("full", "head", "last_n", "lora")  # what trains: everything | the head | the last blocks | LoRA adapters
BALANCES = ("none", "downsample", "class_weights", "sampler")  # what to do about imbalanced classes
METRICS = ("accuracy", "macro_f1", "loss")  # the val metric that picks the best checkpoint
OUTPUTS = ("report.json", "report.txt", "confusion.png")  # what a run writes in out_dir besides the loop's files


@dataclass
class ClassifyConfig(LoopConfig, ModelFields):
    """Fine-tuning a text classifier (``task = "classify"``); the model keys apply when training
    from scratch (``init_from = "scratch"``), otherwise the backbone's own architecture is used
    (with this config's run-time choices, ``RUNTIME_FIELDS``)."""

    task: str = setting("classify", TASK_HELP, section="run")
    train_file: str = setting("", "CSV/TSV/JSONL with a text and a label column (required)", section="data")
    val_file: str = setting("", "validation file; empty: split it off train_file (see split)")
    test_file: str = setting("", "test file; empty: split it off train_file when val_file is empty too")
    format: str = setting("auto", "file format (auto: from the extension)", FORMATS)
    header: bool = setting(True, "the first line names the columns (csv/tsv)")
    text_column: str = setting("text", "column name (or 0-based index without a header) of the text; several, "
                                       "comma-separated, are joined by text_separator")
    text_separator: str = setting("\n", "joins several text columns; <|endoftext|> puts the tokenizer's end-of-text "
                                         "token between them (for text pairs)")
    label_column: str = setting("label", "column name (or 0-based index without a header) of the label")
    labels: str = setting("", "comma-separated class names in id order (default: sorted labels of the data)")
    skip_bad_rows: bool = setting(False, "skip rows with a missing text or label (counted) instead of failing")
    split: str = setting("0.7,0.1,0.2", "train,val,test fractions for a stratified split of train_file")
    split_seed: int = setting(123, "seed of the stratified split (and of downsampling)")
    balance: str = setting("none", "downsample: every class to the smallest before splitting; class_weights: in the "
                                   "loss; sampler: classes drawn equally often", BALANCES)
    max_length: int = setting(0, "tokens per text after truncation (0: block_size)", within=AT_LEAST_0,
                              section="long texts")
    truncate: str = setting("head", "what to keep of a text longer than max_length (head_tail: its first head_tokens "
                                    "tokens and its end)", TRUNCATIONS)
    head_tokens: int = setting(64, "truncate=head_tail: tokens kept from the start (the rest of max_length from the "
                                   "end)", within=AT_LEAST_1)
    long_text: str = setting("truncate", "a text longer than max_length: truncated, or read in windows of max_length "
                                         "tokens whose class logits are pooled (training and prediction)", LONG_TEXTS)
    window_stride: int = setting(128, "long_text=windows: tokens between the starts of consecutive windows",
                                 within=AT_LEAST_1)
    window_pool: str = setting("mean", "long_text=windows: how the windows' logits make the text's", WINDOW_POOLS)
    document_start: bool = setting(False, "start every text (and every window) with the token pretraining put before "
                                          "each document: the tokenizer's BOS, else its end-of-text (a tokenizer "
                                          "with a BOS, Llama's, puts it there anyway)")
    init_from: str = setting("scratch", "scratch, a minigpt checkpoint or out_dir (a language model, or a classifier: "
                             f"its backbone), or a Hugging Face folder ({HF_FAMILIES}; *ForSequenceClassification too)",
                             section="model")
    tokenizer: str = setting("gpt2", "for init_from=scratch: char (vocabulary from the training texts; other characters "
                                     "read as U+FFFD), gpt2, or the path of a tokenizer folder or tokenizer.json (python "
                                     "-m minigpt tokenizer trains one); with a pretrained init_from, a path must be its "
                                     f"tokenizer [{' | '.join(TOKENIZER_KINDS)} | PATH]")
    pooling: str = setting("last", "how the head reads the real tokens (concat: [last; max; mean], 3x as wide)",
                           POOLINGS, section="head")
    head_hidden: int = setting(0, "width of a hidden layer in the head (0: a single linear layer)", within=AT_LEAST_0)
    head_dropout: float = setting(0.0, "dropout before the head's output layer", within=UNIT)
    head_bias: bool = setting(True, "a bias in the head's output layer (Hugging Face's score layer has none: a "
                              "Llama/Qwen2 classifier exports only without it; GPT-2's folds it into the final norm)")
    strategy: str = setting("full", "what trains (head: backbone frozen; last_n: last n_last blocks + final norm)",
                            STRATEGIES, section="what trains")
    n_last: int = setting(1, "blocks trained with strategy=last_n", within=AT_LEAST_1)
    lora_rank: int = setting(8, "LoRA rank r", within=AT_LEAST_1)
    lora_alpha: float = setting(16.0, "LoRA alpha (update scaled by alpha / r)", within=POSITIVE)
    lora_dropout: float = setting(0.0, "dropout on the LoRA input", within=UNIT)
    lora_targets: str = setting("c_attn,attn.c_proj", "comma-separated layer names to wrap with LoRA")
    head_lr_scale: float = setting(1.0, "the head learns at learning_rate x this", within=POSITIVE)
    layer_lr_decay: float = setting(1.0, "discriminative fine-tuning (ULMFiT): the last block learns at learning_rate, "
                                         "each block below at this x the one above, the embeddings lowest (1: all "
                                         "alike)", within=FRACTION)
    epochs: float = setting(0.0, "if > 0, sets max_iters to this many passes over the training set", within=AT_LEAST_0,
                            section="selection")
    metric: str = setting("accuracy", "val metric for the best checkpoint and early stopping", METRICS)
    patience: int = setting(0, "stop after this many evaluations without a better metric (0: off)", within=AT_LEAST_0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task != "classify":
            raise MiniGPTError(f"ClassifyConfig is for task 'classify', got {self.task!r}")
        self.model_config(vocab_size=1)
        if self.init_from == "":  # "" once meant scratch in pretraining configs: one spelling for both
            self.init_from = "scratch"
        if not self.train_file:
            raise MiniGPTError("train_file is required for task 'classify'")
        if self.tokenizer not in TOKENIZER_KINDS and not Path(self.tokenizer).exists():
            raise MiniGPTError(f"tokenizer must be one of {', '.join(TOKENIZER_KINDS)}, or the path of a tokenizer folder "
                               f"or tokenizer.json; got {self.tokenizer!r} (no such file or folder)")
        if self.max_length:
            self.long_text_rule(self.max_length)  # a head or stride that cannot fit is an error before anything runs
        fractions = self.split_fractions
        if len(fractions) not in (2, 3) or abs(sum(fractions) - 1) > 1e-6:
            raise MiniGPTError(f"split must be 2 or 3 fractions summing to 1, got {self.split!r}")

    @property
    def split_fractions(self) -> list[float]:
        try:
            return [float(x) for x in self.split.split(",")]
        except ValueError:
            raise MiniGPTError(f"split must be comma-separated fractions, got {self.split!r}") from None

    def long_text_rule(self, max_length: int) -> LongText:
        return LongText(max_length, self.truncate, self.head_tokens, self.long_text, self.window_stride, self.window_pool,
                        self.document_start)

    @property
    def lora_target_names(self) -> list[str]:
        return [t.strip() for t in self.lora_targets.split(",") if t.strip()]

    @property
    def class_names(self) -> list[str] | None:
        return [s.strip() for s in self.labels.split(",")] if self.labels else None


# ----------------------------------------------------------------------------- data


def load_splits(cfg: ClassifyConfig) -> tuple[LabelledText, LabelledText, LabelledText | None, list[str]]:
    """(train, val, test or None, class names) as the config asks."""
    def read(path: str) -> LabelledText:
        return read_labelled(path, cfg.text_column, cfg.label_column, cfg.format, cfg.header, cfg.skip_bad_rows,
                             cfg.text_separator)

    data = read(cfg.train_file)
    names = label_map(data.labels, cfg.class_names)
    if cfg.balance == "downsample":
        data = downsample(data, cfg.split_seed)
    if cfg.val_file:
        train, val = data, read(cfg.val_file)
        test = read(cfg.test_file) if cfg.test_file else None
    else:
        parts = stratified_split(data.labels, cfg.split_fractions, cfg.split_seed)
        train, val = data.subset(parts[0]), data.subset(parts[1])
        test = data.subset(parts[2]) if len(parts) == 3 else (read(cfg.test_file) if cfg.test_file else None)
    for name, part in (("train", train), ("val", val), ("test", test)):
        if part is not None and not part.texts:
            raise MiniGPTError(f"{cfg.train_file}: the {name} split is empty ({len(data.texts)} rows split "
                               f"{cfg.split}); give more rows or other split fractions")
    for part in (val, test):
        if part is not None:
            part.check_labels(names)
    return train, val, test, names


def pretraining_texts(config_path: str) -> tuple[list[tuple[str, str]], list[str]]:
    """What in-domain pretraining before fine-tuning with a classification config may and may not
    read: (its training split as (name, text) documents, labels dropped; its val and test texts,
    which no document of the LM corpus may be, for the same review may also sit in other files)."""
    if read_toml(config_path).get("task") != "classify":
        raise MiniGPTError(f'{config_path}: not a classification config (it has no task = "classify")')
    train, val, test, _ = load_splits(build_config(ClassifyConfig, config_path, []))
    held_out = val.texts + (test.texts if test is not None else [])
    return [(f"train[{i}]", text + "\n") for i, text in enumerate(train.texts)], held_out


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


# ----------------------------------------------------------------------------- model


def load_backbone(cfg: ClassifyConfig, texts: list[str], device: torch.device) -> tuple[GPTBackbone, Tokenizer, str, tuple | None]:
    """(backbone, tokenizer, description, (head, class names) when ``init_from`` is a classifier) from
    ``init_from``: scratch, or a language model or classifier (minigpt's checkpoint or out_dir, a
    Hugging Face folder or a PEFT adapter: see ``loading.load_backbone``)."""
    if cfg.init_from == "scratch":
        # characters the training texts lack (in val, test or later inputs) read as U+FFFD
        tok = build_tokenizer(cfg.tokenizer, "".join(texts), unknown="\ufffd" if cfg.tokenizer == "char" else None)
        gpt = GPT(cfg.model_config(vocab_size=tok.vocab_size))
        return gpt.backbone.to(device), tok, "randomly initialised", None
    backbone, tok, head = read_backbone(cfg.init_from, device, **cfg.runtime())
    if cfg.tokenizer not in TOKENIZER_KINDS:  # a tokenizer named by its path must be the backbone's own
        given = build_tokenizer(cfg.tokenizer)
        if not same_tokenizer(given.to_meta(), tok.to_meta()):
            raise MiniGPTError(f"tokenizer {cfg.tokenizer} ({given.vocab_size:,} tokens) is not the tokenizer of init_from "
                               f"{cfg.init_from} ({tok.to_meta()['kind']}, {tok.vocab_size:,} tokens); a pretrained "
                               f"backbone reads with its own: leave tokenizer out, or pretrain on data prepared with it")
    return backbone, tok, f"pretrained from {cfg.init_from}", head


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
        return apply_lora(backbone, tuple(cfg.lora_target_names), cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
    return []


# ----------------------------------------------------------------------------- training


def evaluate_split(model: torch.nn.Module, data: EncodedTexts, names: list[str], device: torch.device,
                   ddp: Distributed | None = None, multiple: int = 1) -> dict:
    """Loss and the classification report of ``model`` on one split. Under DDP each process
    predicts every world_size-th text and the logits are gathered, so the split is read once."""
    if ddp is None or not ddp.enabled:
        logits = predict_logits(model, data, len(names), device, multiple=multiple)
    else:
        logits = gathered_logits(model, data, len(names), device, ddp, multiple)
    report = classification_report(data.labels.tolist(), logits.argmax(-1).tolist(), names)
    report["loss"] = F.cross_entropy(logits, data.labels).item()
    return report


def gathered_logits(model: torch.nn.Module, data: EncodedTexts, n_classes: int, device: torch.device,
                    ddp: Distributed, multiple: int) -> torch.Tensor:
    """Logits (N, K) of a split predicted in pieces: rank r takes texts r, r + W, r + 2W, ..."""
    W, N = ddp.world_size, len(data)
    share = -(-N // W)  # rows per rank, the last ones padded
    mine = predict_logits(model, data, n_classes, device, indices=range(ddp.rank, N, W), multiple=multiple)
    padded = torch.zeros(share, n_classes, device=device)
    padded[: len(mine)] = mine.to(device)
    pieces = [torch.empty_like(padded) for _ in range(W)]
    dist.all_gather(pieces, padded)
    logits = torch.empty(N, n_classes)
    for rank, piece in enumerate(pieces):
        rows = range(rank, N, W)
        logits[list(rows)] = piece[: len(rows)].cpu()
    return logits


def finetune(cfg: ClassifyConfig) -> dict:
    """Fine-tune as configured, restore the best checkpoint, evaluate on the test split, write reports.

    The summary holds the loop's and ``report`` (the test report, as ``report.json``) and ``report_text``.
    """
    with run_folder(cfg, Distributed.from_env()):
        with distributed(cfg.device) as (ddp, device):
            dtype = resolve_dtype(device, cfg.dtype)
            seed_everything(cfg.seed)
            with memory_errors("building the classifier"):
                task, cfg, model, names, val_enc, test_enc = classification_run(cfg, ddp, device)
            with memory_errors(f"training with batch_size={cfg.batch_size} and max_length={val_enc.max_length}"):
                summary = fit(task, cfg, ddp, device, dtype)
            if not ddp.master or summary.get("eval_only"):
                return summary
        final, split = (test_enc, "test") if test_enc is not None else (val_enc, "val")
        model.eval()
        with autocast(device, dtype), memory_errors(f"evaluating the {split} split"):
            report = evaluate_split(model, final, names, device)
        report.update(split=split, n=len(final), best_iter=summary["best_iter"],
                      best_score=summary[f"best_{summary['score_name']}"], score_name=summary["score_name"])
        summary.update(test_accuracy=report["accuracy"], report=report,
                       **write_reports(Path(cfg.out_dir), report, names, cfg))
    return summary


def classification_run(cfg: ClassifyConfig, ddp: Distributed, device: torch.device):
    """The splits read and encoded, the backbone loaded with its head: (task, cfg with max_iters set by
    epochs, model, class names, encoded val split, encoded test split or None)."""
    train, val, test, names = load_splits(cfg)
    backbone, tok, origin, old_head = load_backbone(cfg, train.texts, device)
    max_length = cfg.max_length or backbone.config.block_size
    if max_length > backbone.config.block_size:
        raise MiniGPTError(f"max_length {max_length} exceeds the backbone's block_size {backbone.config.block_size}")
    check_fits(cfg.batch_size * max_length * backbone.config.n_embd * backbone.config.n_layer * 4,
               f"a micro-batch's activations (batch_size {cfg.batch_size} x max_length {max_length} x n_embd "
               f"{backbone.config.n_embd} x n_layer {backbone.config.n_layer}, float32)", device)
    head = ClassificationHead(backbone.config.n_embd, len(names), cfg.pooling, cfg.head_hidden or None, cfg.head_dropout,
                              cfg.head_bias)
    if old_head is not None and old_head[1] == names and old_head[0].spec() == {**head.spec(), "dropout": old_head[0].dropout.p}:
        head.load_state_dict(old_head[0].state_dict())  # the same classes and head: training goes on from it
        origin += " (its head kept: the same classes)"
    elif old_head is not None:
        origin += f" (a new head: its classes {old_head[1]} or head settings differ)"
    model = GPTClassifier(backbone, head.to(device))
    lora = configure_trainable(model, cfg)
    rule = cfg.long_text_rule(max_length)
    train_enc, val_enc = (EncodedTexts(d, tok, names, rule) for d in (train, val))
    test_enc = EncodedTexts(test, tok, names, rule) if test is not None else None
    if cfg.epochs > 0:  # a new config object; the one passed in is left as it was
        steps = round(cfg.epochs * len(train_enc) / (cfg.batch_size * cfg.gradient_accumulation_steps))
        cfg = dataclasses.replace(cfg, max_iters=max(1, steps))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    banner = (f"classifier: {len(names)} classes {names} | backbone {origin} | {cfg.strategy} fine-tuning, "
              f"{trainable:,} of {sum(p.numel() for p in model.parameters()):,} parameters trained | "
              f"train {len(train_enc):,} / val {len(val_enc):,} / test {len(test_enc) if test_enc else 0:,} "
              f"texts, {train_enc.n_truncated} longer than {max_length} tokens "
              f"({'read in windows' if rule.long_text == 'windows' else 'truncated: ' + rule.truncate})")
    task = classification_task(cfg, model, tok, names, train_enc, val_enc, lora, device, banner, ddp)
    return task, cfg, model, names, val_enc, test_enc


def classification_task(cfg: ClassifyConfig, model: GPTClassifier, tok: Tokenizer, names: list[str],
                        train: EncodedTexts, val: EncodedTexts, lora: list[str], device: torch.device,
                        banner: str, ddp: Distributed) -> Task:
    """The loop's view of fine-tuning: batches (epochs or a class-balanced sampler), loss, val metrics."""
    weights = class_weights(train.labels.tolist(), len(names)).to(device) if cfg.balance == "class_weights" else None
    sampler_probs = class_weights(train.labels.tolist(), len(names))[train.labels] if cfg.balance == "sampler" else None
    micros = cfg.gradient_accumulation_steps
    multiple = 64 if cfg.compiles(device) else 1  # padded lengths in steps of 64: few shapes to compile for

    def batch(it: int, micro: int):
        if sampler_probs is not None:  # every class drawn equally often
            gen = torch.Generator().manual_seed(batch_seed(cfg.seed, it, micro))
            indices = torch.multinomial(sampler_probs, cfg.batch_size, replacement=True, generator=gen).tolist()
        else:
            indices = epoch_indices(len(train), cfg.batch_size, it, micro, micros, cfg.seed)
        return train.batch(indices, device, multiple)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        report = evaluate_split(m, val, names, device, ddp, multiple)
        return {"val_loss": report["loss"], "val_accuracy": report["accuracy"],
                "val_macro_f1": report["macro avg"]["f1-score"]}

    meta = {"task": "classify", "model_config": model.backbone.config.to_dict(), "tokenizer": tok.to_meta(),
            "labels": names, "head": model.head.spec(), **train.rule.to_meta(),
            "text_columns": len(cfg.text_column.split(",")), "text_separator": cfg.text_separator,
            "lora": {"targets": cfg.lora_target_names, "rank": cfg.lora_rank, "alpha": cfg.lora_alpha} if lora else None}
    return Task(
        model=model, optimizer=optimizer_for(model.backbone, [*layer_lr_scales(model.backbone, cfg.layer_lr_decay),
                                                        (model.heads, cfg.head_lr_scale)], cfg, device), batch=batch,
        loss=lambda m, b: F.cross_entropy(text_logits(m, b, cfg.window_pool).float(), b[2], weight=weights),
        evaluate=evaluate,
        score=f"val_{cfg.metric}", higher_is_better=cfg.metric != "loss", meta=meta,
        units_per_step=cfg.batch_size * micros, unit="ex", units="examples", curves=("val_accuracy",),
        patience=cfg.patience or None, restore_best=True,
        banner=banner, same_on_resume=("labels", "head.pooling", "head.hidden", *LONG_TEXT_KEYS,
                                       "text_columns", "text_separator", "lora"),
    )


def write_reports(out_dir: Path, report: dict, names: list[str], cfg: ClassifyConfig) -> dict:
    """report.json, report.txt and (with plots on) confusion.png; returns their text and the plot's path."""
    write_json(out_dir / "report.json", report)
    text = (f"{report['split']} set ({report['n']:,} texts), best checkpoint by {report['score_name']}:\n"
            f"{format_report(report, names)}")
    (out_dir / "report.txt").write_text(text + "\n", encoding="utf-8")
    png = None
    if cfg.plot:
        png = plot_confusion(report["confusion_matrix"], names, out_dir / "confusion.png", title=f"{report['split']} set")
    return {"report_text": text, "confusion_png": png}


def report(summary: dict) -> str:
    """What ``minigpt train`` ends a fine-tuning run with: the test report and where its plots are
    (an evaluation's log line says it all)."""
    lines = []
    if "report_text" in summary:
        lines.append(f"\n{summary['report_text']}")
        if summary.get("confusion_png"):
            lines.append(f"confusion matrix: {summary['confusion_png']}")
    return "\n".join(lines)


CLASSIFY = TaskSpec("classify", "a text classifier from a CSV/TSV/JSONL file, on a pretrained backbone or from scratch "
                              "(the model keys apply to init_from = \"scratch\")",
                    ClassifyConfig, finetune, OUTPUTS, report)
