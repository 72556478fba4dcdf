"""The network: its configuration, the layers (the math), the backbone and LM, heads, LoRA."""

from .config import GPTConfig
from .heads import ClassificationHead, LMHead
from .layers import Block, CausalSelfAttention, KVCache, MLP, SinusoidalPositionalEmbedding, sinusoidal_table
from .model import GPT, GPTBackbone, GPTClassifier

__all__ = ["GPTConfig", "ClassificationHead", "LMHead", "Block", "CausalSelfAttention", "KVCache", "MLP",
           "SinusoidalPositionalEmbedding", "sinusoidal_table", "GPT", "GPTBackbone", "GPTClassifier"]
