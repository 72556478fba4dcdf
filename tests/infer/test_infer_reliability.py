"""Sampling, Hugging Face folders, tokenizers and loading against bad input (issue 23, second sweep):
a model and a tokenizer that do not belong together, NaN weights and logits, sizes that cannot be
allocated, config.json and tokenizer_config.json fields of the wrong type, and the Hugging Face
cache's symlinked layout. Every model here is tiny; nothing downloads."""

from __future__ import annotations

import json
import math
import os
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from minigpt import GPT, GPTConfig, MiniGPTError, MiniGPTWarning, load_hf, load_model, save_hf
from minigpt.checkpoint import save_checkpoint
from minigpt.data.tokenizers import CharTokenizer, HFTokenizer, same_tokenizer, tokenizer_from_meta
from minigpt.infer import generate as gen
from minigpt.infer.generate import check_batch_fits, generate, stream
from minigpt.infer.perplexity import perplexity
from minigpt.infer.predict import classify_texts
from minigpt.interop.hf import from_hf_state_dict, to_hf_config
from minigpt.loading import load_classifier

WORDS = {"[UNK]": 0, "a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "</s>": 6}  # a word-level tokenizer.json of 7 tokens
LLAMA = dict(pos_embedding="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_layer=1, n_head=2, n_embd=16, block_size=16)


def tokenizer_json(vocab: dict = WORDS) -> str:
    return json.dumps({"model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
                       "pre_tokenizer": {"type": "Whitespace"}})


def tiny(vocab=11, block=16, seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=1, n_head=2, n_embd=8, **kw)).eval()


def char_checkpoint(path, model: GPT, tok: CharTokenizer, **meta):
    save_checkpoint(path / "ckpt_best.safetensors", model, {"model_config": model.config.to_dict(),
                                                            "tokenizer": tok.to_meta(), **meta})
    return path


# ----------------------------------------------------------------------------- model and tokenizer together


def test_a_tokenizer_larger_than_the_model_is_refused_where_they_meet(tmp_path):
    tok = CharTokenizer.from_text("abcdefghij")  # 10 characters
    with pytest.raises(MiniGPTError, match="the tokenizer \\(char\\) has 10 tokens but the model's vocabulary has 6"):
        load_model(char_checkpoint(tmp_path / "small", tiny(vocab=6), tok))
    save_hf(tiny(vocab=97), tmp_path / "gpt2")  # a GPT-2 folder reads with the bundled 50,257-token tokenizer
    with pytest.raises(MiniGPTError, match="has 50,257 tokens but the model's vocabulary has 97"):
        load_model(tmp_path / "gpt2")
    # a padded vocabulary, or a model vocabulary larger than its tokenizer, is fine
    model, _ = load_model(char_checkpoint(tmp_path / "padded", tiny(vocab=10, pad_vocab_multiple=64), tok))
    assert model.config.padded_vocab == 64
    load_model(char_checkpoint(tmp_path / "larger", tiny(vocab=12), tok))


def test_a_tokenizer_json_of_another_model_in_a_llama_folder_is_refused(tmp_path):
    pytest.importorskip("tokenizers")
    torch.manual_seed(0)
    save_hf(GPT(GPTConfig(vocab_size=5, **LLAMA)), tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text(tokenizer_json(), encoding="utf-8")  # 7 tokens
    with pytest.raises(MiniGPTError, match="the tokenizer \\(hf\\) has 7 tokens but the model's vocabulary has 5"):
        load_model(tmp_path / "hf")


def classifier_checkpoint(path, vocab: int, tok: CharTokenizer, **changes):
    from minigpt.model.heads import ClassificationHead
    from minigpt.model.model import GPTBackbone, GPTClassifier

    torch.manual_seed(0)
    backbone = GPTBackbone(GPTConfig(vocab_size=vocab, block_size=16, n_layer=1, n_head=2, n_embd=8))
    head = ClassificationHead(8, 2)
    meta = {"task": "classify", "model_config": backbone.config.to_dict(), "tokenizer": tok.to_meta(),
            "head": head.spec(), "labels": ["x", "y"], "max_length": 16, "truncate": "head", **changes}
    save_checkpoint(path / "ckpt_best.safetensors", GPTClassifier(backbone, head), meta)
    return path


def test_a_classifier_checkpoint_is_checked_too(tmp_path):
    tok = CharTokenizer.from_text("abcdefg")
    with pytest.raises(MiniGPTError, match="has 7 tokens but the model's vocabulary has 4"):
        load_classifier(classifier_checkpoint(tmp_path / "small", 4, tok))
    assert load_classifier(classifier_checkpoint(tmp_path / "good", 7, tok))[2]["labels"] == ["x", "y"]
    for change, message in ((dict(labels="xy"), "the stored labels 'xy' are not a list of class names"),
                            (dict(max_length="16"), r"safetensors: max_length must be a positive number of tokens, got '16'"),
                            (dict(truncate="middle"), r"safetensors: truncate must be one of head, tail, head_tail; got 'middle'"),
                            (dict(long_text="windows", window_stride=16), r"safetensors: window_stride=16 must be from 1 to 15")):
        with pytest.raises(MiniGPTError, match=message):
            load_classifier(classifier_checkpoint(tmp_path / next(iter(change)), 7, tok, **change))


def test_an_hf_tokenizer_carries_a_fingerprint_checked_when_present(tmp_path):
    pytest.importorskip("tokenizers")
    tok = HFTokenizer(tokenizer_json(), "</s>")
    meta = tok.to_meta()
    assert len(meta["sha256"]) == 64 and tokenizer_from_meta(meta).vocab_size == 7
    older = {k: v for k, v in meta.items() if k != "sha256"}  # written before the fingerprint: still read
    assert tokenizer_from_meta(older).vocab_size == 7 and same_tokenizer(older, meta)
    altered = dict(meta, tokenizer_json=tokenizer_json({**WORDS, "f": 7}))
    with pytest.raises(MiniGPTError, match="does not match its sha256 fingerprint"):
        tokenizer_from_meta(altered)
    assert not same_tokenizer(altered, meta)
    model = tiny(vocab=7)  # a checkpoint whose stored tokenizer was swapped is refused when loaded
    save_checkpoint(tmp_path / "run" / "ckpt_best.safetensors", model,
                    {"model_config": model.config.to_dict(), "tokenizer": altered})
    with pytest.raises(MiniGPTError, match="the stored tokenizer is not usable .*fingerprint"):
        load_model(tmp_path / "run")


def test_char_ids_outside_the_vocabulary_are_an_error_not_an_index_error():
    tok = CharTokenizer.from_text("abc")
    assert tok.decode([0, 2]) == "ac"
    for wrong in (3, -1):
        with pytest.raises(MiniGPTError, match=f"token id {wrong} is outside this character vocabulary of 3"):
            tok.decode([0, wrong])


def test_nan_weights_are_refused_at_load(tmp_path):
    model = tiny(vocab=3)
    with torch.no_grad():
        model.backbone.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    with pytest.raises(MiniGPTError, match="'backbone.h.0.mlp.c_fc.weight' hold NaN or infinite values"):
        load_model(char_checkpoint(tmp_path, model, CharTokenizer.from_text("abc")))


# ----------------------------------------------------------------------------- configuration


def test_rope_theta_without_rotary_positions_is_one_warning():
    with pytest.warns(MiniGPTWarning, match="rope_theta \\(500000\\) is used only with pos_embedding 'rope'"):
        GPTConfig(rope_theta=5e5, pos_embedding="learned")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GPTConfig(rope_theta=5e5, pos_embedding="rope")  # used
        GPTConfig(pos_embedding="sinusoidal")  # the default: nothing to say


# ----------------------------------------------------------------------------- generation


@pytest.mark.parametrize("kw", [dict(), dict(static_cache=True)])
def test_a_block_size_1_model_samples_with_a_kv_cache(kw):
    model = tiny(block=1)
    assert generate(model, [[1, 2], [3]], 6, do_sample=False, **kw) == \
        generate(model, [[1, 2], [3]], 6, do_sample=False, use_cache=False)
    assert len(generate(model, [[1]], 5, seed=0, **kw)[0]) == 5


def test_max_new_tokens_is_a_bound_not_an_allocation(monkeypatch):
    model = tiny()
    steps = stream(model, [[1, 2]], 10 ** 12, seed=0)  # allocated up front before: two (1, 10**12) tensors
    assert [int(next(steps)[0][0]) for _ in range(3)] == generate(model, [[1, 2]], 3, seed=0)[0]
    steps.close()
    expected = generate(model, [[1, 2, 3], [4]], 40, seed=0, repetition_penalty=1.3)
    monkeypatch.setattr(gen, "FIRST_BUFFER_TOKENS", 3)  # the buffers grow five times: the same samples
    assert generate(model, [[1, 2, 3], [4]], 40, seed=0, repetition_penalty=1.3) == expected


def test_a_batch_that_cannot_fit_is_one_line_naming_num_samples(monkeypatch):
    model = tiny()
    with pytest.raises(MiniGPTError, match="num_samples 1,000,000,000,000 \\(the batch\\) needs at least"):
        check_batch_fits(model, 10 ** 12, 2, 100)
    monkeypatch.setattr(gen, "total_memory", lambda device: 1000)  # generation asks before it allocates
    with pytest.raises(MiniGPTError, match="num_samples 3 \\(the batch\\) needs at least 0.0 GiB .* the cpu has 0.0 GiB"):
        next(stream(model, [[1]] * 3, 5, seed=0))
    monkeypatch.undo()
    for error in (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB"),
                  RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: you "
                               "tried to allocate 1099511627776 bytes.")):
        def refuse(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(model.backbone, "new_kv_cache", refuse)
        with pytest.raises(MiniGPTError, match="not enough memory on the cpu to generate 3 samples of up to 5 new "
                                               "tokens at once .*num_samples"):
            generate(model, [[1]] * 3, 5, seed=0)


def test_a_seed_a_torch_generator_cannot_hold_is_an_error():
    with pytest.raises(MiniGPTError, match="seed must be an integer in \\[-2\\*\\*63, 2\\*\\*64\\), got 18446744073709551616"):
        generate(tiny(), [[1]], 2, seed=2 ** 64)
    assert generate(tiny(), [[1]], 2, seed=2 ** 64 - 1)  # the largest torch takes


class NaNAfter(torch.nn.Module):
    """Wraps a GPT: its logits turn NaN from the ``after``-th forward call on (as a float16 overflow would)."""

    def __init__(self, model: GPT, after: int):
        super().__init__()
        self.model, self.after, self.calls = model, after, 0
        self.config, self.backbone = model.config, model.backbone

    def forward(self, *args, **kwargs):
        self.calls += 1
        logits, loss = self.model(*args, **kwargs)
        return (logits * float("nan") if self.calls >= self.after else logits), loss


@pytest.mark.parametrize("kw", [dict(seed=0), dict(seed=0, top_p=0.9, top_k=3), dict(do_sample=False, stop_token_ids=[99])])
def test_non_finite_logits_are_one_line_naming_the_token(kw):
    """Sampling stops at once (the CPU's multinomial checks); greedy with stop tokens, at its next read
    (every 8 tokens); a NaN never reaches torch.multinomial unchecked."""
    model = NaNAfter(tiny(vocab=101), after=3)
    with pytest.raises(MiniGPTError, match="non-finite logits \\(NaN or inf\\) at new token 3"):
        generate(model, [[1, 2]], 20, **kw)


def test_non_finite_logits_are_read_every_64_tokens_without_stops(monkeypatch):
    model = NaNAfter(tiny(), after=2)
    steps = 0
    with pytest.raises(MiniGPTError, match="at new token 2"):
        for _ in stream(model, [[1]], 200, do_sample=False):
            steps += 1
    assert steps == gen.NONFINITE_CHECK_EVERY


# ----------------------------------------------------------------------------- Hugging Face folders


def gpt2_config(**changes) -> dict:
    return {**to_hf_config(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=8)), **changes}


def llama_config(**changes) -> dict:
    return {**to_hf_config(GPTConfig(vocab_size=11, **LLAMA)), **changes}


@pytest.mark.parametrize("config,message", [
    (llama_config(rope_scaling="linear"), "config 'rope_scaling' must be an object \\(or null\\), got 'linear'"),
    (llama_config(rope_theta="fast", rope_parameters=None), "config 'rope_theta' must be a finite number, got 'fast'"),
    (llama_config(rope_parameters={"rope_type": "default", "rope_theta": [1]}), "config rope_parameters 'rope_theta' must be"),
    (llama_config(rope_parameters="default"), "config 'rope_parameters' must be an object"),
    (llama_config(rope_scaling={"type": 3}), "config rope_scaling 'type' must be a string, got 3"),
    (llama_config(num_hidden_layers="2"), "config 'num_hidden_layers' must be an integer, got '2'"),
    (llama_config(num_hidden_layers=2.0), "config 'num_hidden_layers' must be an integer, got 2.0"),
    (llama_config(rms_norm_eps="1e-6"), "config 'rms_norm_eps' must be a finite number"),
    (llama_config(attention_bias="false", mlp_bias="false"), "config 'attention_bias' must be true or false"),
    (llama_config(tie_word_embeddings=1), "config 'tie_word_embeddings' must be true or false, got 1"),
    (llama_config(hidden_act=["silu"]), "config 'hidden_act' must be a string"),
    (llama_config(num_attention_heads=0, head_dim=8), "head_dim 8"),
    (llama_config(vocab_size=None), "config has no key 'vocab_size'"),
    (gpt2_config(activation_function=["gelu"]), "config 'activation_function' must be a string"),
    (gpt2_config(scale_attn_weights="false"), "config 'scale_attn_weights' must be true or false, got 'false'"),
    (gpt2_config(n_inner="32"), "config 'n_inner' must be an integer, got '32'"),
    (gpt2_config(layer_norm_epsilon=float("nan")), "config 'layer_norm_epsilon' must be a finite number"),
    (gpt2_config(model_type=7), "config 'model_type' must be a string, got 7"),
    ([1, 2], "the config is not a JSON object"),
])
def test_config_json_fields_of_the_wrong_type_are_one_line(config, message):
    with pytest.raises(MiniGPTError, match=message):
        from_hf_state_dict(config, {}, source="folder")


def test_null_optional_fields_read_as_absent():
    config = GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=8)
    state = tiny()
    model = from_hf_state_dict(gpt2_config(n_inner=None, layer_norm_epsilon=None), _hf_state(state))
    assert model.config.architecture() == config.architecture()


def _hf_state(model: GPT) -> dict:
    from minigpt.interop.hf import to_hf_state_dict
    return to_hf_state_dict(model)


def sharded_cache_folder(root, model: GPT):
    """``model`` saved as the Hugging Face cache keeps a sharded model: the files of snapshots/<rev>/ are
    symlinks into ../../blobs/ (named by their hashes), and the index names the shards."""
    save_hf(model, root / "plain")
    tensors = load_file(str(root / "plain" / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    blobs, snapshot = root / "hub" / "blobs", root / "hub" / "snapshots" / "0123abc"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    files = {name: {k: tensors[k] for k in keys} for name, keys in shards.items()}
    for i, (name, part) in enumerate(files.items()):
        save_file(part, str(blobs / f"blob{i}"))
        os.symlink(f"../../blobs/blob{i}", snapshot / name)
    index = {"metadata": {}, "weight_map": {k: name for name, keys in shards.items() for k in keys}}
    for name, text in (("model.safetensors.index.json", json.dumps(index)),
                       ("config.json", (root / "plain" / "config.json").read_text())):
        (blobs / name).write_text(text)
        os.symlink(f"../../blobs/{name}", snapshot / name)
    return snapshot


def test_a_sharded_folder_in_the_hf_cache_layout_loads(tmp_path):
    model = tiny(vocab=50257)
    snapshot = sharded_cache_folder(tmp_path, model)
    ours = load_hf(snapshot).eval()
    idx = torch.randint(0, 50257, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], model(idx)[0])
    load_model(snapshot)  # and the command-line path


@pytest.mark.parametrize("name", ["../elsewhere.safetensors", "sub/model.safetensors", "/abs/model.safetensors",
                                  "..", 5, ""])
def test_shard_names_are_confined_to_the_folder(tmp_path, name):
    model = tiny(vocab=50257)
    snapshot = sharded_cache_folder(tmp_path, model)
    index = json.loads((snapshot / "model.safetensors.index.json").read_text())
    index["weight_map"][next(iter(index["weight_map"]))] = name
    (snapshot / "model.safetensors.index.json").unlink()
    (snapshot / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(MiniGPTError, match="lies outside|expected a file name"):
        load_hf(snapshot)


# ----------------------------------------------------------------------------- tokenizer folders


@pytest.mark.parametrize("content,message", [
    (b'{"eos_token": ', "tokenizer_config.json is not valid JSON"),
    (b'{"eos_token": "caf\xe9"}', "tokenizer_config.json: not UTF-8 text"),
    (b'{"eos_token": 6}', "eos_token must be the token's text .*got 6"),
    (b'{"eos_token": {"content": 6}}', "eos_token must be the token's text"),
    (b'["</s>"]', "tokenizer_config.json: not a JSON object"),
])
def test_tokenizer_config_json_damage_is_one_line(tmp_path, content, message):
    pytest.importorskip("tokenizers")
    (tmp_path / "tokenizer.json").write_text(tokenizer_json(), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_bytes(content)
    with pytest.raises(MiniGPTError, match=message):
        HFTokenizer.from_folder(tmp_path)


def test_tokenizer_json_not_utf8_and_eos_of_a_good_folder(tmp_path):
    pytest.importorskip("tokenizers")
    (tmp_path / "tokenizer.json").write_bytes(tokenizer_json().encode() + b"\xff")
    with pytest.raises(MiniGPTError, match="tokenizer.json: not UTF-8 text"):
        HFTokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text(tokenizer_json(), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "</s>"}}))
    assert HFTokenizer.from_folder(tmp_path).eot_token == 6


# ----------------------------------------------------------------------------- scoring and classifying


class Shards:
    """A stand-in for ``data.loader.TokenShards``: len() and read(start, length), counting the tokens read."""

    def __init__(self, ids):
        self.ids, self.largest = np.asarray(ids, dtype=np.uint16), 0

    def __len__(self):
        return len(self.ids)

    def read(self, start, length):
        self.largest = max(self.largest, length)
        return self.ids[start:start + length]


def test_perplexity_reads_a_split_window_by_window_and_refuses_non_finite_logits():
    model = tiny(vocab=30)
    ids = torch.randint(0, 30, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    split = Shards(ids)
    assert perplexity(model, split, stride=5, progress=False) == perplexity(model, ids, stride=5, progress=False)
    assert split.largest == model.config.block_size + 1  # never the whole split at once
    with pytest.raises(MiniGPTError, match="non-finite logits"):
        perplexity(NaNAfter(model, after=1), ids, progress=False)


def test_classifying_with_non_finite_logits_is_an_error():
    class NaNClassifier(torch.nn.Module):
        def forward(self, ids, *, attention_mask=None, right_padded=True):
            return torch.full((ids.size(0), 2), float("nan")), None

    tok = CharTokenizer.from_text("abc")
    meta = {"labels": ["x", "y"], "max_length": 8, "truncate": "head"}
    with pytest.raises(MiniGPTError, match="non-finite logits \\(NaN or inf\\) for text 1"):
        classify_texts(NaNClassifier(), tok, ["ab", "c"], meta, torch.device("cpu"))


def test_the_memory_bound_is_a_lower_bound_of_what_a_generation_allocates():
    model = tiny()
    need = gen.least_memory(model, 4, 3, 10, torch.float32)
    cache = model.backbone.new_kv_cache(4, 13, torch.float32)
    assert need >= cache.nbytes() and need < 2 ** 20
    assert math.isclose(gen.least_memory(model, 8, 3, 10, torch.float32), 2 * need)


@pytest.mark.parametrize("change,message", [
    (dict(n_positions=10 ** 12), "backbone.wpe.weight has shape \\(16, 8\\), the model expects \\(1000000000000, 8\\)"),
    (dict(vocab_size=10 ** 12), "the model expects \\(1000000000000, 8\\)"),
    (dict(n_layer=10 ** 9), "config has 1,000,000,000 layers \\(n_layer / num_hidden_layers\\) but the weights hold 1 blocks"),
])
def test_config_sizes_that_do_not_fit_the_weights_fail_before_allocating(change, message):
    """Before: a (10**12, 8) table was allocated (or a billion blocks built) before the weights were compared."""
    state = _hf_state(tiny(vocab=11))
    with pytest.raises(MiniGPTError, match=message):
        from_hf_state_dict(gpt2_config(**change), state, source="folder")
    llama = to_hf_config(GPTConfig(vocab_size=11, **LLAMA))
    with pytest.raises(MiniGPTError, match="config has 1,000,000,000 layers"):
        from_hf_state_dict({**llama, "num_hidden_layers": 10 ** 9}, _hf_state(GPT(GPTConfig(vocab_size=11, **LLAMA))))
