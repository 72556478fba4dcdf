"""Autoregressive generation: logit processors, a KV cache, batched prompts, streaming.

The processors are small functions ``(logits (B, V), ...) -> logits (B, V)`` applied in the order
Hugging Face applies them: repetition penalty, temperature, top-k, top-p, min-p.

``stream`` yields one token per sequence per step; ``generate`` collects them. Prompts of different
lengths are left-padded with an attention mask, and positions count real tokens only, so every row
is exactly what that prompt would produce alone.

Context policy: a model sees at most ``block_size`` tokens. Without the cache each step simply
reads the last ``block_size`` tokens. With the cache, when it is full it is rebuilt from the last
``block_size // 2`` tokens (one prefill every ``block_size // 2`` steps instead of one per step),
so past ``block_size`` tokens the two can differ; up to ``block_size`` they are identical.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..data.padding import pad
from ..data.tokenizers import StreamDecoder, Tokenizer
from ..errors import MiniGPTError
from ..model.model import GPT

# ----------------------------------------------------------------------------- logit processors


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL (Keskar et al. 2019): for tokens already in the sequence, divide positive logits by
    ``penalty`` and multiply negative ones by it. seen: (B, V) bool."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits / temperature


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (and any tied with the k-th); k ≥ V keeps all."""
    if k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling: keep the smallest set of most likely tokens whose probability mass is at
    least p. Tokens tied with the least likely kept token are kept too, so the result does not
    depend on how a sort orders equal values."""
    probs = F.softmax(logits, dim=-1)  # (B, V)
    sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of strictly earlier tokens
    needed = mass_before < p  # the first token is always needed
    threshold = torch.where(needed, sorted_probs, torch.ones_like(sorted_probs)).min(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, float("-inf"))


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least ``min_p`` times the most likely token's."""
    probs = F.softmax(logits, dim=-1)
    return logits.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))


def check_sampling_args(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None,
                        min_p: float | None, repetition_penalty: float | None, stop_strings: Sequence[str] = ()) -> None:
    """A ``MiniGPTError`` naming the first decoding control whose value cannot be used."""
    def finite(name: str, value: float | None) -> None:
        if value is not None and not math.isfinite(value):
            raise MiniGPTError(f"{name} must be a finite number, got {value}")

    for name, value in (("temperature", temperature), ("top_p", top_p), ("min_p", min_p),
                        ("repetition_penalty", repetition_penalty)):
        finite(name, value)
    if max_new_tokens < 1:
        raise MiniGPTError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise MiniGPTError(f"temperature must be ≥ 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise MiniGPTError(f"top_k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise MiniGPTError(f"top_p must be in (0, 1], got {top_p}")
    if min_p is not None and not 0 <= min_p <= 1:
        raise MiniGPTError(f"min_p must be in [0, 1], got {min_p}")
    if repetition_penalty is not None and repetition_penalty <= 0:
        raise MiniGPTError(f"repetition_penalty must be positive, got {repetition_penalty}")
    if any(s == "" for s in stop_strings):
        raise MiniGPTError("a stop string is empty; every sample would stop at once (give the text to stop at)")


# ----------------------------------------------------------------------------- batching


def left_pad(prompts: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths -> ids (B, P) and attention mask (B, P), padded on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise MiniGPTError("every prompt needs at least one token")
    ids, mask = pad(prompts, side="left")
    return ids.to(device), mask.to(device)


class TextStream:
    """One sample's tokens -> the text to show, piece by piece, ending just before the first stop string.

    Two things are held back until they are settled: a character whose bytes are split across
    byte-level BPE tokens (see ``StreamDecoder``), and a tail that could be the start of a stop
    string. So text streamed to a terminal and text printed at the end are the same.
    """

    def __init__(self, tokenizer: Tokenizer, stop_strings: Sequence[str] = ()):
        self.decoder = StreamDecoder(tokenizer)
        self.stops = [s for s in stop_strings if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1  # a stop string can start this far back
        self.text = ""  # everything decoded so far
        self.shown = 0  # characters of it handed out
        self.stopped = False

    def feed(self, token: int) -> str:
        self.text += self.decoder.feed(token)
        return self._release(final=False)

    def flush(self) -> str:
        self.text += self.decoder.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        found = [self.text.find(s, self.shown) for s in self.stops]
        found = [i for i in found if i >= 0]
        if found:
            self.stopped, end = True, min(found)
        else:
            end = len(self.text) if final else max(self.shown, len(self.text) - self.hold)
        piece, self.shown = self.text[self.shown:end], end
        return piece


# ----------------------------------------------------------------------------- generation


@torch.no_grad()
def stream(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    do_sample: bool = True,
    stop_token_ids: Sequence[int] = (),
    stop_strings: Sequence[str] = (),
    decode: Callable[[list[int]], str] | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    step_logits: list | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(next_ids (B,), already_finished (B,) bool)`` once per step until every row has stopped;
    a row's token is meaningful only while ``already_finished`` is False for it.

    A row stops after emitting one of ``stop_token_ids``, or when its generated text (via ``decode``)
    contains one of ``stop_strings``; the others go on. ``temperature=0`` or ``do_sample=False`` is
    greedy. ``step_logits``, if a list, receives each step's processed logits (B, V) (for tests).
    """
    check_sampling_args(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, stop_strings)
    if stop_strings and decode is None:
        raise MiniGPTError("stop_strings need a decode function (the tokenizer's decode)")
    was_training = model.training
    model.eval()
    device = model.backbone.wte.weight.device
    block = model.config.block_size
    seq, seq_mask = left_pad(prompts, device)  # (B, P)
    B, V = seq.size(0), model.config.vocab_size
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    greedy = not do_sample or temperature == 0
    stops = torch.tensor(list(stop_token_ids), dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    new_ids: list[list[int]] = [[] for _ in range(B)]
    cache = None
    capacity = min(block, seq.size(1) + max_new_tokens)  # all a cache will hold, never more than block_size
    try:
        for _ in range(max_new_tokens):
            if not use_cache:
                logits, _ = model(seq[:, -block:], attention_mask=seq_mask[:, -block:], logits_to_keep=1)
            elif cache is None or cache.length + 1 > block:  # (re)fill the cache from the recent context
                keep = block if cache is None else block // 2
                cache = model.backbone.new_kv_cache(B, capacity)
                logits, _ = model(seq[:, -keep:], attention_mask=seq_mask[:, -keep:], kv_cache=cache, logits_to_keep=1)
                cache_mask = seq_mask[:, -keep:]
            else:  # one new token against the cached keys and values
                cache_mask = torch.cat([cache_mask, torch.ones_like(cache_mask[:, :1])], dim=1)
                logits, _ = model(seq[:, -1:], attention_mask=cache_mask, kv_cache=cache, logits_to_keep=1)
            logits = logits[:, -1, :].float()  # (B, V)

            if repetition_penalty is not None and repetition_penalty != 1.0:
                seen = torch.zeros(B, V, device=device).scatter_add_(1, seq, seq_mask.float()) > 0  # (B, V)
                logits = apply_repetition_penalty(logits, seen, repetition_penalty)
            if not greedy:
                logits = apply_temperature(logits, temperature)
                if top_k is not None:
                    logits = apply_top_k(logits, top_k)
                if top_p is not None and top_p < 1.0:
                    logits = apply_top_p(logits, top_p)
                if min_p is not None and min_p > 0:
                    logits = apply_min_p(logits, min_p)
            if step_logits is not None:
                step_logits.append(logits)

            if greedy:
                next_ids = logits.argmax(dim=-1)  # (B,)
            else:
                next_ids = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)  # (B,)
            was_finished = finished.clone()
            if len(stops):
                finished |= torch.isin(next_ids, stops)
            if stop_strings:
                for row in range(B):
                    if not was_finished[row]:
                        new_ids[row].append(int(next_ids[row]))
                        if any(s in decode(new_ids[row]) for s in stop_strings):
                            finished[row] = True
            yield next_ids, was_finished
            seq = torch.cat([seq, next_ids[:, None]], dim=1)
            seq_mask = torch.cat([seq_mask, torch.ones_like(seq_mask[:, :1])], dim=1)
            if finished.all():
                break
    finally:
        model.train(was_training)


def generate(model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int, **kwargs) -> list[list[int]]:
    """The new token ids of each row (a stop token, when hit, is the last id). See ``stream``."""
    out: list[list[int]] = [[] for _ in prompts]
    for next_ids, done in stream(model, prompts, max_new_tokens, **kwargs):
        for row, (token, row_done) in enumerate(zip(next_ids.tolist(), done.tolist())):
            if not row_done:
                out[row].append(token)
    return out


def tokens_per_second(model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int, **kwargs) -> tuple[float, float]:
    """(time to first token in s, decode tokens/s after it) for one greedy generation run."""
    start = time.perf_counter()
    first = None
    steps = 0
    for _ in stream(model, prompts, max_new_tokens, do_sample=False, **kwargs):
        steps += 1
        if first is None:
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    decode_time = max(total - first, 1e-9)
    return first, (steps - 1) * len(prompts) / decode_time if steps > 1 else float("nan")
