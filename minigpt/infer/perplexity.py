"""Perplexity of a model on held-out text (``python -m minigpt.evaluate``, e.g. on WikiText-2 test).

The text is tokenised with the model's own tokenizer and scored with overlapping windows of
``block_size`` tokens moved by ``stride``: every token is predicted exactly once, with at least
``block_size - stride`` tokens of context (except at the very start). Reports the mean loss per
token, its perplexity, and bits per UTF-8 byte (comparable across tokenizers).
"""

from __future__ import annotations

import math
import sys
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.tokenizers import Tokenizer
from ..device import autocast
from ..errors import MiniGPTError
from ..model.model import GPT


@torch.no_grad()
def perplexity(model: GPT, ids: Sequence[int], stride: int | None = None, batch_size: int = 8,
               device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32,
               progress: bool = True) -> dict:
    """Sum of next-token negative log-likelihoods over ``ids`` with a sliding window."""
    T = model.config.block_size
    stride = T // 2 if stride is None else stride
    if not 0 < stride <= T:
        raise MiniGPTError(f"stride must be in [1, block_size={T}], got {stride}")
    if len(ids) < 2:
        raise MiniGPTError("need at least two tokens to measure perplexity")
    data = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    # window k covers data[begin : begin + T + 1]; it scores the targets not scored by window k - 1
    windows, scored_until, begin = [], 0, 0
    while scored_until < len(data) - 1:
        end = min(begin + T, len(data) - 1)  # last input position (exclusive)
        first_new = scored_until - begin  # index inside the window of the first unscored target
        windows.append((begin, end, first_new))
        scored_until = end
        begin = max(0, end - T + stride) if end < len(data) - 1 else end
    total_nll, total_tokens = 0.0, 0
    model.eval()
    # windows of equal length (all but possibly the last) run batch_size at a time
    for i in tqdm(range(0, len(windows), batch_size), desc="eval", unit="batch", disable=None if progress else True, file=sys.stderr):
        group = windows[i: i + batch_size]
        lengths = {end - begin for begin, end, _ in group}
        runs = [group] if len(lengths) == 1 else [[w] for w in group]
        for run in runs:
            x = torch.stack([data[b:e] for b, e, _ in run]).to(device)  # (n, t)
            y = torch.stack([data[b + 1: e + 1] for b, e, _ in run]).to(device)  # (n, t)
            with autocast(device, dtype):
                logits, _ = model(x)
            nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view_as(y)  # (n, t)
            for row, (_, _, first_new) in enumerate(run):
                total_nll += nll[row, first_new:].sum().item()
                total_tokens += y.size(1) - first_new
    loss = total_nll / total_tokens
    return {"tokens": total_tokens, "loss": loss, "perplexity": math.exp(loss), "nll_sum": total_nll}


def score_texts(model: GPT, tokenizer: Tokenizer, texts: Iterable[str], stride: int | None = None,
                device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32) -> dict:
    """``perplexity`` of documents read one after another, each led by the tokenizer's
    beginning-of-text token if it has one, else separated by its end-of-text token (if any), plus
    bits per UTF-8 byte."""
    ids, n_bytes = [], 0
    for text in texts:
        if tokenizer.bos_token is not None:
            ids.append(tokenizer.bos_token)
        elif ids and tokenizer.eot_token is not None:
            ids.append(tokenizer.eot_token)
        ids.extend(tokenizer.encode(text))
        n_bytes += len(text.encode("utf-8"))
    result = perplexity(model, ids, stride, device=device, dtype=dtype)
    result["bits_per_byte"] = result["nll_sum"] / math.log(2) / max(1, n_bytes)
    return result
