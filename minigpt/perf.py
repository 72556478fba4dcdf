"""Throughput accounting: the measured matmul peak of this machine, which MFU is a fraction of.
(A model's FLOPs per token are ``GPT.flops_per_token``.)"""

from __future__ import annotations

import time

import torch


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None,
                        repeats: int = 5) -> float:
    """FLOP/s of square matmuls, best of ``repeats``: the practical peak MFU is measured against.

    On the CPU, one (1024, 1024) @ (1024, 1024) at a time (best of ``repeats`` + a warm-up). On CUDA,
    where one matmul is over before a host timer could see it, 20 back-to-back (8192, 8192) matmuls
    between two CUDA events, best of ``repeats`` such windows.
    """
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 1024)
    gen = torch.Generator().manual_seed(0)  # private: must not move the global RNG (exact resume)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    if cuda:
        per_window, best = 20, 0.0
        torch.matmul(a, b)  # warm-up
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(per_window):
                torch.matmul(a, b)
            end.record()
            end.synchronize()
            best = max(best, per_window * 2 * n**3 / (start.elapsed_time(end) / 1e3))
        return best
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up
        sync(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


# Dense (no sparsity) tensor-core peaks from the vendors' datasheets, in FLOP/s, for reports beside
# the measured peak. Keyed by a substring of torch.cuda.get_device_name().
DATASHEET_PEAKS = {
    "H200": {torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 67e12},
    "H100": {torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 67e12},
    "A100": {torch.bfloat16: 312e12, torch.float16: 312e12, torch.float32: 19.5e12},
    "L4": {torch.bfloat16: 121e12, torch.float16: 121e12, torch.float32: 30e12},
    "T4": {torch.float16: 65e12, torch.float32: 8.1e12},
    "V100": {torch.float16: 125e12, torch.float32: 15.7e12},
}


def datasheet_peak(device: torch.device, dtype: torch.dtype) -> float | None:
    """The datasheet peak of this GPU in ``dtype`` (None off CUDA or for a GPU not in the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks.get(dtype) for key, peaks in DATASHEET_PEAKS.items() if key in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
