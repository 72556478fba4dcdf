"""minigpt: a readable, tested GPT you can pretrain, fine-tune for classification, and sample from.

The names below are the library's front door; ``docs/ARCHITECTURE.md`` maps the modules behind them.
"""

from .data.tokenizers import CharTokenizer, GPT2Tokenizer, tokenizer_from_meta
from .device import autocast, resolve_device, resolve_dtype, seed_everything
from .errors import MiniGPTError, MiniGPTWarning
from .infer.generate import generate, stream
from .interop.hf import load_hf, save_hf
from .interop.hf_classifier import save_hf_classifier
from .loading import load_classifier, load_model
from .model.config import GPTConfig
from .model.heads import ClassificationHead, LMHead
from .model.attention import register_attention
from .model.cache import KVCache
from .model.layers import Block, CausalSelfAttention, MLP, SinusoidalPositionalEmbedding, sinusoidal_table
from .model.model import GPT, GPTBackbone, GPTClassifier

__all__ = [
    "GPT", "GPTBackbone", "GPTClassifier", "GPTConfig", "LMHead", "ClassificationHead", "Block",
    "CausalSelfAttention", "KVCache", "MLP", "SinusoidalPositionalEmbedding", "sinusoidal_table",
    "CharTokenizer", "GPT2Tokenizer", "tokenizer_from_meta", "MiniGPTError", "MiniGPTWarning",
    "generate", "stream", "autocast", "resolve_device", "resolve_dtype", "seed_everything",
    "register_attention", "load_model", "load_classifier", "load_hf", "save_hf", "save_hf_classifier",
]
__version__ = "0.1.0"
