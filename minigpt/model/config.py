"""``GPTConfig``: the shape of a decoder-only transformer, validated on construction.

Each field is stated once here, with its help text and allowed values; the training configs derive
their model keys from these fields. Three fields are run-time choices rather than architecture:
``dropout``, ``attn_backend`` and ``grad_checkpoint`` (see ``RUNTIME_FIELDS``). They may differ
between runs of the same weights (fine-tuning with more dropout, checking with the manual
attention), so checkpoints are compared on ``architecture()`` alone.

A field that the other fields make inapplicable (``rope_theta`` without rotary positions) is a
``MiniGPTWarning``, not an error: it changes nothing the model computes, and an error would make
checkpoints that were saved with it unloadable.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

from ..config_schema import AT_LEAST_0, AT_LEAST_1, POSITIVE, UNIT, Range, check_settings, setting
from ..errors import MiniGPTError, MiniGPTWarning
from .attention import ATTENTION_BACKENDS  # name -> kernel: fused F.scaled_dot_product_attention | the softmax written out

ACTIVATIONS = ("gelu_tanh", "gelu")  # GPT-2's tanh approximation of GELU | the exact (erf) form
POSITIONAL_EMBEDDINGS = ("learned", "sinusoidal", "rope")  # a trained table (GPT-2) | fixed sinusoids | rotary (Llama)
NORMS = ("layernorm", "rmsnorm")  # LayerNorm (GPT-2) | RMSNorm (Llama, Qwen2)
MLPS = ("gelu", "swiglu", "relu2")  # C -> 4C -> GELU -> C (GPT-2) | gated SiLU (Llama, Qwen2) | ReLU² (speedrun)
RUNTIME_FIELDS = ("dropout", "attn_backend", "grad_checkpoint")  # not architecture: may change between runs


@dataclass
class GPTConfig:
    """Architecture of a decoder-only transformer.

    The defaults are the GPT-2 124M shape (12 layers, 12 heads, 768 channels, 1024 positions,
    the 50,257-token GPT-2 vocabulary, LM head tied to the token embedding).
    """

    vocab_size: int = setting(50257, "tokens in the vocabulary (set from the tokenizer)", within=AT_LEAST_1)
    pad_vocab_multiple: int = setting(1, "round the embedding and LM head up to a multiple of this many rows (64 "
                                         "makes the largest matmul faster on a GPU); the extra rows stay zero and "
                                         "are never sampled or exported", within=AT_LEAST_1)
    block_size: int = setting(1024, "context length in tokens", within=AT_LEAST_1)
    n_layer: int = setting(12, "transformer blocks", within=AT_LEAST_1)
    n_head: int = setting(12, "attention heads per block", within=AT_LEAST_1)
    n_embd: int = setting(768, "channels of the residual stream (a multiple of n_head)", within=AT_LEAST_1)
    bias: bool = setting(True, "biases in Linear and LayerNorm layers (GPT-2 has them)")
    pos_embedding: str = setting("learned", "positional embedding", POSITIONAL_EMBEDDINGS)
    rope_theta: float = setting(10000.0, "rope: base θ; channel pair k of a head turns by position·θ^(-2k/D)",
                                within=POSITIVE)
    tie_weights: bool = setting(True, "the LM head shares its matrix with the token embedding")
    norm: str = setting("layernorm", "the norm before each sublayer and at the end", NORMS)
    layer_norm_eps: float = setting(1e-5, "epsilon of every norm (LayerNorm or RMSNorm)",
                                    within=Range(0, 1, low_open=True, high_open=True))
    mlp: str = setting("gelu", "feed-forward form (relu2: squared ReLU, as the GPT-2 speedrun and nanochat)", MLPS)
    mlp_hidden: int = setting(0, "hidden width of the MLP (0: 4·n_embd for gelu and relu2; for swiglu 8/3·n_embd, "
                                 "rounded up to a multiple of 64)", within=AT_LEAST_0)
    activation: str = setting("gelu_tanh", "the gelu MLP's activation: GPT-2's tanh GELU, or the exact one (faster on "
                                           "some CPUs)", ACTIVATIONS)
    n_kv_head: int = setting(0, "key/value heads, shared by groups of query heads (0: n_head, plain multi-head; "
                                "1: multi-query)", within=AT_LEAST_0)
    qk_norm: bool = setting(False, "RMSNorm on each head's queries and keys (as Qwen3, OLMo-2)")
    qkv_bias: bool = setting(False, "biases on the query/key/value projection even when bias is false (Qwen2)")
    logit_softcap: float = setting(0.0, "cap·tanh(logits / cap) on the LM head's logits, so none exceeds the cap "
                                        "(Gemma 2, the speedrun; 0: off)", within=AT_LEAST_0)
    zero_init_proj: bool = setting(False, "initialise the projections into the residual stream (attention out, MLP "
                                          "down) to zero, so each block starts as the identity (the speedrun)")
    # run-time choices (RUNTIME_FIELDS)
    dropout: float = setting(0.0, "dropout on embeddings, attention weights and residual branches", within=UNIT)
    attn_backend: str = setting("sdpa", "attention: fused kernel, or the explicit softmax written out",
                                ATTENTION_BACKENDS)
    grad_checkpoint: bool = setting(False, "recompute each block's activations in the backward pass instead of "
                                           "keeping them (less memory for long contexts, about a third more compute)")

    def __post_init__(self) -> None:
        self.validate()
        for message in self.inapplicable():  # (from this line: shown once, however often a config is copied)
            warnings.warn(message, MiniGPTWarning, stacklevel=1)

    def inapplicable(self) -> list[str]:
        """One line for each field set away from its default that the other fields make unused."""
        lines = []
        default_theta = GPTConfig.__dataclass_fields__["rope_theta"].default
        if self.pos_embedding != "rope" and self.rope_theta != default_theta:
            lines.append(f"GPTConfig.rope_theta ({self.rope_theta:g}) is used only with pos_embedding 'rope'; with "
                         f"{self.pos_embedding!r} positions it changes nothing")
        return lines

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab(self) -> int:
        """Rows of the embedding and the LM head: vocab_size rounded up to pad_vocab_multiple."""
        return self.pad_vocab_multiple * math.ceil(self.vocab_size / self.pad_vocab_multiple)

    @property
    def kv_heads(self) -> int:
        """Key/value heads: n_kv_head, or n_head when it is 0."""
        return self.n_kv_head or self.n_head

    @property
    def hidden(self) -> int:
        """The MLP's hidden width."""
        if self.mlp_hidden:
            return self.mlp_hidden
        return 64 * math.ceil(8 * self.n_embd / 3 / 64) if self.mlp == "swiglu" else 4 * self.n_embd

    def validate(self) -> None:
        """Raise ``MiniGPTError`` naming the first field whose value is not usable."""
        check_settings(self, prefix="GPTConfig.")
        if self.n_embd % self.n_head != 0:
            raise MiniGPTError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by GPTConfig.n_head ({self.n_head})"
            )
        if self.n_head % self.kv_heads != 0:
            raise MiniGPTError(f"GPTConfig.n_head ({self.n_head}) must be a multiple of GPTConfig.n_kv_head "
                               f"({self.n_kv_head}): each key/value head serves a whole group of query heads")
        if self.pos_embedding == "rope" and self.head_dim % 2:
            raise MiniGPTError(f"GPTConfig.pos_embedding 'rope' turns pairs of channels: the head dim "
                               f"n_embd / n_head = {self.head_dim} must be even")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def architecture(self) -> dict[str, Any]:
        """The fields that fix the weights' shapes and meaning (everything but ``RUNTIME_FIELDS``)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}

    def with_runtime(self, **runtime: Any) -> "GPTConfig":
        """A copy with other run-time choices (``RUNTIME_FIELDS``); ``None`` keeps a value."""
        wrong = sorted(set(runtime) - set(RUNTIME_FIELDS))
        if wrong:
            raise MiniGPTError(f"{wrong} are architecture, not run-time choices ({', '.join(RUNTIME_FIELDS)})")
        return dataclasses.replace(self, **{k: v for k, v in runtime.items() if v is not None})

    def differences(self, other: "GPTConfig") -> list[str]:
        """``"name: a != b"`` for each architecture field in which ``other`` differs."""
        mine, theirs = self.architecture(), other.architecture()
        return [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GPTConfig":
        """Build a config from a plain dict; an unknown key is an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MiniGPTError(f"unknown GPTConfig key(s) {unknown}; expected some of {sorted(known)}")
        return cls(**values)
