import platform
import subprocess
import sys
import warnings

import pytest
import torch

import minigpt.device as device_module
from minigpt import MiniGPTError, MiniGPTWarning, autocast, resolve_device, resolve_dtype, seed_everything
from minigpt.cli import run_cli
from minigpt.device import native_bf16, peak_dtype


def test_cpu_defaults_to_float32(monkeypatch):
    monkeypatch.setattr(device_module, "native_bf16", lambda device: True)
    cpu = resolve_device("cpu")
    assert cpu.type == "cpu"
    assert resolve_dtype(cpu) == torch.float32
    assert resolve_dtype(cpu, "bfloat16") == torch.bfloat16


def test_bf16_warns_only_without_native_support(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "native_bf16", lambda device: False)
    with pytest.warns(MiniGPTWarning, match="no native bf16 matmul.*use 'float32'"):
        assert resolve_dtype(cpu, "bfloat16") == torch.bfloat16
    monkeypatch.setattr(device_module, "native_bf16", lambda device: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_dtype(cpu, "bfloat16") == torch.bfloat16
        assert resolve_dtype(cpu, "float32") == torch.float32  # fp32 never asks


def test_peak_dtype_falls_back_to_float32_without_native_kernels(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(device_module, "native_bf16", lambda device: False)
    assert peak_dtype(cpu, torch.bfloat16) == torch.float32
    assert peak_dtype(cpu, torch.float16) == torch.float32
    assert peak_dtype(cpu, torch.float32) == torch.float32
    monkeypatch.setattr(device_module, "native_bf16", lambda device: True)
    assert peak_dtype(cpu, torch.bfloat16) == torch.bfloat16
    assert peak_dtype(gpu, torch.float16) == torch.float16  # no device is touched: only its type is read


def test_cli_prints_minigpt_warnings_on_one_line(capsys):
    def main(argv):
        warnings.warn("bf16 is slow here", MiniGPTWarning)
        warnings.warn("from another library", UserWarning)
        return 0

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = warnings.showwarning
        assert run_cli(main, []) == 0
        assert warnings.showwarning is before  # restored after the command
    assert capsys.readouterr().err.splitlines() == ["warning: bf16 is slow here"]
    assert [w.category for w in caught] == [UserWarning]  # others go on to the default handler untouched


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 feature flags")
def test_native_bf16_on_x86_cpu_needs_avx512():
    # the CPU check must agree with the processor's features as torch's cpuinfo reports them
    assert native_bf16(torch.device("cpu")) == torch.cpu._is_avx512_supported()


def test_auto_device_prefers_cuda_then_mps_then_cpu():
    expected = ("cuda" if torch.cuda.is_available()
                else "mps" if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
                else "cpu")
    assert resolve_device("auto").type == expected


def test_bad_device_and_dtype_are_clear_errors():
    with pytest.raises(MiniGPTError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(MiniGPTError, match="CUDA"):
            resolve_device("cuda")
    with pytest.raises(MiniGPTError, match="dtype"):
        resolve_dtype(torch.device("cpu"), "float8")
    with pytest.raises(MiniGPTError, match="float16"):
        resolve_dtype(torch.device("cpu"), "float16")


def test_bf16_autocast_on_cpu():
    a = torch.randn(4, 4)
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), torch.float32):
        assert (a @ a).dtype == torch.float32


def test_seed_everything_repeats():
    seed_everything(7)
    a = torch.randn(3)
    seed_everything(7)
    assert torch.equal(a, torch.randn(3))


FAULTS_SCRIPT = """
import resource, sys
import torch
from minigpt.device import keep_freed_host_memory
kept = keep_freed_host_memory() if sys.argv[1] == "keep" else None
for _ in range(10):  # 64 MB blocks: above glibc's largest automatic mmap threshold
    torch.empty(16 << 20).fill_(1.0)  # (the kept heap needs a few rounds to settle around them)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.empty(16 << 20).fill_(1.0)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_kept_host_memory_is_reused_instead_of_faulted_in_again():
    """Against glibc's default in a second process: by default each 64 MB tensor is a fresh mapping
    (16,384 page faults each with 4 KiB pages); once freed memory is kept, the same block is reused without faults."""
    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True)
        kept, count = out.stdout.split()
        return kept, int(count)

    _, default_faults = faults("default")
    kept, kept_faults = faults("keep")
    if kept != "True":
        pytest.skip("mallopt is not available (not glibc)")
    assert default_faults > 0, "glibc's default no longer maps large blocks afresh; this test needs a new reference"
    assert kept_faults * 100 < default_faults
