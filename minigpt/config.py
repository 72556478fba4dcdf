"""Typed model configuration.

``GPTConfig`` holds the architecture; ``validate()`` runs on construction so a bad value fails
early with a message that names the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import MiniGPTError

ATTENTION_BACKENDS = ("sdpa", "manual")
POSITIONAL_EMBEDDINGS = ("learned", "sinusoidal")


@dataclass
class GPTConfig:
    """Architecture of a decoder-only transformer.

    The defaults are the GPT-2 124M shape (12 layers, 12 heads, 768 channels, 1024 positions,
    the 50,257-token GPT-2 vocabulary, LM head tied to the token embedding).
    """

    vocab_size: int = 50257
    block_size: int = 1024  # longest sequence the model can see
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # on embeddings, attention weights and residual branches
    bias: bool = True  # biases in Linear and LayerNorm layers (GPT-2 has them)
    pos_embedding: str = "learned"  # "learned" (GPT-2) or "sinusoidal" (Vaswani et al. 2017)
    attn_backend: str = "sdpa"  # "sdpa" (fused kernel) or "manual" (explicit softmax(QK^T/sqrt(d))V)
    tie_weights: bool = True  # LM head shares its matrix with the token embedding
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def validate(self) -> None:
        """Raise ``MiniGPTError`` naming the first field whose value is not usable."""
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MiniGPTError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise MiniGPTError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by GPTConfig.n_head ({self.n_head})"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise MiniGPTError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.attn_backend not in ATTENTION_BACKENDS:
            raise MiniGPTError(
                f"GPTConfig.attn_backend must be one of {ATTENTION_BACKENDS}, got {self.attn_backend!r}"
            )
        if self.pos_embedding not in POSITIONAL_EMBEDDINGS:
            raise MiniGPTError(
                f"GPTConfig.pos_embedding must be one of {POSITIONAL_EMBEDDINGS}, got {self.pos_embedding!r}"
            )
        if not self.layer_norm_eps > 0:
            raise MiniGPTError(f"GPTConfig.layer_norm_eps must be positive, got {self.layer_norm_eps!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GPTConfig":
        """Build a config from a plain dict; an unknown key is an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MiniGPTError(f"unknown GPTConfig key(s) {unknown}; expected some of {sorted(known)}")
        return cls(**values)
