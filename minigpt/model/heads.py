"""Heads: what turns the backbone's hidden states (B, T, C) into an answer.

Every head takes ``(hidden (B, T, C), attention_mask (B, T) or None)``. The backbone never knows
which head sits on it, so heads can be swapped, saved and loaded on their own.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import MiniGPTError

POOLINGS = ("last", "mean", "first", "max", "concat")
CONCAT = ("last", "max", "mean")  # what "concat" puts side by side: (B, 3C); every other pooling gives (B, C)


class LMHead(nn.Module):
    """Next-token logits: (B, T, C) -> (B, T, V). Its weight can be tied to the token embedding."""

    def __init__(self, n_embd: int, vocab_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, n_embd))  # (V, C), like the embedding table

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return hidden @ self.weight.t()  # (B, T, C) -> (B, T, V)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """One vector per sequence from (B, T, C), ignoring padding: (B, C).

    "last": the last real token (in a causal model the only one that has read the whole text);
    "mean": the average over real tokens; "first": the first real token; "max": each feature's
    largest value over real tokens; "concat": [last; max; mean] side by side, (B, 3C) (ULMFiT's
    concat pooling, Howard & Ruder 2018). Works for right or left padding, since real positions are
    read from the mask.
    """
    B, T, _ = hidden.shape
    if attention_mask is None:
        attention_mask = torch.ones(B, T, dtype=torch.long, device=hidden.device)
    mask = attention_mask.to(hidden.dtype)  # (B, T)
    positions = torch.arange(T, device=hidden.device)  # (T,)
    rows = torch.arange(B, device=hidden.device)
    if how == "last":
        last = torch.where(attention_mask.bool(), positions, -1).max(dim=1).values  # (B,)
        return hidden[rows, last.clamp(min=0)]  # (B, C)
    if how == "first":
        first = torch.where(attention_mask.bool(), positions, T).min(dim=1).values  # (B,)
        return hidden[rows, first.clamp(max=T - 1)]  # (B, C)
    if how == "mean":
        summed = (hidden * mask[..., None]).sum(dim=1)  # (B, C)
        return summed / mask.sum(dim=1, keepdim=True).clamp(min=1)
    if how == "max":
        real = attention_mask.bool()[..., None]  # (B, T, 1)
        largest = hidden.masked_fill(~real, float("-inf")).amax(dim=1)  # (B, C)
        return torch.where(real.any(dim=1), largest, 0.0)  # a row with no real token pools to 0, as "mean" does
    if how == "concat":
        return torch.cat([pool(hidden, attention_mask, part) for part in CONCAT], dim=-1)  # (B, 3C)
    raise MiniGPTError(f"unknown pooling {how!r}; expected one of {POOLINGS}")


class ClassificationHead(nn.Module):
    """Text classification on top of the backbone: pool (B, T, C) -> (B, C) (or (B, 3C) for "concat"),
    then an optional hidden layer (Linear -> GELU) and dropout, then Linear -> (B, n_classes) logits
    (with a bias unless ``bias=False``, as Hugging Face's ``score`` layer)."""

    def __init__(self, n_embd: int, n_classes: int, pooling: str = "last", hidden: int | None = None,
                 dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if n_classes < 2:
            raise MiniGPTError(f"a classification head needs at least 2 classes, got {n_classes}")
        if pooling not in POOLINGS:
            raise MiniGPTError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        self.n_embd, self.n_classes, self.pooling, self.hidden = n_embd, n_classes, pooling, hidden
        pooled = n_embd * (len(CONCAT) if pooling == "concat" else 1)
        width = hidden or pooled
        self.proj = nn.Sequential(nn.Linear(pooled, hidden), nn.GELU()) if hidden else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(width, n_classes, bias=bias)
        nn.init.normal_(self.out.weight, std=0.02)
        if bias:
            nn.init.zeros_(self.out.bias)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = pool(hidden, attention_mask, self.pooling)  # (B, C), or (B, 3C) for "concat"
        return self.out(self.dropout(self.proj(pooled)))  # (B, n_classes)

    def spec(self) -> dict:
        """What builds this head again (stored beside its weights): see ``from_spec``."""
        return {"n_embd": self.n_embd, "n_classes": self.n_classes, "pooling": self.pooling,
                "hidden": self.hidden, "dropout": self.dropout.p, "bias": self.out.bias is not None}

    @classmethod
    def from_spec(cls, spec: dict, source: str = "head") -> "ClassificationHead":
        """An untrained head shaped as ``spec()`` described it (its weights are loaded afterwards)."""
        try:
            return cls(spec["n_embd"], spec["n_classes"], spec["pooling"], spec["hidden"], spec["dropout"],
                       spec.get("bias", True))  # checkpoints before head_bias always had one
        except (KeyError, TypeError) as err:
            raise MiniGPTError(f"{source}: the head description {spec!r} is incomplete ({err})") from None
