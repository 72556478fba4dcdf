"""Using a classifier, or a language model as one: class logits for a split, and label-word scoring.

``predict_logits`` runs a fine-tuned ``GPTClassifier``. The zero/few-shot functions score label words
under a plain language model (``bench/lm_baseline.py`` compares them with fine-tuning).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..data.labelled import EncodedTexts, LabelledText
from ..data.padding import LongText
from ..data.tokenizers import EOT_TEXT, Tokenizer
from ..errors import MiniGPTError
from ..model.model import GPT


def pool_windows(logits: torch.Tensor, text: torch.Tensor, n_texts: int, how: str = "mean") -> torch.Tensor:
    """Class logits per text (B, K) from logits per piece (W, K), where ``text[w]`` is the text of
    piece w: the mean (or the element-wise max) over each text's windows."""
    K = logits.shape[-1]
    if how == "mean":
        counts = torch.bincount(text, minlength=n_texts).clamp(min=1)  # (B,)
        return logits.new_zeros(n_texts, K).index_add(0, text, logits) / counts[:, None].to(logits.dtype)
    return logits.new_full((n_texts, K), float("-inf")).scatter_reduce(0, text[:, None].expand(-1, K), logits, "amax")


def text_logits(model: torch.nn.Module, batch: tuple[torch.Tensor, ...], pool: str = "mean") -> torch.Tensor:
    """Class logits (B, K) of one ``EncodedTexts.batch``: the model reads every piece, and a text
    read in windows gets its windows' logits pooled (``LongText.window_pool``)."""
    ids, mask, labels, text = batch  # (W, T), (W, T), (B,), (W,)
    logits = model(ids, attention_mask=mask, right_padded=True)[0].float()  # (W, K), pooled in float32 (not autocast's bf16)
    return logits if len(text) == len(labels) else pool_windows(logits, text, len(labels), pool)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, data: EncodedTexts, n_classes: int, device: torch.device,
                   batch_size: int = 64, indices: Sequence[int] | None = None, multiple: int = 1) -> torch.Tensor:
    """Class logits (N, K) of ``indices`` (default: the whole split), in their order, each text
    read as ``data.rule`` says. ``model`` is a ``GPTClassifier`` (or one wrapped by ``torch.compile``
    / DDP) in eval mode; ``multiple``: round each batch's length up to it (fewer shapes for a
    compiled model)."""
    indices = list(range(len(data))) if indices is None else list(indices)
    order = sorted(range(len(indices)), key=lambda i: len(data.ids[indices[i]]))  # similar lengths share a batch
    logits = torch.empty(len(indices), n_classes)
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        batch = data.batch([indices[i] for i in chunk], device, multiple)
        logits[chunk] = text_logits(model, batch, data.rule.window_pool).float().cpu()
    return logits


@torch.no_grad()
def score_label_words(model: GPT, tok: Tokenizer, prompts: list[str], label_words: list[str], device: torch.device) -> torch.Tensor:
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


def classify_texts(model: torch.nn.Module, tok: Tokenizer, texts: list[str], meta: dict,
                   device: torch.device) -> tuple[list[str], torch.Tensor]:
    """(predicted label, class probabilities (N, K)) of each text, under a classifier checkpoint's ``meta``
    (its class names and how it reads a long text: max_length, truncation or windows). For a classifier of text pairs (several text
    columns joined by the end-of-text token), a tab separates the parts of each text."""
    names = meta["labels"]
    pairs = meta.get("text_columns", 1) > 1 and meta.get("text_separator") == EOT_TEXT
    data = LabelledText(texts, [names[0]] * len(texts), "input",  # the labels are not used
                        parts=[tuple(t.split("\t")) for t in texts] if pairs else None,
                        separator=meta.get("text_separator", "\n"))
    logits = predict_logits(model, EncodedTexts(data, tok, names, LongText.from_meta(meta)), len(names), device)  # (N, K)
    bad = (~torch.isfinite(logits).all(dim=-1)).nonzero().flatten().tolist()
    if bad:  # argmax would pick a label at random
        raise MiniGPTError(f"the classifier produced non-finite logits (NaN or inf) for text {bad[0] + 1}: its weights "
                           f"or activations overflowed")
    probs = F.softmax(logits, dim=-1)  # (N, K)
    return [names[i] for i in probs.argmax(dim=-1).tolist()], probs
