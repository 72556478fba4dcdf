"""Token lists of different lengths -> one padded batch with an attention mask, and the rule for a
text longer than a classifier reads at once (``LongText``: truncation, or sliding windows)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import MiniGPTError

TRUNCATIONS = ("head", "tail", "head_tail")  # keep the first tokens | the last | the first few and the last
LONG_TEXTS = ("truncate", "windows")  # one piece, cut as `truncate` says | every window, logits pooled
WINDOW_POOLS = ("mean", "max")  # how the windows' class logits become the document's
LONG_TEXT_KEYS = ("max_length", "truncate", "head_tokens", "long_text", "window_stride", "window_pool",
                  "document_start")  # LongText's fields
PAD_SIDES = ("right", "left")  # classification batches | prompts to continue (their ends line up)


def truncate(sequences: Sequence[Sequence[int]], max_length: int, keep: str = "head",
             head_tokens: int = 0) -> list[list[int]]:
    """Each sequence cut to at most ``max_length`` tokens, keeping its ``head``, its ``tail``, or
    (``head_tail``) its first ``head_tokens`` and its last ``max_length - head_tokens``."""
    if keep not in TRUNCATIONS:
        raise MiniGPTError(f"truncate must be one of {', '.join(TRUNCATIONS)}; got {keep!r}")
    if keep == "head_tail" and not 0 <= head_tokens <= max_length:
        raise MiniGPTError(f"head_tokens={head_tokens} must be between 0 and max_length={max_length}")
    kept = {"head": lambda s: s[:max_length], "tail": lambda s: s[len(s) - max_length:],
            "head_tail": lambda s: [*s[:head_tokens], *s[len(s) - (max_length - head_tokens):]]}[keep]
    return [list(s) if len(s) <= max_length else list(kept(s)) for s in sequences]


def windows(sequence: Sequence[int], length: int, stride: int) -> list[list[int]]:
    """Windows of ``length`` tokens starting every ``stride`` tokens, the last one ending where the
    sequence ends (so every token is in one); a sequence of at most ``length`` is one window."""
    if not 0 < stride < length:
        raise MiniGPTError(f"window_stride={stride} must be at least 1 and less than the window of {length} tokens")
    if len(sequence) <= length:
        return [list(sequence)]
    starts = [*range(0, len(sequence) - length, stride), len(sequence) - length]
    return [list(sequence[s: s + length]) for s in starts]


@dataclass(frozen=True)
class LongText:
    """How a classifier reads a text of any length in pieces of at most ``max_length`` tokens: one
    piece cut as ``truncate`` says, or (``long_text = "windows"``) windows every ``window_stride``
    tokens whose class logits are pooled (``window_pool``). A text that fits is one piece either way.
    A leading ``bos`` token (Llama's ``<s>``) starts every window, as it starts every text (windows of
    max_length - 1 tokens after it, the stride at most max_length - 2), and stays first when a text is
    cut to its tail. ``document_start``: every text starts with the token the language model saw before
    each document in pretraining (the tokenizer's BOS, else its end-of-text), as a ``bos`` token."""

    max_length: int
    truncate: str = "head"
    head_tokens: int = 64  # head_tail: tokens kept from the start (the rest of max_length from the end)
    long_text: str = "truncate"
    window_stride: int = 128  # windows: tokens between window starts
    window_pool: str = "mean"
    document_start: bool = False

    def __post_init__(self) -> None:
        for key, value, choices in (("truncate", self.truncate, TRUNCATIONS), ("long_text", self.long_text, LONG_TEXTS),
                                    ("window_pool", self.window_pool, WINDOW_POOLS)):
            if value not in choices:
                raise MiniGPTError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool) or self.max_length < 1:
            raise MiniGPTError(f"max_length must be a positive number of tokens, got {self.max_length!r}")
        if self.truncate == "head_tail" and not 0 < self.head_tokens < self.max_length:
            raise MiniGPTError(f"head_tokens={self.head_tokens} must be from 1 to {self.max_length - 1}: the head is "
                               f"part of max_length={self.max_length}, the tail the rest")
        if self.long_text == "windows" and not 0 < self.window_stride < self.max_length:
            raise MiniGPTError(f"window_stride={self.window_stride} must be from 1 to {self.max_length - 1}: windows "
                               f"of max_length={self.max_length} tokens must overlap or touch")

    def pieces(self, ids: Sequence[int], bos: int | None = None) -> list[list[int]]:
        """The token lists the classifier reads for one text (``ids`` starts with ``bos`` if given)."""
        starts = bos is not None and bool(ids) and ids[0] == bos
        if self.long_text == "truncate":
            if starts and self.truncate == "tail" and len(ids) > self.max_length:
                return [[bos, *ids[len(ids) - (self.max_length - 1):]]]  # the start token stays first
            return truncate([ids], self.max_length, self.truncate, self.head_tokens)
        if not starts or self.max_length < 3:
            return windows(ids, self.max_length, self.window_stride)
        return [[bos, *w] for w in windows(ids[1:], self.max_length - 1, min(self.window_stride, self.max_length - 2))]

    def to_meta(self) -> dict:
        """The fields that apply (a classifier's metadata; those of a truncating classifier are the
        two every minigpt classifier has stored): settings that play no part cannot block a resume."""
        meta = {"max_length": self.max_length, "truncate": self.truncate}
        if self.long_text == "windows":
            meta.update(long_text=self.long_text, window_stride=self.window_stride, window_pool=self.window_pool)
        elif self.truncate == "head_tail":
            meta.update(head_tokens=self.head_tokens)
        if self.document_start:
            meta.update(document_start=True)
        return meta

    @classmethod
    def from_meta(cls, meta: dict, source: str = "the checkpoint") -> "LongText":
        """The rule a classifier's metadata stores (those from before windows have max_length and
        truncate only); a damaged value is an error naming ``source``."""
        if "max_length" not in meta:
            raise MiniGPTError(f"{source}: no stored max_length (not a classifier's metadata?)")
        fields = {k: meta[k] for k in LONG_TEXT_KEYS if k in meta}
        for key in ("head_tokens", "window_stride"):
            if key in fields and (not isinstance(fields[key], int) or isinstance(fields[key], bool) or fields[key] < 0):
                raise MiniGPTError(f"{source}: the stored {key} {fields[key]!r} is not a whole number >= 0 (damaged?)")
        if not isinstance(fields.get("document_start", False), bool):
            raise MiniGPTError(f"{source}: the stored document_start {fields['document_start']!r} is not true or false "
                               f"(damaged?)")
        try:
            return cls(**fields)
        except MiniGPTError as err:
            raise MiniGPTError(f"{source}: {err}") from None


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
