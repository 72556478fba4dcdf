"""LoRA classifiers <-> PEFT adapter folders (``adapter_config.json`` + ``adapter_model.safetensors``)
over a Hugging Face sequence-classification base folder (see ``hf_classifier``).

PEFT keeps A (r, in) and B (out, r) per wrapped layer, as minigpt does, under the Hugging Face
layer's name, and adds ``(lora_alpha / r) · B A`` to its weight (transposed for GPT-2's ``Conv1D``,
``fan_in_fan_out``). minigpt fuses q, k, v into ``c_attn`` (and gate, up into ``c_fc``) for Llama
and Qwen2: one LoRA there is exactly three with the same A and B split by rows, which is how it is
written. Reading goes the other way without fusing: every update is folded into the base weights
(a classifier to predict with or fine-tune further, not a LoRA to keep training).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..files import load_tensors, read_json, save_tensors, write_json
from ..errors import MiniGPTError
from ..model.lora import LoRALinear, lora_layers
from ..model.model import GPTClassifier
from .hf import CONV1D_SUFFIXES, LLAMA_SINGLE, LLAMA_STACKED, hf_architecture

PREFIX = "base_model.model."  # where PEFT puts the wrapped model's own names
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def _hf_layers(name: str, kind: str) -> list[str]:
    """The Hugging Face layer names (in order, for splitting by rows) of minigpt's backbone layer ``name``
    (e.g. ``h.3.attn.c_attn``)."""
    if kind == "gpt2":
        return [f"transformer.{name}"]
    index, _, mine = name.removeprefix("h.").partition(".")
    parts = LLAMA_STACKED.get(mine) or (LLAMA_SINGLE[mine],)
    return [f"model.layers.{index}.{part}" for part in parts]


def _hf_targets(targets: list[str], kind: str) -> list[str]:
    """PEFT's ``target_modules`` for minigpt's LoRA targets (names or name endings)."""
    if kind == "gpt2":
        return list(targets)
    out = []
    for target in targets:
        for mine in (*LLAMA_STACKED, *LLAMA_SINGLE):
            if mine == target or mine.endswith("." + target):
                out += [part.rpartition(".")[2] for part in (LLAMA_STACKED.get(mine) or (LLAMA_SINGLE[mine],))]
    return sorted(set(out))


def save_peft_adapter(classifier: GPTClassifier, lora: dict, folder: str | Path, base: str | None = None) -> None:
    """Write the LoRA updates of ``classifier`` (not merged) and its head into ``folder`` as a PEFT
    adapter for the base folder ``save_hf_classifier(..., fold_lora=False)`` writes. ``lora``: the
    checkpoint's LoRA settings (targets, rank, alpha); ``base``: the base folder's path as the adapter
    names it (relative to the adapter's folder, or absolute)."""
    kind = hf_architecture(classifier.backbone.config)
    if any(layer.merged for layer in lora_layers(classifier)):
        raise MiniGPTError("the classifier's LoRA is merged into its weights; load it with merge=False to export an adapter")
    tensors = {f"{PREFIX}score.weight": classifier.head.out.weight.detach()}
    for name, module in classifier.backbone.named_modules():
        if isinstance(module, LoRALinear):
            layers = _hf_layers(name, kind)
            for layer, rows in zip(layers, module.lora_B.detach().split(_row_sizes(classifier, name, len(layers)))):
                tensors[f"{PREFIX}{layer}.lora_A.weight"] = module.lora_A.detach().clone()
                tensors[f"{PREFIX}{layer}.lora_B.weight"] = rows.clone()
    config = {"peft_type": "LORA", "task_type": "SEQ_CLS", "r": lora["rank"], "lora_alpha": lora["alpha"],
              "lora_dropout": 0.0, "target_modules": _hf_targets(lora["targets"], kind), "modules_to_save": ["score"],
              "fan_in_fan_out": kind == "gpt2", "bias": "none", "use_rslora": False, "use_dora": False,
              "init_lora_weights": True, "inference_mode": True, "base_model_name_or_path": base, "revision": None}
    save_tensors(Path(folder) / ADAPTER_WEIGHTS, {k: v.contiguous() for k, v in tensors.items()})
    write_json(Path(folder) / ADAPTER_CONFIG, config)


def _row_sizes(classifier: GPTClassifier, name: str, parts: int) -> list[int]:
    config = classifier.backbone.config
    if parts == 1:
        return [classifier.backbone.get_submodule(name).base.out_features]
    if name.endswith("attn.c_attn"):
        q, kv = config.n_head * config.head_dim, config.kv_heads * config.head_dim
        return [q, kv, kv]
    return [config.hidden, config.hidden]


def is_adapter(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file()


def adapter_base(folder: Path) -> Path:
    """The base folder an adapter names (base_model_name_or_path; a relative path from the adapter's folder)."""
    config = read_json(folder / ADAPTER_CONFIG)
    named = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(named, str) or not named:
        raise MiniGPTError(f"{folder / ADAPTER_CONFIG} names no base_model_name_or_path; give the base folder "
                           f"(--base) explicitly")
    base = folder / named
    if not base.is_dir():
        raise MiniGPTError(f"{folder / ADAPTER_CONFIG}: the base {named!r} is not a local folder (minigpt downloads "
                           f"nothing); give the base folder (--base) explicitly")
    return base


def merge_adapter(folder: Path, base_state: dict[str, torch.Tensor], base: str) -> dict[str, torch.Tensor]:
    """``base_state`` (a Hugging Face classifier's weights, from the folder ``base``) with the PEFT LoRA
    adapter in ``folder`` folded in and its saved modules (the score layer) in place."""
    config = read_json(folder / ADAPTER_CONFIG)
    source = str(folder / ADAPTER_CONFIG)
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise MiniGPTError(f"{source}: peft_type {config.get('peft_type') if isinstance(config, dict) else None!r}; "
                           f"minigpt reads LoRA adapters only")
    for key, plain in (("use_dora", False), ("bias", "none"), ("lora_bias", False)):
        if config.get(key, plain) not in (plain, None):
            raise MiniGPTError(f"{source}: {key} = {config[key]!r} is not supported (minigpt's LoRA is plain: "
                               f"{key} = {plain!r})")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, (int, float)):
        raise MiniGPTError(f"{source}: r must be a positive integer and lora_alpha a number (got {rank!r}, {alpha!r})")
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    state = dict(base_state)
    adapter = load_tensors(folder / ADAPTER_WEIGHTS)
    for key, tensor in adapter.items():
        if not key.startswith(PREFIX):
            raise MiniGPTError(f"{folder / ADAPTER_WEIGHTS}: tensor {key!r} is not under {PREFIX!r} (not a PEFT adapter?)")
        name = key.removeprefix(PREFIX)
        if ".lora_" not in name:  # a saved module (the score layer): replaces the base's
            if name not in state or state[name].shape != tensor.shape:
                raise MiniGPTError(f"{folder}: the adapter's {name!r} {tuple(tensor.shape)} does not match the base "
                                   f"{base} (which has {tuple(state[name].shape) if name in state else 'none'})")
            state[name] = tensor
            continue
        if ".lora_A." not in name:
            continue
        layer = name.split(".lora_A.")[0]
        b = adapter.get(f"{PREFIX}{layer}.lora_B.weight")
        weight = state.get(f"{layer}.weight")
        if b is None or weight is None:
            raise MiniGPTError(f"{folder}: the adapter's LoRA on {layer!r} has no lora_B or the base {base} has no "
                               f"{layer}.weight: the adapter was not made for this base")
        delta = (b.float() @ tensor.float()) * scale  # (out, in)
        conv1d = f"{layer}.weight".endswith(CONV1D_SUFFIXES) and layer.startswith("transformer.")
        delta = delta.t() if conv1d else delta
        if delta.shape != weight.shape:
            raise MiniGPTError(f"{folder}: the adapter's LoRA on {layer!r} makes {tuple(delta.shape)} but the base "
                               f"{base} weight is {tuple(weight.shape)}: the adapter was not made for this base")
        state[f"{layer}.weight"] = (weight.float() + delta).to(weight.dtype)
    return state
