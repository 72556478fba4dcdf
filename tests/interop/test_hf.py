"""minigpt against Hugging Face GPT2LMHeadModel built from a small config with random weights."""

import pytest
import torch

from minigpt import GPT, GPTConfig, MiniGPTError, load_hf, save_hf
from minigpt.interop.hf import from_hf_state_dict, to_hf_config

transformers = pytest.importorskip("transformers")


def hf_model(tie=True, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=3, n_head=4, n_embd=64, n_positions=32, vocab_size=97,
                                  tie_word_embeddings=tie, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # random, not init-shaped: non-zero biases and LayerNorm gains too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def hf_logits(model, idx, mask=None):
    with torch.no_grad():
        return model(input_ids=idx, attention_mask=mask).logits


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("backend", ["sdpa", "manual"])
def test_logits_match_gpt2lmheadmodel(tie, backend):
    hf = hf_model(tie)
    ours = from_hf_state_dict(hf.config.to_dict(), hf.state_dict(), attn_backend=backend).eval()
    idx = torch.randint(0, 97, (3, 32))
    with torch.no_grad():
        logits, _ = ours(idx)
    torch.testing.assert_close(logits, hf_logits(hf, idx), atol=1e-4, rtol=0)
    # with right padding, real positions agree as well
    mask = torch.ones_like(idx)
    mask[1, 20:] = 0
    with torch.no_grad():
        logits, _ = ours(idx, attention_mask=mask)
    ref = hf_logits(hf, idx, mask)
    torch.testing.assert_close(logits[1, :20], ref[1, :20], atol=1e-4, rtol=0)


@pytest.mark.parametrize("tie", [True, False])
def test_export_round_trips_exactly(tie, check_export_round_trip):
    check_export_round_trip(hf_model(tie, seed=1), tie)


@pytest.mark.parametrize("tie", [True, False])
def test_save_pretrained_directories_both_ways(tmp_path, tie):
    hf = hf_model(tie, seed=2)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf(tmp_path / "hf").eval()
    idx = torch.randint(0, 97, (2, 17))
    with torch.no_grad():
        logits, _ = ours(idx)
    torch.testing.assert_close(logits, hf_logits(hf, idx), atol=1e-4, rtol=0)

    save_hf(ours, tmp_path / "ours")
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    for key, value in hf.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    reloaded = load_hf(tmp_path / "ours")
    for (k1, v1), (k2, v2) in zip(ours.state_dict().items(), reloaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1


def test_legacy_pytorch_model_bin(tmp_path):
    hf = hf_model(seed=3)
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours = load_hf(tmp_path).eval()
    idx = torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf_logits(hf, idx), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kw", [dict(pos_embedding="sinusoidal"), dict(bias=False), dict(activation="gelu")])
def test_export_of_non_gpt2_variants_computes_the_same_function(tmp_path, kw):
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, **kw)).eval()
    save_hf(ours, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf_logits(hf, idx), atol=1e-4, rtol=0)


def test_missing_or_wrong_directories_are_clear_errors(tmp_path):
    with pytest.raises(MiniGPTError, match="not a directory"):
        load_hf(tmp_path / "nope")
    with pytest.raises(MiniGPTError, match="config.json"):
        load_hf(tmp_path)
    hf_model().config.save_pretrained(tmp_path)
    with pytest.raises(MiniGPTError, match="model.safetensors"):
        load_hf(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(MiniGPTError, match="safetensors"):
        load_hf(tmp_path)


@pytest.mark.parametrize("vocab, eot", [(50257, 50256), (97, None)])
def test_exported_config_names_end_of_text_only_for_the_gpt2_vocabulary(vocab, eot):
    """GPT2Config's default bos/eos id (50256) would lie outside a character vocabulary."""
    hf_config = to_hf_config(GPTConfig(vocab_size=vocab, block_size=16, n_layer=1, n_head=2, n_embd=8))
    assert hf_config["bos_token_id"] == hf_config["eos_token_id"] == eot
    assert transformers.GPT2Config(**hf_config).eos_token_id == eot


def test_export_refuses_a_model_setting_it_has_no_rule_for():
    """A GPTConfig field that export neither writes, nor checks, nor knows to leave out (as a new one
    would be) stops the export, naming the field; today's fields all have a rule."""
    import dataclasses

    from minigpt.interop.hf import check_fields_mapped

    @dataclasses.dataclass
    class WithANewKnob(GPTConfig):
        new_knob: int = 3

    with pytest.raises(MiniGPTError, match=r"no Hugging Face mapping for the model setting\(s\) new_knob"):
        to_hf_config(WithANewKnob(n_layer=1, n_head=2, n_embd=8, block_size=8))
    check_fields_mapped(GPTConfig())
