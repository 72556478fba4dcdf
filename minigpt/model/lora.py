"""LoRA (Hu et al. 2021): train a low-rank update B·A beside a frozen weight W.

    y = x Wᵀ + b + (alpha / r) · dropout(x) Aᵀ Bᵀ,   A: (r, in), B: (out, r), B starts at zero

so at the start the model is unchanged. ``merge()`` folds the update into W for inference
(no extra cost); ``unmerge()`` takes it out again to keep training.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..errors import MiniGPTError


class LoRALinear(nn.Module):
    """An ``nn.Linear`` with a trainable low-rank update; the original weight and bias are frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if rank < 1:
            raise MiniGPTError(f"LoRA rank must be at least 1, got {rank}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank, self.scale = rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        y = self.base(x)
        if not self.merged:
            y = y + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scale
        return y

    def delta(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scale  # (out, in)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight += self.delta()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta()
            self.merged = False


def apply_lora(module: nn.Module, targets: tuple[str, ...] = ("c_attn",), rank: int = 8, alpha: float = 16.0,
               dropout: float = 0.0) -> list[str]:
    """Replace every ``nn.Linear`` below ``module`` whose qualified name ends with one of ``targets``
    with a ``LoRALinear``: "c_attn", "c_fc", "c_proj" (attention and MLP), or "attn.c_proj" /
    "mlp.c_proj" for just one of them. Returns the qualified names wrapped."""
    wrapped = []
    for parent_name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            qualified = f"{parent_name}.{child_name}".lstrip(".")
            if isinstance(child, nn.Linear) and any(qualified == t or qualified.endswith("." + t) for t in targets):
                setattr(parent, child_name, LoRALinear(child, rank, alpha, dropout))
                wrapped.append(qualified)
    if not wrapped:
        raise MiniGPTError(f"no nn.Linear named any of {targets} was found to wrap with LoRA")
    return wrapped


def lora_layers(module: nn.Module) -> list[LoRALinear]:
    return [m for m in module.modules() if isinstance(m, LoRALinear)]


def merge_lora(module: nn.Module) -> None:
    for layer in lora_layers(module):
        layer.merge()


def unmerge_lora(module: nn.Module) -> None:
    for layer in lora_layers(module):
        layer.unmerge()


def plain_state_dict(module: nn.Module, fold: bool = True) -> dict[str, torch.Tensor]:
    """``module``'s state dict as if it had no LoRA: each ``LoRALinear`` gives ``weight`` and ``bias``
    under the name of the ``nn.Linear`` it wraps, with its update folded in (``fold``) or left out,
    whether it is merged or not."""
    state = {}
    for name, tensor in module.state_dict().items():
        owner, _, leaf = name.rpartition(".")
        if leaf in ("lora_A", "lora_B"):
            continue
        if owner.endswith(".base") or owner == "base":
            layer = module.get_submodule(owner.rpartition(".")[0]) if "." in owner else module
            if leaf == "weight" and fold != layer.merged:
                tensor = tensor + layer.delta() if fold else tensor - layer.delta()
            name = f"{owner.removesuffix('base').rstrip('.')}.{leaf}".lstrip(".")
        state[name] = tensor.detach()
    return state
