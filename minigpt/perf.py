"""Throughput accounting: model FLOPs per token and the measured matmul peak of this machine."""

from __future__ import annotations

import time

import torch

from .config import GPTConfig


def flops_per_token(config: GPTConfig, n_params: int) -> float:
    """Training FLOPs per token: 6N for the matmuls with the weights (forward 2N, backward 4N),
    plus 12·L·H·Q·T for the attention scores and their weighted sum (PaLM paper, appendix B).
    N excludes the position table (it is a lookup, not a matmul)."""
    L, H, Q, T = config.n_layer, config.n_head, config.head_dim, config.block_size
    return 6 * n_params + 12 * L * H * Q * T


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` FLOP/s of an (n, n) @ (n, n) matmul: the practical peak MFU is measured against."""
    gen = torch.Generator().manual_seed(0)  # private: must not move the global RNG (exact resume)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up
        sync(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
