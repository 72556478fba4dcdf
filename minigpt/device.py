"""Device, dtype, autocast and seeding: the one place that decides where and how tensors run.

Everything else asks this module instead of testing ``torch.cuda.is_available()`` itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import re
import sys
import warnings
from typing import Iterator

import numpy as np
import torch

from .errors import MiniGPTError, MiniGPTWarning

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; any explicit name is checked for availability."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise MiniGPTError(f"unknown device {name!r}; expected {DEVICE_HELP}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MiniGPTError(f"device {name!r} requested but CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise MiniGPTError(f"device {name!r} requested but MPS is not available on this machine")
    return device


def resolve_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """The compute dtype for autocast.

    ``"auto"``: on CUDA, bfloat16 where the GPU runs it natively, else float16 (with a grad scaler
    in training); float32 on the CPU and MPS (``"bfloat16"`` may still be asked for explicitly).
    """
    if name == "auto":
        if device.type == "cuda":  # bf16 where the GPU has it natively (A100, H100, ...), else fp16 (T4, V100)
            return torch.bfloat16 if native_bf16(device) else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise MiniGPTError(f"unknown dtype {name!r}; expected auto or one of {sorted(DTYPES)}")
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise MiniGPTError("dtype 'float16' is not supported on the CPU; use 'bfloat16' or 'float32'")
    if dtype == torch.bfloat16 and not native_bf16(device):
        if device.type == "cpu":
            why = ("this processor has no native bf16 matmul (ATen's oneDNN path needs AVX-512 or Arm bf16), so bf16 "
                   "matmuls run many times slower than float32; use 'float32' here")
        else:
            why = "this GPU has no native bf16 support; use 'float16' or 'float32'"
        warnings.warn(f"dtype 'bfloat16' on {device.type}: {why}", MiniGPTWarning, stacklevel=2)
    return dtype


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matmuls run on native kernels on ``device`` (so bf16 autocast can be faster than fp32).

    CUDA: the GPU supports bf16. CPU: ATen sends bf16 matmuls to oneDNN only when the processor has
    AVX-512 (BW/VL/DQ) or Arm bf16; without them they fall back to a generic loop (0.4 GFLOP/s measured
    on a 2048² matmul of an AVX2-only CPU; see bench/bf16_speed.py for whole training steps).
    """
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        try:  # without emulation: a T4 or V100 "supports" bf16 only by running it slowly in fp32
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.4 has no such argument
            return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
        return bool(check()) if check is not None else True  # unknown on old builds: do not warn
    return True


def peak_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype whose matmul peak MFU is measured against for a run in ``dtype``: ``dtype`` itself, or
    float32 where that half precision has no native kernels (float16 off CUDA, bf16 without
    ``native_bf16``), since its fallback is far slower than float32 and would inflate MFU past 100%."""
    slow_half = ((dtype == torch.float16 and device.type != "cuda")
                 or (dtype == torch.bfloat16 and not native_bf16(device)))
    return torch.float32 if slow_half else dtype


def configure_matmul_precision(device: torch.device, tf32: bool = True) -> None:
    """On CUDA, let float32 matmuls and convolutions use TF32 tensor cores (or not); elsewhere nothing."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = tf32


def process_group_backend(device_name: str) -> str:
    """nccl when the run's processes use CUDA devices (auto on a CUDA machine, cuda, cuda:N), else gloo."""
    if not torch.cuda.is_available():
        return "gloo"
    if device_name == "auto":
        return "nccl"
    try:
        return "nccl" if torch.device(device_name).type == "cuda" else "gloo"
    except RuntimeError:
        raise MiniGPTError(f"unknown device {device_name!r}; expected {DEVICE_HELP}") from None


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed-precision context for the forward pass; a no-op for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so runs repeat."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def keep_freed_host_memory() -> bool:
    """Make glibc keep freed memory in the process instead of handing it back to the OS.

    By default every large CPU tensor freed at the end of a training step is returned (trimmed or
    unmapped), so the next step page-faults its activations in afresh. For the baby Shakespeare model
    that is hundreds to a thousand faults per step, about 3% of its training time on the 2-core CPU
    measured in docs/RESULTS.md; for the GPT-2-vocabulary 6x384 model, whose step allocates and frees
    several 411 MB tensors (logits, log-softmax, their gradients), a 1 GiB trim threshold still left
    0.4-0.7 M faults per step and cost 17% of its time (bench/heap_reuse.py). Here blocks up to 1 GiB
    come from the heap instead of their own mappings, and the heap is never trimmed, so each step
    reuses the memory of the one before; the process keeps its peak memory. Returns False (and
    changes nothing) where glibc's ``mallopt`` is unavailable.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt  # glibc's soname
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    never = ctypes.c_int(-1)  # glibc's documented value for "never trim" (any finite threshold can be crossed)
    return bool(mallopt(m_mmap_threshold, ctypes.c_int(1 << 30))) and bool(mallopt(m_trim_threshold, never))


def total_memory(device: torch.device) -> int | None:
    """Bytes of memory the device has (the machine's RAM for the CPU); None where it cannot be told."""
    try:
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory
        if device.type == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError, RuntimeError):
        pass
    return None


def check_fits(nbytes: int, what: str, device: torch.device) -> None:
    """A ``MiniGPTError`` before any work when ``what`` (the settings that size it) needs at least
    ``nbytes`` on a device that has less memory in all."""
    total = total_memory(device)
    if total is not None and nbytes > total:
        raise MiniGPTError(f"{what} needs at least {nbytes / 2**30:,.1f} GiB, more than the {total / 2**30:,.1f} GiB "
                           f"this {device.type} has; make it smaller")


MEMORY_ERRORS = ("out of memory", "not enough memory", "can't allocate memory")  # torch's words, by device


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a failed allocation (CUDA's OutOfMemoryError, the CPU allocator's RuntimeError)."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(words in str(err).lower() for words in MEMORY_ERRORS)


def allocation_failure(err: BaseException) -> str:
    """What a failed allocation says, in one short line for an error message."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return re.sub(r"^\[enforce fail at [^]]*\] ", "", first)[:160]  # the allocator's source line says nothing to a user


@contextlib.contextmanager
def memory_errors(what: str) -> Iterator[None]:
    """Turn a failed allocation inside the block into one ``MiniGPTError`` naming ``what``."""
    try:
        yield
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        raise MiniGPTError(f"out of memory {what} ({allocation_failure(err)}); make it smaller") from None
