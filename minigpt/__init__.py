"""minigpt: a readable, tested GPT you can pretrain, fine-tune for classification, and sample from."""

from .config import GPTConfig
from .device import autocast, resolve_device, resolve_dtype, seed_everything
from .errors import MiniGPTError
from .generate import generate
from .heads import LMHead
from .layers import Block, CausalSelfAttention, MLP, SinusoidalPositionalEmbedding, sinusoidal_table
from .model import GPT, GPTBackbone
from .tokenizer import CharTokenizer, GPT2Tokenizer, tokenizer_from_meta

__all__ = [
    "GPT", "GPTBackbone", "GPTConfig", "LMHead", "Block", "CausalSelfAttention", "MLP",
    "SinusoidalPositionalEmbedding", "sinusoidal_table", "CharTokenizer", "GPT2Tokenizer",
    "tokenizer_from_meta", "MiniGPTError", "generate", "autocast", "resolve_device", "resolve_dtype",
    "seed_everything",
]
__version__ = "0.1.0"
