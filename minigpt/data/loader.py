"""Reading prepared token files for training: ``meta.json``, the token arrays, and random windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import read_json
from ..errors import MiniGPTError


def load_meta(data_dir: str | Path) -> dict:
    data_dir = Path(data_dir)
    meta_path = data_dir / "meta.json"
    if not meta_path.is_file():
        raise MiniGPTError(
            f"{data_dir}: no meta.json; prepare the data first: python -m minigpt.data --input TEXT --out {data_dir}"
        )
    meta = read_json(meta_path)
    for key in ("tokenizer", "vocab_size", "dtype"):
        if key not in meta:
            raise MiniGPTError(f"{meta_path}: missing key {key!r}")
    return meta


def open_tokens(data_dir: str | Path, split: str, meta: dict) -> np.memmap:
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise MiniGPTError(f"{path} not found; prepare the data first (python -m minigpt.data --help)")
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")


class RandomWindows:
    """Random (x, y) windows of ``block_size`` tokens from a token array; y is x shifted by one.

    A batch is a pure function of its seed: the trainer seeds each one from the step number, so a
    resumed run draws exactly the batches it would have drawn.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, device: torch.device):
        if len(tokens) <= block_size + 1:
            raise MiniGPTError(
                f"split has {len(tokens)} tokens, fewer than block_size + 2 = {block_size + 2}; "
                f"use a smaller block_size or more text"
            )
        self.tokens, self.block_size, self.device = tokens, block_size, device

    def batch(self, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.block_size
        generator = torch.Generator().manual_seed(seed)
        starts = torch.randint(len(self.tokens) - T - 1, (batch_size,), generator=generator).tolist()
        window = np.stack([self.tokens[s: s + T + 1] for s in starts]).astype(np.int64)  # (B, T + 1)
        batch = torch.from_numpy(window)
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T) inputs and next-token targets
        if self.device.type == "cuda":  # pinned host memory lets the copy overlap with compute
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)
