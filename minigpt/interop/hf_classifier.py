"""minigpt classifiers <-> Hugging Face sequence-classification folders (``GPT2ForSequenceClassification``,
``LlamaForSequenceClassification``, ``Qwen2ForSequenceClassification``), from and to local folders.

Hugging Face's classifier is the language model's backbone with a ``score`` layer (a bias-free
Linear) on the hidden state of the last token that is not ``pad_token_id``. minigpt's head with
``pooling = "last"``, no hidden layer and no bias is that same function: its weight is ``score``.
A head bias folds exactly into a GPT-2 backbone's final LayerNorm bias β (only the score layer reads
that norm's output, so β' = β + δ with W δ = b gives W(γx̂ + β') = W(γx̂ + β) + b); Llama and Qwen2
norms have no bias, so there a head bias is an error. The tokenizer goes beside the weights
(GPT-2's vocab.json + merges.txt, or the checkpoint's tokenizer.json), with right padding, so
transformers' ``pipeline("text-classification", model=DIR)`` reads texts as minigpt does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..files import save_tensors, write_json
from ..data.padding import LongText
from ..data.tokenizers import EOT_TEXT, GPT2Tokenizer, HFTokenizer, Tokenizer, bundled_gpt2_files
from ..errors import MiniGPTError
from ..model.config import GPTConfig
from ..model.heads import ClassificationHead
from ..model.lora import plain_state_dict
from ..model.model import GPT, GPTClassifier
from .hf import (FAMILIES, _field, from_hf_state_dict, hf_architecture, hf_model_type, read_hf_config, to_hf_config,
                 to_hf_state_dict)

TRUNCATION_SIDE = {"head": "right", "tail": "left", "head_tail": "right"}  # padding.TRUNCATIONS: the side transformers
# cuts (it cannot keep a head and a tail, nor read windows: export warns, and the config keeps the rule for minigpt)


def exportable_head(head: ClassificationHead, kind: str) -> None:
    """A ``MiniGPTError`` naming the option when Hugging Face's score layer cannot compute ``head``."""
    if head.pooling != "last":
        raise MiniGPTError(f"the head pools with pooling = {head.pooling!r}; Hugging Face's sequence classification "
                           f"reads the last token only: train with pooling = \"last\" to export")
    if head.hidden:
        raise MiniGPTError(f"the head has a hidden layer (head_hidden = {head.hidden}); Hugging Face's score layer is "
                           f"one linear map: train with head_hidden = 0 to export")
    if head.out.bias is not None and kind != "gpt2" and bool(head.out.bias.any()):
        raise MiniGPTError(f"the head has a bias (head_bias = true) and a {kind} backbone's norms have none to fold "
                           f"it into; Hugging Face's score layer has no bias: train with head_bias = false to export")


def hf_pad_token(tok: Tokenizer) -> tuple[str, int]:
    """The (text, id) of the padding token the exported tokenizer pads with: the end-of-text token."""
    if isinstance(tok, GPT2Tokenizer):
        return EOT_TEXT, tok.eot_token
    if isinstance(tok, HFTokenizer):
        if tok.eot_token is None:
            raise MiniGPTError("the tokenizer.json has no end-of-sequence token (eos_token in tokenizer_config.json) "
                               "to pad with; Hugging Face's last-token pooling needs a pad token")
        return tok._eos_text, tok.eot_token
    raise MiniGPTError(f"the classifier reads with a {tok.to_meta()['kind']} tokenizer, which transformers cannot "
                       f"load; export needs a GPT-2 BPE or tokenizer.json tokenizer")


def _with_start_token(tokenizer_json: str, text: str, token_id: int) -> str:
    """The tokenizer.json with a template that puts ``text`` (id ``token_id``) before every text, after
    the post-processing it had (a byte-level one only mends offsets)."""
    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers import processors

    fast = FastTokenizer.from_str(tokenizer_json)
    template = processors.TemplateProcessing(single=f"{text} $A", pair=f"{text} $A $B:1",
                                             special_tokens=[(text, token_id)])
    fast.post_processor = processors.Sequence([fast.post_processor, template]) if fast.post_processor else template
    return fast.to_str()


def _tokenizer_files(tok: Tokenizer, folder: Path, max_length: int, truncate: str, document_start: bool) -> None:
    """The tokenizer transformers loads beside the weights; ``document_start``: it puts the end-of-text
    token before every text, as the classifier was trained (a tokenizer with a BOS puts that there)."""
    pad_text, pad_id = hf_pad_token(tok)
    settings = {"model_max_length": max_length, "padding_side": "right",
                "truncation_side": TRUNCATION_SIDE[truncate], "pad_token": pad_text, "eos_token": pad_text}
    if isinstance(tok, GPT2Tokenizer):
        shutil.copyfile(tok.encoder_json, folder / "vocab.json")  # GPT-2's encoder.json and vocab.bpe, as
        shutil.copyfile(tok.vocab_bpe, folder / "merges.txt")  # transformers names them
        settings.update(tokenizer_class="GPT2Tokenizer", bos_token=pad_text, unk_token=pad_text, add_prefix_space=False,
                        add_bos_token=document_start, add_eos_token=False)
    else:
        # minigpt puts the tokenizer's beginning-of-text token (if its template adds one) before each text, and
        # nothing after it; transformers applies the template itself, so it must add nothing else
        plain = tok._tok.encode("a", add_special_tokens=False).ids
        if tok._tok.encode("a", add_special_tokens=True).ids != ([tok.bos_token] if tok.bos_token is not None else []) + plain:
            raise MiniGPTError("the tokenizer.json's template adds tokens after the text (an end-of-sequence token?), "
                               "which minigpt's classifiers do not read; transformers would: not exportable")
        starts = document_start and tok.bos_token is None
        (folder / "tokenizer.json").write_text(_with_start_token(tok._json, pad_text, pad_id) if starts else tok._json,
                                               encoding="utf-8")
        settings.update(tokenizer_class="PreTrainedTokenizerFast")
    write_json(folder / "tokenizer_config.json", settings)


def _language_model(classifier: GPTClassifier, fold_lora: bool) -> GPT:
    """A ``GPT`` holding the classifier's backbone, LoRA folded in or left out (its LM head is never written)."""
    gpt = GPT(classifier.backbone.config)
    state = {f"backbone.{k}": v for k, v in plain_state_dict(classifier.backbone, fold_lora).items()}
    missing, unexpected = gpt.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise MiniGPTError(f"the classifier's backbone does not fit its config (missing {missing}, unexpected {unexpected})")
    return gpt


def save_hf_classifier(classifier: GPTClassifier, tok: Tokenizer, meta: dict, folder: str | Path,
                       fold_lora: bool = True) -> None:
    """Write ``classifier`` into ``folder`` (which must exist, empty) as a Hugging Face
    ``*ForSequenceClassification`` with its tokenizer: with its LoRA updates folded into the weights,
    or without them (``fold_lora=False``: the base of a PEFT adapter). ``meta``: the checkpoint's
    labels, max_length and truncate."""
    folder = Path(folder)
    config: GPTConfig = classifier.backbone.config
    kind = hf_architecture(config)
    head = classifier.head
    exportable_head(head, kind)
    _, pad_id = hf_pad_token(tok)
    gpt = _language_model(classifier, fold_lora)
    tensors = {k: v for k, v in to_hf_state_dict(gpt).items() if k != "lm_head.weight"}
    weight = head.out.weight.detach()  # (K, C)
    if head.out.bias is not None and bool(head.out.bias.any()):  # GPT-2 only (exportable_head): into ln_f's bias
        delta = torch.linalg.lstsq(weight.double(), head.out.bias.detach().double()[:, None]).solution[:, 0]
        tensors["transformer.ln_f.bias"] = (tensors["transformer.ln_f.bias"].double() + delta).to(weight.dtype)
    tensors["score.weight"] = weight
    names = meta["labels"]
    rule = LongText.from_meta(meta)
    hf_config = to_hf_config(config)
    hf_config.update(
        architectures=[FAMILIES[kind].classifier], id2label={str(i): n for i, n in enumerate(names)},
        label2id={n: i for i, n in enumerate(names)}, num_labels=len(names), pad_token_id=pad_id,
        problem_type="single_label_classification",
        minigpt=rule.to_meta(),  # what transformers has no key for
    )
    if kind != "gpt2":
        hf_config.update(eos_token_id=pad_id)
    save_tensors(folder / "model.safetensors", {k: v.contiguous() for k, v in tensors.items()})
    write_json(folder / "config.json", hf_config)
    _tokenizer_files(tok, folder, meta["max_length"], meta["truncate"], rule.document_start)


def is_hf_classifier(hf_config: dict) -> bool:
    architectures = hf_config.get("architectures")
    return isinstance(architectures, list) and any(str(a).endswith("ForSequenceClassification") for a in architectures)


def hf_labels(hf_config: dict, n_classes: int, source: str) -> list[str]:
    """The class names of a Hugging Face classifier config (id2label), in id order."""
    id2label = _field(hf_config, "id2label", "object", source, None)
    if id2label is None:
        return [f"LABEL_{i}" for i in range(n_classes)]
    names = [id2label.get(str(i)) for i in range(n_classes)]
    if len(id2label) != n_classes or not all(isinstance(n, str) and n for n in names):
        raise MiniGPTError(f"{source}: config id2label {id2label!r} does not name the {n_classes} classes of the "
                           f"score layer as \"0\" ... \"{n_classes - 1}\"")
    if len(set(names)) != n_classes:
        raise MiniGPTError(f"{source}: config id2label names a class twice ({names})")
    return names


def classifier_from_hf(hf_config: dict, hf_state: dict[str, torch.Tensor], source: str,
                       **runtime) -> tuple[GPTClassifier, dict]:
    """(classifier, meta fields: labels, head, max_length, truncate) from a Hugging Face
    ``*ForSequenceClassification`` config and state dict."""
    hf_state = dict(hf_state)
    score = hf_state.pop("score.weight", None)
    if score is None or score.dim() != 2:
        raise MiniGPTError(f"{source}: the weights have no 2-D 'score.weight' (a sequence-classification head)")
    if "score.bias" in hf_state:
        raise MiniGPTError(f"{source}: a score layer with a bias is not Hugging Face's sequence classification")
    gpt = from_hf_state_dict(hf_config, hf_state, source, lm_head=False, **runtime)
    n_classes, width = score.shape
    if width != gpt.config.n_embd:
        raise MiniGPTError(f"{source}: score.weight is ({n_classes}, {width}) but the model is {gpt.config.n_embd} wide")
    names = hf_labels(hf_config, n_classes, source)
    head = ClassificationHead(gpt.config.n_embd, n_classes, "last", None, 0.0, bias=False)
    with torch.no_grad():
        head.out.weight.copy_(score)
    ours = _field(hf_config, "minigpt", "object", source, {})
    rule = LongText.from_meta({"max_length": gpt.config.block_size, **ours}, f"{source}: config minigpt")
    if rule.max_length > gpt.config.block_size:
        raise MiniGPTError(f"{source}: config minigpt max_length {rule.max_length} is more than the model's "
                           f"{gpt.config.block_size} positions")
    meta = {"labels": names, "head": head.spec(), **rule.to_meta()}
    return GPTClassifier(gpt.backbone, head), meta


def read_hf_classifier_config(folder: Path) -> dict:
    hf_config = read_hf_config(folder)
    if not is_hf_classifier(hf_config):
        raise MiniGPTError(f"{folder}: config.json architectures {hf_config.get('architectures')!r} is not a "
                           f"*ForSequenceClassification (a Hugging Face classifier)")
    return hf_config


def hf_classifier_tokenizer(folder: Path) -> Tokenizer:
    """The tokenizer beside a Hugging Face classifier: its tokenizer.json, or GPT-2's vocab.json + merges.txt
    (which must be GPT-2's own: minigpt stores a GPT-2 tokenizer by name)."""
    if (folder / "tokenizer.json").is_file():
        return HFTokenizer.from_folder(folder)
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if vocab.is_file() and merges.is_file():
        if [f.read_bytes() for f in (vocab, merges)] != [f.read_bytes() for f in bundled_gpt2_files()]:
            raise MiniGPTError(f"{folder}: vocab.json and merges.txt are not GPT-2's own BPE files; give the folder a "
                               f"tokenizer.json instead")
        return GPT2Tokenizer()
    if hf_model_type(read_hf_config(folder), str(folder)) == "gpt2":
        return GPT2Tokenizer()  # a GPT-2 folder without tokenizer files reads with GPT-2's (bundled) tokenizer
    raise MiniGPTError(f"{folder} has no tokenizer (tokenizer.json, or vocab.json + merges.txt)")
