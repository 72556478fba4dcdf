"""Classification heads and adapters: padding-correct pooling, head swapping, freezing, LoRA."""

import copy

import pytest
import torch

from minigpt import GPT, GPTConfig, MiniGPTError
from minigpt.files import save_tensors
from minigpt.model.heads import ClassificationHead, pool
from minigpt.model.lora import apply_lora, merge_lora, unmerge_lora
from minigpt.model.model import GPTClassifier


def classifier(backend="sdpa", pooling="last", hidden=None, seed=0):
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=60, block_size=24, n_layer=2, n_head=2, n_embd=16, attn_backend=backend))
    head = ClassificationHead(16, 3, pooling=pooling, hidden=hidden)
    with torch.no_grad():
        head.out.weight.normal_(0, 1)
    return GPTClassifier.from_gpt(gpt, head).eval()


@pytest.mark.parametrize("backend", ["sdpa", "manual"])
@pytest.mark.parametrize("pooling", ["last", "mean", "first", "max", "concat"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_equals_each_example_alone(backend, pooling, side):
    model = classifier(backend, pooling, hidden=8)
    texts = [torch.randint(1, 60, (n,)).tolist() for n in (5, 12, 1, 9)]
    T = max(map(len, texts))
    ids = torch.zeros(len(texts), T, dtype=torch.long)
    mask = torch.zeros(len(texts), T, dtype=torch.long)
    for row, t in enumerate(texts):
        sl = slice(0, len(t)) if side == "right" else slice(T - len(t), T)
        ids[row, sl], mask[row, sl] = torch.tensor(t), 1
    batched, _ = model(ids, attention_mask=mask)
    for row, t in enumerate(texts):
        alone, _ = model(torch.tensor([t]))
        torch.testing.assert_close(batched[row], alone[0], atol=1e-5, rtol=0)


def test_pooling_reads_real_tokens_only():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).view(2, 4, 1)  # value = position (+4 in row 1)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    assert pool(hidden, mask, "last").flatten().tolist() == [2.0, 7.0]
    assert pool(hidden, mask, "first").flatten().tolist() == [0.0, 5.0]
    assert pool(hidden, mask, "mean").flatten().tolist() == [1.0, 6.0]
    assert pool(hidden, mask, "max").flatten().tolist() == [2.0, 7.0]
    assert pool(-hidden, mask, "max").flatten().tolist() == [0.0, -5.0]  # the padding (-3, -4) is never the max
    assert pool(hidden, mask, "concat").tolist() == [[2.0, 2.0, 1.0], [7.0, 7.0, 6.0]]  # [last; max; mean]
    assert pool(hidden, torch.zeros_like(mask), "max").flatten().tolist() == [0.0, 0.0]  # no real token: 0, as mean
    with pytest.raises(MiniGPTError, match="pooling"):
        pool(hidden, mask, "min")


def test_max_and_concat_pooling_against_a_loop():
    """Pooling (B, T, C) with ragged masks, against a per-row loop over the real positions only."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 6, 5, generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]])
    for row in range(3):
        real = hidden[row, mask[row].bool()]  # (n, C)
        expected = torch.cat([real[-1], real.max(dim=0).values, real.mean(dim=0)])
        torch.testing.assert_close(pool(hidden, mask, "concat")[row], expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(pool(hidden, mask, "max")[row], real.max(dim=0).values, atol=0, rtol=0)
    head = ClassificationHead(5, 2, pooling="concat", hidden=4)
    assert head.proj[0].in_features == 15 and head.spec()["n_embd"] == 5  # it reads 3C, it sits on C
    again = ClassificationHead.from_spec(head.spec())
    again.load_state_dict(head.state_dict())
    torch.testing.assert_close(again(hidden, mask), head(hidden, mask), atol=0, rtol=0)


def test_head_swap_leaves_backbone_untouched_and_heads_reload(tmp_path):
    model = classifier()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    ids = torch.randint(0, 60, (3, 10))
    spam_logits, _ = model(ids)
    model.add_head("topic", ClassificationHead(16, 5, pooling="mean"))
    topic_logits, _ = model(ids)
    assert topic_logits.shape == (3, 5)
    model.use_head("default")
    torch.testing.assert_close(model(ids)[0], spam_logits, atol=0, rtol=0)
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    model.save_head(tmp_path / "topic.safetensors", "topic", extra={"id2label": ["a", "b", "c", "d", "e"]})
    fresh = classifier()  # same backbone weights (same seed), different head
    meta = fresh.load_head(tmp_path / "topic.safetensors", "topic")
    assert meta["id2label"][0] == "a"
    torch.testing.assert_close(fresh(ids)[0], topic_logits, atol=0, rtol=0)
    with pytest.raises(MiniGPTError, match="no 'minigpt_head' metadata"):
        save_tensors(tmp_path / "x.safetensors", {"a": torch.zeros(1)})
        fresh.load_head(tmp_path / "x.safetensors")


def changed_after_steps(model, steps=1):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    model.train()
    ids = torch.randint(0, 60, (4, 10))
    for _ in range(steps):
        _, loss = model(ids, labels=torch.tensor([0, 1, 2, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def test_head_only_training_changes_only_the_head():
    model = classifier(hidden=8)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    changed = changed_after_steps(model)
    assert changed == {n for n, _ in model.named_parameters() if n.startswith("heads.")}


def test_lora_changes_only_adapters_and_head_and_merges_exactly():
    model = classifier()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    n_before = sum(p.numel() for p in model.parameters())
    wrapped = apply_lora(model.backbone, targets=("c_attn", "attn.c_proj"), rank=4, alpha=8)
    assert wrapped == ["h.0.attn.c_attn", "h.0.attn.c_proj", "h.1.attn.c_attn", "h.1.attn.c_proj"]
    added = sum(p.numel() for p in model.parameters()) - n_before
    # rank r on a layer with `in` inputs and `out` outputs adds r·(in + out): c_attn 16 -> 48, c_proj 16 -> 16
    assert added == 2 * (4 * (16 + 48) + 4 * (16 + 16))
    assert len(apply_lora(classifier().backbone, targets=("c_proj",), rank=2)) == 4  # attention and MLP
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("heads.") for n in trainable)
    # step 1: B starts at zero, so A gets no gradient yet; only the B's and the head move
    first = changed_after_steps(copy.deepcopy(model), steps=1)
    assert first == {n for n in trainable if "lora_A" not in n}
    assert changed_after_steps(model, steps=2) == trainable
    model.eval()
    ids = torch.randint(0, 60, (3, 10))
    unmerged, _ = model(ids)
    merge_lora(model)
    merged, _ = model(ids)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    unmerge_lora(model)
    torch.testing.assert_close(model(ids)[0], unmerged, atol=1e-5, rtol=0)


def test_remove_head_drops_only_an_inactive_head():
    model = classifier()
    model.add_head("topic", ClassificationHead(16, 5), use=False)
    with pytest.raises(MiniGPTError, match="active"):
        model.remove_head("default")
    model.remove_head("topic")
    assert list(model.heads) == ["default"]
    with pytest.raises(MiniGPTError, match="no head named 'topic'"):
        model.remove_head("topic")
