"""The math of a GPT, one module per concept: positions (learned, sinusoidal, rotary), norms
(LayerNorm, RMSNorm), attention (multi-head, grouped-query, optional QK-norm; its kernels and masks
are in ``attention.py``), the MLP (GELU or SwiGLU) and the residual block. Which form each takes is a field of ``GPTConfig``.

Shapes: B batch, T time (new tokens), S keys (cached + new), C channels (n_embd), H query heads,
Hkv key/value heads, D head dim (C / H), V vocab.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ..errors import MiniGPTError
from .attention import ATTENTION_BACKENDS
from .cache import KVCache
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


def positional_embedding(config: GPTConfig) -> nn.Module | None:
    """What is added to the token embeddings: a table, or nothing (rotary positions act in attention)."""
    if config.pos_embedding == "sinusoidal":
        return SinusoidalPositionalEmbedding(config.block_size, config.n_embd)
    if config.pos_embedding == "rope":
        return None
    return LearnedPositionalEmbedding(config.block_size, config.n_embd)


class RotaryEmbedding(nn.Module):
    """Rotary positions (RoFormer, Su et al. 2021): in each head, the pair of channels (k, k + D/2)
    is turned by the angle position · θ^(-2k/D), so q·k depends on positions only through their
    difference. (The paper pairs 2k with 2k + 1; pairing k with k + D/2, as Llama's Hugging Face
    checkpoints do, is the same rotation of a permuted vector.)"""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (D/2,) θ^(-2k/D)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (T,) or (B, T) -> cos, sin of shape (1, 1, T, D) or (B, 1, T, D), ready for (B, H, T, D)."""
        angle = positions[..., None].float() * self.inv_freq  # (..., T, D/2)
        angle = torch.cat([angle, angle], dim=-1)  # (..., T, D): channel k and k + D/2 turn alike
        if angle.dim() == 2:
            angle = angle[None]  # (1, T, D)
        return angle.cos()[:, None], angle.sin()[:, None]  # (B or 1, 1, T, D)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Turn each pair (x_k, x_{k+D/2}) by its angle: (a, b) -> (a cos - b sin, b cos + a sin). (B, H, T, D)."""
    first, second = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
    turned = torch.cat([-second, first], dim=-1)  # the pair's partner, rotated a quarter turn
    return (x * cos + turned * sin).to(x.dtype)


# ----------------------------------------------------------------------------- norms


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · g (Zhang & Sennrich 2019): LayerNorm without the mean or a bias.
    Computed in float32 whatever the input's dtype, as Llama does."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim) -> (..., dim)
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def norm_layer(config: GPTConfig, dim: int | None = None) -> nn.Module:
    """The configured norm over the last ``dim`` channels (default n_embd)."""
    dim = dim or config.n_embd
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.layer_norm_eps)
    return nn.LayerNorm(dim, eps=config.layer_norm_eps, bias=config.bias)


# ----------------------------------------------------------------------------- attention


class CausalSelfAttention(nn.Module):
    """Masked self-attention with grouped-query heads, through a kernel of ``ATTENTION_BACKENDS``.

    ``sdpa``: ``F.scaled_dot_product_attention``, which dispatches to a fused kernel (flash or
    memory-efficient attention on the GPU). ``manual``: the formula written out,
    ``softmax(Q Kᵀ / √D + mask) · V``, for reading and for checking the fused path. With
    n_kv_head < n_head, each key/value head is shared by n_head / n_kv_head query heads.
    """

    def __init__(self, config: GPTConfig, layer_index: int = 0):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.backend = config.attn_backend
        self.dropout = config.dropout
        self.layer_index = layer_index  # which slot of a KVCache is this layer's
        q_width, kv_width = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.split = (q_width, kv_width, kv_width)
        self.c_attn = nn.Linear(config.n_embd, q_width + 2 * kv_width, bias=config.bias or config.qkv_bias)  # Q, K, V
        self.c_proj = nn.Linear(q_width, config.n_embd, bias=config.bias)
        self.q_norm = RMSNorm(self.head_dim, config.layer_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.layer_norm_eps) if config.qk_norm else None
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x: (B, T, C) the new tokens' states; mask: None (plain causal, the queries last among the
        keys) or (B or 1, 1, T, S) bool over all S = cached + T keys, as the backbone builds it once
        for every layer; kv_cache: keys/values of earlier tokens; rope: the rotary (cos, sin) of the
        new tokens' positions. Returns (B, T, C)."""
        q, k, v = self.c_attn(x).split(self.split, dim=-1)
        q = rearrange(q, "b t (h d) -> b h t d", h=self.n_head)  # (B, H, T, D)
        k = rearrange(k, "b t (h d) -> b h t d", h=self.n_kv_head)  # (B, Hkv, T, D)
        v = rearrange(v, "b t (h d) -> b h t d", h=self.n_kv_head)  # (B, Hkv, T, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_index, k, v)  # (B, Hkv, S, D), S = past + T (every slot if static)
        if mask is not None and mask.dim() != 4:
            raise MiniGPTError(f"attention takes a (B, 1, T, S) mask (GPTBackbone.block_mask builds it from a (B, S) "
                               f"padding mask); got shape {tuple(mask.shape)}")
        kernel = ATTENTION_BACKENDS[self.backend]
        y = kernel(q, k, v, mask, self.dropout if self.training else 0.0)  # (B, H, T, D)
        y = rearrange(y, "b h t d -> b t (h d)")  # (B, T, H·D)
        return self.resid_dropout(self.c_proj(y))


# ----------------------------------------------------------------------------- MLP and block


class MLP(nn.Module):
    """Position-wise feed-forward, C -> hidden -> C, in one of three forms:

    ``gelu``: GELU(x W_fc) W_proj (GPT-2; GELU in its tanh form unless configured exact);
    ``swiglu``: (SiLU(x W_gate) ⊙ x W_up) W_proj (Shazeer 2020; Llama), with W_gate and W_up in one
    matmul, ``c_fc``, whose output is split in two;
    ``relu2``: ReLU(x W_fc)² W_proj (So et al. 2021, "Primer"; the GPT-2 speedrun).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.hidden
        self.gated, self.squared_relu = config.mlp == "swiglu", config.mlp == "relu2"
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden if self.gated else hidden, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        if self.gated:
            gate, up = self.c_fc(x).chunk(2, dim=-1)  # (B, T, hidden) each
            return self.dropout(self.c_proj(F.silu(gate) * up))
        if self.squared_relu:
            return self.dropout(self.c_proj(F.relu(self.c_fc(x)).square()))  # (B, T, hidden) -> (B, T, C)
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig, layer_index: int = 0):
        super().__init__()
        self.ln_1 = norm_layer(config)
        self.attn = CausalSelfAttention(config, layer_index)
        self.ln_2 = norm_layer(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        x = x + self.attn(self.ln_1(x), mask, kv_cache, rope)
        x = x + self.mlp(self.ln_2(x))
        return x
