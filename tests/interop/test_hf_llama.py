"""Llama and Qwen2 folders in and out, against transformers' own classes with random weights, and
Hugging Face tokenizers against AutoTokenizer on the same tokenizer.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minigpt import GPT, GPTConfig, MiniGPTError, load_hf, load_model, save_hf
from minigpt.data.tokenizers import HFTokenizer, StreamDecoder, tokenizer_from_meta
from minigpt.interop.hf import from_hf_state_dict

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE = (REPO / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")


def hf_model(kind="llama", tie=False, n_kv=2, bias=False, seed=0, theta=10000.0):
    torch.manual_seed(seed)
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=n_kv, max_position_embeddings=48, tie_word_embeddings=tie, rms_norm_eps=1e-5,
                  rope_theta=theta, rope_parameters={"rope_type": "default", "rope_theta": theta})
    if kind == "llama":
        config = transformers.LlamaConfig(attention_bias=bias, mlp_bias=bias, **common)
        model = transformers.LlamaForCausalLM(config)
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    with torch.no_grad():  # random, not init-shaped: norm gains and biases too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def hf_logits(model, idx, mask=None):
    with torch.no_grad():
        return model(input_ids=idx, attention_mask=mask).logits


VARIANTS = [("llama", False, 2, False), ("llama", True, 2, False), ("llama", False, 4, True), ("llama", True, 1, False),
            ("qwen2", False, 2, False), ("qwen2", True, 1, False)]


@pytest.mark.parametrize("kind,tie,n_kv,bias", VARIANTS)
@pytest.mark.parametrize("backend", ["sdpa", "manual"])
def test_logits_match_transformers(kind, tie, n_kv, bias, backend):
    hf = hf_model(kind, tie, n_kv, bias, theta=500.0)
    ours = from_hf_state_dict(hf.config.to_dict(), hf.state_dict(), attn_backend=backend).eval()
    assert ours.config.kv_heads == n_kv and ours.config.rope_theta == 500.0
    idx = torch.randint(0, 97, (3, 40))
    with torch.no_grad():
        logits, _ = ours(idx)
    torch.testing.assert_close(logits, hf_logits(hf, idx), atol=1e-4, rtol=0)
    mask = torch.ones_like(idx)
    mask[1, 25:] = 0  # right padding: real positions agree
    with torch.no_grad():
        padded, _ = ours(idx, attention_mask=mask)
    torch.testing.assert_close(padded[1, :25], hf_logits(hf, idx, mask)[1, :25], atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind,tie,n_kv,bias", VARIANTS)
def test_export_round_trips_exactly(kind, tie, n_kv, bias, check_export_round_trip):
    check_export_round_trip(hf_model(kind, tie, n_kv, bias, seed=1), tie)


@pytest.mark.parametrize("kind,tie", [("llama", False), ("qwen2", True)])
def test_save_pretrained_folders_sharded_both_ways(tmp_path, kind, tie):
    hf = hf_model(kind, tie, seed=2)
    hf.save_pretrained(tmp_path / "hf", max_shard_size="50KB")  # sharded: an index and several files
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    ours = load_hf(tmp_path / "hf").eval()
    idx = torch.randint(0, 97, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf_logits(hf, idx), atol=1e-4, rtol=0)
    save_hf(ours, tmp_path / "ours")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert type(back) is type(hf)
    for key, value in hf.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


@pytest.mark.parametrize("change,match", [
    (lambda c: c.update(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "rope_scaling"),
    (lambda c: c.update(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}), "rope_parameters.rope_type 'yarn'"),
    (lambda c: c.update(hidden_act="gelu"), "hidden_act 'gelu'"),
    (lambda c: c.update(head_dim=32), "head_dim 32"),
    (lambda c: c.update(attention_bias=True), "attention_bias=True with mlp_bias=False"),
    (lambda c: c.update(model_type="qwen2", use_sliding_window=True), "use_sliding_window=true"),
    (lambda c: c.update(model_type="mixtral"), "model_type 'mixtral' is not supported"),
])
def test_unsupported_options_are_errors_naming_the_key(change, match):
    hf = hf_model()
    config = hf.config.to_dict()
    change(config)
    with pytest.raises(MiniGPTError, match=match):
        from_hf_state_dict(config, hf.state_dict())


def test_a_model_without_an_hf_equivalent_is_not_exported(tmp_path):
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16, pos_embedding="rope"))
    with pytest.raises(MiniGPTError, match="no Hugging Face architecture"):
        save_hf(model, tmp_path / "x")
    assert not (tmp_path / "x" / "model.safetensors").exists()


# ----------------------------------------------------------------------------- tokenizers

SAMPLES = ["Hello world", "def f(x):\n    return x ** 2  # square\n\tif x != 0: pass",
           "lots   of    spaces\n\n\n  and\ttabs \t ", "emoji 🤖🎉👍🏽 and flags 🇯🇵", "今天天气很好，中文和English混合",
           "Ünïcödé naïve café", "", "   leading and trailing   "]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """A byte-level BPE trained here on bundled text, saved as a Hugging Face folder that puts <s> first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>", "<|im_start|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([SHAKESPEARE[:200_000], "中文 🤖 def return"], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    folder = tmp_path_factory.mktemp("tok")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)
    return folder


def test_ids_equal_autotokenizer(hf_folder):
    reference = transformers.AutoTokenizer.from_pretrained(hf_folder)
    ours = HFTokenizer.from_folder(hf_folder)
    assert ours.bos_token == reference.bos_token_id and ours.eot_token == reference.eos_token_id
    for text in SAMPLES:
        assert ours.encode(text) == reference.encode(text, add_special_tokens=False), text
        assert [ours.bos_token] + ours.encode(text) == reference.encode(text), text  # <s> first, as the folder says
        assert ours.decode(ours.encode(text)) == text
    assert ours.vocab_size == len(reference)


def test_special_tokens_are_text_unless_allowed(hf_folder):
    ours = HFTokenizer.from_folder(hf_folder)
    special = ours._tok.token_to_id("<|im_start|>")
    assert special not in ours.encode("<|im_start|>user")
    assert ours.encode("<|im_start|>user", allow_special=True)[0] == special


def test_streaming_decode_and_meta_round_trip(hf_folder):
    ours = HFTokenizer.from_folder(hf_folder)
    text = "今天天气 🤖 naïve"
    decoder, pieces = StreamDecoder(ours), []
    for token in ours.encode(text):
        piece = decoder.feed(token)
        assert "\ufffd" not in piece
        pieces.append(piece)
    assert "".join(pieces) + decoder.flush() == text
    again = tokenizer_from_meta(ours.to_meta())
    assert again.encode(text) == ours.encode(text) and again.bos_token == ours.bos_token


# ----------------------------------------------------------------------------- everything else on a Llama folder


@pytest.fixture(scope="module")
def llama_folder(hf_folder, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=True, bos_token_id=0, eos_token_id=1)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (hf_folder / name).exists():
            (folder / name).write_bytes((hf_folder / name).read_bytes())
    return folder


def test_sample_py_on_a_llama_folder_matches_hf_greedy(llama_folder):
    hf = transformers.AutoModelForCausalLM.from_pretrained(llama_folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(llama_folder)
    ids = tok("ROMEO:", return_tensors="pt").input_ids  # <s> first
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)[0, ids.size(1):]
    out = subprocess.run([sys.executable, str(REPO / "sample.py"), "--ckpt", str(llama_folder), "--prompt", "ROMEO:",
                          "--max_new_tokens", "8", "--greedy", "--no_eos_stop", "--no-stream"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ROMEO:" + tok.decode(ref.tolist()) + "\n"
    model, ours = load_model(llama_folder)
    assert model.config.kv_heads == 2 and isinstance(ours, HFTokenizer)


def test_fine_tune_and_continue_pretraining_from_a_llama_folder(llama_folder, tmp_path):
    from minigpt.data.corpus import prepare_corpus
    from minigpt.loading import load_classifier
    from minigpt.train.finetune import ClassifyConfig, finetune
    from minigpt.train.pretrain import PretrainConfig, train

    rows = ["text,label"] + [f"{'good' if i % 2 else 'bad'} play {i},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    (tmp_path / "d.csv").write_text("\n".join(rows), encoding="utf-8")
    cfg = ClassifyConfig(train_file=str(tmp_path / "d.csv"), out_dir=str(tmp_path / "clf"), init_from=str(llama_folder),
                         strategy="lora", lora_targets="c_attn,mlp.c_fc", max_iters=4, eval_interval=2, batch_size=8,
                         progress=False, plot=False, device="cpu")
    finetune(cfg)
    model, tok, meta = load_classifier(tmp_path / "clf")
    assert meta["tokenizer"]["kind"] == "hf" and tok.bos_token is not None
    (tmp_path / "t.txt").write_text(SHAKESPEARE[:20_000], encoding="utf-8")
    prepare_corpus(tmp_path / "t.txt", tmp_path / "data", str(llama_folder), progress=False)
    summary = train(PretrainConfig(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "lm"),
                                   init_from=str(llama_folder), max_iters=2, eval_interval=2, eval_iters=1, batch_size=2,
                                   progress=False, plot=False, device="cpu"))
    assert summary["iter_num"] == 2
    data = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert data["tokenizer"]["kind"] == "hf"
