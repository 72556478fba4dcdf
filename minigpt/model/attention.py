"""Attention's seam: the one mask representation and the table of kernels.

By the time it reaches a block, the mask is either ``None`` (plain causal attention, the queries
being the last T of the S keys) or a bool tensor (B or 1, 1, T, S), True where a query may see a
key; the backbone builds it once for all layers (``padding_causal_mask``, ``causal_mask``). A
kernel takes q (B, H, T, D), k and v (B, Hkv, S, D) with Hkv dividing H (grouped-query heads), that
mask and a dropout rate, and returns (B, H, T, D). ``ATTENTION_BACKENDS`` maps the names of
``GPTConfig.attn_backend`` to kernels; ``register_attention`` adds one (a sliding window, another
fused kernel), which is then a valid ``attn_backend`` for training, evaluation and generation.

Shapes: B batch, T queries (new tokens), S keys (cached + new), H query heads, Hkv key/value heads,
D head dim.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", float], torch.Tensor]

# F.scaled_dot_product_attention repeats key/value heads itself from torch 2.5 (enable_gqa)
SDPA_GQA = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


# ----------------------------------------------------------------------------- masks


def padding_causal_mask(attention_mask: torch.Tensor, n_queries: int | None = None,
                        query_start: torch.Tensor | None = None) -> torch.Tensor:
    """Combine the causal mask with a key-padding mask. True means "query may attend to key".

    attention_mask: (B, S), 1 for real tokens and 0 for padding, over every key (cached ones too).
    The queries are the last ``n_queries`` positions (default all S), or, with ``query_start`` (a
    0-d tensor: a static cache's next slot), the ``n_queries`` slots from there. Returns (B, 1, T, S)
    bool. A query always keeps its own position: a padding query whose earlier keys are all padding
    (left padding) would otherwise have an all-masked row, and softmax over it is NaN. Real
    queries are unaffected, since their own position is a real key anyway.
    """
    S = attention_mask.size(-1)
    T = S if n_queries is None else n_queries
    first = S - T if query_start is None else query_start
    query_pos = first + torch.arange(T, device=attention_mask.device)[:, None]  # (T, 1) absolute positions
    key_pos = torch.arange(S, device=attention_mask.device)[None, :]  # (1, S)
    causal = key_pos <= query_pos  # (T, S)
    key_is_real = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    return causal & (key_is_real | (key_pos == query_pos))  # (B, 1, T, S)


def causal_mask(n_queries: int, n_keys: int, device: torch.device) -> torch.Tensor:
    """(T, S) bool, True where a query may see a key; the queries are the last T of the S positions."""
    return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril(diagonal=n_keys - n_queries)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Each key/value head serves ``n_rep`` query heads: (B, Hkv, S, D) -> (B, Hkv·n_rep, S, D)."""
    if n_rep == 1:
        return x
    B, Hkv, S, D = x.shape
    return x[:, :, None].expand(B, Hkv, n_rep, S, D).reshape(B, Hkv * n_rep, S, D)


# ----------------------------------------------------------------------------- kernels


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   dropout_p: float) -> torch.Tensor:
    """``F.scaled_dot_product_attention``: a fused kernel (flash or memory-efficient attention on the GPU)."""
    T, S, n_rep = q.size(2), k.size(2), q.size(1) // k.size(1)
    if mask is None and 1 < T < S:  # its is_causal aligns the queries with the first keys, not the last
        mask = causal_mask(T, S, q.device)  # (T, S)
    if n_rep > 1 and not SDPA_GQA:
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    gqa = {"enable_gqa": True} if n_rep > 1 and SDPA_GQA else {}
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p,
        is_causal=mask is None and T > 1,  # lets the kernel skip building a mask at all
        **gqa,
    )  # (B, H, T, D)


def manual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     dropout_p: float) -> torch.Tensor:
    """softmax(Q Kᵀ / √D + mask) · V written out, for reading and for checking the fused kernel."""
    n_rep = q.size(1) // k.size(1)
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, S, D)
    if mask is None:
        mask = causal_mask(q.size(2), k.size(2), q.device)  # (T, S)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, S)
    scores = scores.masked_fill(~mask, float("-inf"))  # the "+ mask" term: -inf where not allowed
    weights = F.softmax(scores, dim=-1)  # (B, H, T, S), each row sums to 1
    if dropout_p:
        weights = F.dropout(weights, dropout_p)
    return weights @ v  # (B, H, T, D)


ATTENTION_BACKENDS: dict[str, AttentionKernel] = {"sdpa": sdpa_attention, "manual": manual_attention}


def register_attention(name: str, kernel: AttentionKernel) -> None:
    """Make ``kernel`` the attention of ``attn_backend = name`` (replacing one of that name)."""
    ATTENTION_BACKENDS[name] = kernel
