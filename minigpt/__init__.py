"""minigpt: a readable, tested GPT you can pretrain, fine-tune for classification, and sample from."""

from .config import GPTConfig
from .device import autocast, resolve_device, resolve_dtype, seed_everything
from .errors import MiniGPTError, MiniGPTWarning
from .generate import generate, stream
from .heads import ClassificationHead, LMHead
from .layers import Block, CausalSelfAttention, KVCache, MLP, SinusoidalPositionalEmbedding, sinusoidal_table
from .model import GPT, GPTBackbone, GPTClassifier
from .tokenizer import CharTokenizer, GPT2Tokenizer, tokenizer_from_meta

__all__ = [
    "GPT", "GPTBackbone", "GPTClassifier", "GPTConfig", "LMHead", "ClassificationHead", "Block",
    "CausalSelfAttention", "KVCache", "MLP",
    "SinusoidalPositionalEmbedding", "sinusoidal_table", "CharTokenizer", "GPT2Tokenizer",
    "tokenizer_from_meta", "MiniGPTError", "MiniGPTWarning", "generate", "stream", "autocast", "resolve_device", "resolve_dtype",
    "seed_everything",
]
__version__ = "0.1.0"
