import math

import pytest
import torch
import torch.nn.functional as F

from minigpt import GPT, GPTConfig, MiniGPTError, sinusoidal_table
from minigpt.model.layers import SinusoidalPositionalEmbedding


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16)
    return GPTConfig(**{**base, **kw})


def test_gpt2_124m_parameter_count():
    with torch.device("meta"):  # shapes only, no memory
        model = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, tie_weights=True))
    assert model.num_parameters() == 124_439_808
    # the same count derived from the shapes, independently of the module tree
    C, V, P, L = 768, 50257, 1024, 12
    per_block = 2 * (2 * C) + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    assert model.num_parameters() == V * C + P * C + L * per_block + 2 * C
    assert model.num_parameters(non_embedding=True) == 124_439_808 - P * C
    with torch.device("meta"):  # untied: the token table is a lookup only, the separate LM head a matmul
        untied = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, tie_weights=False))
    assert untied.num_parameters() == 124_439_808 + V * C
    assert untied.num_parameters(non_embedding=True) == 124_439_808 - P * C


def test_parameter_count_matches_hugging_face():
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.GPT2Config(n_layer=3, n_head=4, n_embd=64, n_positions=32, vocab_size=100)
    hf = transformers.GPT2LMHeadModel(hf_cfg)
    ours = GPT(GPTConfig(n_layer=3, n_head=4, n_embd=64, block_size=32, vocab_size=100))
    assert ours.num_parameters() == hf.num_parameters()


def test_untied_head_is_separate():
    model = GPT(tiny(tie_weights=False))
    assert model.head.weight is not model.backbone.wte.weight
    assert model.num_parameters() == GPT(tiny()).num_parameters() + 64 * 16
    tied = GPT(tiny())
    assert tied.head.weight is tied.backbone.wte.weight


def test_sinusoidal_matches_vaswani_formula():
    P, d = 50, 12
    table = sinusoidal_table(P, d)
    for pos in range(P):
        for i in range(d):
            angle = pos / (10000 ** ((i - i % 2) / d))
            expected = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert abs(table[pos, i].item() - expected) < 1e-6, (pos, i)
    # odd width: the last column is a sine
    odd = sinusoidal_table(7, 5)
    assert abs(odd[3, 4].item() - math.sin(3 / 10000 ** (4 / 5))) < 1e-6


def test_sinusoidal_model_has_no_position_parameters():
    learned, sinus = GPT(tiny()), GPT(tiny(pos_embedding="sinusoidal"))
    assert isinstance(sinus.backbone.wpe, SinusoidalPositionalEmbedding)
    assert learned.num_parameters() - sinus.num_parameters() == 16 * 16
    assert not any("wpe" in k for k in sinus.state_dict())


def test_gpt2_init_statistics():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=512, block_size=64, n_layer=8, n_head=4, n_embd=256)
    model = GPT(cfg)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert abs(p.std().item() - 0.02 / math.sqrt(2 * cfg.n_layer)) < 1e-3, name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert abs(p.std().item() - 0.02) < 1e-3, name
        elif name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif "ln" in name:
            assert torch.all(p == 1), name


def test_loss_is_mean_cross_entropy_ignoring_minus_100():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(0, 64, (3, 10))
    targets = torch.randint(0, 64, (3, 10))
    targets[0, :4] = -100
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 10, 64)
    keep = targets != -100
    log_probs = F.log_softmax(logits, dim=-1)
    picked = log_probs[keep, targets[keep]]  # one log-probability per kept target
    assert torch.isclose(loss, -picked.mean(), atol=1e-6)
    _, none = model(idx)
    assert none is None


@pytest.mark.parametrize("backend", ["manual", "sdpa"])
@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_padded_rows_match_unpadded(backend, pos):
    """Left and right padding with an attention mask reproduce each sequence's own logits."""
    torch.manual_seed(1)
    model = GPT(tiny(attn_backend=backend, pos_embedding=pos)).eval()
    a, b = torch.randint(0, 64, (1, 9)), torch.randint(0, 64, (1, 5))
    alone_a, _ = model(a)
    alone_b, _ = model(b)
    pad = torch.zeros(1, 4, dtype=torch.long)
    right = torch.cat([a, torch.cat([b, pad], 1)])
    right_mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
    logits, _ = model(right, attention_mask=right_mask)
    torch.testing.assert_close(logits[1, :5], alone_b[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[0], alone_a[0], atol=1e-5, rtol=0)
    left = torch.cat([a, torch.cat([pad, b], 1)])
    left_mask = torch.tensor([[1] * 9, [0] * 4 + [1] * 5])
    logits, _ = model(left, attention_mask=left_mask)
    torch.testing.assert_close(logits[1, 4:], alone_b[0], atol=1e-5, rtol=0)
    assert torch.isfinite(logits).all()


def test_param_groups_decay_only_matrices():
    model = GPT(tiny())
    decay, no_decay = model.param_groups(weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == model.num_parameters()
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} == {n for n, p in model.named_parameters() if p.dim() == 1}
    opt = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu")
    assert isinstance(opt, torch.optim.AdamW)


def test_sequence_longer_than_block_size_is_an_error():
    with pytest.raises(ValueError, match="block_size"):
        GPT(tiny())(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("field,value,match", [
    ("n_embd", 30, "n_embd"),             # not divisible by n_head=4
    ("attn_backend", "flash", "attn_backend"),
    ("block_size", 0, "block_size"),
    ("pos_embedding", "alibi", "pos_embedding"),
    ("dropout", 1.5, "dropout"),
    ("n_layer", 2.5, "n_layer"),
])
def test_bad_config_names_the_field(field, value, match):
    kw = dict(vocab_size=10, block_size=8, n_layer=1, n_head=4, n_embd=32)
    kw[field] = value
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kw)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(MiniGPTError, match="n_layers"):
        GPTConfig.from_dict({"n_layers": 3})
    assert GPTConfig.from_dict(tiny().to_dict()) == tiny()


def test_logits_to_keep_returns_the_last_positions():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 64, (2, 10))
    full, _ = model(idx)
    last, _ = model(idx, logits_to_keep=3)
    assert last.shape == (2, 3, 64)
    torch.testing.assert_close(last, full[:, -3:], atol=1e-6, rtol=0)
