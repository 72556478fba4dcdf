"""The training checkpoint format, and loading weights into a model (also from a compiled or
DDP-wrapped one). Files themselves are written and read by ``files`` (atomic, one-line errors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

from .errors import MiniGPTError
from .files import load_tensors, metadata_json, read_header, save_tensors


WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # what torch.compile and DDP put before every name


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside torch.compile's and DDP's wrappers."""
    while isinstance(getattr(module, "_orig_mod", None), torch.nn.Module) or \
            isinstance(module, torch.nn.parallel.DistributedDataParallel):
        module = module._orig_mod if hasattr(module, "_orig_mod") else module.module
    return module


def plain_name(name: str) -> str:
    """A parameter's name without the prefixes a compiled or DDP-wrapped model's state dict carries."""
    while name.startswith(WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                 optional: Iterable[str] = ()) -> None:
    """Copy ``state`` into ``module``; a tensor of the wrong shape, a missing or an unexpected one is
    a ``MiniGPTError`` naming ``source`` and the tensors (``optional`` names may be missing). Names
    saved from a compiled or DDP-wrapped model (``_orig_mod.``, ``module.``) are read as the plain ones."""
    module = unwrap(module)
    state = {plain_name(k): v for k, v in state.items()}
    expected = module.state_dict()
    for name, tensor in state.items():
        if name in expected and expected[name].shape != tensor.shape:
            raise MiniGPTError(f"{source}: {name} has shape {tuple(tensor.shape)}, the model expects "
                               f"{tuple(expected[name].shape)} (do the config and the weights belong together?)")
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in set(optional)]
    if missing or unexpected:
        def few(names: list[str]) -> str:
            return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

        parts = ([f"missing {few(missing)}"] if missing else []) + ([f"unexpected {few(unexpected)}"] if unexpected else [])
        raise MiniGPTError(f"{source}: does not fit the model: {'; '.join(parts)}")


# ----------------------------------------------------------------------------- training checkpoints
#
# One safetensors file holds everything needed to sample from or resume a run, so it is written
# with a single atomic rename and can never be half old, half new:
#   tensors   "model.<name>"            weights (a tied LM head is stored once, as the embedding)
#             "optim.<param>.<name>"    AdamW moments and step counts
#             "rng.<name>"              torch RNG states (uint8)
#   metadata  "minigpt"                 JSON: format, model config, tokenizer, iteration, losses,
#                                       optimizer hyper-parameters, grad-scaler state, train config

FORMAT = "minigpt-checkpoint-1"
LAST, BEST = "ckpt_last.safetensors", "ckpt_best.safetensors"


def find_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint a training out_dir offers for inference: the best, else the last, else None."""
    for name in (BEST, LAST):
        if (Path(out_dir) / name).is_file():
            return Path(out_dir) / name
    return None


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with shared tensors kept once (the first name wins), under plain names."""
    seen: set[int] = set()
    out = {}
    for name, tensor in unwrap(model).state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        out[name] = tensor
    return out


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    meta: dict,
    optimizer: torch.optim.Optimizer | None = None,
    rng: dict[str, torch.Tensor] | None = None,
) -> None:
    """Atomically write ``model`` (+ optimizer and RNG state when given) and the JSON ``meta``."""
    tensors = {f"model.{k}": v for k, v in model_tensors(model).items()}
    meta = dict(meta, format=FORMAT)
    if optimizer is not None:
        state = optimizer.state_dict()
        for idx, per_param in state["state"].items():
            for name, value in per_param.items():
                tensors[f"optim.{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
        meta["optimizer_param_groups"] = state["param_groups"]
    for name, value in (rng or {}).items():
        tensors[f"rng.{name}"] = value
    save_tensors(path, tensors, metadata={"minigpt": json.dumps(meta)})


class Checkpoint:
    """A loaded checkpoint: ``meta`` (dict) and its tensors, split by kind."""

    def __init__(self, path: Path, tensors: dict[str, torch.Tensor], meta: dict):
        self.path, self.meta = path, meta
        self.model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        self.rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
        self._optim = {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")}

    def load_model(self, model: torch.nn.Module) -> None:
        """Copy the weights into ``model``; any mismatch is an error naming the tensors."""
        stored = set(model_tensors(model))
        tied = [k for k in unwrap(model).state_dict() if k not in stored]  # a tied copy is stored once, under its first name
        load_weights(model, self.model, str(self.path), optional=tied)

    def require(self, *keys: str) -> None:
        """Each key is in the metadata, or a ``MiniGPTError`` says which is not."""
        for key in keys:
            if key not in self.meta:
                raise MiniGPTError(f"{self.path}: the checkpoint's metadata has no {key!r} (damaged, or not written "
                                   f"by this version of minigpt)")

    def optimizer_state(self) -> dict | None:
        if "optimizer_param_groups" not in self.meta:
            return None
        state: dict[int, dict] = {}
        for key, value in self._optim.items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = value
        return {"state": state, "param_groups": self.meta["optimizer_param_groups"]}


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; a truncated or foreign file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise MiniGPTError(f"checkpoint not found: {path}")
    header = read_header(path)
    if "minigpt" not in header:
        raise MiniGPTError(f"{path} is a safetensors file but not a minigpt checkpoint (no 'minigpt' metadata)")
    meta = metadata_json(path, header, "minigpt")
    if meta.get("format") != FORMAT:
        raise MiniGPTError(f"{path}: unsupported checkpoint format {meta.get('format')!r}; expected {FORMAT!r}")
    return Checkpoint(path, load_tensors(path), meta)


