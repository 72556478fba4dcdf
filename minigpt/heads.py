"""Heads: what turns the backbone's hidden states (B, T, C) into an answer."""

from __future__ import annotations

import torch
import torch.nn as nn


class LMHead(nn.Module):
    """Next-token logits: (B, T, C) -> (B, T, V). Its weight can be tied to the token embedding."""

    def __init__(self, n_embd: int, vocab_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, n_embd))  # (V, C), like the embedding table

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, V)
        return hidden @ self.weight.t()
