"""Token lists of different lengths -> one padded batch with an attention mask."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import MiniGPTError

TRUNCATIONS = ("head", "tail")  # keep the first tokens | keep the last tokens
PAD_SIDES = ("right", "left")  # classification batches | prompts to continue (their ends line up)


def truncate(sequences: Sequence[Sequence[int]], max_length: int, keep: str = "head") -> list[list[int]]:
    """Each sequence cut to at most ``max_length`` tokens, keeping its ``head`` or its ``tail``."""
    if keep not in TRUNCATIONS:
        raise MiniGPTError(f"truncate must be one of {', '.join(TRUNCATIONS)}; got {keep!r}")
    return [list(s[:max_length]) if keep == "head" else list(s[-max_length:]) for s in sequences]


def pad(sequences: Sequence[Sequence[int]], side: str = "right", pad_id: int = 0, multiple: int = 1,
        limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, T) and attention mask (B, T), 1 for real tokens and 0 for padding, T the longest length
    rounded up to ``multiple`` (but not past ``limit``): a compiled model then meets few shapes.

    Right padding puts every sequence at position 0; left padding lines up their last tokens, which
    is what generation continues from.
    """
    if side not in PAD_SIDES:
        raise MiniGPTError(f"padding side must be one of {', '.join(PAD_SIDES)}; got {side!r}")
    longest = max(1, max((len(s) for s in sequences), default=1))
    T = multiple * math.ceil(longest / multiple)
    T = max(longest, min(T, limit)) if limit is not None else T
    ids = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), T), dtype=torch.long)
    for row, s in enumerate(sequences):
        if len(s) == 0:
            continue
        span = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
        ids[row, span], mask[row, span] = torch.as_tensor(list(s), dtype=torch.long), 1
    return ids, mask
