"""Generation: KV cache = full recomputation, batched = one by one, processors against references."""


import pytest
import torch
import torch.nn.functional as F

from minigpt import GPT, GPTConfig, MiniGPTError
from minigpt.infer.generate import (apply_min_p, apply_repetition_penalty, apply_temperature, apply_top_k, apply_top_p,
                              generate)


def model(backend="sdpa", pos="learned", block=96, seed=0):
    torch.manual_seed(seed)
    m = GPT(GPTConfig(vocab_size=50, block_size=block, n_layer=2, n_head=2, n_embd=32,
                      attn_backend=backend, pos_embedding=pos)).eval()
    with torch.no_grad():  # spread the logits so greedy choices are not near-ties
        m.backbone.wte.weight.mul_(8)
    return m


PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9], [4, 4, 8, 15, 16]]


@pytest.mark.parametrize("backend", ["sdpa", "manual"])
@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_cache_equals_recomputation(backend, pos, step_logits):
    m = model(backend, pos)
    with_cache = step_logits()
    a = generate(m, PROMPTS, 72, do_sample=False, use_cache=True)
    without = step_logits()
    b = generate(m, PROMPTS, 72, do_sample=False, use_cache=False)
    assert a == b and all(len(row) == 72 for row in a)
    for x, y in zip(with_cache, without):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", ["sdpa", "manual"])
def test_batched_rows_equal_prompts_alone(backend):
    m = model(backend)
    batched = generate(m, PROMPTS, 40, do_sample=False)
    for prompt, row in zip(PROMPTS, batched):
        assert generate(m, [prompt], 40, do_sample=False)[0] == row
        # and alone without the cache: plain greedy argmax over the full context
        ids = torch.tensor([prompt])
        for _ in range(40):
            logits, _ = m(ids)
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
        assert ids[0, len(prompt):].tolist() == row


def test_generation_past_block_size_crops_the_context():
    m = model(block=16)
    out = generate(m, [[1, 2, 3]], 40, do_sample=False, use_cache=True)
    ref = generate(m, [[1, 2, 3]], 40, do_sample=False, use_cache=False)
    assert len(out[0]) == len(ref[0]) == 40
    assert out[0][:13] == ref[0][:13]  # identical while everything fits in the block


def test_seeded_sampling_is_reproducible():
    m = model()
    kw = dict(temperature=1.0, top_k=20, top_p=0.9, seed=123)
    a, b = generate(m, PROMPTS, 30, **kw), generate(m, PROMPTS, 30, **kw)
    assert a == b
    assert a != generate(m, PROMPTS, 30, **{**kw, "seed": 124})


def test_stop_tokens_stop_each_row_independently():
    m = model()
    free = generate(m, PROMPTS, 30, do_sample=False)
    stop = next(t for t in free[0] if any(t not in other for other in free[1:]))  # stops row 0, not all rows
    out = generate(m, PROMPTS, 30, do_sample=False, stop_token_ids=[stop])
    for row_free, row in zip(free, out):
        if stop in row_free:
            assert row == row_free[: row_free.index(stop) + 1]
        else:
            assert row == row_free
    assert out[0][-1] == stop and len(out[0]) < 30
    assert any(len(row) == 30 for row in out)


def test_stop_strings_stop_each_row_independently():
    m = model()
    decode = lambda ids: ",".join(map(str, ids)) + ","
    free = generate(m, PROMPTS, 20, do_sample=False)
    target = f"{free[1][2]},{free[1][3]},"
    out = generate(m, PROMPTS, 20, do_sample=False, stop_strings=[target], decode=decode)
    for row_free, row in zip(free, out):
        text = decode(row_free)
        if target in text:
            cut = next(n for n in range(1, 21) if target in decode(row_free[:n]))
            assert row == row_free[:cut]
        else:
            assert row == row_free
    assert len(out[1]) <= 4


def test_temperature_towards_zero_is_greedy():
    m = model()
    greedy = generate(m, PROMPTS, 20, do_sample=False)
    assert generate(m, PROMPTS, 20, temperature=0.0) == greedy
    assert generate(m, PROMPTS, 20, temperature=1e-6, seed=0) == greedy


# ----------------------------------------------------------------------------- processors vs references


def logits_batch(seed=0, B=4, V=37):
    return torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_top_k_reference():
    logits = logits_batch()
    out = apply_top_k(logits, 5)
    for row, ref in zip(out, logits):
        keep = sorted(ref.tolist(), reverse=True)[:5]
        assert sorted(v for v in row.tolist() if v != float("-inf")) == sorted(keep)
    assert torch.equal(apply_top_k(logits, 37), logits) and torch.equal(apply_top_k(logits, 100), logits)
    tied = torch.tensor([[1.0, 3.0, 3.0, 2.0]])
    assert torch.isinf(apply_top_k(tied, 1)).tolist() == [[True, False, False, True]]


def test_top_p_reference():
    logits = logits_batch(1)
    for p in (0.1, 0.5, 0.9, 0.999, 1.0):
        out = apply_top_p(logits, p)
        for row, ref in zip(out, logits):
            probs = F.softmax(ref, -1).tolist()
            order = sorted(range(len(probs)), key=lambda i: -probs[i])
            kept, mass = [], 0.0
            for i in order:  # the smallest prefix whose mass reaches p
                kept.append(i)
                mass += probs[i]
                if mass >= p:
                    break
            assert {i for i, v in enumerate(row.tolist()) if v != float("-inf")} == set(kept), p
    tied = torch.log(torch.tensor([[0.4, 0.2, 0.2, 0.2]]))
    assert torch.isfinite(apply_top_p(tied, 0.5)).tolist() == [[True, True, True, True]]  # ties all kept
    assert torch.isfinite(apply_top_p(tied, 0.4)).tolist() == [[True, False, False, False]]


def test_min_p_and_temperature_and_repetition_reference():
    logits = logits_batch(2)
    out = apply_min_p(logits, 0.2)
    probs = F.softmax(logits, -1)
    assert torch.equal(torch.isfinite(out), probs >= 0.2 * probs.max(-1, keepdim=True).values)
    torch.testing.assert_close(apply_temperature(logits, 0.5), logits * 2)
    seen = torch.zeros_like(logits, dtype=torch.bool)
    seen[:, :10] = True
    pen = apply_repetition_penalty(logits, seen, 1.5)
    for b in range(logits.size(0)):
        for v in range(logits.size(1)):
            x = logits[b, v].item()
            expected = (x / 1.5 if x > 0 else x * 1.5) if v < 10 else x
            assert pen[b, v].item() == pytest.approx(expected)


def test_processors_match_transformers():
    tr = pytest.importorskip("transformers")
    logits = logits_batch(3, B=6, V=101)
    ids = torch.randint(0, 101, (6, 12), generator=torch.Generator().manual_seed(0))
    seen = torch.zeros(6, 101).scatter_add_(1, ids, torch.ones(6, 12)) > 0
    pairs = [
        (tr.RepetitionPenaltyLogitsProcessor(1.3), lambda x: apply_repetition_penalty(x, seen, 1.3)),
        (tr.TemperatureLogitsWarper(0.7), lambda x: apply_temperature(x, 0.7)),
        (tr.TopKLogitsWarper(7), lambda x: apply_top_k(x, 7)),
        (tr.TopPLogitsWarper(0.8), lambda x: apply_top_p(x, 0.8)),
        (tr.MinPLogitsWarper(0.1), lambda x: apply_min_p(x, 0.1)),
    ]
    for hf, ours in pairs:
        torch.testing.assert_close(ours(logits.clone()), hf(ids, logits.clone()), msg=type(hf).__name__)


@pytest.mark.parametrize("kw,match", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(temperature=-1.0), "temperature"),
])
def test_bad_arguments(kw, match):
    args = dict(max_new_tokens=5)
    args.update(kw)
    with pytest.raises(MiniGPTError, match=match):
        generate(model(), PROMPTS, **args)
    with pytest.raises(MiniGPTError, match="at least one token"):
        generate(model(), [[1], []], 3)


@pytest.mark.parametrize("backend", ["sdpa", "manual"])
@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_cached_forward_without_a_mask_equals_the_uncached_one(backend, pos):
    """Prefill, then several tokens at once, then one: no attention mask at any point."""
    m = model(backend, pos, block=32)
    idx = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    full, _ = m(idx)  # (B, 12, V)
    cache = m.backbone.new_kv_cache(2)
    pieces = [m(idx[:, :5], kv_cache=cache)[0], m(idx[:, 5:11], kv_cache=cache)[0], m(idx[:, 11:], kv_cache=cache)[0]]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


def window_lengths(prompt_len: int, steps: int, block: int) -> list[int]:
    """How many tokens the KV cache holds when each new token is chosen, by the policy the module
    docstring states: fill with the last block_size tokens, then add one per step; when full,
    refill from the last block_size // 2 tokens."""
    lengths, held = [], None
    for step in range(steps):
        context = prompt_len + step
        if held is None:
            held = min(context, block)
        elif held + 1 > block:
            held = block // 2
        else:
            held += 1
        lengths.append(held)
    return lengths


@pytest.mark.parametrize("backend", ["sdpa", "manual"])
def test_logits_after_a_cache_refill_equal_a_full_forward_over_the_cached_window(backend, step_logits):
    block, steps = 16, 40  # 2.5 x block_size new tokens: several refills
    m = model(backend, block=block)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9], [4, 4, 8, 15, 16]]
    logged = step_logits()
    out = generate(m, prompts, steps, do_sample=False)
    lengths = window_lengths(len(prompts[0]), steps, block)  # the batch is left-padded to the longest prompt
    assert sum(later < earlier for earlier, later in zip(lengths, lengths[1:])) >= 2  # refills happened
    for row, (prompt, new) in enumerate(zip(prompts, out)):
        assert len(new) == steps
        seq = prompt + new
        for step, held in enumerate(lengths):
            context = seq[: len(prompt) + step]  # the row's real tokens before this step's choice
            window = context[-held:]  # the cache holds the last `held` positions; left padding is no token
            logits, _ = m(torch.tensor([window]))
            torch.testing.assert_close(logged[step][row], logits[0, -1], atol=1e-4, rtol=0,
                                       msg=f"row {row}, step {step}, window {len(window)}")
