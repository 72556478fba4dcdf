"""The network: its configuration, the layers (the math), the backbone and LM, heads, LoRA."""

from .config import GPTConfig
from .heads import ClassificationHead, LMHead
from .attention import ATTENTION_BACKENDS, register_attention
from .cache import KVCache, StaticKVCache
from .layers import Block, CausalSelfAttention, MLP, SinusoidalPositionalEmbedding, sinusoidal_table
from .model import GPT, GPTBackbone, GPTClassifier

__all__ = ["GPTConfig", "ClassificationHead", "LMHead", "Block", "CausalSelfAttention", "KVCache", "StaticKVCache", "ATTENTION_BACKENDS", "register_attention", "MLP",
           "SinusoidalPositionalEmbedding", "sinusoidal_table", "GPT", "GPTBackbone", "GPTClassifier"]
