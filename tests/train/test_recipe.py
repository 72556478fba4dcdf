"""The modern recipe's pieces: Muon's parameter groups, its update against a Newton-Schulz written
here, exact resume through the combined optimizer, the wsd schedule against its formula, and the
speedrun's block options (squared-ReLU MLP, logit soft-capping, zero-initialised projections)
against references written here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from minigpt import GPT, GPTConfig
from minigpt.checkpoint import LAST, load_checkpoint
from minigpt.model.heads import ClassificationHead
from minigpt.model.lora import apply_lora
from minigpt.model.model import GPTClassifier
from minigpt.train.loop import Distributed, Task, fit, learning_rate
from minigpt.train.optim import Optimizers, layer_lr_scales, optimizer_for
from minigpt.train.pretrain import PretrainConfig, train

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def char_data(tmp_path_factory, char_corpus) -> Path:
    return char_corpus(tmp_path_factory.mktemp("data"), 30_000)


def cfg(data="x", out="y", **kw) -> PretrainConfig:
    base = dict(data_dir=str(data), out_dir=str(out), n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4,
                max_iters=20, lr_decay_iters=20, warmup_iters=4, eval_interval=10, eval_iters=2, log_interval=5,
                dropout=0.1, progress=False, plot=False, device="cpu", learning_rate=3e-3, optimizer="muon")
    return PretrainConfig(**{**base, **kw})


def groups_of(optimizer) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(parameters on Muon, parameters on AdamW)."""
    muon = [p for g in optimizer.param_groups if g.get("muon") for p in g["params"]]
    adam = [p for g in optimizer.param_groups if not g.get("muon") for p in g["params"]]
    return muon, adam


def test_muon_takes_the_block_matrices_and_adamw_everything_else():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=16, pos_embedding="rope",
                          norm="rmsnorm", mlp="swiglu"))
    muon, adam = groups_of(optimizer_for(model, [(model, 1.0)], cfg(), CPU))
    ids = [id(p) for p in muon + adam]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}  # each exactly once
    names = {id(p): n for n, p in model.named_parameters()}
    on_muon = sorted(names[id(p)] for p in muon)
    expected = sorted(n for n, p in model.named_parameters() if n.startswith("backbone.h.") and p.dim() == 2)
    assert on_muon == expected and all(".attn." in n or ".mlp." in n for n in on_muon)
    assert {names[id(p)] for p in adam} >= {"backbone.wte.weight", "backbone.ln_f.weight"}
    adamw_only = optimizer_for(model, [(model, 1.0)], cfg(optimizer="adamw"), CPU)
    assert isinstance(adamw_only, torch.optim.AdamW)


@pytest.mark.parametrize("strategy", ["full", "head", "lora"])
def test_frozen_parameters_are_in_no_group_and_lora_factors_stay_on_adamw(strategy):
    torch.manual_seed(0)
    backbone = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=16)).backbone
    model = GPTClassifier(backbone, ClassificationHead(16, 3, "last"))
    if strategy != "full":
        for p in backbone.parameters():
            p.requires_grad_(False)
    if strategy == "lora":
        apply_lora(backbone, ("c_attn", "c_proj"), 4, 8.0, 0.0)
    muon, adam = groups_of(optimizer_for(model.backbone, [(model.backbone, 1.0), (model.heads, 10.0)], cfg(), CPU))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in muon + adam} == trainable and len(muon + adam) == len(trainable)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("lora_" not in names[id(p)] for p in muon)
    assert (len(muon) > 0) == (strategy == "full")


def fit_classifier(out: Path, optimizer: str, d: float, head_scale: float, **kw) -> tuple:
    """A 3-block classifier trained through the loop with layer_lr_decay d: (model, its optimizer, config,
    the (module, scale) pairs, the weights before)."""
    torch.manual_seed(0)
    backbone = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=3, n_head=2, n_embd=16, bias=True)).backbone
    model = GPTClassifier(backbone, ClassificationHead(16, 2, "mean"))
    run = cfg(out=out, **{**dict(optimizer=optimizer, weight_decay=0.0, max_iters=1, warmup_iters=0, grad_clip=0.0), **kw})
    scales = [*layer_lr_scales(backbone, d), (model.heads, head_scale)]
    opt = optimizer_for(model.backbone, scales, run, CPU)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randint(0, 65, (4, 16)), torch.tensor([0, 1, 1, 0])
    task = Task(model=model, optimizer=opt, batch=lambda it, micro: (x, y),
                loss=lambda m, b: F.cross_entropy(m(b[0])[0], b[1]), evaluate=lambda m: {"val_loss": 1.0},
                score="val_loss", higher_is_better=False, meta={}, units_per_step=4)
    fit(task, run, Distributed(enabled=False), CPU, torch.float32)
    return model, opt, run, scales, before


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_discriminative_fine_tuning_moves_each_layer_at_its_rate(tmp_path, optimizer):
    # layer_lr_decay d on 3 blocks: embeddings d^3, block i d^(2 - i), final norm 1, head its own scale. One
    # AdamW step moves every weight by lr x g / (|g| + eps) ~ lr, so each tensor's largest change is its group's lr.
    d, head_scale = 0.5, 4.0
    model, opt, run, scales, before = fit_classifier(tmp_path, optimizer, d, head_scale)

    def expected(name: str) -> float:
        if name.startswith("backbone.h."):
            return d ** (2 - int(name.split(".")[2]))
        if name.startswith("heads."):
            return head_scale
        return {"backbone.wte": d ** 3, "backbone.wpe": d ** 3, "backbone.ln_f": 1.0}[name.rsplit(".", 1)[0]]

    lr = learning_rate(0, run)
    muon = {id(p) for p in groups_of(opt)[0]}
    assert len(muon) == (12 if optimizer == "muon" else 0)  # 4 matrices a block
    for name, p in model.named_parameters():
        if id(p) in muon:  # Muon's step is not ~lr per weight: check the rate the loop gave its group
            (group,) = [g for g in opt.param_groups if any(q is p for q in g["params"])]
            assert group["lr"] == pytest.approx(run.muon_lr * expected(name) * lr / run.learning_rate, rel=1e-9), name
        else:
            moved = (p.detach() - before[name]).abs().max().item()
            assert moved == pytest.approx(lr * expected(name), rel=1e-3), name
    covered = [id(p) for module, _ in scales for p in module.parameters()]
    assert sorted(covered) == sorted(id(p) for p in model.parameters())  # every parameter in exactly one group


def test_a_resumed_run_takes_its_rates_from_the_config_and_its_moments_from_the_checkpoint(tmp_path):
    fit_classifier(tmp_path, "muon", 0.5, 4.0)
    model, opt, *_ = fit_classifier(tmp_path, "muon", 0.25, 2.0, resume=True, max_iters=2)
    scale_of = {id(p): scale for module, scale in layer_lr_scales(model.backbone, 0.25) + [(model.heads, 2.0)]
                for p in module.parameters()}
    for group in opt.param_groups:  # torch's load_state_dict would have kept the first run's 0.5 and 4.0
        assert {scale_of[id(p)] for p in group["params"]} == {group["lr_scale"]}
    adam = opt.optimizers[1]
    assert {adam.state[p]["step"].item() for g in adam.param_groups for p in g["params"]} == {2.0}  # moments resumed


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Keller Jordan's quintic iteration, written out (in float64; Muon runs it in bfloat16):
    X <- aX + (bA + cA²)X with A = XXᵀ, from X = G / ‖G‖."""
    a, b, c = 3.4445, -4.7750, 2.0315
    g = g.double()
    x = g / (g.norm() + eps)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return (x.T if tall else x).float()


def test_a_muon_step_is_nesterov_momentum_orthogonalised():
    """Three steps on one (rows > cols) matrix, against updates computed here: Nesterov momentum,
    orthogonalised, scaled by sqrt(rows / cols). Muon's bfloat16 iteration agrees with the float64
    one to a few percent of a step; leaving out Nesterov, or the scale, is off by far more."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(12, 6))
    both = Optimizers(torch.optim.Muon([w], lr=0.02, momentum=0.95, weight_decay=0.0, nesterov=True,
                                       adjust_lr_fn="original"))
    step = 0.02 * math.sqrt(12 / 6)
    nesterov, plain, buf = w.detach().double().clone(), w.detach().double().clone(), torch.zeros(12, 6)
    for _ in range(3):
        grad = torch.randn(12, 6)
        w.grad = grad.clone()
        both.step()
        buf = 0.95 * buf + grad
        nesterov -= step * newton_schulz(grad + 0.95 * buf)
        plain -= step * newton_schulz(buf)
    assert (w.detach().double() - nesterov).abs().max() < 0.1 * step
    assert (w.detach().double() - plain).abs().max() > 0.3 * step


def test_wsd_holds_then_decays_linearly_to_min_lr():
    c = cfg(learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=100, lr_decay_iters=0, lr_schedule="wsd",
            decay_fraction=0.3)
    formula = {0: 1 / 11, 9: 10 / 11, 10: 1.0, 50: 1.0, 70: 1.0, 85: 1.0 - 0.9 * 15 / 30, 99: 1.0 - 0.9 * 29 / 30,
               100: 0.1, 500: 0.1}
    for it, lr in formula.items():
        assert learning_rate(it, c) == pytest.approx(lr), it


def test_muon_resume_is_exact(char_data, tmp_path):
    """10 steps, then 10 resumed, equal 20 straight: weights, Muon's momentum and AdamW's moments all
    come back from the checkpoint (dropout on)."""
    train(cfg(char_data, tmp_path / "a"))
    train(cfg(char_data, tmp_path / "b", max_iters=10))
    train(cfg(char_data, tmp_path / "b", resume=True))
    a, b = load_checkpoint(tmp_path / "a" / LAST), load_checkpoint(tmp_path / "b" / LAST)
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]), key
    state_a, state_b = a.optimizer_state(), b.optimizer_state()
    assert any("momentum_buffer" in s for s in state_a["state"].values())  # Muon's state is in the checkpoint
    for index, values in state_a["state"].items():
        for name, value in values.items():
            assert torch.equal(value, state_b["state"][index][name]), (index, name)


# ----------------------------------------------------------------------------- block options


def small(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16), **kw}))


def test_relu2_mlp_is_the_square_of_a_relu():
    model = small(mlp="relu2")
    mlp = model.backbone.h[0].mlp
    x = torch.randn(2, 5, 16)
    h = x @ mlp.c_fc.weight.T + mlp.c_fc.bias  # (B, T, 64)
    reference = (torch.where(h > 0, h, torch.zeros_like(h)) ** 2) @ mlp.c_proj.weight.T + mlp.c_proj.bias
    assert mlp.c_fc.weight.shape == (64, 16)  # 4·n_embd wide
    assert torch.allclose(mlp(x), reference, atol=1e-6)


def test_logit_softcap_bounds_the_logits_as_cap_tanh():
    capped, plain = small(logit_softcap=2.0), small()
    plain.load_state_dict(capped.state_dict())
    with torch.no_grad():
        plain.head.weight.mul_(50)  # large logits, so the cap matters
        capped.head.weight.copy_(plain.head.weight)
    idx = torch.randint(0, 50, (2, 8))
    raw, capped_logits = plain(idx)[0], capped(idx)[0]
    assert raw.abs().max() > 4
    assert torch.allclose(capped_logits, 2.0 * torch.tanh(raw / 2.0), atol=1e-5)
    assert capped_logits.abs().max() <= 2.0  # tanh saturates to 1.0 in float32 far out
    targets = torch.randint(0, 50, (2, 8))
    assert torch.allclose(capped(idx, targets)[1], F.cross_entropy(capped_logits.flatten(0, 1), targets.flatten()))


def test_zero_initialised_projections_make_every_block_the_identity():
    model = small(zero_init_proj=True, bias=False)
    names = [n for n, p in model.named_parameters() if n.endswith("c_proj.weight")]
    assert len(names) == 4 and all(model.get_parameter(n).abs().max() == 0 for n in names)
    idx = torch.randint(0, 50, (2, 8))
    backbone = model.backbone
    x = backbone.wte(idx) + backbone.wpe(torch.arange(8))  # the blocks add nothing: only the final norm acts
    assert torch.allclose(backbone(idx), backbone.ln_f(x), atol=1e-6)
    loss = model(idx, torch.randint(0, 50, (2, 8)))[1]
    loss.backward()
    assert all(model.get_parameter(n).grad.abs().max() > 0 for n in names)  # and they learn


def test_options_that_no_hugging_face_architecture_has_are_refused_on_export(tmp_path):
    from minigpt import MiniGPTError, save_hf

    with pytest.raises(MiniGPTError, match=r"logit_softcap \(30\): no Hugging Face architecture"):
        save_hf(small(logit_softcap=30.0), tmp_path / "a")
    with pytest.raises(MiniGPTError, match="no Hugging Face architecture minigpt writes computes this model"):
        save_hf(small(mlp="relu2"), tmp_path / "b")
    save_hf(small(zero_init_proj=True), tmp_path / "c")  # only an initialisation: exports as GPT-2
