"""The math of a GPT, one module per concept: positional embeddings, attention, MLP, block.

Shapes: B batch, T time (sequence), C channels (n_embd), H heads, D head dim (C / H), V vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .config import GPTConfig


# ----------------------------------------------------------------------------- positions


class LearnedPositionalEmbedding(nn.Embedding):
    """One trained vector per position, as in GPT-2: a (block_size, C) table looked up by position."""

    def __init__(self, block_size: int, n_embd: int):
        super().__init__(block_size, n_embd)  # called with positions (T,) or (B, T) -> (..., C)


def sinusoidal_table(n_positions: int, dim: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/dim)), PE[pos, 2i+1] = cos(pos / 10000^(2i/dim)).

    From "Attention Is All You Need" (Vaswani et al. 2017, section 3.5). Returns (n_positions, dim).
    """
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (P, 1)
    two_i = torch.arange(0, dim, 2, dtype=torch.float64)  # (ceil(dim/2),)
    angle = position / torch.pow(10000.0, two_i / dim)  # (P, ceil(dim/2))
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : dim // 2])  # an odd dim has one sine more than cosines
    return table.float()


class SinusoidalPositionalEmbedding(nn.Module):
    """Fixed sine/cosine position codes (no parameters); the table is derived, so not saved."""

    def __init__(self, block_size: int, n_embd: int):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(block_size, n_embd), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:  # (T,) or (B, T) -> (..., C)
        return self.table[positions]


def positional_embedding(config: GPTConfig) -> nn.Module:
    if config.pos_embedding == "sinusoidal":
        return SinusoidalPositionalEmbedding(config.block_size, config.n_embd)
    return LearnedPositionalEmbedding(config.block_size, config.n_embd)


# ----------------------------------------------------------------------------- attention


def padding_causal_mask(attention_mask: torch.Tensor, n_queries: int | None = None) -> torch.Tensor:
    """Combine the causal mask with a key-padding mask. True means "query may attend to key".

    attention_mask: (B, S), 1 for real tokens and 0 for padding, over every key (cached ones too).
    The queries are the last ``n_queries`` positions (default all S). Returns (B, 1, T, S) bool.
    A query always keeps its own position: a padding query whose earlier keys are all padding
    (left padding) would otherwise have an all-masked row, and softmax over it is NaN. Real
    queries are unaffected, since their own position is a real key anyway.
    """
    S = attention_mask.size(-1)
    T = S if n_queries is None else n_queries
    query_pos = torch.arange(S - T, S, device=attention_mask.device)[:, None]  # (T, 1) absolute positions
    key_pos = torch.arange(S, device=attention_mask.device)[None, :]  # (1, S)
    causal = key_pos <= query_pos  # (T, S)
    key_is_real = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    return causal & (key_is_real | (key_pos == query_pos))  # (B, 1, T, S)


class KVCache:
    """Keys and values of the tokens seen so far, for every layer, preallocated to ``max_len``.

    Decoding one token then costs one query against the cached keys instead of recomputing the
    whole sequence. ``length`` counts the cached positions; the model advances it after each call.
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)  # (L, B, H, max_len, D); only written slots are read
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values (B, H, T, D) after the cached ones; return all of them (B, H, S, D)."""
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were asked for")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    """Masked multi-head self-attention with two interchangeable backends.

    ``sdpa``: ``F.scaled_dot_product_attention``, which dispatches to a fused kernel (flash or
    memory-efficient attention on the GPU). ``manual``: the formula written out,
    ``softmax(Q Kᵀ / √D + mask) · V``, for reading and for checking the fused path.
    """

    def __init__(self, config: GPTConfig, layer_index: int = 0):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.backend = config.attn_backend
        self.dropout = config.dropout
        self.layer_index = layer_index  # which slot of a KVCache is this layer's
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # Q, K, V in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        causal = torch.ones(config.block_size, config.block_size, dtype=torch.bool).tril()
        self.register_buffer("causal_mask", causal, persistent=False)  # (block_size, block_size)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        """x: (B, T, C) new tokens; attention_mask: optional (B, S) over all S = cached + T keys,
        1 = token, 0 = padding; kv_cache: keys/values of earlier tokens. Returns (B, T, C)."""
        T = x.size(1)
        q, k, v = rearrange(self.c_attn(x), "b t (three h d) -> three b h t d", three=3, h=self.n_head)  # 3 x (B, H, T, D)
        past = 0
        if kv_cache is not None:
            past = kv_cache.length
            k, v = kv_cache.update(self.layer_index, k, v)  # (B, H, S, D), S = past + T
        S = past + T
        if attention_mask is not None:
            mask = padding_causal_mask(attention_mask, T)  # (B, 1, T, S)
        elif past == 0 or T == 1:
            mask = None  # plain causal (or a single newest query, which may see every key)
        else:
            mask = self.causal_mask[past:S, :S]  # (T, S): queries sit at the end of the sequence
        if self.backend == "sdpa":
            y = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=mask,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=mask is None and T > 1,  # lets the kernel skip building a mask at all
            )  # (B, H, T, D)
        else:
            if mask is None:
                mask = self.causal_mask[past:S, :S]  # (T, S)
            y = self.manual_attention(q, k, v, mask)
        y = rearrange(y, "b h t d -> b t (h d)")  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def manual_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """softmax(Q Kᵀ / √D + mask) · V, with mask True where a query may see a key. (B, H, T, D) -> (B, H, T, D)."""
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, S)
        scores = scores.masked_fill(~mask, float("-inf"))  # the "+ mask" term: -inf where not allowed
        weights = F.softmax(scores, dim=-1)  # (B, H, T, S), each row sums to 1
        weights = self.attn_dropout(weights)
        return weights @ v  # (B, H, T, D)


# ----------------------------------------------------------------------------- MLP and block


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> GELU -> C (GELU in GPT-2's tanh form unless configured exact)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig, layer_index: int = 0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_index)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        x = x + self.attn(self.ln_1(x), attention_mask, kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x
