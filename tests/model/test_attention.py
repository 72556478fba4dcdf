"""Every piece of attention math checked against an independent reference."""

import math

import pytest
import torch
import torch.nn as nn

from minigpt import GPT, GPTConfig
from minigpt.errors import MiniGPTError
from minigpt.model.attention import padding_causal_mask
from minigpt.model.cache import KVCache
from minigpt.model.layers import CausalSelfAttention

ATOL = 1e-5


def block_mask(mask):
    """A (B, S) padding mask as the (B, 1, T, S) mask a layer reads (the backbone builds it so once)."""
    return None if mask is None else padding_causal_mask(mask)


def make_pair(n_embd: int, n_head: int, block_size: int, seed: int = 0, dtype=torch.float32):
    """The same attention weights under both backends."""
    torch.manual_seed(seed)
    cfg = dict(n_embd=n_embd, n_head=n_head, block_size=block_size, vocab_size=11, n_layer=1)
    manual = CausalSelfAttention(GPTConfig(attn_backend="manual", **cfg)).to(dtype)
    sdpa = CausalSelfAttention(GPTConfig(attn_backend="sdpa", **cfg)).to(dtype)
    with torch.no_grad():  # unit-scale activations (std 1/sqrt(fan_in)), and non-zero biases
        for p in manual.parameters():
            p.normal_(0, 1 / math.sqrt(n_embd))
    sdpa.load_state_dict(manual.state_dict())
    return manual.eval(), sdpa.eval()


def padding_mask(lengths, T, side):
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, n in enumerate(lengths):
        if side == "right":
            mask[row, :n] = 1
        else:
            mask[row, T - n:] = 1
    return mask


def outputs_and_grads(layer, x, mask, upstream):
    x = x.clone().requires_grad_(True)
    layer.zero_grad()
    y = layer(x, block_mask(mask))
    (y * upstream).sum().backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}


SHAPES = [  # (B, T, C, H, block_size)
    (1, 1, 8, 1, 8),      # T = 1
    (2, 8, 8, 1, 8),      # one head, T = block_size
    (3, 16, 32, 4, 16),   # several heads, T = block_size
    (2, 5, 24, 3, 12),
    (4, 13, 48, 6, 32),
]


@pytest.mark.parametrize("B,T,C,H,block", SHAPES)
@pytest.mark.parametrize("padding", [None, "right", "left"])
def test_manual_and_sdpa_agree_outputs_and_gradients(B, T, C, H, block, padding):
    manual, sdpa = make_pair(C, H, block, seed=B * 100 + T)
    gen = torch.Generator().manual_seed(T)
    x = torch.randn(B, T, C, generator=gen)
    upstream = torch.randn(B, T, C, generator=gen)
    mask = None
    if padding:
        lengths = torch.randint(1, T + 1, (B,), generator=gen).tolist()
        lengths[0] = T  # one unpadded row
        if B > 1:
            lengths[-1] = max(1, T // 2)
        mask = padding_mask(lengths, T, padding)
    y_m, gx_m, gw_m = outputs_and_grads(manual, x, mask, upstream)
    y_s, gx_s, gw_s = outputs_and_grads(sdpa, x, mask, upstream)
    assert torch.isfinite(y_m).all() and torch.isfinite(y_s).all()
    torch.testing.assert_close(y_s, y_m, atol=ATOL, rtol=0)
    torch.testing.assert_close(gx_s, gx_m, atol=ATOL, rtol=0)
    for name in gw_m:
        torch.testing.assert_close(gw_s[name], gw_m[name], atol=ATOL, rtol=0, msg=name)


@pytest.mark.parametrize("backend", ["manual", "sdpa"])
def test_all_padding_rows_are_finite(backend):
    manual, sdpa = make_pair(16, 2, 8)
    layer = manual if backend == "manual" else sdpa
    x = torch.randn(3, 8, 16, requires_grad=True)
    mask = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1],   # left padding: queries 0-4 see only padding keys
                         [1, 1, 0, 0, 0, 0, 0, 0],   # right padding
                         [0, 0, 0, 0, 0, 0, 0, 0]])  # nothing real at all
    y = layer(x, block_mask(mask))
    y.sum().backward()
    assert torch.isfinite(y).all()
    assert torch.isfinite(x.grad).all()


def test_padding_does_not_change_real_positions():
    """A padded row's real outputs equal the same tokens without padding, both sides."""
    manual, sdpa = make_pair(16, 4, 16)
    x = torch.randn(1, 6, 16)
    for layer in (manual, sdpa):
        alone = layer(x)
        right = layer(torch.cat([x, torch.randn(1, 3, 16)], 1), block_mask(torch.tensor([[1] * 6 + [0] * 3])))
        torch.testing.assert_close(right[:, :6], alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", ["manual", "sdpa"])
@pytest.mark.parametrize("key_padding", [False, True])
def test_attention_matches_torch_mha(backend, key_padding):
    B, T, C, H = 3, 10, 32, 4
    manual, sdpa = make_pair(C, H, 16, seed=3)
    layer = manual if backend == "manual" else sdpa
    mha = nn.MultiheadAttention(C, H, bias=True, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(layer.c_attn.weight)  # rows: [W_q; W_k; W_v], heads contiguous in each
        mha.in_proj_bias.copy_(layer.c_attn.bias)
        mha.out_proj.weight.copy_(layer.c_proj.weight)
        mha.out_proj.bias.copy_(layer.c_proj.bias)
    mha.eval()
    x = torch.randn(B, T, C)
    not_allowed = torch.ones(T, T, dtype=torch.bool).triu(1)  # MHA: True = masked out
    lengths = [T, 7, 4]
    mask = padding_mask(lengths, T, "right") if key_padding else None
    ref, _ = mha(x, x, x, attn_mask=not_allowed, need_weights=False,
                 key_padding_mask=None if mask is None else mask == 0)
    ours = layer(x, block_mask(mask))
    for b, n in enumerate(lengths if key_padding else [T] * B):
        torch.testing.assert_close(ours[b, :n], ref[b, :n], atol=ATOL, rtol=0)


def naive_attention(layer: CausalSelfAttention, x: torch.Tensor, mask=None) -> torch.Tensor:
    """Attention one query at a time with Python loops and plain exp/sum: the independent reference."""
    B, T, C = x.shape
    H, D = layer.n_head, C // layer.n_head
    W, b = layer.c_attn.weight, layer.c_attn.bias
    q_all = x @ W[:C].T + b[:C]
    k_all = x @ W[C:2 * C].T + b[C:2 * C]
    v_all = x @ W[2 * C:].T + b[2 * C:]
    out = torch.zeros(B, T, C, dtype=x.dtype)
    for bi in range(B):
        for h in range(H):
            cols = slice(h * D, (h + 1) * D)
            for t in range(T):
                q = q_all[bi, t, cols]
                keys = [s for s in range(t + 1) if mask is None or mask[bi, s] == 1]
                scores = [float(q @ k_all[bi, s, cols]) / math.sqrt(D) for s in keys]
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                for w, s in zip(weights, keys):
                    out[bi, t, cols] += (w / total) * v_all[bi, s, cols]
    return out @ layer.c_proj.weight.T + layer.c_proj.bias


@pytest.mark.parametrize("backend", ["manual", "sdpa"])
def test_attention_matches_naive_loop(backend):
    manual, sdpa = make_pair(12, 3, 8, seed=5, dtype=torch.float64)
    layer = manual if backend == "manual" else sdpa
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), naive_attention(layer, x), atol=1e-10, rtol=0)
        mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
        ours, ref = layer(x, block_mask(mask)), naive_attention(layer, x, mask)
        torch.testing.assert_close(ours[0, :5], ref[0, :5], atol=1e-10, rtol=0)
        torch.testing.assert_close(ours[1], ref[1], atol=1e-10, rtol=0)


@pytest.mark.parametrize("backend", ["manual", "sdpa"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_attention_gradcheck(backend, with_mask):
    manual, sdpa = make_pair(8, 2, 6, seed=1, dtype=torch.float64)
    layer = manual if backend == "manual" else sdpa
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 0, 0]]) if with_mask else None
    assert torch.autograd.gradcheck(lambda inp: layer(inp, block_mask(mask)), (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", ["manual", "sdpa"])
@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_model_is_causal(backend, pos):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16,
                          attn_backend=backend, pos_embedding=pos)).eval()
    idx = torch.randint(0, 50, (2, 16))
    logits, _ = model(idx)
    for t in (0, 5, 14):
        changed = idx.clone()
        changed[:, t + 1:] = torch.randint(0, 50, changed[:, t + 1:].shape)
        assert not torch.equal(changed, idx)
        new_logits, _ = model(changed)
        torch.testing.assert_close(new_logits[:, : t + 1], logits[:, : t + 1], atol=0, rtol=0)
        assert not torch.allclose(new_logits[:, t + 1:], logits[:, t + 1:])


def test_attention_dropout_is_active_in_training_only():
    for backend in ("manual", "sdpa"):
        layer = CausalSelfAttention(GPTConfig(n_embd=16, n_head=2, block_size=8, vocab_size=5,
                                              n_layer=1, dropout=0.5, attn_backend=backend))
        x = torch.randn(2, 8, 16)
        layer.train()
        assert not torch.allclose(layer(x), layer(x))
        layer.eval()
        torch.testing.assert_close(layer(x), layer(x))


@pytest.mark.parametrize("backend", ["manual", "sdpa"])
def test_a_chunk_after_cached_keys_sees_them_causally_without_a_mask(backend):
    """The layer alone, mask None (plain causal, queries last among the keys): a prefill of 5 tokens,
    then a chunk of 7 against the cache, equals one pass over all 12 (sdpa's own is_causal would
    align the chunk with the first keys instead)."""
    manual, sdpa = make_pair(16, 4, 16, seed=7)
    layer = manual if backend == "manual" else sdpa
    x = torch.randn(2, 12, 16)
    cache = KVCache(1, 2, 4, 16, 4)  # one layer, B 2, Hkv 4, 16 slots, D 4
    first = layer(x[:, :5], kv_cache=cache)
    cache.advance(5)
    rest = layer(x[:, 5:], kv_cache=cache)
    torch.testing.assert_close(torch.cat([first, rest], 1), layer(x), atol=ATOL, rtol=0)


def test_a_padding_mask_handed_to_the_layer_is_an_error_not_a_broadcast():
    manual, _ = make_pair(16, 2, 8)
    with pytest.raises(MiniGPTError, match=r"\(B, 1, T, S\) mask"):
        manual(torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.long))
