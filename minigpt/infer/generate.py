"""Autoregressive generation: logit processors, a KV cache, batched prompts, streaming.

The processors are small functions ``(logits (B, V), ...) -> logits (B, V)`` applied in the order
Hugging Face applies them: repetition penalty, temperature, top-k, top-p, min-p. ``SamplingConfig``
holds those choices, the stop conditions and the seed, checked once when it is made.

The model reads its context in one of three ways, a small class each: from scratch every step
(``_NoCache``), with a KV cache that grows (``_DynamicCache``), or with a static one of fixed shape
whose one-token step can be compiled (``_StaticCache``).

``stream`` yields one token per sequence per step; ``generate`` collects them. Prompts of different
lengths are left-padded with an attention mask, and positions count real tokens only, so every row
is exactly what that prompt would produce alone.

Context policy: a model sees at most ``block_size`` tokens. Without the cache each step simply
reads the last ``block_size`` tokens. With the cache, when it is full it is rebuilt from the last
``block_size // 2`` tokens, at least one (one prefill every ``block_size // 2`` steps instead of one
per step), so past ``block_size`` tokens the two can differ; up to ``block_size`` they are identical.

Memory: the rows' tokens are kept in buffers that grow as tokens come (``max_new_tokens`` is an upper
bound, not an allocation); ``check_batch_fits`` refuses a batch whose KV cache and logits alone
exceed the device's memory, and running out of memory later is a ``MiniGPTError`` naming the batch.
Logits that are not finite (NaN or inf) are a ``MiniGPTError`` naming the token where they appeared,
found without a host sync per token (see ``stream``).
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..data.padding import pad
from ..data.tokenizers import StreamDecoder, Tokenizer
from ..device import allocation_failure, is_out_of_memory, total_memory
from ..errors import MiniGPTError
from ..model.cache import KVCache, StaticKVCache
from ..model.model import GPT, positions_from_mask

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


# torch.Generator.manual_seed takes a signed or an unsigned 64-bit integer
SEED_RANGE = (-(2 ** 63), 2 ** 64)


@dataclass(frozen=True)
class SamplingConfig:
    """How each next token is chosen, checked once when made: a ``MiniGPTError`` names the first
    setting whose value cannot be used. ``temperature=0`` or ``do_sample=False`` is greedy. A row stops
    after one of ``stop_token_ids``, or once its text contains one of ``stop_strings``. ``seed`` fixes
    the draws (None: torch's global generator)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    do_sample: bool = True
    stop_token_ids: Sequence[int] = ()
    stop_strings: Sequence[str] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise MiniGPTError(f"{name} must be a finite number, got {value}")
        if self.temperature < 0:
            raise MiniGPTError(f"temperature must be ≥ 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise MiniGPTError(f"top_k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise MiniGPTError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise MiniGPTError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise MiniGPTError(f"repetition_penalty must be positive, got {self.repetition_penalty}")
        if any(s == "" for s in self.stop_strings):
            raise MiniGPTError("a stop string is empty; every sample would stop at once (give the text to stop at)")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed < SEED_RANGE[1]:
            raise MiniGPTError(f"seed must be an integer in [-2**63, 2**64), got {self.seed}")

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    def process(self, logits: torch.Tensor, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """A step's logits (B, V), float32 -> the logits to sample from (or take the argmax of), through
        the processors in Hugging Face's order. ids (B, N): each row's tokens so far, real (B, N): 1 where
        not padding (the repetition penalty's tokens already seen)."""
        if self.repetition_penalty is not None and self.repetition_penalty != 1.0:
            seen = logits.new_zeros(logits.shape).scatter_add_(1, ids, real.float()) > 0  # (B, V)
            logits = apply_repetition_penalty(logits, seen, self.repetition_penalty)
        if not self.greedy:
            logits = apply_temperature(logits, self.temperature)
            if self.top_k is not None:
                logits = apply_top_k(logits, self.top_k)
            if self.top_p is not None and self.top_p < 1.0:
                logits = apply_top_p(logits, self.top_p)
            if self.min_p is not None and self.min_p > 0:
                logits = apply_min_p(logits, self.min_p)
        return logits


def check_max_new_tokens(max_new_tokens: int) -> None:
    if max_new_tokens < 1:
        raise MiniGPTError(f"max_new_tokens must be at least 1, got {max_new_tokens}")


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


# ----------------------------------------------------------------------------- memory

# The rows' token buffers start with room for this many new tokens and double when full: a huge
# max_new_tokens costs memory only for the tokens actually generated.
FIRST_BUFFER_TOKENS = 4096
NONFINITE_CHECK_EVERY = 64  # steps between reads of the non-finite flag when nothing else is read


def cache_capacity(block_size: int, tokens: int, static: bool) -> int:
    """Positions a KV cache holds for rows of up to ``tokens`` tokens: never more than block_size; a
    static cache's rounded up to a multiple of STATIC_CACHE_MULTIPLE (few shapes to compile for)."""
    if static:
        tokens = math.ceil(tokens / STATIC_CACHE_MULTIPLE) * STATIC_CACHE_MULTIPLE
    return min(block_size, tokens)


def least_memory(model: GPT, batch_size: int, prompt_len: int, max_new_tokens: int, dtype: torch.dtype,
                 static_cache: bool = False) -> int:
    """A lower bound on the bytes a generation needs: its KV cache, its token buffers and a step's
    logits (B, V) in float32, with their softmax. Activations come on top."""
    cfg = model.config
    capacity = cache_capacity(cfg.block_size, prompt_len + max_new_tokens, static_cache)
    element = torch.empty((), dtype=dtype).element_size()
    kv = 2 * cfg.n_layer * cfg.kv_heads * capacity * cfg.head_dim * element  # keys and values, per row
    buffers = 2 * 8 * (prompt_len + min(max_new_tokens, FIRST_BUFFER_TOKENS))  # tokens and mask (int64), per row
    logits = 2 * 4 * cfg.vocab_size  # logits and probabilities (float32), per row
    return batch_size * (kv + buffers + logits)


def check_batch_fits(model: GPT, batch_size: int, prompt_len: int, max_new_tokens: int,
                     dtype: torch.dtype | None = None, static_cache: bool = False) -> None:
    """A ``MiniGPTError`` naming the batch size when even ``least_memory`` exceeds the device's memory
    (so a billion samples fail at once, before anything is allocated)."""
    weight = model.backbone.wte.weight
    total = total_memory(weight.device)
    need = least_memory(model, batch_size, prompt_len, max_new_tokens, dtype or weight.dtype, static_cache)
    if total is not None and need > total:
        raise MiniGPTError(f"num_samples {batch_size:,} (the batch) needs at least {need / 2 ** 30:,.1f} GiB for its "
                           f"KV cache and logits but the {weight.device.type} has {total / 2 ** 30:,.1f} GiB: "
                           f"generate fewer samples at once")


def _grown(buffer: torch.Tensor, extra: int) -> torch.Tensor:
    """(B, W) -> (B, W + extra): the same rows followed by ``extra`` zeros."""
    return torch.cat([buffer, buffer.new_zeros(buffer.size(0), extra)], dim=1)


# ----------------------------------------------------------------------------- generation


def compute_dtype(device: torch.device, weights: torch.Tensor) -> torch.dtype:
    """The dtype activations are in: autocast's when it is on (so a KV cache is kept in bf16 under
    bf16 autocast, not twice as large and recast in every layer), else the weights'."""
    try:
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
    except TypeError:  # torch < 2.4: no device argument
        pass
    return weights.dtype


# A static cache's length is rounded up to a multiple of this (at most block_size): prompts and
# lengths of one batch size then share a few shapes, and a compiled decode step a few compilations.
STATIC_CACHE_MULTIPLE = 256

# Each model's idle static caches, one per (batch, capacity, dtype, device), reused by the next
# generation of that shape. A compiled decode step reads and writes the cache in place, so the same
# tensors let its CUDA graph replay; a new cache would re-record it (or recompile, on torch versions
# that guard static addresses), at every call when batch sizes alternate. The IDLE_CACHES most
# recently used shapes are kept per model. Weakly keyed: they are freed with the model.
_idle_static_caches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
IDLE_CACHES = 4


def _cache_key(batch_size: int, max_len: int, dtype: torch.dtype, device: torch.device) -> tuple:
    return batch_size, max_len, dtype, device


def take_static_cache(model: GPT, batch_size: int, max_len: int, dtype: torch.dtype) -> StaticKVCache:
    """The model's idle static cache of this shape, dtype and device (emptied), else a new one. It is
    taken out while in use, so two generations running at once never share one."""
    idle = _idle_static_caches.get(model, {})
    cache = idle.pop(_cache_key(batch_size, max_len, dtype, model.backbone.wte.weight.device), None)
    if cache is not None:
        cache.reset()
        return cache
    return model.backbone.new_kv_cache(batch_size, max_len, dtype, static=True)


def put_back_static_cache(model: GPT, cache: StaticKVCache) -> None:
    """Keep ``cache`` for the model's next generation of its shape (the least recently used beyond
    IDLE_CACHES are dropped)."""
    idle = _idle_static_caches.setdefault(model, {})
    key = _cache_key(cache.batch_size, cache.max_len, cache.dtype, cache.device)
    idle.pop(key, None)
    idle[key] = cache  # the most recently used last
    while len(idle) > IDLE_CACHES:
        idle.pop(next(iter(idle)))


# ----------------------------------------------------------------------------- the three ways to read the context
#
# Each step the model reads the rows' tokens so far, ``tokens[:, :n]`` (left-padded; ``real`` marks the
# tokens that are not padding), and gives the logits of each row's next token. How it reads them is one
# of three small classes with the same two methods: ``logits(tokens, real, n) -> (B, V)`` and ``close()``.


def _refill_start(n: int, block: int, first: bool) -> int:
    """Where a cache (re)filled at a row length of ``n`` starts: the last block_size tokens the first
    time, the last block_size // 2 (at least one) when a full cache is rebuilt (the context policy)."""
    return max(0, n - (block if first else max(1, block // 2)))


class _Context:
    """What the three ways share: nothing to give back at the end unless a subclass says so."""

    def close(self) -> None:
        pass


class _NoCache(_Context):
    """Every step reads the last block_size tokens from scratch (for checking the caches)."""

    def __init__(self, model: GPT, padded: bool):
        self.model, self.padded = model, padded

    def logits(self, tokens: torch.Tensor, real: torch.Tensor, n: int) -> torch.Tensor:
        start = max(0, n - self.model.config.block_size)
        mask = real[:, start:n] if self.padded else None
        logits, _ = self.model(tokens[:, start:n], attention_mask=mask, logits_to_keep=1)
        return logits[:, -1, :]


class _DynamicCache(_Context):
    """Keys and values of the tokens read so far (``KVCache``): one new token per step. A full cache
    is rebuilt from the last block_size // 2 tokens (see the module's context policy)."""

    def __init__(self, model: GPT, padded: bool, capacity: int, dtype: torch.dtype):
        self.model, self.padded, self.capacity, self.dtype = model, padded, capacity, dtype
        self.cache: KVCache | None = None
        self.start = self.held = 0  # the first token the cache holds; how many it holds

    def logits(self, tokens: torch.Tensor, real: torch.Tensor, n: int) -> torch.Tensor:
        block = self.model.config.block_size
        if self.cache is None or self.held + 1 > block:  # (re)fill from the recent context
            self.start = _refill_start(n, block, first=self.cache is None)
            self.held = n - self.start
            self.cache = self.model.backbone.new_kv_cache(tokens.size(0), self.capacity, self.dtype)
            ids = tokens[:, self.start:n]
        else:  # one new token against the cached keys and values
            self.held += 1
            ids = tokens[:, n - 1:n]
        mask = real[:, self.start:n] if self.padded else None
        logits, _ = self.model(ids, attention_mask=mask, kv_cache=self.cache, logits_to_keep=1)
        return logits[:, -1, :]


def _decode_step(model: GPT, token: torch.Tensor, position: torch.Tensor, slot_mask: torch.Tensor,
                 cache: KVCache) -> torch.Tensor:
    """One new token per row against a static cache: shapes and Python numbers never change from one
    call to the next, so this compiles once (with CUDA graphs under mode="reduce-overhead")."""
    logits, _ = model(token, attention_mask=slot_mask, position_ids=position, kv_cache=cache, logits_to_keep=1)
    return logits[:, -1, :]


class _StaticCache(_Context):
    """A cache of fixed shape (``StaticKVCache``) whose every slot attention reads, a mask hiding the
    empty ones, and whose next slot is a tensor: the one-token step sees the same shapes every time,
    so it can be compiled (``compile_decode``: with CUDA graphs on a GPU). The cache is taken from the
    model's idle ones and put back at the end, for the next generation of its shape."""

    def __init__(self, model: GPT, capacity: int, dtype: torch.dtype, compile_decode: bool):
        self.model, self.capacity, self.dtype = model, capacity, dtype
        self.cache: StaticKVCache | None = None
        self.held = 0
        self.step = _decode_step
        if compile_decode:
            device = model.backbone.wte.weight.device
            compiled = torch.compile(_decode_step, mode="reduce-overhead" if device.type == "cuda" else None,
                                     dynamic=False)
            self.step = lambda *args: compiled(*args).clone()  # a CUDA graph overwrites its output at its next replay

    def logits(self, tokens: torch.Tensor, real: torch.Tensor, n: int) -> torch.Tensor:
        block = self.model.config.block_size
        if self.cache is None or self.held + 1 > block:  # (re)fill: every slot is read, the prompt's first
            start = _refill_start(n, block, first=self.cache is None)
            self.held = n - start
            if self.cache is None:
                self.cache = take_static_cache(self.model, tokens.size(0), self.capacity, self.dtype)
            else:
                self.cache.reset()  # a refill empties the same tensors
            self.slot_mask = torch.zeros(tokens.size(0), self.capacity, dtype=torch.long, device=tokens.device)
            self.slot_mask[:, :self.held] = real[:, start:n]
            positions = positions_from_mask(self.slot_mask[:, :self.held])  # (B, held)
            logits, _ = self.model(tokens[:, start:n], attention_mask=self.slot_mask, position_ids=positions,
                                   kv_cache=self.cache, logits_to_keep=1)
            self.next_position = positions[:, -1:] + 1  # (B, 1)
            return logits[:, -1, :]
        self.slot_mask[:, self.held] = 1  # one new token against every cached slot
        last = tokens[:, n - 1:n].clone()  # (B, 1), contiguous: a compiled step guards on strides
        logits = self.step(self.model, last, self.next_position, self.slot_mask, self.cache)
        self.next_position = self.next_position + 1
        self.held += 1
        return logits

    def close(self) -> None:
        if self.cache is not None:
            put_back_static_cache(self.model, self.cache)


@torch.no_grad()
def stream(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    *,
    decode: Callable[[list[int]], str] | None = None,
    use_cache: bool = True,
    static_cache: bool = False,
    compile_decode: bool = False,
    **controls,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(next_ids (B,), already_finished (B,) bool)`` once per step until every row has stopped;
    a row's token is meaningful only while ``already_finished`` is False for it.

    ``sampling`` says how tokens are chosen and when a row stops (``SamplingConfig``); its fields may
    be given as keywords instead (``do_sample=False``, ``top_k=50``, ...). Stop strings need
    ``decode`` (the tokenizer's). The context is read without a cache (``use_cache=False``), with the
    dynamic cache, or with a static one (``static_cache``; its length a multiple of
    ``STATIC_CACHE_MULTIPLE``, kept with the model for the next generation of that shape); with
    ``compile_decode`` the static cache's one-token step is compiled (CUDA graphs on a GPU).

    The loop reads from the device only where it must. One read answers two questions, whether every
    row has stopped and whether some step's logits were not finite (NaN or inf): every step with
    stop strings (they need the text anyway), every 8 steps with stop tokens, every
    ``NONFINITE_CHECK_EVERY`` steps otherwise. Non-finite logits are a ``MiniGPTError`` naming the
    token where they first appeared. On the CPU sampling finds them at once (``torch.multinomial``
    checks its rows); on a GPU that check is a device-side assert, which ends the process, so such
    a row is drawn uniformly until the read reports it.
    """
    if sampling is None:
        sampling = SamplingConfig(**controls)
    elif controls:
        raise MiniGPTError(f"give the sampling settings either as a SamplingConfig or as keywords, not both "
                           f"({', '.join(controls)})")
    check_max_new_tokens(max_new_tokens)
    if sampling.stop_strings and decode is None:
        raise MiniGPTError("stop_strings need a decode function (the tokenizer's decode)")
    device = model.backbone.wte.weight.device
    dtype = compute_dtype(device, model.backbone.wte.weight)
    check_batch_fits(model, len(prompts), max((len(p) for p in prompts), default=0), max_new_tokens, dtype, static_cache)
    was_training = model.training
    model.eval()
    V = model.config.vocab_size

    def out_of_memory(err: BaseException) -> MiniGPTError:
        return MiniGPTError(f"not enough memory on the {device.type} to generate {len(prompts):,} samples of up to "
                            f"{max_new_tokens:,} new tokens at once ({allocation_failure(err)}): generate fewer "
                            f"samples at once (num_samples) or shorter ones (max_new_tokens)")

    def nonfinite(step: int) -> MiniGPTError:
        small = (f", or temperature {sampling.temperature} is too small to divide by"
                 if not sampling.greedy and sampling.temperature < 1e-20 else "")
        return MiniGPTError(f"the model produced non-finite logits (NaN or inf) at new token {step + 1}: its weights or "
                            f"activations overflowed (in float16? try bfloat16 or float32){small}")

    context = None
    try:
        prompt, prompt_mask = left_pad(prompts, device)  # (B, P)
        B, P = prompt.shape
        width = P + min(max_new_tokens, FIRST_BUFFER_TOKENS)  # the buffers grow as the rows do
        tokens = torch.zeros(B, width, dtype=torch.long, device=device)  # the rows, filled as they grow
        real = torch.zeros_like(tokens)  # 1 for a real token, 0 for left padding
        tokens[:, :P], real[:, :P] = prompt, prompt_mask
        padded = bool((prompt_mask == 0).any())  # the one host sync before the first step; without padding no mask
        n = P  # tokens so far in each row (padding included)
        capacity = cache_capacity(model.config.block_size, P + max_new_tokens, static_cache)
        if not use_cache:
            context = _NoCache(model, padded)
        elif static_cache:
            context = _StaticCache(model, capacity, dtype, compile_decode)
        else:
            context = _DynamicCache(model, padded, capacity, dtype)

        generator = torch.Generator(device=device).manual_seed(sampling.seed) if sampling.seed is not None else None
        stops = torch.tensor(list(sampling.stop_token_ids), dtype=torch.long, device=device)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        nonfinite_at = torch.full((), -1, dtype=torch.long, device=device)  # the first step with NaN/inf logits, or -1
        new_ids: list[list[int]] = [[] for _ in range(B)]

        for step in range(max_new_tokens):
            logits = context.logits(tokens, real, n).float()  # (B, V)
            logits = sampling.process(logits, tokens[:, :n], real[:, :n])

            if sampling.greedy:
                next_ids = logits.argmax(dim=-1)  # (B,)
                bad = ~torch.isfinite(logits).all(dim=-1)  # (B,) rows whose logits hold a NaN or an inf
            else:
                probs = F.softmax(logits, dim=-1)  # (B, V)
                bad = ~torch.isfinite(probs).all(dim=-1)  # (B,) rows that are no distribution (NaN or inf logits)
                if device.type != "cpu":  # multinomial's check would be a device-side assert, fatal to the process:
                    probs = torch.where(bad[:, None], 1.0 / V, probs)  # draw those rows uniformly until the read below
                try:
                    next_ids = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
                except RuntimeError as err:  # on the CPU multinomial checks the rows at once
                    if "probability tensor" not in str(err):
                        raise
                    raise nonfinite(step) from None
            nonfinite_at = torch.where((nonfinite_at < 0) & bad.any(), step, nonfinite_at)  # on the device: no sync
            was_finished = finished.clone()
            if len(stops):
                finished |= torch.isin(next_ids, stops)
            if sampling.stop_strings:
                for row, (token, done) in enumerate(zip(next_ids.tolist(), was_finished.tolist())):
                    if not done:
                        new_ids[row].append(token)
                        if any(s in decode(new_ids[row]) for s in sampling.stop_strings):
                            finished[row] = True
            yield next_ids, was_finished
            if n == tokens.size(1):  # the buffers are full: double them (never past P + max_new_tokens)
                extra = min(tokens.size(1), P + max_new_tokens - n)
                tokens, real = _grown(tokens, extra), _grown(real, extra)
            tokens[:, n], real[:, n] = next_ids, 1
            n += 1
            check_stop = sampling.stop_strings or (len(stops) and step % 8 == 7)
            if check_stop or step % NONFINITE_CHECK_EVERY == NONFINITE_CHECK_EVERY - 1:
                code = int((nonfinite_at + 1) * 2 + finished.all())  # one read answers both questions
                if code >= 2:
                    raise nonfinite(code // 2 - 1)
                if code & 1:  # every row has stopped
                    break
    except Exception as err:
        if is_out_of_memory(err):
            raise out_of_memory(err) from None
        raise
    finally:
        model.train(was_training)
        if context is not None:
            context.close()


def generate(model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int, **kwargs) -> list[list[int]]:
    """The new token ids of each row (a stop token, when hit, is the last id). See ``stream``."""
    steps = list(stream(model, prompts, max_new_tokens, **kwargs))
    ids = torch.stack([s[0] for s in steps], dim=1).tolist()  # (B, steps): one copy to the host, at the end
    done = torch.stack([s[1] for s in steps], dim=1).tolist()
    return [[t for t, d in zip(row, row_done) if not d] for row, row_done in zip(ids, done)]


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
