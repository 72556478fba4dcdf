"""Throughput accounting: the measured matmul peak of this machine, which MFU is a fraction of.
(A model's FLOPs per token are ``GPT.flops_per_token``.)"""

from __future__ import annotations

import time

import torch


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
