"""Key/value caches for generation: ``KVCache`` (grows with the text; attention reads the filled
slots) and ``StaticKVCache`` (a fixed shape and a tensor position, for CUDA graphs). The backbone
fills them layer by layer (``GPTBackbone.new_kv_cache`` makes one); ``infer/generate.py`` drives them.

Shapes: B batch, Hkv key/value heads, D head dim, T new tokens.
"""

from __future__ import annotations

import torch

from ..errors import MiniGPTError


class KVCache:
    """Keys and values of the tokens seen so far, for every layer, preallocated to ``max_len``.

    Decoding one token then costs one query against the cached keys instead of recomputing the
    whole sequence. It holds the key/value heads only (n_kv_head of them: grouped-query attention
    shrinks it by n_head / n_kv_head), in the dtype the model computes in, one tensor per layer
    (``k[layer]``, ``v[layer]``: (B, Hkv, max_len, D)). ``length`` counts the cached positions; the
    model advances it. Attention reads the ``length`` filled slots.
    """

    static = False

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        shape = (batch_size, n_kv_head, max_len, head_dim)
        # one tensor per layer, not one (L, ...) block: a compiled step then writes each in place (a write
        # through a view of one block is functionalised into a copy of the whole block at every token)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]  # L x (B, Hkv, max_len, D)
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.batch_size, self.max_len, self.dtype, self.device = batch_size, max_len, dtype, self.k[0].device
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values (B, Hkv, T, D) after the cached ones; return all of them (B, Hkv, S, D)."""
        end = self.length + k.size(2)
        if end > self.max_len:
            raise MiniGPTError(f"KV cache holds {self.max_len} positions; {end} were asked for")
        self.k[layer][:, :, self.length:end] = k.to(self.dtype)
        self.v[layer][:, :, self.length:end] = v.to(self.dtype)
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        """Empty the cache in place (same tensors), as if just made."""
        for tensor in (*self.k, *self.v):
            tensor.zero_()
        self.length = 0

    def nbytes(self) -> int:
        return sum(t.nelement() * t.element_size() for t in (*self.k, *self.v))


class StaticKVCache(KVCache):
    """A cache of fixed shape for CUDA graphs: attention always reads all ``max_len`` slots (a mask
    hides the empty ones), and the next slot to write is a tensor, ``pos``, so a compiled decode step
    sees the same shapes and no Python number change from one token to the next."""

    static = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pos = torch.zeros((), dtype=torch.long, device=self.device)  # the next slot
        for buffer in (*self.k, *self.v, self.pos):  # written in place by a compiled step: fixed addresses let
            torch._dynamo.mark_static_address(buffer)  # CUDA graphs replay instead of being skipped

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new keys/values (B, Hkv, T, D) at slots pos ... pos + T - 1; return every slot (B, Hkv, max_len, D)."""
        slots = self.pos + torch.arange(k.size(2), device=k.device)  # (T,)
        self.k[layer].index_copy_(2, slots, k.to(self.dtype))
        self.v[layer].index_copy_(2, slots, v.to(self.dtype))
        return self.k[layer], self.v[layer]

    def advance(self, n: int) -> None:
        self.pos += n  # in place: the tensor a compiled graph holds moves on

    def reset(self) -> None:
        super().reset()
        self.pos.zero_()
