"""Perplexity of a model on held-out text (``python -m minigpt evaluate``, e.g. on WikiText-2 test).

The text is tokenised with the model's own tokenizer and scored with overlapping windows of
``block_size`` tokens moved by ``stride``: every token is predicted exactly once, with at least
``block_size - stride`` tokens of context (except at the very start). Reports the mean loss per
token, its perplexity, and bits per UTF-8 byte (comparable across tokenizers).
"""

from __future__ import annotations

import itertools
import math
import sys
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.tokenizers import Tokenizer
from ..device import autocast
from ..errors import MiniGPTError
from ..model.model import GPT


def _token_reader(ids) -> tuple[int, Callable[[int, int], torch.Tensor]]:
    """(number of tokens, ``take(begin, end)`` -> those tokens as int64 (n,)). A split's shards (anything
    with ``read(start, length)``, as ``data.loader.TokenShards``) are read a window at a time, so a
    split larger than memory is scored as well as a list of ids."""
    if hasattr(ids, "read"):
        return len(ids), lambda b, e: torch.from_numpy(np.asarray(ids.read(b, e - b), dtype=np.int64))
    data = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    return len(data), lambda b, e: data[b:e]


def _windows(n: int, T: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, first_new) of each window over n tokens: window k covers tokens [begin, end + 1)
    and scores the targets window k - 1 did not, from index ``first_new`` inside it."""
    scored_until, begin = 0, 0
    while scored_until < n - 1:
        end = min(begin + T, n - 1)  # last input position (exclusive)
        yield begin, end, scored_until - begin
        scored_until = end
        begin = max(0, end - T + stride) if end < n - 1 else end


@torch.no_grad()
def perplexity(model: GPT, ids: Sequence[int], stride: int | None = None, batch_size: int = 8,
               device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32,
               progress: bool = True) -> dict:
    """Sum of next-token negative log-likelihoods over ``ids`` (a sequence of ids, or a split's
    ``TokenShards``, read a window at a time) with a sliding window."""
    T = model.config.block_size
    stride = T // 2 if stride is None else stride
    if not 0 < stride <= T:
        raise MiniGPTError(f"stride must be in [1, block_size={T}], got {stride}")
    n, take = _token_reader(ids)
    if n < 2:
        raise MiniGPTError("need at least two tokens to measure perplexity")
    windows = _windows(n, T, stride)
    n_windows = 1 + max(0, math.ceil((n - 1 - T) / stride))  # the first ends at T, each next one stride later
    total_nll, total_tokens = 0.0, 0
    model.eval()
    # windows of equal length (all but possibly the last) run batch_size at a time
    bar = tqdm(total=math.ceil(n_windows / batch_size), desc="eval", unit="batch", disable=None if progress else True,
               file=sys.stderr)
    while group := list(itertools.islice(windows, batch_size)):
        bar.update()
        lengths = {end - begin for begin, end, _ in group}
        runs = [group] if len(lengths) == 1 else [[w] for w in group]
        for run in runs:
            chunks = torch.stack([take(b, e + 1) for b, e, _ in run])  # (n, t + 1): inputs and targets
            x, y = chunks[:, :-1].to(device), chunks[:, 1:].to(device)  # (n, t) each
            with autocast(device, dtype):
                logits, _ = model(x)
            nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view_as(y)  # (n, t)
            for row, (_, _, first_new) in enumerate(run):
                total_nll += nll[row, first_new:].sum().item()
                total_tokens += y.size(1) - first_new
    bar.close()
    if not math.isfinite(total_nll):
        raise MiniGPTError("the model produced non-finite logits (NaN or inf) on this text: its weights or "
                           "activations overflowed (in float16? try bfloat16 or float32)")
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
