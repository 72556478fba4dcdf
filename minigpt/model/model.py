"""The GPT: a backbone (embeddings, blocks, final LayerNorm) and a head on top of it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from ..checkpoint import load_weights
from ..files import load_tensors, read_safetensors_metadata, save_tensors
from ..errors import MiniGPTError
from .config import GPTConfig
from .heads import ClassificationHead, LMHead
from .attention import padding_causal_mask
from .cache import KVCache, StaticKVCache
from .layers import Block, RMSNorm, RotaryEmbedding, norm_layer, positional_embedding


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token counting real tokens only: (B, T) mask -> (B, T) positions.

    With left padding, a row's first real token gets position 0, exactly as if the row were alone.
    Padding slots get position 0 (they are masked out anyway).
    """
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def decay_groups(params, weight_decay: float, **extra) -> list[dict]:
    """AdamW groups of the trainable ``params``: matrices and embeddings (≥ 2-D) decay; biases and
    LayerNorm gains do not. ``extra`` keys (e.g. ``lr_scale``) go into both groups; empty groups are left out."""
    params = [p for p in params if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, **extra},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, **extra},
    ]
    return [g for g in groups if g["params"]]


def adamw(groups: list[dict], learning_rate: float, betas: tuple[float, float], device_type: str) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this torch has one for the device (CUDA; also the CPU from
    torch 2.4, where it is about 3x faster than the per-tensor loop)."""
    if device_type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=True)
        except (RuntimeError, TypeError):  # older torch: no fused kernel for this device
            pass
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)


class GPTBackbone(nn.Module):
    """Token embeddings (+ a position table, unless positions are rotary), ``n_layer`` pre-norm
    blocks, a final norm: ids (B, T) -> hidden (B, T, C)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab, config.n_embd)  # token embedding (V, C), V padded
        self.wpe = positional_embedding(config)  # learned (block_size, C) table, fixed sinusoids, or None
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta) if config.pos_embedding == "rope" else None
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = norm_layer(config)

    def forward(
        self,
        idx: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """idx (B, T) new tokens; attention_mask (B, S) over cached + new tokens; position_ids (B, T)
        or (T,), by default counted from the mask (or from the cache length); kv_cache is read and
        extended by T positions. Returns hidden states (B, T, C)."""
        B, T = idx.shape
        if kv_cache is not None and kv_cache.static:
            if position_ids is None or attention_mask is None:
                raise MiniGPTError("a static KV cache needs position_ids and the attention_mask over all its slots")
        else:
            past = kv_cache.length if kv_cache is not None else 0
            if past + T > self.config.block_size:
                raise MiniGPTError(f"sequence length {past + T} exceeds block_size {self.config.block_size}")
            if position_ids is None:
                if attention_mask is None:
                    position_ids = torch.arange(past, past + T, device=idx.device)  # (T,)
                else:
                    position_ids = positions_from_mask(attention_mask)[:, past:]  # (B, T)
        mask = self.block_mask(attention_mask, T, kv_cache)  # None or (B, 1, T, S)
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(position_ids)
        x = self.drop(x)
        rope = self.rotary(position_ids) if self.rotary is not None else None  # cos, sin: (B or 1, 1, T, D)
        for block in self.h:
            if self.config.grad_checkpoint and self.training and torch.is_grad_enabled():
                # keep only each block's input; its activations are recomputed in the backward pass
                x = torch.utils.checkpoint.checkpoint(block, x, mask, kv_cache, rope, use_reentrant=False)
            else:
                x = block(x, mask, kv_cache, rope)  # (B, T, C)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.ln_f(x)  # (B, T, C)

    @staticmethod
    def block_mask(attention_mask: torch.Tensor | None, T: int, kv_cache: KVCache | None) -> torch.Tensor | None:
        """The one mask every block's attention reads, built once here: None for plain causal attention
        (no padding; the T queries are the last of the keys, which each kernel masks itself), else
        (B, 1, T, S) bool, True where a query may see a key, S = cached + T keys (every slot of a
        static cache). A sliding-window or document mask is a change here."""
        if kv_cache is not None and kv_cache.static:
            return padding_causal_mask(attention_mask, T, query_start=kv_cache.pos)  # (B, 1, T, max_len)
        if attention_mask is not None:
            return padding_causal_mask(attention_mask, T)  # (B, 1, T, S)
        return None

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None,
                     static: bool = False) -> KVCache:
        """An empty cache for ``batch_size`` sequences of up to ``max_len`` (default block_size) tokens,
        in ``dtype`` (default: the weights')."""
        cfg = self.config
        weight = self.wte.weight
        kind = StaticKVCache if static else KVCache
        return kind(cfg.n_layer, batch_size, cfg.kv_heads, max_len or cfg.block_size, cfg.head_dim, weight.device,
                    dtype or weight.dtype)


class GPT(nn.Module):
    """A decoder-only transformer language model.

    ``model(idx, targets)`` returns ``(logits, loss)``: logits (B, T, V) and, when targets (B, T)
    are given, the mean next-token cross-entropy over targets that are not -100.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.backbone = GPTBackbone(config)
        self.head = LMHead(config.n_embd, config.padded_vocab)
        if config.tie_weights:
            self.head.weight = self.backbone.wte.weight  # one (V, C) matrix reads and writes tokens
        self.reset_parameters()

    # --------------------------------------------------------------------------- init

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02) for weights and embeddings, zero biases, LayerNorm at
        identity, and the projections that write into the residual stream scaled by 1/√(2·n_layer)
        so the stream's variance does not grow with depth (or zero, with ``zero_init_proj``)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                module.reset_parameters()
        if not self.config.tie_weights:
            nn.init.normal_(self.head.weight, mean=0.0, std=0.02)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if self.config.zero_init_proj:  # each block starts as the identity; the gradient still reaches it
                    nn.init.zeros_(param)
                else:
                    nn.init.normal_(param, mean=0.0, std=residual_std)
        with torch.no_grad():  # padding rows: zero, and they stay so (their logits are cut off, so no gradient)
            self.backbone.wte.weight[self.config.vocab_size:].zero_()
            self.head.weight[self.config.vocab_size:].zero_()

    # --------------------------------------------------------------------------- forward

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids; targets (B, T) next-token ids or -100 to ignore; attention_mask
        (B, T) 1 for tokens, 0 for padding (with a cache: (B, cached + T)). Returns logits (B, T, V)
        and the loss (or None). ``logits_to_keep=k`` computes logits for the last k positions only
        (generation needs just the last one; the LM head is the largest matmul at inference)."""
        if logits_to_keep and targets is not None:
            raise MiniGPTError("logits_to_keep is for inference; the loss needs logits at every position")
        hidden = self.backbone(idx, attention_mask=attention_mask, position_ids=position_ids,
                               kv_cache=kv_cache)  # (B, T, C)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]  # (B, k, C)
        logits = self.head(hidden)  # (B, T, V padded)
        if self.config.logit_softcap:  # smoothly bounded to (-cap, cap)
            logits = self.config.logit_softcap * torch.tanh(logits / self.config.logit_softcap)
        if self.config.padded_vocab != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]  # (B, T, V): padding is never a prediction
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss

    # --------------------------------------------------------------------------- bookkeeping

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters counted once each (a tied matrix once). ``non_embedding`` leaves out the
        lookup tables, the usual convention for scaling laws and FLOP counts: the position table,
        and the token table unless it is tied (then it doubles as the LM head, a matmul)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if isinstance(self.backbone.wpe, nn.Embedding):
                n -= self.backbone.wpe.weight.numel()
            if not self.config.tie_weights:
                n -= self.backbone.wte.weight.numel()
        return n

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups of the trainable parameters (see ``decay_groups``)."""
        return decay_groups(self.parameters(), weight_decay)

    def configure_optimizer(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float], device_type: str
    ) -> torch.optim.AdamW:
        """AdamW over ``param_groups`` (see ``adamw``)."""
        return adamw(self.param_groups(weight_decay), learning_rate, betas, device_type)

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N for the matmuls with the weights (forward 2N, backward 4N), plus
        12·L·H·D·T for the attention scores and their weighted sum (PaLM paper, appendix B), with
        N = ``num_parameters(non_embedding=True)`` (a lookup table is not a matmul)."""
        c = self.config
        return 6 * self.num_parameters(non_embedding=True) + 12 * c.n_layer * c.n_head * c.head_dim * c.block_size


class GPTClassifier(nn.Module):
    """A GPT backbone with swappable task heads (e.g. one per data set).

    ``model(idx, attention_mask=mask, labels=labels)`` returns ``(logits (B, n_classes), loss or None)`` from
    the active head. Heads are kept in ``self.heads`` by name; ``add_head`` / ``use_head`` /
    ``remove_head`` never touch the backbone, and ``save_head`` / ``load_head`` move a head alone.
    """

    def __init__(self, backbone: GPTBackbone, head: nn.Module, name: str = "default"):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict({name: head})
        self.active = name

    @classmethod
    def from_gpt(cls, gpt: GPT, head: nn.Module, name: str = "default") -> "GPTClassifier":
        """Take the backbone of a (pretrained) language model; its LM head is left behind."""
        return cls(gpt.backbone, head, name)

    @property
    def head(self) -> nn.Module:
        return self.heads[self.active]

    def add_head(self, name: str, head: nn.Module, use: bool = True) -> None:
        self.heads[name] = head
        if use:
            self.active = name

    def use_head(self, name: str) -> None:
        if name not in self.heads:
            raise MiniGPTError(f"no head named {name!r}; have {list(self.heads)}")
        self.active = name

    def remove_head(self, name: str) -> None:
        """Drop a head that is not the active one."""
        if name not in self.heads:
            raise MiniGPTError(f"no head named {name!r}; have {list(self.heads)}")
        if name == self.active:
            raise MiniGPTError(f"head {name!r} is the active one; use_head another before removing it")
        del self.heads[name]

    def forward(
        self,
        idx: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        class_weights: torch.Tensor | None = None,
        right_padded: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``right_padded``: the padding is at the end of each row, where causal attention already
        keeps it from every real token; the mask then only guides the pooling and attention runs
        unmasked (the flash kernel, no (B, 1, T, S) mask per batch). Left padding needs it in attention."""
        hidden = self.backbone(idx, attention_mask=None if right_padded else attention_mask)  # (B, T, C)
        logits = self.head(hidden, attention_mask)  # (B, n_classes)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels, weight=class_weights)
        return logits, loss

    def save_head(self, path: str | Path, name: str | None = None, extra: dict | None = None) -> None:
        """Write one head (default: the active one) as safetensors, with what rebuilds it."""
        head = self.heads[name or self.active]
        meta = {"head": head.spec(), **(extra or {})}
        save_tensors(path, dict(head.state_dict()), metadata={"minigpt_head": json.dumps(meta)})

    def load_head(self, path: str | Path, name: str = "default", use: bool = True) -> dict:
        """Add the head saved at ``path`` under ``name``; returns the saved metadata."""
        meta = read_safetensors_metadata(path, "minigpt_head")
        head = ClassificationHead.from_spec(meta.get("head", {}), source=str(path))
        if head.spec()["n_embd"] != self.backbone.config.n_embd:
            raise MiniGPTError(f"{path}: head expects {head.spec()['n_embd']} channels, "
                               f"backbone has {self.backbone.config.n_embd}")
        load_weights(head, load_tensors(path), str(path))
        self.add_head(name, head.to(self.backbone.wte.weight.device), use)
        return meta
