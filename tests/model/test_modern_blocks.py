"""Modern decoder blocks, each against a reference written here: RoPE against the paper's complex
form, RMSNorm against its formula, SwiGLU against the gated product, grouped-query attention against
explicit repeats of the key/value heads (both backends, outputs and gradients, padded batches), and
the KV cache holding n_kv_head heads."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from minigpt import GPT, GPTConfig, MiniGPTError
from minigpt.infer.generate import generate
from minigpt.model.attention import padding_causal_mask
from minigpt.model.layers import MLP, CausalSelfAttention, RMSNorm, RotaryEmbedding, apply_rope

ATOL = 1e-5


def rope_reference(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoFormer's rotation as a complex product: z_k = x_k + i·x_{k+D/2}, z_k ← z_k · e^(i·m·θ^(-2k/D))."""
    D = x.size(-1)
    z = torch.complex(x[..., : D // 2].double(), x[..., D // 2:].double())  # (..., T, D/2)
    k = torch.arange(D // 2, dtype=torch.float64)
    angle = positions.double()[:, None] * theta ** (-2 * k / D)  # (T, D/2)
    z = z * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([z.real, z.imag], dim=-1).float()


def test_rope_equals_the_complex_form_of_the_paper():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 16)  # (B, H, T, D)
    positions = torch.arange(5, 16)
    cos, sin = RotaryEmbedding(16, 500.0)(positions)
    torch.testing.assert_close(apply_rope(x, cos, sin), rope_reference(x, positions, 500.0), atol=1e-5, rtol=0)


def test_rope_scores_depend_only_on_the_distance():
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)
    rope = RotaryEmbedding(32, 10000.0)

    def score(m: int, n: int) -> float:
        qm = apply_rope(q, *rope(torch.tensor([m])))
        kn = apply_rope(k, *rope(torch.tensor([n])))
        return (qm * kn).sum().item()

    for shift in (1, 7, 100):
        assert score(3 + shift, 1 + shift) == pytest.approx(score(3, 1), abs=1e-4)
        assert score(50 + shift, 60 + shift) == pytest.approx(score(50, 60), abs=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


def test_rmsnorm_formula():
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(4, 8)
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected, atol=1e-6, rtol=0)


def test_swiglu_is_the_gated_product():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=24, mlp="swiglu", bias=False)
    mlp = MLP(cfg)
    assert cfg.hidden == 64 and mlp.c_fc.weight.shape == (128, 24)  # 8/3 · 24 = 64
    x = torch.randn(3, 5, 24)
    gate_w, up_w = mlp.c_fc.weight[:64], mlp.c_fc.weight[64:]
    expected = (F.silu(x @ gate_w.T) * (x @ up_w.T)) @ mlp.c_proj.weight.T
    torch.testing.assert_close(mlp(x), expected, atol=1e-6, rtol=0)
    assert GPTConfig(vocab_size=10, n_embd=128, n_head=4, mlp="swiglu").hidden == 384  # 341.3 rounded up to 64s


def attention_pair(n_kv_head: int, qk_norm: bool = False, rope: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    kw = dict(n_embd=32, n_head=4, n_kv_head=n_kv_head, block_size=16, vocab_size=11, n_layer=1, qk_norm=qk_norm,
              pos_embedding="rope" if rope else "learned", bias=False, qkv_bias=True)
    manual = CausalSelfAttention(GPTConfig(attn_backend="manual", **kw))
    sdpa = CausalSelfAttention(GPTConfig(attn_backend="sdpa", **kw))
    with torch.no_grad():
        for p in manual.parameters():
            p.normal_(0, 1 / math.sqrt(32))
    sdpa.load_state_dict(manual.state_dict())
    return manual.eval(), sdpa.eval()


def gqa_reference(layer: CausalSelfAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention written out: every query head h reads key/value head h // (H / Hkv)."""
    B, T, C = x.shape
    H, Hkv, D = layer.n_head, layer.n_kv_head, layer.head_dim
    q, k, v = (x @ layer.c_attn.weight.T + layer.c_attn.bias).split([H * D, Hkv * D, Hkv * D], dim=-1)
    q = q.view(B, T, H, D).transpose(1, 2)
    k = k.view(B, T, Hkv, D).transpose(1, 2)
    v = v.view(B, T, Hkv, D).transpose(1, 2)
    if layer.q_norm is not None:
        q, k = layer.q_norm(q), layer.k_norm(k)
    out = torch.zeros(B, H, T, D)
    allowed = torch.ones(T, T, dtype=torch.bool).tril().expand(B, T, T)  # causal
    if mask is not None:  # and only real keys, except a query's own position (an all-padding row stays finite)
        allowed = allowed & (mask.bool()[:, None, :] | torch.eye(T, dtype=torch.bool))
    for h in range(H):
        g = h // (H // Hkv)
        scores = q[:, h] @ k[:, g].transpose(-1, -2) / math.sqrt(D)  # (B, T, T)
        out[:, h] = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v[:, g]
    return out.transpose(1, 2).reshape(B, T, H * D) @ layer.c_proj.weight.T


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("padding", [None, "right", "left"])
def test_grouped_query_attention_equals_explicit_repeats_on_both_backends(n_kv_head, qk_norm, padding):
    manual, sdpa = attention_pair(n_kv_head, qk_norm)
    gen = torch.Generator().manual_seed(n_kv_head)
    x = torch.randn(3, 9, 32, generator=gen)
    mask = None
    if padding:
        mask = torch.ones(3, 9, dtype=torch.long)
        if padding == "right":
            mask[1, 5:], mask[2, 2:] = 0, 0
        else:
            mask[1, :4], mask[2, :7] = 0, 0
    ref = gqa_reference(manual, x, mask)
    upstream = torch.randn(3, 9, 32, generator=gen)
    grads = []
    for layer in (manual, sdpa):
        xi = x.clone().requires_grad_(True)
        y = layer(xi, None if mask is None else padding_causal_mask(mask))
        keep = mask.bool() if mask is not None else torch.ones(3, 9, dtype=torch.bool)
        torch.testing.assert_close(y[keep], ref[keep], atol=ATOL, rtol=0)
        layer.zero_grad()
        (y * upstream * keep[..., None]).sum().backward()
        grads.append((xi.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=ATOL, rtol=0)
    for name in grads[0][1]:
        torch.testing.assert_close(grads[0][1][name], grads[1][1][name], atol=ATOL, rtol=0, msg=name)


def test_n_kv_head_equal_to_n_head_is_todays_multi_head_attention():
    full, _ = attention_pair(4)
    plain = CausalSelfAttention(GPTConfig(n_embd=32, n_head=4, block_size=16, vocab_size=11, n_layer=1,
                                          attn_backend="manual", bias=False, qkv_bias=True)).eval()
    plain.load_state_dict(full.state_dict())
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(plain(x), full(x), atol=0, rtol=0)


def llama_style(backend="sdpa", **kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, pos_embedding="rope",
               norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False, attn_backend=backend)
    model = GPT(GPTConfig(**{**cfg, **kw})).eval()
    with torch.no_grad():
        model.backbone.wte.weight.mul_(8)  # spread the logits: no near-ties for greedy decoding
    return model


@pytest.mark.parametrize("backend", ["sdpa", "manual"])
def test_cached_greedy_decoding_equals_recomputation_with_rope_gqa_and_qk_norm(backend, step_logits):
    model = llama_style(backend)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9], [4, 4, 8, 15, 16]]  # left-padded: mixed lengths
    with_cache = step_logits()
    a = generate(model, prompts, 40, do_sample=False, use_cache=True)
    without = step_logits()
    b = generate(model, prompts, 40, do_sample=False, use_cache=False)
    assert a == b and all(len(row) == 40 for row in a)
    for step, (x, y) in enumerate(zip(with_cache, without)):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=0, msg=f"step {step}")
    for prompt, row in zip(prompts, a):  # each row is its prompt alone
        assert generate(model, [prompt], 40, do_sample=False)[0] == row


def test_the_cache_holds_the_key_value_heads_only():
    gqa, mha = llama_style(n_kv_head=1), llama_style(n_kv_head=4)
    small, large = gqa.backbone.new_kv_cache(2), mha.backbone.new_kv_cache(2)
    assert (len(small.k), *small.k[0].shape) == (2, 2, 1, 64, 8) and (len(large.k), *large.k[0].shape) == (2, 2, 4, 64, 8)
    assert small.nbytes() * 4 == large.nbytes()


def test_padded_rows_match_unpadded_with_rope():
    model = llama_style()
    a, b = torch.randint(0, 50, (1, 9)), torch.randint(0, 50, (1, 5))
    alone_b, _ = model(b)
    left = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])
    mask = torch.tensor([[1] * 9, [0] * 4 + [1] * 5])
    logits, _ = model(left, attention_mask=mask)
    torch.testing.assert_close(logits[1, 4:], alone_b[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("field,value,match", [
    ("n_kv_head", 3, "must be a multiple of GPTConfig.n_kv_head"),
    ("norm", "batchnorm", "norm must be one of layernorm, rmsnorm"),
    ("mlp", "relu", "mlp must be one of gelu, swiglu"),
    ("rope_theta", 0.0, "rope_theta must be greater than 0"),
    ("mlp_hidden", -1, "mlp_hidden must be at least 0"),
])
def test_bad_modern_fields_name_the_field(field, value, match):
    kw = dict(vocab_size=10, block_size=8, n_layer=1, n_head=4, n_embd=32, **{field: value})
    with pytest.raises(MiniGPTError, match=match):
        GPTConfig(**kw)
    with pytest.raises(MiniGPTError, match="head dim n_embd / n_head = 3 must be even"):
        GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=4, n_embd=12, pos_embedding="rope")


def test_the_gpt2_block_is_unchanged_by_default():
    """The default config builds exactly the parameters it always did (names and shapes)."""
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16))
    names = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert names == {
        "backbone.wte.weight": (50, 16), "backbone.wpe.weight": (16, 16),
        "backbone.h.0.ln_1.weight": (16,), "backbone.h.0.ln_1.bias": (16,),
        "backbone.h.0.attn.c_attn.weight": (48, 16), "backbone.h.0.attn.c_attn.bias": (48,),
        "backbone.h.0.attn.c_proj.weight": (16, 16), "backbone.h.0.attn.c_proj.bias": (16,),
        "backbone.h.0.ln_2.weight": (16,), "backbone.h.0.ln_2.bias": (16,),
        "backbone.h.0.mlp.c_fc.weight": (64, 16), "backbone.h.0.mlp.c_fc.bias": (64,),
        "backbone.h.0.mlp.c_proj.weight": (16, 64), "backbone.h.0.mlp.c_proj.bias": (16,),
        "backbone.ln_f.weight": (16,), "backbone.ln_f.bias": (16,),
    }
