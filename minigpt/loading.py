"""A path -> a language model, a classifier, and the tokenizer it reads with: the one place that
turns what training (or Hugging Face) wrote back into modules.

A path is a training out_dir (its best checkpoint, else its last), a checkpoint file, or a Hugging
Face folder (config.json + weights) of a GPT-2 model (it reads with the bundled GPT-2 tokenizer) or
of a Llama or Qwen2 model (with the folder's tokenizer.json). Run-time choices
(``dropout``, ``attn_backend``) come from the caller, not from the file: see ``GPTConfig.with_runtime``.

Wherever a model and a tokenizer are put together here, they are checked to belong together: the
tokenizer may not have more tokens than the model's vocabulary (fewer is fine: a padded or larger
vocabulary), and the weights must be finite (a NaN checkpoint is refused, naming a tensor).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import Checkpoint, find_checkpoint, load_checkpoint
from .data.padding import LongText
from .data.tokenizers import GPT2Tokenizer, HFTokenizer, Tokenizer, tokenizer_from_meta
from .errors import MiniGPTError
from .interop.hf import hf_model_type, load_hf, read_hf_config, read_hf_weights
from .interop.hf_classifier import classifier_from_hf, hf_classifier_tokenizer, is_hf_classifier
from .interop.peft_adapter import ADAPTER_CONFIG, adapter_base, is_adapter, merge_adapter
from .model.config import GPTConfig
from .model.heads import ClassificationHead
from .model.lora import apply_lora, merge_lora, plain_state_dict
from .model.model import GPT, GPTBackbone, GPTClassifier


def _open(path: str | Path) -> Checkpoint | Path:
    """The checkpoint at ``path`` (a file, or an out_dir's best/last), or the path of a Hugging Face folder."""
    path = Path(path)
    if not path.exists():
        raise MiniGPTError(f"checkpoint not found: {path}")
    if path.is_dir():
        found = find_checkpoint(path)
        if found is None:
            if (path / "config.json").is_file() or is_adapter(path):
                return path
            raise MiniGPTError(f"{path} holds no minigpt checkpoint (ckpt_*.safetensors), Hugging Face config.json "
                               f"nor PEFT adapter_config.json")
        path = found
    return load_checkpoint(path)


def hf_tokenizer(folder: Path) -> Tokenizer:
    """The tokenizer of a Hugging Face folder: GPT-2's own (bundled) for a GPT-2 model, else the folder's
    tokenizer.json."""
    if hf_model_type(read_hf_config(folder), str(folder)) == "gpt2":
        return GPT2Tokenizer()
    return HFTokenizer.from_folder(folder)


def check_together(model: torch.nn.Module, config: GPTConfig, tok: Tokenizer, source: str | Path) -> None:
    """A ``MiniGPTError`` when ``tok`` has more tokens than the model's vocabulary (its ids would index
    past the embedding: a tokenizer of another model), or when a weight holds NaN or inf."""
    if tok.vocab_size > config.vocab_size:
        raise MiniGPTError(f"{source}: the tokenizer ({tok.to_meta()['kind']}) has {tok.vocab_size:,} tokens but the "
                           f"model's vocabulary has {config.vocab_size:,}: they do not belong together (a tokenizer "
                           f"of another model?)")
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise MiniGPTError(f"{source}: the weights {name!r} hold NaN or infinite values (a diverged or damaged "
                               f"checkpoint)")


def model_config(ckpt: Checkpoint, **runtime) -> GPTConfig:
    """The architecture a checkpoint stores, with the caller's run-time choices."""
    ckpt.require("model_config")
    try:
        return GPTConfig.from_dict(ckpt.meta["model_config"]).with_runtime(**runtime)
    except (MiniGPTError, TypeError) as err:
        raise MiniGPTError(f"{ckpt.path}: the stored model_config is not usable ({err})") from None


def tokenizer(ckpt: Checkpoint) -> Tokenizer:
    """The tokenizer a checkpoint was trained with."""
    ckpt.require("tokenizer")
    try:
        return tokenizer_from_meta(ckpt.meta["tokenizer"])
    except (MiniGPTError, AttributeError, TypeError) as err:
        raise MiniGPTError(f"{ckpt.path}: the stored tokenizer is not usable ({err})") from None


def load_model(path: str | Path, device: torch.device | str = "cpu", **runtime) -> tuple[GPT, Tokenizer]:
    """(language model in eval mode, tokenizer) from a checkpoint, an out_dir or a Hugging Face folder (GPT-2,
    Llama, Qwen2)."""
    found = _open(path)
    if isinstance(found, Path) and is_hf_classifier(read_hf_config(found)):
        raise MiniGPTError(f"{found} is a Hugging Face classifier (*ForSequenceClassification), not a language "
                           f"model; predict with it: python -m minigpt classify --ckpt {path} TEXT")
    if isinstance(found, Path):
        model, tok = load_hf(found, **runtime), hf_tokenizer(found)
        check_together(model, model.config, tok, found)
        return model.to(device).eval(), tok
    if found.meta.get("task") == "classify":
        raise MiniGPTError(f"{found.path} is a classifier checkpoint, not a language model; "
                           f"predict with it: python -m minigpt classify --ckpt {path} TEXT")
    model = GPT(model_config(found, **runtime))
    found.load_model(model)
    tok = tokenizer(found)
    check_together(model, model.config, tok, found.path)
    return model.to(device).eval(), tok


def build_classifier(ckpt: Checkpoint, **runtime) -> GPTClassifier:
    """An untrained classifier shaped as a classification checkpoint describes (for loading its weights)."""
    ckpt.require("head", "labels", "max_length", "truncate")
    labels = ckpt.meta["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels):
        raise MiniGPTError(f"{ckpt.path}: the stored labels {labels!r} are not a list of class names (damaged?)")
    LongText.from_meta(ckpt.meta, str(ckpt.path))  # max_length, truncation or windows: a damaged value is an error
    backbone = GPTBackbone(model_config(ckpt, **runtime))
    model = GPTClassifier(backbone, ClassificationHead.from_spec(ckpt.meta["head"], source=str(ckpt.path)))
    lora = ckpt.meta.get("lora")
    if lora:
        try:
            apply_lora(backbone, tuple(lora["targets"]), lora["rank"], lora["alpha"])
        except (KeyError, TypeError) as err:
            raise MiniGPTError(f"{ckpt.path}: the stored LoRA settings {lora!r} are incomplete ({err})") from None
    return model


def load_classifier(path: str | Path, device: torch.device | str = "cpu", merge: bool = True,
                    base: str | Path | None = None, **runtime) -> tuple[GPTClassifier, Tokenizer, dict]:
    """(classifier in eval mode, tokenizer, meta) from a classification checkpoint or out_dir, a Hugging
    Face ``*ForSequenceClassification`` folder, or a PEFT LoRA adapter folder over such a folder
    (``base``, else the adapter's base_model_name_or_path; the updates are merged). A minigpt
    checkpoint's LoRA is merged unless ``merge=False``."""
    found = _open(path)
    if isinstance(found, Path):
        adapter = found if is_adapter(found) and not (found / "config.json").is_file() else None
        folder = found if adapter is None else Path(base) if base is not None else adapter_base(adapter)
        if not (folder / "config.json").is_file():
            raise MiniGPTError(f"{folder}: no config.json (the base of {adapter / ADAPTER_CONFIG} must be a Hugging "
                               f"Face classifier folder)" if adapter else f"{folder}: no config.json")
        hf_config = read_hf_config(folder)
        if not is_hf_classifier(hf_config):
            raise MiniGPTError(f"{folder} is a Hugging Face language model, not a classifier (config.json architectures "
                               f"{hf_config.get('architectures')!r}); fine-tune one from it with init_from = \"{folder}\"")
        weights = read_hf_weights(folder)
        if adapter:
            weights = merge_adapter(adapter, weights, str(folder))
        model, fields = classifier_from_hf(hf_config, weights, str(found), **runtime)
        tok = hf_classifier_tokenizer(folder)
        meta = {"task": "classify", "model_config": model.backbone.config.to_dict(), "tokenizer": tok.to_meta(),
                **fields, "lora": None, "source": str(found)}
        check_together(model, model.backbone.config, tok, found)
        return model.to(device).eval(), tok, meta
    if found.meta.get("task") != "classify":
        raise MiniGPTError(f"{found.path} is a language-model checkpoint, not a classifier; "
                           f"fine-tune one from it with a config that has task = \"classify\" and init_from = \"{path}\"")
    model = build_classifier(found, **runtime)
    found.load_model(model)
    if merge:
        merge_lora(model)
    tok = tokenizer(found)
    check_together(model, model.backbone.config, tok, found.path)
    return model.to(device).eval(), tok, found.meta


def load_backbone(path: str | Path, device: torch.device | str = "cpu",
                  **runtime) -> tuple[GPTBackbone, Tokenizer, tuple[ClassificationHead, list[str]] | None]:
    """(backbone, tokenizer, (head, class names) of a classifier or None) of a language model or a
    classifier (minigpt's or Hugging Face's, or a PEFT adapter), as ``load_model`` and
    ``load_classifier`` read them: the start of a fine-tuning. A classifier's LoRA is folded into
    plain weights."""
    found = _open(path)
    if isinstance(found, Checkpoint):
        classifier = found.meta.get("task") == "classify"
    else:  # a PEFT adapter folder, or a Hugging Face folder
        classifier = not (found / "config.json").is_file() or is_hf_classifier(read_hf_config(found))
    if not classifier:
        gpt, tok = load_model(path, device, **runtime)
        return gpt.backbone, tok, None
    model, tok, meta = load_classifier(path, device, **runtime)
    backbone = GPTBackbone(model.backbone.config)
    backbone.load_state_dict(plain_state_dict(model.backbone))
    return backbone.to(device), tok, (model.head, meta["labels"])
