"""Hugging Face checkpoints <-> minigpt, from and to local folders (nothing downloads): GPT-2
(``GPT2LMHeadModel``), Llama (``LlamaForCausalLM``: SmolLM, Llama 2/3 without rope scaling) and
Qwen2 (``Qwen2ForCausalLM``: Qwen2/2.5).

GPT-2 stores its linear layers as ``Conv1D`` with weight (in, out); ``nn.Linear`` keeps (out, in),
so those four matrices per block are transposed on the way in and out. Llama and Qwen2 keep q, k,
v and gate, up as separate matrices; minigpt computes each group in one matmul (``c_attn``,
``c_fc``), so they are stacked on the way in and split on the way out. An option minigpt does not
implement (rope scaling, sliding windows, ...) is an error naming the key, never silently ignored;
so is a value of the wrong JSON type (every field is read through ``_field``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import load_weights
from ..files import load_tensors, plain_file_name, read_json, save_tensors, write_json
from ..errors import MiniGPTError
from ..model.config import GPTConfig
from ..model.model import GPT

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")  # buffers older checkpoints kept
BLOCK_KEY = re.compile(r"(?:transformer\.h|h|model\.layers)\.(\d+)\.")  # a block's tensor, GPT-2's or Llama's: its index


def _require(cond: bool, source: str, what: str, layout: str) -> None:
    if not cond:
        raise MiniGPTError(f"{source}: config {what} is not supported by minigpt's {layout} layout")


REQUIRED = object()  # _field's default for a key config.json must have
# the JSON types a config.json field may hold: what the value must be, and the test of it
JSON_KINDS = {
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "number": ("a finite number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "object": ("an object (or null)", lambda v: isinstance(v, dict)),
}


def _field(hf: dict, name: str, kind: str, source: str, default=REQUIRED, where: str = "config"):
    """``hf[name]``, checked to be of ``kind`` (a key of ``JSON_KINDS``); absent or null gives ``default``
    (absent with no default is an error naming the key)."""
    value = hf.get(name)
    if value is None:
        if default is REQUIRED:
            raise MiniGPTError(f"{source}: {where} has no key {name!r}")
        return default
    what, ok = JSON_KINDS[kind]
    if not ok(value):
        raise MiniGPTError(f"{source}: {where} {name!r} must be {what}, got {value!r}")
    return value


def read_hf_config(folder: str | Path) -> dict:
    """A Hugging Face folder's config.json, which must be a JSON object."""
    path = Path(folder) / "config.json"
    config = read_json(path)
    if not isinstance(config, dict):
        raise MiniGPTError(f"{path}: not a JSON object (a Hugging Face config is one)")
    return config


def hf_model_type(hf: dict, source: str) -> str:
    """The config's model_type (gpt2 when absent, as GPT-2's oldest configs have none)."""
    return _field(hf, "model_type", "str", source, "gpt2")


def _config_from_hf(hf: dict, source: str) -> dict:
    """GPTConfig fields for a Hugging Face config.json."""
    if not isinstance(hf, dict):
        raise MiniGPTError(f"{source}: the config is not a JSON object")
    return family(hf_model_type(hf, source), source).config_in(hf, source)


def family(model_type: str, source: str) -> "Family":
    """The ``FAMILIES`` entry of a Hugging Face ``model_type``, or an error naming those there are."""
    if model_type not in FAMILIES:
        raise MiniGPTError(f"{source}: config model_type {model_type!r} is not supported (minigpt reads "
                           f"{', '.join(FAMILIES)})")
    return FAMILIES[model_type]


def _gpt2_config(hf: dict, source: str) -> dict:
    require = lambda cond, what: _require(cond, source, what, "GPT-2")  # noqa: E731
    field = lambda name, kind, default=REQUIRED: _field(hf, name, kind, source, default)  # noqa: E731
    named = field("activation_function", "str", "gelu_new")
    activation = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}.get(named)
    require(activation is not None, f"activation_function {named!r}")
    require(field("scale_attn_weights", "bool", True), "scale_attn_weights=false")
    require(not field("scale_attn_by_inverse_layer_idx", "bool", False), "scale_attn_by_inverse_layer_idx=true")
    return dict(
        vocab_size=field("vocab_size", "int"), block_size=field("n_positions", "int"),
        n_layer=field("n_layer", "int"), n_head=field("n_head", "int"), n_embd=field("n_embd", "int"),
        layer_norm_eps=float(field("layer_norm_epsilon", "number", 1e-5)),
        tie_weights=field("tie_word_embeddings", "bool", True),
        bias=True, pos_embedding="learned", activation=activation, mlp_hidden=field("n_inner", "int", 0),
    )


def _rope_theta(hf: dict, source: str) -> float:
    """The rotary base of a Llama/Qwen2 config, written either way transformers has written it."""
    params = _field(hf, "rope_parameters", "object", source, {})
    kind = _field(params, "rope_type", "str", source, "default", where="config rope_parameters")
    _require(kind == "default", source, f"rope_parameters.rope_type {kind!r}", "rope")
    scaling = _field(hf, "rope_scaling", "object", source, None)
    if scaling is not None:
        scaling_kind = _field(scaling, "rope_type", "str", source, None, where="config rope_scaling") or \
            _field(scaling, "type", "str", source, None, where="config rope_scaling")
        _require(scaling_kind == "default", source, f"rope_scaling {scaling!r}", "rope")
    theta = _field(hf, "rope_theta", "number", source, 10000.0)
    return float(_field(params, "rope_theta", "number", source, theta, where="config rope_parameters"))


def _llama_config(hf: dict, source: str) -> dict:
    model_type = hf["model_type"]
    require = lambda cond, what: _require(cond, source, what, model_type)  # noqa: E731
    field = lambda name, kind, default=REQUIRED: _field(hf, name, kind, source, default)  # noqa: E731
    n_embd, n_head = field("hidden_size", "int"), field("num_attention_heads", "int")
    hidden_act = field("hidden_act", "str", "silu")
    require(hidden_act == "silu", f"hidden_act {hidden_act!r}")
    head_dim = field("head_dim", "int", None)
    require(head_dim is None or (n_head > 0 and head_dim == n_embd // n_head),
            f"head_dim {head_dim!r} (not hidden_size / num_attention_heads)")
    tp = field("pretraining_tp", "int", 1)
    require(tp == 1, f"pretraining_tp {tp!r}")
    require(not field("use_sliding_window", "bool", False), "use_sliding_window=true")
    if model_type == "llama":
        attention_bias, mlp_bias = field("attention_bias", "bool", False), field("mlp_bias", "bool", False)
        require(attention_bias == mlp_bias, f"attention_bias={attention_bias} with mlp_bias={mlp_bias}")
        bias, qkv_bias = attention_bias, False
    else:  # Qwen2: biases on q, k, v only
        bias, qkv_bias = False, True
    return dict(
        vocab_size=field("vocab_size", "int"), block_size=field("max_position_embeddings", "int"),
        n_layer=field("num_hidden_layers", "int"), n_head=n_head, n_embd=n_embd,
        n_kv_head=field("num_key_value_heads", "int", 0) or n_head, pos_embedding="rope",
        rope_theta=_rope_theta(hf, source), norm="rmsnorm", layer_norm_eps=float(field("rms_norm_eps", "number", 1e-6)),
        mlp="swiglu", mlp_hidden=field("intermediate_size", "int"), tie_weights=field("tie_word_embeddings", "bool", False),
        bias=bias, qkv_bias=qkv_bias,
    )


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face folder: model.safetensors, its sharded form, or pytorch_model.bin."""
    single, index, legacy = path / "model.safetensors", path / "model.safetensors.index.json", path / "pytorch_model.bin"
    if single.is_file():
        return load_tensors(single)
    if index.is_file():
        return {k: v for shard in _shards(path, index) for k, v in load_tensors(shard).items()}
    if legacy.is_file():
        try:  # weights_only: tensors and plain containers, never code from the file
            state = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError, depending on the damage
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise MiniGPTError(f"{legacy}: refused or unreadable as a weights-only pickle ({reason}); convert it to "
                               f"safetensors (model.safetensors) with the program that wrote it") from None
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise MiniGPTError(f"{legacy}: not a state dict of tensors")
        return state
    raise MiniGPTError(f"{path} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _shards(folder: Path, index: Path) -> list[Path]:
    """The shard files an index names. Each name must be a plain file name in ``folder`` (no folder
    part, no ``..``); the name is confined, not the file it resolves to, so the Hugging Face cache's
    layout (each file in snapshots/<rev>/ a symlink into ../../blobs/) is read as it is."""
    spec = read_json(index)
    weight_map = spec.get("weight_map") if isinstance(spec, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise MiniGPTError(f"{index}: no 'weight_map' object naming the shard of each tensor")
    for tensor, name in weight_map.items():
        if not isinstance(name, str) or not name:
            raise MiniGPTError(f"{index}: weight_map names the shard of {tensor!r} as {name!r}; expected a file name")
    shards = []
    for name in sorted(set(weight_map.values())):
        if not plain_file_name(name):
            raise MiniGPTError(f"{index}: shard {name!r} lies outside {folder}; a shard must be a file in that folder "
                               f"(a plain file name)")
        shards.append(folder / name)
    return shards


def from_hf_state_dict(hf_config: dict, hf_state: dict[str, torch.Tensor], source: str = "<memory>",
                       lm_head: bool = True, **runtime) -> GPT:
    """Build a ``GPT`` from a Hugging Face config dict and its state dict (GPT-2, Llama or Qwen2).
    ``lm_head=False``: the weights need no LM head (a classifier's backbone). ``runtime`` sets run-time
    choices: ``dropout``, ``attn_backend``."""
    try:
        config = GPTConfig(**_config_from_hf(hf_config, source)).with_runtime(**runtime)
    except MiniGPTError as err:
        raise MiniGPTError(f"{source}: {err}") from None
    hf_state = {k: v for k, v in hf_state.items() if not k.endswith(IGNORED_SUFFIXES)}
    blocks = {int(m.group(1)) for m in map(BLOCK_KEY.match, hf_state) if m}
    if config.n_layer != len(blocks):  # before anything is built per layer (a num_hidden_layers of 10**9 ...)
        raise MiniGPTError(f"{source}: config has {config.n_layer:,} layers (n_layer / num_hidden_layers) but the "
                           f"weights hold {len(blocks):,} blocks (do the config and the weights belong together?)")
    state = family(hf_model_type(hf_config, source), source).weights_in(hf_state, config, source)
    optional = ["head.weight"] if config.tie_weights or not lm_head else []
    with torch.device("meta"):  # first the shapes config.json implies, without memory behind them: a config that
        shell = GPT(config)  # does not fit its weights (a vocab_size of 10**12) is an error before anything is allocated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (copying into meta tensors is a no-op: only the checks of names and shapes run)
        load_weights(shell, state, source, optional=optional)
    model = GPT(config)
    load_weights(model, state, source, optional=optional)
    return model


def _gpt2_in(hf_state: dict[str, torch.Tensor], config: GPTConfig, source: str) -> dict[str, torch.Tensor]:
    state = {}
    for key, tensor in hf_state.items():
        key = key.removeprefix("transformer.")
        if key == "lm_head.weight":
            if not config.tie_weights:  # when tied it is the same matrix as wte
                state["head.weight"] = tensor
            continue
        state["backbone." + key] = tensor.t() if key.endswith(CONV1D_SUFFIXES) else tensor
    return state


# minigpt's name in a block -> Hugging Face Llama's names, stacked in this order
LLAMA_STACKED = {"attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                 "mlp.c_fc": ("mlp.gate_proj", "mlp.up_proj")}
LLAMA_SINGLE = {"attn.c_proj": "self_attn.o_proj", "mlp.c_proj": "mlp.down_proj", "ln_1": "input_layernorm",
                "ln_2": "post_attention_layernorm", "attn.q_norm": "self_attn.q_norm", "attn.k_norm": "self_attn.k_norm"}


def _llama_in(hf_state: dict[str, torch.Tensor], config: GPTConfig, source: str) -> dict[str, torch.Tensor]:
    def take(name: str) -> torch.Tensor:
        if name not in hf_state:
            raise MiniGPTError(f"{source}: the weights have no {name!r}")
        return hf_state.pop(name)

    hf_state = dict(hf_state)
    state = {"backbone.wte.weight": take("model.embed_tokens.weight"), "backbone.ln_f.weight": take("model.norm.weight")}
    if "lm_head.weight" in hf_state:
        lm_head = take("lm_head.weight")
        if not config.tie_weights:
            state["head.weight"] = lm_head
    for i in range(config.n_layer):
        ours, theirs = f"backbone.h.{i}.", f"model.layers.{i}."
        for mine, parts in LLAMA_STACKED.items():
            for kind in ("weight", "bias"):
                if f"{theirs}{parts[0]}.{kind}" in hf_state:
                    state[f"{ours}{mine}.{kind}"] = torch.cat([take(f"{theirs}{p}.{kind}") for p in parts])
        for mine, part in LLAMA_SINGLE.items():
            for kind in ("weight", "bias"):
                if f"{theirs}{part}.{kind}" in hf_state:
                    state[f"{ours}{mine}.{kind}"] = take(f"{theirs}{part}.{kind}")
    state.update(hf_state)  # whatever is left is reported as unexpected
    return state


def load_hf(path: str | Path, **runtime) -> GPT:
    """A minigpt ``GPT`` from a local Hugging Face folder (config.json + model.safetensors, sharded
    safetensors or pytorch_model.bin) of a GPT-2, Llama or Qwen2 model; nothing is downloaded.
    ``runtime`` sets ``dropout`` or ``attn_backend``."""
    path = Path(path)
    if not path.is_dir():
        raise MiniGPTError(f"not a directory: {path} (expected a Hugging Face checkpoint directory)")
    hf_config = read_hf_config(path)
    return from_hf_state_dict(hf_config, read_hf_weights(path), source=str(path), **runtime)


# ----------------------------------------------------------------------------- export


# Every GPTConfig field, and what an export does with it. A field in none of these sets (a new one) makes
# export refuse the model until it is placed here, instead of writing a folder that silently drops it.
WRITTEN = {"vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias", "rope_theta", "tie_weights",
           "layer_norm_eps", "mlp_hidden", "activation", "n_kv_head", "qkv_bias"}  # into config.json (to_hf_config)
CHOSEN_BY = {"pos_embedding", "norm", "mlp", "qk_norm", "logit_softcap"}  # pick the family, or refuse (hf_architecture)
NOT_WRITTEN = {"pad_vocab_multiple",  # the padding rows are dropped from the weights
               "zero_init_proj",  # how weights start, not what they compute
               "dropout", "attn_backend", "grad_checkpoint"}  # run-time choices (RUNTIME_FIELDS)


def check_fields_mapped(config: GPTConfig) -> None:
    """A ``MiniGPTError`` naming any field of ``config`` that export has no rule for."""
    unmapped = sorted({f.name for f in dataclasses.fields(config)} - WRITTEN - CHOSEN_BY - NOT_WRITTEN)
    if unmapped:
        raise MiniGPTError(f"export has no Hugging Face mapping for the model setting(s) {', '.join(unmapped)} "
                           f"(minigpt/interop/hf.py: WRITTEN, CHOSEN_BY, NOT_WRITTEN)")


def hf_architecture(config: GPTConfig) -> str:
    """Which Hugging Face architecture computes the same function as ``config``: gpt2, llama or qwen2."""
    check_fields_mapped(config)
    if config.logit_softcap:
        raise MiniGPTError(f"logit_softcap ({config.logit_softcap:g}): no Hugging Face architecture minigpt writes "
                           f"(GPT-2, Llama, Qwen2) caps its logits")
    gpt2 = dict(norm="layernorm", mlp="gelu", qk_norm=False)
    llama = dict(pos_embedding="rope", norm="rmsnorm", mlp="swiglu", qk_norm=False)
    if all(getattr(config, k) == v for k, v in gpt2.items()) and config.pos_embedding != "rope" \
            and config.kv_heads == config.n_head and not (config.qkv_bias and not config.bias):
        return "gpt2"
    if all(getattr(config, k) == v for k, v in llama.items()):
        return "qwen2" if config.qkv_bias and not config.bias else "llama"
    wrong = {k: getattr(config, k) for k, v in llama.items() if getattr(config, k) != v}
    raise MiniGPTError(f"no Hugging Face architecture minigpt writes computes this model: GPT-2 needs layernorm, "
                       f"gelu, learned or sinusoidal positions and n_kv_head = n_head; Llama/Qwen2 need rope, "
                       f"rmsnorm, swiglu and no qk_norm (this model has {wrong})")


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The weights of ``model`` named and laid out as the Hugging Face class of ``hf_architecture`` expects.
    A tied model has no ``lm_head.weight`` (as Hugging Face saves it); padding rows of the vocabulary are left out."""
    tensors = FAMILIES[hf_architecture(model.config)].weights_out(model)
    vocab = model.config.vocab_size
    for name in ("transformer.wte.weight", "model.embed_tokens.weight", "lm_head.weight"):
        if name in tensors:
            tensors[name] = tensors[name][:vocab]
    return tensors


def _gpt2_out(model: GPT) -> dict[str, torch.Tensor]:
    """GPT-2 has learned positions and biases everywhere, so a sinusoidal model gives its fixed table
    as ``wpe`` and a bias-free model gives zero biases: the network computes the same function."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in model.backbone.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            key = f"{name}.{pname}"
            tensors["transformer." + key] = param.detach().t() if key.endswith(CONV1D_SUFFIXES) else param.detach()
        if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and module.bias is None:
            width = module.out_features if isinstance(module, torch.nn.Linear) else module.normalized_shape[0]
            tensors[f"transformer.{name}.bias"] = torch.zeros(width)
    if model.config.pos_embedding == "sinusoidal":
        tensors["transformer.wpe.weight"] = model.backbone.wpe.table
    if not model.config.tie_weights:
        tensors["lm_head.weight"] = model.head.weight.detach()
    return tensors


def _llama_out(model: GPT) -> dict[str, torch.Tensor]:
    config, backbone = model.config, model.backbone
    tensors = {"model.embed_tokens.weight": backbone.wte.weight.detach(), "model.norm.weight": backbone.ln_f.weight.detach()}
    if not config.tie_weights:
        tensors["lm_head.weight"] = model.head.weight.detach()
    q, kv = config.n_head * config.head_dim, config.kv_heads * config.head_dim
    sizes = {"attn.c_attn": (q, kv, kv), "mlp.c_fc": (config.hidden, config.hidden)}
    for i, block in enumerate(backbone.h):
        params = {name: p.detach() for name, p in block.named_parameters()}
        theirs = f"model.layers.{i}."
        for mine, parts in LLAMA_STACKED.items():
            for kind in ("weight", "bias"):
                if f"{mine}.{kind}" in params:
                    for part, piece in zip(parts, params[f"{mine}.{kind}"].split(sizes[mine])):
                        tensors[f"{theirs}{part}.{kind}"] = piece.clone()
        for mine, part in LLAMA_SINGLE.items():
            for kind in ("weight", "bias"):
                if f"{mine}.{kind}" in params:
                    tensors[f"{theirs}{part}.{kind}"] = params[f"{mine}.{kind}"]
    return tensors


def to_hf_config(config: GPTConfig) -> dict:
    """A Hugging Face config dict (``GPT2Config``, ``LlamaConfig`` or ``Qwen2Config``) for ``config``."""
    return FAMILIES[hf_architecture(config)].config_out(config)


def _gpt2_hf_config(config: GPTConfig) -> dict:
    hf_config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "activation_function": "gelu_new" if config.activation == "gelu_tanh" else "gelu",
        "vocab_size": config.vocab_size, "n_positions": config.block_size, "n_ctx": config.block_size,
        "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
        "n_inner": config.mlp_hidden or None,
        "layer_norm_epsilon": config.layer_norm_eps, "tie_word_embeddings": config.tie_weights,
        "attn_pdrop": config.dropout, "embd_pdrop": config.dropout, "resid_pdrop": config.dropout,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "initializer_range": 0.02,
    }
    # GPT-2's <|endoftext|> with its vocabulary; none otherwise (GPT2Config's default, 50256, would lie outside it)
    eot = 50256 if config.vocab_size == 50257 else None
    hf_config.update(bos_token_id=eot, eos_token_id=eot)
    return hf_config


def _llama_hf_config(config: GPTConfig, kind: str) -> dict:
    hf_config = {
        "architectures": ["LlamaForCausalLM" if kind == "llama" else "Qwen2ForCausalLM"], "model_type": kind,
        "vocab_size": config.vocab_size, "hidden_size": config.n_embd, "intermediate_size": config.hidden,
        "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads, "head_dim": config.head_dim, "hidden_act": "silu",
        "max_position_embeddings": config.block_size, "rms_norm_eps": config.layer_norm_eps,
        "rope_theta": config.rope_theta,  # as transformers 4 reads it
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},  # as transformers 5 does
        "rope_scaling": None, "tie_word_embeddings": config.tie_weights, "attention_dropout": config.dropout,
        "initializer_range": 0.02, "bos_token_id": None, "eos_token_id": None,
    }
    if kind == "llama":
        hf_config.update(attention_bias=config.bias, mlp_bias=config.bias, pretraining_tp=1)
    else:
        hf_config.update(use_sliding_window=False, sliding_window=None)
    return hf_config


@dataclass(frozen=True)
class Family:
    """A Hugging Face model family, both ways: its config.json and weights read into minigpt's, and
    minigpt's written as its. One entry of ``FAMILIES`` per ``model_type``."""

    name: str  # for help texts
    classifier: str  # its *ForSequenceClassification class (interop/hf_classifier.py writes that folder)
    config_in: Callable[[dict, str], dict]  # (config.json, source) -> GPTConfig fields
    weights_in: Callable[[dict, GPTConfig, str], dict]  # (its state dict, the config, source) -> minigpt's state dict
    config_out: Callable[[GPTConfig], dict]  # -> config.json (for a config ``hf_architecture`` assigns it)
    weights_out: Callable[[GPT], dict]  # -> its state dict


FAMILIES = {
    "gpt2": Family("GPT-2", "GPT2ForSequenceClassification", _gpt2_config, _gpt2_in, _gpt2_hf_config, _gpt2_out),
    "llama": Family("Llama", "LlamaForSequenceClassification", _llama_config, _llama_in,
                    lambda config: _llama_hf_config(config, "llama"), _llama_out),
    "qwen2": Family("Qwen2", "Qwen2ForSequenceClassification", _llama_config, _llama_in,
                    lambda config: _llama_hf_config(config, "qwen2"), _llama_out),
}
HF_FAMILIES = ", ".join(f.name for f in FAMILIES.values())  # the families read and written, for help texts


def save_hf(model: GPT, path: str | Path) -> None:
    """Write ``model`` as a Hugging Face folder (GPT-2, Llama or Qwen2: see ``hf_architecture``) that
    transformers' ``AutoModelForCausalLM.from_pretrained`` reads."""
    path = Path(path)
    config = to_hf_config(model.config)  # first: an architecture without an equivalent fails before any file is written
    save_tensors(path / "model.safetensors", to_hf_state_dict(model))
    write_json(path / "config.json", config)
