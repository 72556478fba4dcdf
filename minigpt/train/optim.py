"""The optimizers a run can use: AdamW for every parameter (nanoGPT's recipe), or Muon for the
weight matrices inside the blocks and AdamW for the rest (the GPT-2 speedrun's and nanochat's).

Muon (``torch.optim.Muon``) orthogonalises each matrix's momentum with a few Newton-Schulz steps,
so every direction of the update moves at a similar rate; it is defined for 2-D weights only, and
the embeddings, the LM head, norms, biases, LoRA factors and classification heads stay on AdamW.
``Optimizers`` steps the two as one, so the loop, the grad scaler and checkpoints see one optimizer.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model.model import adamw, decay_groups

OPTIMIZERS = ("adamw", "muon")  # every parameter on AdamW | block matrices on Muon, the rest on AdamW


def muon_matrices(blocks: nn.Module) -> list[nn.Parameter]:
    """The trainable 2-D weights of the blocks' linear layers (attention and MLP projections); LoRA's
    low-rank factors are left to AdamW."""
    return [p for name, p in blocks.named_parameters() if p.requires_grad and p.dim() == 2
            and "lora_" not in name.rsplit(".", 1)[-1]]


class Optimizers:
    """Several optimizers stepped, zeroed, saved and restored as one. ``param_groups`` is the list of
    all their groups (the same dicts, so setting a group's lr reaches its optimizer); ``state_dict``
    numbers the parameters across all of them, as one optimizer would."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """One optimizer's layout: parameters numbered 0.. across the optimizers in order."""
        state, groups, offset = {}, [], 0
        for opt in self.optimizers:
            inner = opt.state_dict()
            state.update({offset + index: value for index, value in inner["state"].items()})
            groups += [{**group, "params": [offset + index for index in group["params"]]} for group in inner["param_groups"]]
            offset += sum(len(group["params"]) for group in inner["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Undo ``state_dict``: each optimizer takes its own groups and their parameters' state back."""
        groups, offset = list(state_dict["param_groups"]), 0
        for opt in self.optimizers:
            mine, groups = groups[: len(opt.param_groups)], groups[len(opt.param_groups):]
            ids = [index for group in mine for index in group["params"]]
            opt.load_state_dict({
                "state": {index - offset: state_dict["state"][index] for index in ids if index in state_dict["state"]},
                "param_groups": [{**group, "params": [index - offset for index in group["params"]]} for group in mine],
            })
            offset += len(ids)


def optimizer_for(model: nn.Module, parameters: list[tuple[nn.Module, float]], cfg,
                  device: torch.device) -> torch.optim.Optimizer | Optimizers:
    """The optimizer ``cfg`` (a ``LoopConfig``) asks for. ``parameters``: (module, lr_scale) pairs whose
    trainable parameters it updates, each group at ``lr_scale`` x the schedule; with
    ``optimizer = "muon"`` Muon takes the matrices of ``model``'s blocks (``model.backbone.h`` or
    ``model.h``), at muon_lr x the same scale. Frozen parameters are in no group."""
    blocks = model.backbone.h if hasattr(model, "backbone") else model.h
    on_muon = {id(p) for p in muon_matrices(blocks)} if cfg.optimizer == "muon" else set()
    groups, muon_groups = [], []
    for module, lr_scale in parameters:
        params = [p for p in module.parameters() if p.requires_grad]
        groups += decay_groups([p for p in params if id(p) not in on_muon], cfg.weight_decay, lr_scale=lr_scale)
        matrices = [p for p in params if id(p) in on_muon]
        if matrices:
            muon_groups.append({"params": matrices, "muon": True, "lr_scale": lr_scale})
    adam = adamw(groups, cfg.learning_rate, (cfg.beta1, cfg.beta2), device.type)
    if not muon_groups:
        return adam
    muon = torch.optim.Muon(muon_groups, lr=cfg.muon_lr, momentum=cfg.muon_momentum,
                            weight_decay=cfg.muon_weight_decay, nesterov=True, adjust_lr_fn="original")
    return Optimizers(muon, adam)


def layer_lr_scales(backbone: nn.Module, decay: float) -> list[tuple[nn.Module, float]]:
    """(module, lr_scale) pairs covering a ``GPTBackbone`` for discriminative fine-tuning (Howard &
    Ruder 2018, ULMFiT): the final norm and the last block at 1, each block below at ``decay`` x the
    one above it, the embeddings under the first block at decay ** n_layer. The lower layers hold
    what pretraining learned about language in general, so they move least. Decay 1: the backbone
    in one piece (the groups of runs from before this option, so they resume)."""
    if decay == 1:
        return [(backbone, 1.0)]
    n = len(backbone.h)
    embeddings = [m for m in (backbone.wte, backbone.wpe) if m is not None]
    return [*((m, decay ** n) for m in embeddings),
            *((block, decay ** (n - 1 - i)) for i, block in enumerate(backbone.h)),
            (backbone.ln_f, 1.0)]
