"""Checkpoint files: truncated, foreign and mismatched ones are clear errors; writes are atomic."""

import pytest
import torch

from minigpt import GPT, GPTConfig, MiniGPTError
from minigpt.checkpoint import load_checkpoint, save_checkpoint
from minigpt.files import save_tensors


def test_truncated_and_foreign_checkpoints_are_clear_errors(tmp_path):
    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8))
    save_checkpoint(tmp_path / "c.safetensors", model, {"iter_num": 3})
    data = (tmp_path / "c.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(MiniGPTError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.safetensors")
    save_tensors(tmp_path / "plain.safetensors", {"x": torch.zeros(2)})
    with pytest.raises(MiniGPTError, match="not a minigpt checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors")
    with pytest.raises(MiniGPTError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    other = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=2, n_head=1, n_embd=8))
    with pytest.raises(MiniGPTError, match="does not fit the model"):
        load_checkpoint(tmp_path / "c.safetensors").load_model(other)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files behind
