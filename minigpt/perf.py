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
    # drawn where they are used, from a private generator: the global RNG must not move (exact resume)
    home = device if cuda else torch.device("cpu")
    gen = torch.Generator(home).manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=home).to(device, dtype)
    b = torch.randn(n, n, generator=gen, device=home).to(device, dtype)
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


# Dense (no sparsity) tensor-core peaks from the vendors' datasheets, in FLOP/s, which ``mfu`` is a
# fraction of on a GPU (as nanoGPT, nanochat and torchtitan report it). float32 is the TF32 tensor-core
# peak where the GPU has one (minigpt's default, tf32 = true). Matched in this order against
# torch.cuda.get_device_name(): a variant before its family (an "H100 PCIe" is not an SXM H100).
HALF_TF32 = lambda half, tf32: {torch.bfloat16: half, torch.float16: half, torch.float32: tf32}  # noqa: E731
DATASHEET_PEAKS = [
    ("H200 NVL", HALF_TF32(835e12, 418e12)),
    ("H200", HALF_TF32(989e12, 495e12)),  # SXM
    ("GH200", HALF_TF32(989e12, 495e12)),
    ("H100 PCIe", HALF_TF32(756e12, 378e12)),
    ("H100 NVL", HALF_TF32(835e12, 418e12)),
    ("H100", HALF_TF32(989e12, 495e12)),  # SXM (HBM3)
    ("H800", HALF_TF32(989e12, 495e12)),
    ("A100", HALF_TF32(312e12, 156e12)),
    ("L40S", HALF_TF32(362e12, 183e12)),
    ("L4", HALF_TF32(121e12, 60e12)),
    ("T4", {torch.float16: 65e12, torch.float32: 8.1e12}),  # no bf16, no TF32
    ("V100", {torch.float16: 125e12, torch.float32: 15.7e12}),
]


def datasheet_peak(device: torch.device, dtype: torch.dtype, name: str | None = None) -> float | None:
    """The datasheet peak of this GPU (or of the GPU called ``name``) in ``dtype``; None off CUDA or
    for a GPU or dtype not in the table."""
    if name is None:
        if device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(device)
    return next((peaks.get(dtype) for key, peaks in DATASHEET_PEAKS if key in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
