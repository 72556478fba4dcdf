"""The GPU path, checked on the CPU wherever it can be: defaults (dtype, TF32, compile, process
group), vocabulary padding, DDP's wrapping, masks that keep the flash kernel, the KV cache's dtype
and its static form, no value read back to the host per step or per token, one compilation of the
decode step, prefixes of wrapped models, a robust matmul peak, sharded classification evaluation,
and bench/cuda_check.py's smoke run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import minigpt.device as device_module
from minigpt import GPT, GPTConfig
from minigpt.checkpoint import load_checkpoint, load_weights, model_tensors, save_checkpoint
from minigpt.data.padding import LongText
from minigpt.device import configure_matmul_precision, process_group_backend, resolve_dtype
from minigpt.infer.generate import generate, stream
from minigpt.interop.hf import to_hf_state_dict
from minigpt.model.heads import ClassificationHead
from minigpt.model.layers import CausalSelfAttention
from minigpt.model.model import GPTClassifier
from minigpt.train.config import LoopConfig
from minigpt.train.loop import Distributed, Run, Task
from minigpt.train.pretrain import PretrainConfig, pretrain_task

REPO = Path(__file__).resolve().parents[2]


def test_auto_dtype_falls_back_to_fp16_where_bf16_is_emulated(monkeypatch):
    gpu = torch.device("cuda")
    monkeypatch.setattr(device_module, "native_bf16", lambda device: False)  # a T4 or V100
    assert resolve_dtype(gpu, "auto") == torch.float16
    monkeypatch.setattr(device_module, "native_bf16", lambda device: True)
    assert resolve_dtype(gpu, "auto") == torch.bfloat16
    assert resolve_dtype(torch.device("cpu"), "auto") == torch.float32


def test_tf32_is_on_for_cuda_unless_turned_off():
    before = torch.get_float32_matmul_precision()
    try:
        configure_matmul_precision(torch.device("cpu"), True)
        assert torch.get_float32_matmul_precision() == before  # nothing off CUDA
        configure_matmul_precision(torch.device("cuda"), True)
        assert torch.get_float32_matmul_precision() == "high"
        configure_matmul_precision(torch.device("cuda"), False)
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)


def test_compile_defaults_to_cuda_on_linux():
    cfg = PretrainConfig()
    assert cfg.compile == "auto" and not cfg.compiles(torch.device("cpu"))
    assert cfg.compiles(torch.device("cuda")) == sys.platform.startswith("linux")
    assert PretrainConfig(compile="true").compiles(torch.device("cpu"))
    assert not PretrainConfig(compile="false").compiles(torch.device("cuda"))


def test_cuda_n_under_torchrun_selects_nccl(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert process_group_backend("cuda:1") == process_group_backend("cuda") == process_group_backend("auto") == "nccl"
    assert process_group_backend("cpu") == "gloo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_group_backend("auto") == "gloo"


def test_vocabulary_padding_changes_neither_loss_nor_sampling_nor_export():
    torch.manual_seed(0)
    plain = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, tie_weights=False)).eval()
    padded = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, tie_weights=False,
                           pad_vocab_multiple=64)).eval()
    assert padded.backbone.wte.weight.shape == (64, 16) and padded.head.weight.shape == (64, 16)
    assert torch.count_nonzero(padded.backbone.wte.weight[50:]) == torch.count_nonzero(padded.head.weight[50:]) == 0
    with torch.no_grad():  # the same real weights in both
        for (name, p), q in zip(padded.named_parameters(), plain.parameters()):
            p[: q.shape[0]].copy_(q) if name.endswith(("wte.weight", "head.weight")) else p.copy_(q)
    idx = torch.randint(0, 50, (3, 16))
    logits_p, loss_p = padded(idx, idx)
    logits_u, loss_u = plain(idx, idx)
    assert logits_p.shape == (3, 16, 50)
    torch.testing.assert_close(logits_p, logits_u, atol=1e-5, rtol=0)
    torch.testing.assert_close(loss_p, loss_u, atol=1e-6, rtol=0)
    samples = generate(padded, [[1, 2, 3]] * 4, 30, temperature=2.0, seed=0)
    assert max(max(row) for row in samples) < 50
    loss_p.backward()
    assert torch.count_nonzero(padded.backbone.wte.weight.grad[50:]) == 0  # pads get no gradient: they stay zero
    exported = to_hf_state_dict(padded)
    assert exported["transformer.wte.weight"].shape == (50, 16) and exported["lm_head.weight"].shape == (50, 16)


def test_right_padded_classification_runs_attention_without_a_mask(monkeypatch):
    torch.manual_seed(0)
    for backend in ("sdpa", "manual"):
        gpt = GPT(GPTConfig(vocab_size=60, block_size=24, n_layer=2, n_head=2, n_embd=16, attn_backend=backend))
        model = GPTClassifier.from_gpt(gpt, ClassificationHead(16, 3, pooling="mean")).eval()
        ids = torch.randint(1, 60, (3, 12))
        mask = torch.ones(3, 12, dtype=torch.long)
        mask[1, 7:], mask[2, 3:] = 0, 0
        masked, _ = model(ids, attention_mask=mask)  # as before: the mask in attention too
        seen = []
        original = CausalSelfAttention.forward
        monkeypatch.setattr(CausalSelfAttention, "forward",
                            lambda self, x, attention_mask=None, *a, seen=seen, original=original, **k:
                            seen.append(attention_mask) or original(self, x, attention_mask, *a, **k))
        unmasked, _ = model(ids, attention_mask=mask, right_padded=True)
        monkeypatch.setattr(CausalSelfAttention, "forward", original)
        assert seen and all(m is None for m in seen)
        torch.testing.assert_close(unmasked, masked, atol=1e-5, rtol=0)


def test_the_kv_cache_is_kept_in_the_compute_dtype(monkeypatch):
    model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    made = []
    original = model.backbone.new_kv_cache
    monkeypatch.setattr(model.backbone, "new_kv_cache", lambda *a, **k: made.append(original(*a, **k)) or made[-1])
    generate(model, [[1, 2, 3]], 4, do_sample=False)
    assert made[-1].dtype == made[-1].k[0].dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        generate(model, [[1, 2, 3]], 4, do_sample=False)
    assert made[-1].k[0].dtype == torch.bfloat16 and made[-1].k[0].shape[2] == 7  # prompt + new tokens, not block_size


def test_prefixes_of_compiled_and_ddp_models_are_stripped(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))
    state = {f"_orig_mod.module.{k}": v for k, v in model.state_dict().items()}
    fresh = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))
    load_weights(fresh, state, "wrapped", optional=["head.weight"])
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    compiled = torch.compile(model)  # not run: only its names
    assert all(not k.startswith("_orig_mod") for k in model_tensors(compiled))
    save_checkpoint(tmp_path / "c.safetensors", compiled, {"iter_num": 0})
    assert all(not k.startswith("_orig_mod") for k in load_checkpoint(tmp_path / "c.safetensors").model)


def linear_task() -> Task:
    """A Task around one Linear layer, for checks of how the loop wraps and measures (nothing trains)."""
    net = torch.nn.Linear(4, 2)
    return Task(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), batch=lambda i, m: None,
                loss=lambda m, b: None, evaluate=lambda m: {}, score="val_loss", higher_is_better=False, meta={},
                units_per_step=1)


def test_ddp_wraps_first_then_compiles_with_the_right_options(tmp_path, monkeypatch):
    import torch.distributed as dist

    wrapped = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: wrapped.append(m) or m)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        run = Run(linear_task(), LoopConfig(out_dir=str(tmp_path), compile="true", progress=False, device="cpu"),
                  Distributed(True, 0, 0, 1), torch.device("cpu"), torch.float32)
        run.start()
        ddp = wrapped[0]
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)  # compile got the DDP module
        buffer_sync = ddp.forward_sync_buffers if hasattr(ddp, "forward_sync_buffers") else ddp.broadcast_buffers
        assert buffer_sync is False and ddp.gradient_as_bucket_view is True
    finally:
        dist.destroy_process_group()


def test_the_matmul_peak_is_the_best_measured_so_far(tmp_path, monkeypatch):
    readings = iter([1e9, 5e9, 3e9])
    monkeypatch.setattr("minigpt.train.loop.measure_matmul_peak", lambda device, dtype: next(readings))
    run = Run(linear_task(), LoopConfig(out_dir=str(tmp_path), progress=False), Distributed(False), torch.device("cpu"),
              torch.float32)
    for expected in (1e9, 5e9, 5e9):
        run.measure_peak()
        assert run.peak == expected


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=16, grad_checkpoint=flag))
        idx = torch.randint(0, 30, (2, 16), generator=torch.Generator().manual_seed(1))
        model(idx, idx)[1].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=0, msg=name)


def test_sharded_classification_eval_equals_one_process(tmp_path):
    rows = ["text,label"] + [f"{'great' if i % 3 else 'awful'} film number {i},{'pos' if i % 3 else 'neg'}"
                             for i in range(90)]
    (tmp_path / "d.csv").write_text("\n".join(rows), encoding="utf-8")
    args = [str(REPO / "train.py"), "--task=classify", f"--train_file={tmp_path / 'd.csv'}", "--init_from=scratch",
            "--tokenizer=char", "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=32", "--batch_size=4",
            "--gradient_accumulation_steps=2", "--max_iters=4", "--eval_interval=2", "--progress=false", "--plot=false",
            "--device=cpu", "--split=0.6,0.3,0.1", "--dropout=0.0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, *args, f"--out_dir={tmp_path / 'one'}"], capture_output=True, text=True,
                         timeout=300, cwd=REPO, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args,
                          f"--out_dir={tmp_path / 'two'}"], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert two.returncode == 0, two.stderr[-2000:]

    def evaluations(out):
        return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]

    a, b = evaluations(tmp_path / "one"), evaluations(tmp_path / "two")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert x["val_accuracy"] == y["val_accuracy"] and x["val_loss"] == pytest.approx(y["val_loss"], abs=1e-4)


def test_cuda_check_runs_on_the_cpu(tmp_path):
    """bench/cuda_check.py at tiny shapes on the CPU: every check runs (the CUDA-only ones skip)."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "cuda_check.py"), "--device", "cpu", "--tiny",
                           "--json", str(tmp_path / "c.json")], capture_output=True, text=True, timeout=600, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["check"]: r["status"] for r in json.loads((tmp_path / "c.json").read_text())["rows"]}
    assert rows == {"preflight": "PASS", "env": "PASS", "attention": "PASS", "greedy": "PASS", "flash": "SKIP",
                    "syncs": "SKIP", "compile": "PASS", "speed": "PASS", "torchrun": "SKIP", "torchrun_gpu": "SKIP",
                    "fp16": "SKIP", "generation": "PASS", "resume": "PASS"}


@pytest.mark.parametrize("backend", ["sdpa", "manual"])
def test_static_cache_equals_dynamic_cache_equals_no_cache_on_greedy_decoding(backend, monkeypatch):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, block_size=24, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                          pos_embedding="rope", attn_backend=backend)).eval()
    with torch.no_grad():  # spread the logits: no near-ties for greedy decoding to break differently
        model.backbone.wte.weight.mul_(8)
    prompts = [[5, 17, 3, 44, 9, 61, 2], [8, 1], [70, 33, 12, 4]]  # left-padded to 7
    for new in (10, 30):  # within block_size, and past it (the cache is refilled from the recent half)
        plain = generate(model, prompts, new, do_sample=False, use_cache=False)
        assert generate(model, prompts, new, do_sample=False) == plain
        assert generate(model, prompts, new, do_sample=False, static_cache=True) == plain
    # the compiled decode step (traced without a C++ build here: the same graph, the suite stays fast)
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend="aot_eager", dynamic=False))
    assert generate(model, prompts, 10, do_sample=False, static_cache=True, compile_decode=True) == \
        generate(model, prompts, 10, do_sample=False, use_cache=False)


class HostReads(TorchDispatchMode):
    """Counts the operators that bring a tensor's value back to the host (``.item()``, ``bool()``,
    ``nonzero``, ...): on a GPU each one makes the host wait for the device. (``tolist()`` on a CPU
    tensor dispatches nothing; on CUDA it is a copy that the profile of bench/cuda_check.py counts.)"""

    READS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2",
             "aten::unique_consecutive", "aten::unique_dim"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func._schema.name in self.READS
        return func(*args, **(kwargs or {}))


def test_training_steps_read_nothing_back_between_log_lines(tmp_path, char_corpus):
    cfg = PretrainConfig(data_dir=str(char_corpus(tmp_path, 20_000)), out_dir=str(tmp_path / "out"), n_layer=1, n_head=2, n_embd=16,
                         block_size=16, batch_size=2, gradient_accumulation_steps=2, grad_clip=1.0, max_iters=100,
                         log_interval=10, progress=False, plot=False, device="cpu")
    (tmp_path / "out").mkdir()
    cpu = torch.device("cpu")
    run = Run(pretrain_task(cfg, Distributed(False), cpu), cfg, Distributed(False), cpu, torch.float32)
    run.start()
    with HostReads() as reads:
        for _ in range(9):
            run.step()
    assert reads.count == 0
    with HostReads() as reads:
        run.step()  # iteration 10: the log line reads the loss
    assert reads.count == 1


def test_generation_reads_back_once_per_call_not_per_token():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, block_size=24, n_layer=2, n_head=4, n_embd=32)).eval()
    prompts = [[5, 17, 3, 44], [8, 1]]
    for kw in (dict(use_cache=False), dict(), dict(static_cache=True), dict(top_k=5, top_p=0.9, seed=0)):
        with HostReads() as reads:
            generate(model, prompts, 20, **kw)
        assert reads.count == 1, kw  # whether the prompts need padding, before the first token
    with HostReads() as reads:
        generate(model, prompts, 24, do_sample=False, stop_token_ids=[96])  # never chosen: all 24 steps run
    assert reads.count == 1 + 3  # and whether every row has stopped, every 8 tokens


def test_a_compiled_decode_step_compiles_once_and_keeps_its_static_cache(monkeypatch):
    """Generations of one batch size, of several lengths, past block_size too, use one compiled step
    and the same cache tensors (which a CUDA graph needs to replay, not re-record); a second
    generation running at the same time gets its own cache."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, block_size=24, n_layer=2, n_head=4, n_embd=32)).eval()
    with torch.no_grad():
        model.backbone.wte.weight.mul_(8)  # no near-ties for greedy decoding
    graphs, made = [], []
    real_compile, real_new = torch.compile, model.backbone.new_kv_cache

    def counting_backend(gm, example_inputs):  # one object: torch.compile guards on the backend too
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend=counting_backend, dynamic=False))
    monkeypatch.setattr(model.backbone, "new_kv_cache", lambda *a, **k: made.append(real_new(*a, **k)) or made[-1])
    prompts = [[5, 17, 3, 44, 9, 61, 2], [8, 1]]
    for new in (8, 10, 30):  # 30: the cache is refilled past block_size
        assert generate(model, prompts, new, do_sample=False, static_cache=True, compile_decode=True) == \
            generate(model, prompts, new, do_sample=False, use_cache=False)
    assert len(graphs) == 1 and len(made) == 1
    first, second = (stream(model, p, 12, do_sample=False, static_cache=True) for p in ([[1, 2]] * 2, [[3, 4]] * 2))
    steps = [(next(first)[0], next(second)[0]) for _ in range(12)]  # interleaved
    assert torch.stack([a for a, _ in steps], 1).tolist() == generate(model, [[1, 2]] * 2, 12, do_sample=False)
    assert torch.stack([b for _, b in steps], 1).tolist() == generate(model, [[3, 4]] * 2, 12, do_sample=False)
    assert sum(cache.static for cache in made) == 2  # the first stream took the idle cache, the second made one


def _inductor_decode_code(model: GPT, cache) -> str:
    """The C++ Inductor generates for one compiled static-cache decode step, after a 4-token prompt."""
    from torch._inductor.utils import run_and_get_code

    from minigpt.infer.generate import _decode_step

    B, S = cache.batch_size, cache.max_len
    mask = torch.zeros(B, S, dtype=torch.long)
    mask[:, :5] = 1
    with torch.no_grad():
        model(torch.randint(0, 64, (B, 4)), attention_mask=mask, position_ids=torch.arange(4).expand(B, 4),
              kv_cache=cache, logits_to_keep=1)
        torch._dynamo.reset()
        step = torch.compile(_decode_step, dynamic=False)
        logits, code = run_and_get_code(step, model, torch.randint(0, 64, (B, 1)), torch.full((B, 1), 4), mask, cache)
    return "\n".join(code)


def _longest_loop(code: str) -> int:
    """The largest constant trip count of a loop in Inductor's C++ (``x0<static_cast<int64_t>(16384L)``)."""
    return max(int(n) for n in re.findall(r"x\d+<static_cast<int64_t>\((\d+)L\)", code))


def test_inductor_writes_the_static_cache_in_place():
    """The compiled decode step writes its one new slot into each layer's cache tensor: no loop of the
    generated code runs over a whole layer's cache (one would copy it every token). The same check
    catches the layout this replaced, one (L, B, H, S, D) block written through select views, so it
    can fail."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=256, n_layer=2, n_head=2, n_embd=32)).eval()
    layer_numel = 2 * 2 * 256 * 16  # (B, Hkv, S, D): larger than any weight, activation or mask here

    cache = model.backbone.new_kv_cache(2, 256, torch.float32, static=True)
    addresses = [t.data_ptr() for t in (*cache.k, *cache.v)]
    assert _longest_loop(_inductor_decode_code(model, cache)) < layer_numel
    assert [t.data_ptr() for t in (*cache.k, *cache.v)] == addresses
    assert all(bool(t[:, :, 4].ne(0).any()) for t in (*cache.k, *cache.v))  # the new slot was written

    stacked = model.backbone.new_kv_cache(2, 256, torch.float32, static=True)
    stacked.k, stacked.v = torch.stack(stacked.k), torch.stack(stacked.v)  # (L, B, H, S, D): k[layer] is a view
    for block in (stacked.k, stacked.v):
        torch._dynamo.mark_static_address(block)
    assert _longest_loop(_inductor_decode_code(model, stacked)) >= layer_numel


def test_alternating_batch_sizes_keep_one_static_cache_each(monkeypatch):
    """Generations alternating between batch sizes 1 and 2 make two static caches, not one per call
    (each new cache would re-record a compiled step's CUDA graph)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, block_size=24, n_layer=1, n_head=2, n_embd=16)).eval()
    made, real_new = [], model.backbone.new_kv_cache
    monkeypatch.setattr(model.backbone, "new_kv_cache", lambda *a, **k: made.append(real_new(*a, **k)) or made[-1])
    for prompts in ([[1, 2, 3]], [[4, 5], [6, 7]]) * 3:
        assert generate(model, prompts, 5, do_sample=False, static_cache=True) == \
            generate(model, prompts, 5, do_sample=False, use_cache=False)
    assert sum(cache.static for cache in made) == 2


@pytest.mark.parametrize("name,dtype,peak", [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989e12), ("NVIDIA H100 PCIe", torch.bfloat16, 756e12),
    ("NVIDIA H100 NVL", torch.float16, 835e12), ("NVIDIA H200", torch.bfloat16, 989e12),
    ("NVIDIA H200 NVL", torch.bfloat16, 835e12), ("NVIDIA A100-SXM4-80GB", torch.float32, 156e12),
    ("NVIDIA L4", torch.bfloat16, 121e12), ("NVIDIA L40S", torch.bfloat16, 362e12), ("Tesla T4", torch.bfloat16, None),
    ("Some Future GPU", torch.bfloat16, None),
])
def test_datasheet_peak_knows_the_variant(name, dtype, peak):
    """MFU on a GPU is against its datasheet: a PCIe or NVL part must not be read as the SXM one."""
    from minigpt.perf import datasheet_peak

    assert datasheet_peak(torch.device("cuda"), dtype, name=name) == peak
    assert datasheet_peak(torch.device("cpu"), dtype) is None


def test_a_classification_batch_is_one_copy_to_the_device():
    """ids, mask and labels travel as one block (pinned and non-blocking on CUDA), not three copies."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from minigpt.data.labelled import EncodedTexts, LabelledText
    from minigpt.data.tokenizers import CharTokenizer

    class Copies(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.to_meta = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._to_copy.default and isinstance(out, torch.Tensor) and out.device.type == "meta":
                self.to_meta += 1
            return out

    texts = ["a b", "abc abc", "b"]
    data = EncodedTexts(LabelledText(texts, ["x", "y", "x"], "t"), CharTokenizer.from_text("abc "), ["x", "y"],
                        LongText(8))
    ids, mask, labels, text = data.batch([0, 1, 2], torch.device("cpu"))
    with Copies() as copies:
        on_meta = data.batch([0, 1, 2], torch.device("meta"))
    assert copies.to_meta == 1 and [t.shape for t in on_meta] == [ids.shape, mask.shape, labels.shape, text.shape]
    assert ids.tolist()[1] == CharTokenizer.from_text("abc ").encode("abc abc") and mask.tolist()[2][1:] == [0] * 6
    assert labels.tolist() == [0, 1, 0]


def test_a_cuda_process_sets_its_device_before_the_process_group(monkeypatch):
    """Under torchrun on GPUs: torch.cuda.set_device(local_rank) first, then init_process_group with
    device_id, so NCCL builds its communicator on this process's GPU (not GPU 0 for every rank)."""
    import minigpt.train.loop as loop

    calls = []
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(loop, "process_group_backend", lambda name: "nccl")
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(loop.dist, "init_process_group", lambda **kw: calls.append(("init", kw)))
    monkeypatch.setattr(loop.dist, "destroy_process_group", lambda: calls.append(("destroy", None)))
    with loop.distributed("cuda") as (ddp, device):
        assert ddp.local_rank == 1 and device == torch.device("cuda:1")
    assert calls == [("set_device", torch.device("cuda:1")),
                     ("init", {"backend": "nccl", "device_id": torch.device("cuda:1")}), ("destroy", None)]


def test_ddp_gradients_stay_views_of_its_buckets(tmp_path, monkeypatch):
    """With gradient_as_bucket_view, zeroing the gradients in place (not to None) keeps each one the
    same storage step after step: backward writes into DDP's all-reduce buckets, no copy."""
    import torch.distributed as dist

    from minigpt.train.loop import Distributed, Run, Task
    from minigpt.train.pretrain import PretrainConfig

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(29_000 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)
        task = Task(model=net, optimizer=torch.optim.AdamW(net.parameters(), lr=1e-3), batch=lambda it, m: (x, y),
                    loss=lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]), evaluate=lambda m: {"val_loss": 0.0},
                    score="val_loss", higher_is_better=False, meta={}, units_per_step=8)
        cfg = PretrainConfig(out_dir=str(tmp_path), max_iters=5, log_interval=1, progress=False, plot=False,
                             device="cpu", warmup_iters=0, compile="false")
        run = Run(task, cfg, Distributed(True, 0, 0, 1), torch.device("cpu"), torch.float32)
        run.start()
        run.step()
        run.step()  # DDP rebuilds its buckets once, in the order the first backward filled them
        storage = [p.grad.untyped_storage().data_ptr() for p in net.parameters()]
        assert len(set(storage)) == 1  # one bucket holds them all
        for _ in range(3):
            run.step()
            assert [p.grad.untyped_storage().data_ptr() for p in net.parameters()] == storage
    finally:
        dist.destroy_process_group()


def test_the_heap_is_frozen_after_the_first_step_and_thawed_after_the_run(tmp_path, char_corpus, monkeypatch):
    """From the second step on, what was alive after the first (torch, the model, compiled graphs) sits in
    the collector's permanent generation, so a full collection skips it; when the run ends (finished or
    interrupted) it is handed back, so a process that goes on collects those objects again."""
    import gc

    from minigpt.train.loop import fit

    cfg = PretrainConfig(data_dir=str(char_corpus(tmp_path, 20_000)), out_dir=str(tmp_path / "out"), n_layer=1,
                         n_head=2, n_embd=16, block_size=16, batch_size=2, max_iters=3, eval_interval=3,
                         eval_iters=1, progress=False, plot=False, device="cpu")
    frozen, real_step = [], Run.step

    def step(self):
        frozen.append(gc.get_freeze_count())  # before this step
        real_step(self)

    monkeypatch.setattr(Run, "step", step)
    cpu = torch.device("cpu")
    (tmp_path / "out").mkdir()
    gc.unfreeze()
    fit(pretrain_task(cfg, Distributed(False), cpu), cfg, Distributed(False), cpu, torch.float32)
    assert frozen[0] == 0 and frozen[1] > 10_000 and frozen[2] == frozen[1]
    assert gc.get_freeze_count() == 0


def test_cuda_check_skips_the_compiled_rows_when_the_preflight_cannot_compile(tmp_path, monkeypatch):
    """If a one-line function does not compile (no Triton, no C++ toolchain), the preflight row says why
    and the rows that compile are SKIP rows carrying that reason, not one failure each."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cuda_check_under_test", REPO / "bench" / "cuda_check.py")
    cuda_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cuda_check)

    def broken(*args, **kwargs):
        raise RuntimeError("Cannot find a working triton installation")

    monkeypatch.setattr(torch, "compile", broken)
    cpu = torch.device("cpu")
    cuda_check.preflight(cpu, True)
    cuda_check.compiled(cpu, True)
    cuda_check.speed(cpu, True)
    rows = {r["check"]: r for r in cuda_check.ROWS}
    assert rows["preflight"]["status"] == "FAIL" and "triton" in rows["preflight"]["detail"]
    assert rows["compile"]["status"] == rows["speed"]["status"] == "SKIP"
    assert "triton" in rows["compile"]["detail"] and "preflight" in rows["speed"]["detail"]
