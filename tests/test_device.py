import pytest
import torch

from minigpt import MiniGPTError, autocast, resolve_device, resolve_dtype, seed_everything


def test_cpu_defaults_to_float32():
    cpu = resolve_device("cpu")
    assert cpu.type == "cpu"
    assert resolve_dtype(cpu) == torch.float32
    assert resolve_dtype(cpu, "bfloat16") == torch.bfloat16


def test_auto_device_is_available():
    device = resolve_device("auto")
    if not torch.cuda.is_available():
        assert device.type in ("cpu", "mps")


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
