"""Hugging Face GPT-2 checkpoints <-> minigpt, from and to a local directory (nothing downloads).

HF's GPT-2 stores its linear layers as ``Conv1D`` with weight (in, out); ``nn.Linear`` keeps
(out, in), so those four matrices per block are transposed on the way in and out.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import load_tensors, load_weights, read_json, save_tensors, write_json
from ..errors import MiniGPTError
from ..model.config import GPTConfig
from ..model.model import GPT

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers in older checkpoints


def _config_from_hf(hf: dict, source: str) -> dict:
    def require(cond: bool, what: str) -> None:
        if not cond:
            raise MiniGPTError(f"{source}: config {what} is not supported by minigpt's GPT-2 layout")

    require(hf.get("model_type", "gpt2") == "gpt2", f"model_type {hf.get('model_type')!r}")
    activation = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}.get(
        hf.get("activation_function", "gelu_new"))
    require(activation is not None, f"activation_function {hf.get('activation_function')!r}")
    require(hf.get("n_inner") in (None, 4 * hf.get("n_embd", 768)), f"n_inner {hf.get('n_inner')!r}")
    require(hf.get("scale_attn_weights", True), "scale_attn_weights=false")
    require(not hf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx=true")
    try:
        return dict(
            vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
            n_head=hf["n_head"], n_embd=hf["n_embd"], layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_weights=hf.get("tie_word_embeddings", True), bias=True, pos_embedding="learned", activation=activation,
        )
    except KeyError as err:
        raise MiniGPTError(f"{source}: config has no key {err.args[0]!r}") from None


def _read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
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
    """The shard files an index names, each of which must lie in ``folder`` itself."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise MiniGPTError(f"{index}: no 'weight_map' object naming the shard of each tensor")
    shards = []
    for name in sorted(set(weight_map.values())):
        shard = folder / str(name)
        if Path(str(name)).is_absolute() or shard.resolve().parent != folder.resolve():
            raise MiniGPTError(f"{index}: shard {name!r} lies outside {folder}; a shard must be a file in that folder")
        shards.append(shard)
    return shards


def from_hf_state_dict(hf_config: dict, hf_state: dict[str, torch.Tensor], source: str = "<memory>", **runtime) -> GPT:
    """Build a ``GPT`` from a GPT-2 config dict and its state dict (as ``GPT2LMHeadModel`` or
    ``GPT2Model`` name them). ``runtime`` sets run-time choices: ``dropout``, ``attn_backend``."""
    try:
        config = GPTConfig(**_config_from_hf(hf_config, source)).with_runtime(**runtime)
    except MiniGPTError as err:
        raise MiniGPTError(f"{source}: {err}") from None
    model = GPT(config)
    state = {}
    for key, tensor in hf_state.items():
        key = key.removeprefix("transformer.")
        if key.endswith(IGNORED_SUFFIXES):
            continue
        if key == "lm_head.weight":
            if not config.tie_weights:  # when tied it is the same matrix as wte
                state["head.weight"] = tensor
            continue
        state["backbone." + key] = tensor.t() if key.endswith(CONV1D_SUFFIXES) else tensor
    load_weights(model, state, source, optional=["head.weight"] if config.tie_weights else [])
    return model


def load_hf(path: str | Path, **runtime) -> GPT:
    """A minigpt ``GPT`` from a local Hugging Face GPT-2 directory (config.json + model.safetensors,
    sharded safetensors or pytorch_model.bin); nothing is downloaded. ``runtime`` sets ``dropout`` or
    ``attn_backend``."""
    path = Path(path)
    if not path.is_dir():
        raise MiniGPTError(f"not a directory: {path} (expected a Hugging Face GPT-2 checkpoint directory)")
    hf_config = read_json(path / "config.json")
    return from_hf_state_dict(hf_config, _read_hf_weights(path), source=str(path), **runtime)


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The weights of ``model`` named and laid out as ``GPT2LMHeadModel`` expects.

    GPT-2 has learned positions and biases everywhere, so a sinusoidal model gives its fixed table
    as ``wpe`` and a bias-free model gives zero biases: the network computes the same function.
    A tied model has no ``lm_head.weight`` (as Hugging Face saves it).
    """
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


def to_hf_config(config: GPTConfig) -> dict:
    """A ``GPT2Config``-shaped dict for ``config``."""
    hf_config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "activation_function": "gelu_new" if config.activation == "gelu_tanh" else "gelu",
        "vocab_size": config.vocab_size, "n_positions": config.block_size, "n_ctx": config.block_size,
        "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd, "n_inner": None,
        "layer_norm_epsilon": config.layer_norm_eps, "tie_word_embeddings": config.tie_weights,
        "attn_pdrop": config.dropout, "embd_pdrop": config.dropout, "resid_pdrop": config.dropout,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "initializer_range": 0.02,
    }
    # GPT-2's <|endoftext|> with its vocabulary; none otherwise (GPT2Config's default, 50256, would lie outside it)
    eot = 50256 if config.vocab_size == 50257 else None
    hf_config.update(bos_token_id=eot, eos_token_id=eot)
    return hf_config


def save_hf(model: GPT, path: str | Path) -> None:
    """Write ``model`` as a Hugging Face GPT-2 directory that ``GPT2LMHeadModel.from_pretrained`` reads."""
    path = Path(path)
    save_tensors(path / "model.safetensors", to_hf_state_dict(model))
    write_json(path / "config.json", to_hf_config(model.config))
