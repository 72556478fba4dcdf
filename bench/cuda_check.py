"""The GPU path, checked and measured in one run: prints a table and writes JSON.

    PYTHONPATH=. python bench/cuda_check.py                  # on one GPU: about 5 minutes
    PYTHONPATH=. python bench/cuda_check.py --device cpu --tiny   # the smoke test the suite runs

Checks (each row PASS, FAIL or SKIP with the numbers behind it):
  preflight       a one-line function compiles; if not, the rows that compile SKIP with the reason
  env             torch, CUDA, the GPU, native bf16 (without emulation), its datasheet peak
  attention       bf16 sdpa and manual against an fp32 reference: outputs and gradients at B4 H12
                  T1024 D64 with left padding, right padding, and cached decoding
  greedy          64 greedy tokens identical without the cache, with the dynamic and the static one
  flash           a training step under sdpa_kernel(FLASH_ATTENTION) only
  syncs           20 training steps: host syncs counted by CUDA's sync debug mode, pageable host-to-device
                  copies by the profiler (target 0 each)
  compile         fullgraph compile: one graph over 20 steps (no recompiles), losses within 1e-2 of eager
  speed           GPT-2 124M, T=1024, bf16, compiled, beside Hugging Face GPT2LMHeadModel (sdpa) from the
                  same weights on the same batches, compiled the same way, timed in 5 alternating chunks:
                  the median of the chunk ratios, tokens/s, MFU against the datasheet peak and against the
                  peak measured here (targets: >= 1.0x the baseline, MFU >= 45% of the datasheet)
  fp16            20 fp16 steps through the loop: the grad scaler's scale moves, the val loss is finite
  generation      batch 1 and 8, a 128-token prompt, 256 new tokens, weights cast to bf16 once: dynamic and
                  static cache (the static one with a compiled decode step) against HF generate(); no CUDA
                  graph may be skipped (target: static >= 2x HF at batch 1)
  resume          10 + resume + 10 steps equal 20 straight (to 1e-6, or to twice the difference between two
                  straight runs where the GPU's kernels are not bit-reproducible)
  torchrun        1-process torchrun (nccl), accumulation 4, fp32 eager, against a plain process: losses to 1e-4
  torchrun_gpu    the same as users run it on a GPU: DDP, then compile, bf16: losses to 2e-2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from minigpt import GPT, GPTConfig  # noqa: E402
from minigpt.checkpoint import LAST, load_checkpoint  # noqa: E402
from minigpt.data.shards import ShardWriter  # noqa: E402
from minigpt.data.tokenizers import GPT2Tokenizer  # noqa: E402
from minigpt.device import autocast, native_bf16, resolve_device  # noqa: E402
from minigpt.infer.generate import generate  # noqa: E402
from minigpt.model.attention import padding_causal_mask  # noqa: E402
from minigpt.model.cache import KVCache  # noqa: E402
from minigpt.model.layers import CausalSelfAttention  # noqa: E402
from minigpt.perf import datasheet_peak, measure_matmul_peak, sync  # noqa: E402
from minigpt.train.loop import Distributed, Run  # noqa: E402
from minigpt.train.pretrain import PretrainConfig, pretrain_task, train  # noqa: E402

ROWS: list[dict] = []
REPORT: dict = {"json": None, "started": time.perf_counter()}  # where the rows are written, after every row


def row(name: str, status: str, detail: str, **numbers) -> None:
    ROWS.append({"check": name, "status": status, "detail": detail, **numbers})
    print(f"{name:<11} {status:<5} {detail}", flush=True)
    write_report()


def write_report() -> None:
    """The JSON so far: a run cut short by a time limit still leaves every row it finished."""
    if REPORT["json"]:
        Path(REPORT["json"]).write_text(json.dumps({"rows": ROWS, "seconds": time.perf_counter() - REPORT["started"]},
                                                   indent=2))


def check(name: str):
    """Run one check, timed; an exception is a FAIL row with its message, never the end of the run."""
    def wrap(fn):
        def run(*args, **kwargs):
            start, first_row = time.perf_counter(), len(ROWS)
            try:
                fn(*args, **kwargs)
            except Exception as err:  # a failed check is reported, and the others still run
                row(name, "FAIL", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
                traceback.print_exc(limit=3)
            for r in ROWS[first_row:]:
                r["seconds"] = time.perf_counter() - start  # compilation included
            write_report()
        return run
    return wrap


def backend_for(device: torch.device, tiny: bool) -> str:
    """Inductor; the CPU smoke test traces with aot_eager instead (the same graphs, without a C++ build
    per model: the suite stays fast and still catches a graph that cannot trace)."""
    return "aot_eager" if tiny and device.type == "cpu" else "inductor"


def compile_for(module, device: torch.device, tiny: bool, **kw):
    return torch.compile(module, backend=backend_for(device, tiny), **kw)


COMPILER = {"broken": None}  # why the compiler cannot build here (the preflight row), or None


def needs_compiler(name: str) -> bool:
    """False, after a SKIP row saying why, when the preflight found that compiled code cannot be built."""
    if COMPILER["broken"]:
        row(name, "SKIP", f"the compiler does not work here (preflight): {COMPILER['broken']}")
        return False
    return True


# ----------------------------------------------------------------------------- data for the training checks


def synthetic_data(root: Path, vocab: int, tokens: int) -> Path:
    """A prepared folder of random ids (train and val shards, meta.json) for the training checks."""
    folder = root / f"data_{vocab}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    dtype = np.dtype(np.uint16)
    shards = {}
    for split, n in (("train", tokens), ("val", max(tokens // 10, 4096))):
        writer = ShardWriter(folder, split, dtype, shard_tokens=n)
        writer.write(rng.integers(0, vocab, n, dtype=np.int64))
        shards[split] = writer.close()
    meta = {"tokenizer": GPT2Tokenizer().to_meta(), "vocab_size": 50257, "dtype": "uint16",
            "splits": {s: {"tokens": sum(x["tokens"] for x in v), "documents": 0, "bytes": 0, "shards": v}
                       for s, v in shards.items()}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def small_cfg(data: Path, out: Path, device: str, tiny: bool, **kw) -> PretrainConfig:
    shape = dict(n_embd=64, block_size=32, batch_size=4) if tiny else dict(n_embd=128, block_size=128, batch_size=8)
    base = dict(data_dir=str(data), out_dir=str(out), n_layer=2, n_head=4, **shape,
                max_iters=20, lr_decay_iters=20, warmup_iters=2, eval_interval=10, eval_iters=2, log_interval=5,
                progress=False, plot=False, device=device, dtype="float32", compile="false", learning_rate=3e-3)
    return PretrainConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- the checks


@check("preflight")
def preflight(device: torch.device, tiny: bool) -> None:
    """Compile a one-line function: if Triton (or the C++ toolchain) cannot build, the rows that compile
    are skipped with this reason instead of failing one by one."""
    torch._dynamo.reset()
    try:
        x = torch.arange(8.0, device=device)
        y = torch.compile(lambda t: t * 2 + 1, backend=backend_for(device, tiny), fullgraph=True)(x)
        ok = torch.equal(y, x * 2 + 1)
    except Exception as err:  # noqa: BLE001  any failure to build is the answer this row gives
        COMPILER["broken"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
        row("preflight", "FAIL", f"a one-line function does not compile ({COMPILER['broken']}); the compiled rows skip")
        return
    row("preflight", "PASS" if ok else "FAIL", f"a one-line function compiles with {backend_for(device, tiny)}")


@check("env")
def env(device: torch.device) -> None:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["bf16_native"] = native_bf16(device)
        info["datasheet_bf16_tflops"] = (datasheet_peak(device, torch.bfloat16) or 0) / 1e12
    row("env", "PASS", ", ".join(f"{k}={v}" for k, v in info.items()), **info)


def reference_attention(layer: CausalSelfAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    manual = CausalSelfAttention(GPTConfig(vocab_size=8, n_layer=1, n_head=layer.n_head, n_embd=x.size(-1),
                                           block_size=x.size(1), attn_backend="manual")).to(x.device)
    manual.load_state_dict(layer.state_dict())
    return manual.float()(x.float(), None if mask is None else padding_causal_mask(mask))


@check("attention")
def attention(device: torch.device, tiny: bool) -> None:
    B, H, T, D = (2, 2, 32, 16) if tiny else (4, 12, 1024, 64)
    dtype = torch.bfloat16 if device.type == "cuda" or native_bf16(device) else torch.float32
    torch.manual_seed(0)
    worst, details = 0.0, []
    for backend in ("sdpa", "manual"):
        layer = CausalSelfAttention(GPTConfig(vocab_size=8, n_layer=1, n_head=H, n_embd=H * D, block_size=T,
                                              attn_backend=backend)).to(device).eval()
        for padding in (None, "left", "right"):
            x = torch.randn(B, T, H * D, device=device)
            mask = None
            if padding:  # row 0 loses a third of its positions, at the start or at the end
                mask = torch.ones(B, T, dtype=torch.long, device=device)
                gone = slice(0, T // 3) if padding == "left" else slice(T - T // 3, T)
                mask[0, gone] = 0
            keep = (mask.bool() if mask is not None else torch.ones(B, T, dtype=torch.bool, device=device))
            xr = x.clone().requires_grad_(True)
            ref = reference_attention(layer, xr, mask)
            (ref[keep]).sum().backward()
            xl = x.clone().requires_grad_(True)
            with autocast(device, dtype):
                out = layer(xl, None if mask is None else padding_causal_mask(mask))
            (out.float()[keep]).sum().backward()
            err = (out.float() - ref)[keep].abs().max().item() / ref[keep].abs().max().item()
            gerr = (xl.grad - xr.grad)[keep].abs().max().item() / xr.grad[keep].abs().max().item()
            worst = max(worst, err, gerr)
            details.append(f"{backend}/{padding or 'none'} {err:.1e}/{gerr:.1e}")
        # cached decoding: a prefill, then one token at a time, against the full pass
        x = torch.randn(1, T, H * D, device=device)
        full = reference_attention(layer, x, None)
        kv = KVCache(1, 1, H, T, D, device, dtype)  # one layer's cache
        with torch.no_grad(), autocast(device, dtype):
            pieces = [layer(x[:, :T - 8], kv_cache=kv)]
            kv.advance(T - 8)
            for t in range(T - 8, T):
                pieces.append(layer(x[:, t:t + 1], kv_cache=kv))
                kv.advance(1)
        err = (torch.cat(pieces, 1).float() - full).abs().max().item() / full.abs().max().item()
        worst = max(worst, err)
        details.append(f"{backend}/cached {err:.1e}")
    tolerance = 3e-2 if dtype == torch.bfloat16 else 1e-4
    row("attention", "PASS" if worst <= tolerance else "FAIL",
        f"{str(dtype).removeprefix('torch.')} vs fp32, max relative error {worst:.2e} (tolerance {tolerance:g}; "
        f"output/grad: {'; '.join(details)})", worst=worst)


def spread_model(device: torch.device, tiny: bool, **kw) -> GPT:
    torch.manual_seed(0)
    shape = dict(n_layer=2, n_head=2, n_embd=32, block_size=128) if tiny else dict(n_layer=12, n_head=12, n_embd=768,
                                                                                   block_size=1024)
    model = GPT(GPTConfig(vocab_size=50257, **{**shape, **kw})).to(device).eval()
    with torch.no_grad():  # spread the logits: no near-ties for greedy decoding
        model.backbone.wte.weight.mul_(4)
    return model


@check("greedy")
def greedy(device: torch.device, tiny: bool) -> None:
    model = spread_model(device, tiny)
    prompts = [[int(t) for t in torch.randint(0, 50257, (n,))] for n in (16, 7, 12)]
    outs = {name: generate(model, prompts, 64, do_sample=False, **kw) for name, kw in (
        ("no cache", dict(use_cache=False)), ("dynamic", dict()), ("static", dict(static_cache=True)))}
    same = outs["no cache"] == outs["dynamic"] == outs["static"]
    row("greedy", "PASS" if same else "FAIL", "64 tokens x 3 prompts: no cache = dynamic = static" if same else
        f"differ: dynamic {outs['dynamic'] == outs['no cache']}, static {outs['static'] == outs['no cache']}")


@check("flash")
def flash(device: torch.device, tiny: bool) -> None:
    if device.type != "cuda":
        row("flash", "SKIP", "needs CUDA")
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = spread_model(device, tiny).train()
    x = torch.randint(0, 50257, (2, model.config.block_size), device=device)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), autocast(device, torch.bfloat16):
        _, loss = model(x, x)
    loss.backward()
    row("flash", "PASS", f"forward + backward under FLASH_ATTENTION only, loss {loss.item():.3f}")


@check("syncs")
def syncs(device: torch.device, work: Path, tiny: bool) -> None:
    if device.type != "cuda":
        row("syncs", "SKIP", "needs CUDA (the CPU has neither syncs nor pinned copies)")
        return
    import warnings

    from torch.profiler import ProfilerActivity, profile

    cfg = small_cfg(synthetic_data(work, 50257, 200_000), work / "syncs", "cuda", tiny, log_interval=1000,
                    eval_interval=1000, max_iters=1000, dtype="bfloat16")
    task = pretrain_task(cfg, Distributed(enabled=False), device)
    run = Run(task, cfg, Distributed(enabled=False), device, torch.bfloat16)
    run.start()
    for _ in range(3):
        run.step()  # warm-up
    sync(device)
    # host syncs: CUDA's own sync debug mode warns at each one (a profiler would add its closing sync)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(20):
                run.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    found = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:  # pageable copies
        for _ in range(20):
            run.step()
        sync(device)
    pageable = sum(1 for e in prof.events() if "Pageable" in e.name and "HtoD" in e.name)
    status = "PASS" if not found and pageable == 0 else "FAIL"
    row("syncs", status, f"20 steps: {len(found)} host syncs (sync debug mode){f', first: {found[0]}' if found else ''}"
                         f"; {pageable} pageable host-to-device copies (profiler); target 0 and 0",
        syncs=len(found), pageable=pageable)


@check("compile")
def compiled(device: torch.device, tiny: bool) -> None:
    if not needs_compiler("compile"):
        return
    from torch._dynamo.utils import counters

    losses, graphs = {}, 0
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = spread_model(device, True if tiny else False, n_layer=2).train()
        optimizer = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), device.type)
        torch._dynamo.reset()
        counters.clear()
        step_model = compile_for(model, device, tiny, fullgraph=True) if mode == "compiled" else model  # no breaks
        gen = torch.Generator().manual_seed(1)
        losses[mode] = []
        for _ in range(20):
            x = torch.randint(0, 50257, (4, model.config.block_size), generator=gen).to(device)
            with autocast(device, torch.float32):
                _, loss = step_model(x, x)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses[mode].append(loss.item())
        if mode == "compiled":
            graphs = counters["stats"]["unique_graphs"]
    diff = max(abs(a - b) for a, b in zip(losses["eager"], losses["compiled"]))
    ok = diff <= 1e-2 and graphs == 1
    row("compile", "PASS" if ok else "FAIL", f"20 steps, fullgraph: {graphs} graph(s) compiled (target 1: no "
        f"recompiles), max |loss eager - compiled| = {diff:.2e}", diff=diff, graphs=graphs)


@check("speed")
def speed(device: torch.device, tiny: bool) -> None:
    """Both models compiled and kept, then timed in alternating chunks (minigpt, HF, HF, minigpt, ...):
    each pair of chunks gives a ratio, and the row reports their median, so a machine that drifts
    during the row cannot pass for a margin of a few percent."""
    if not needs_compiler("speed"):
        return
    import statistics

    from train_speed import HFBaseline, train_iteration

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    B, chunk, chunks, warmup = (2, 2, 4, 1) if tiny else (16, 10, 5, 4)
    shape = dict(n_layer=2, n_head=2, n_embd=64, block_size=64) if tiny else dict(n_layer=12, n_head=12, n_embd=768,
                                                                                  block_size=1024)
    peak = measure_matmul_peak(device, dtype)  # once, before the timed chunks
    sheet = datasheet_peak(device, dtype)
    runners, flops = {}, 0
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, 50257, (B, shape["block_size"] + 1), generator=gen).to(device)
               for _ in range(chunk)]  # on the device before the clock starts: the models are timed
    for name in ("minigpt", "hf"):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=50257, pad_vocab_multiple=64, **shape)).to(device)
        flops = model.flops_per_token()
        if name == "hf":
            model = HFBaseline(model).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
        runners[name] = (compile_for(model, device, tiny), optimizer)
        for i in range(warmup):  # compiles
            train_iteration(runners[name][0], optimizer, [(batches[i][:, :-1], batches[i][:, 1:])], dtype, device)
    seconds: dict[str, list[float]] = {"minigpt": [], "hf": []}
    for c in range(chunks):
        for name in ("minigpt", "hf") if c % 2 == 0 else ("hf", "minigpt"):
            step_model, optimizer = runners[name]
            sync(device)
            start = time.perf_counter()
            for batch in batches:
                train_iteration(step_model, optimizer, [(batch[:, :-1], batch[:, 1:])], dtype, device)
            sync(device)
            seconds[name].append(time.perf_counter() - start)
    tokens = chunk * B * shape["block_size"]
    ratio = statistics.median(h / m for m, h in zip(seconds["minigpt"], seconds["hf"]))
    results = {}
    for name, times in seconds.items():
        rate = tokens / statistics.median(times)
        results[name] = {"tokens_per_s": rate, "mfu_measured": rate * flops / peak,
                         **({"mfu": rate * flops / sheet} if sheet else {})}
    mfu = results["minigpt"].get("mfu")
    ok = tiny or (ratio >= 1.0 and mfu is not None and mfu >= 0.45)

    def mfus(r: dict) -> str:
        return (f"MFU {r['mfu']:.1%} of the datasheet, " if "mfu" in r else "") + f"{r['mfu_measured']:.1%} of measured"

    row("speed", "PASS" if ok else "FAIL",
        f"{'tiny model' if tiny else 'GPT-2 124M T1024'} {str(dtype).removeprefix('torch.')} compiled, B{B}, {chunks} "
        f"alternating chunks of {chunk} steps: minigpt {results['minigpt']['tokens_per_s']:,.0f} tok/s "
        f"({mfus(results['minigpt'])}), HF {results['hf']['tokens_per_s']:,.0f} tok/s ({mfus(results['hf'])}); median "
        f"ratio {ratio:.2f}x (chunks: {', '.join(f'{h / m:.2f}' for m, h in zip(seconds['minigpt'], seconds['hf']))}); "
        f"peak measured {peak / 1e12:.1f}, datasheet {f'{sheet / 1e12:.0f}' if sheet else 'unknown'} TFLOP/s "
        f"(targets: >= 1.0x, MFU >= 45% of the datasheet)", ratio=ratio, peak=peak, datasheet_peak=sheet,
        **{f"{k}_{m}": v for k, r in results.items() for m, v in r.items()})


def losses_of(out: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if "train_loss" in json.loads(line)]


def torchrun_pair(work: Path, name: str, options: list[str]) -> tuple[list[float], list[float]]:
    """The same 8 steps in a plain process and under a 1-process torchrun (nccl): their train losses."""
    data = synthetic_data(work, 50257, 200_000)
    args = [f"--data_dir={data}", "--n_layer=2", "--n_head=4", "--n_embd=128", "--block_size=128", "--batch_size=4",
            "--gradient_accumulation_steps=4", "--max_iters=8", "--lr_decay_iters=8", "--eval_interval=100",
            "--log_interval=1", "--progress=false", "--plot=false", *options]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # a time limit each, so that a hung process group costs this check and not the rest of the run
    plain = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, f"--out_dir={work / name / 'plain'}"],
                           env=env, capture_output=True, text=True, timeout=300)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                          str(ROOT / "train.py"), *args, f"--out_dir={work / name / 'ddp'}"], env=env,
                         capture_output=True, text=True, timeout=300)
    if plain.returncode or ddp.returncode:
        raise RuntimeError((plain.stderr or ddp.stderr)[-500:])
    return losses_of(work / name / "plain"), losses_of(work / name / "ddp")


@check("torchrun")
def torchrun(device: torch.device, work: Path, tiny: bool) -> None:
    if device.type != "cuda":
        row("torchrun", "SKIP", "nccl needs CUDA (tests/train/test_train.py runs 2-process gloo)")
        return
    plain, ddp = torchrun_pair(work, "fp32", ["--dtype=float32", "--compile=false", "--tf32=false"])
    diff = max(abs(a - b) for a, b in zip(plain, ddp))
    row("torchrun", "PASS" if diff <= 1e-4 else "FAIL", f"8 steps, accumulation 4, fp32 eager: max loss difference "
        f"{diff:.2e} (target 1e-4)", diff=diff)


@check("torchrun_gpu")
def torchrun_gpu(device: torch.device, work: Path, tiny: bool) -> None:
    """What a GPU user runs: DDP, then compile, in bf16. Compiled kernels and bf16 rounding differ a little
    between the two processes' graphs, so the target is bf16-sized."""
    if device.type != "cuda":
        row("torchrun_gpu", "SKIP", "nccl needs CUDA")
        return
    if not needs_compiler("torchrun_gpu"):
        return
    plain, ddp = torchrun_pair(work, "bf16", ["--dtype=bfloat16", "--compile=true"])
    diff = max(abs(a - b) for a, b in zip(plain, ddp))
    ok = len(plain) == len(ddp) == 8 and all(math.isfinite(x) for x in ddp) and diff <= 2e-2
    row("torchrun_gpu", "PASS" if ok else "FAIL", f"8 steps, accumulation 4, bf16, compiled, DDP: max loss difference "
        f"{diff:.2e} against one plain process (target 2e-2)", diff=diff)


@check("fp16")
def fp16(device: torch.device, work: Path, tiny: bool) -> None:
    """20 fp16 steps through the loop, whose grad scaler is swapped for one that grows every 5 steps: its
    scale must move (grow, or back off after an overflow), showing the loop scales, unscales and updates."""
    if device.type != "cuda":
        row("fp16", "SKIP", "float16 training is for CUDA")
        return
    cfg = small_cfg(synthetic_data(work, 50257, 200_000), work / "fp16", "cuda", tiny, dtype="float16",
                    eval_interval=1000, log_interval=1000)
    run = Run(pretrain_task(cfg, Distributed(enabled=False), device), cfg, Distributed(enabled=False), device,
              torch.float16)
    assert run.scaler.is_enabled(), "the loop made no grad scaler for float16"
    run.scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 16, growth_interval=5)
    run.start()
    scales = []
    for _ in range(20):
        run.step()
        scales.append(run.scaler.get_scale())
    loss = run.evaluate()["val_loss"]
    ok = math.isfinite(loss) and len(set(scales)) > 1
    row("fp16", "PASS" if ok else "FAIL", f"20 steps with the grad scaler: scale {scales[0]:g} -> {scales[-1]:g} "
        f"({len(set(scales))} values; it must move), val loss {loss:.3f}", val_loss=loss, scales=scales)


@check("generation")
def generation(device: torch.device, tiny: bool) -> None:
    """Decoding in the half dtype as sample.py does it: weights cast once, no autocast (the cache follows
    the weights). On CUDA the compiled static-cache step must run as a CUDA graph: a skip fails the row."""
    if device.type == "cuda" and not needs_compiler("generation"):
        return
    from torch._dynamo.utils import counters

    from train_speed import HFBaseline

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = spread_model(device, tiny)
    hf = HFBaseline(model).hf.to(device=device, dtype=dtype).eval()
    model = model.to(dtype)
    prompt_len, new = (16, 24) if tiny else (128, 256)
    lines, ratios = [], {}
    counters.clear()
    for batch in (1, 8):
        prompts = torch.randint(0, 50257, (batch, prompt_len)).tolist()
        timings = {}
        for name, kw in (("dynamic", {}), ("static", dict(static_cache=True, compile_decode=device.type == "cuda"))):
            generate(model, prompts, new, do_sample=False, **kw)  # warm-up: compiles and records the CUDA graph
            sync(device)
            start = time.perf_counter()
            generate(model, prompts, new, do_sample=False, **kw)
            sync(device)
            timings[name] = batch * new / (time.perf_counter() - start)
        ids = torch.tensor(prompts, device=device)
        with torch.no_grad():
            hf.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
            sync(device)
            start = time.perf_counter()
            hf.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
            sync(device)
        timings["hf"] = batch * new / (time.perf_counter() - start)
        ratios[batch] = timings["static"] / timings["hf"]
        lines.append(f"batch {batch}: dynamic {timings['dynamic']:,.0f}, static {timings['static']:,.0f}, HF "
                     f"{timings['hf']:,.0f} tok/s (static/HF {ratios[batch]:.2f}x)")
    skips = counters["inductor"]["cudagraph_skips"]
    lines.append(f"CUDA graphs skipped {skips} time(s)")
    ok = tiny or device.type != "cuda" or (ratios[1] >= 2.0 and skips == 0)
    row("generation", "PASS" if ok else "FAIL", "; ".join(lines), cudagraph_skips=skips,
        **{f"static_over_hf_b{b}": r for b, r in ratios.items()})


@check("resume")
def resume(device: torch.device, work: Path, tiny: bool) -> None:
    data = synthetic_data(work, 50257, 200_000)
    name = device.type
    for straight in ("straight", "again"):  # twice: how far two identical runs drift apart (atomics in kernels)
        train(small_cfg(data, work / straight, name, tiny, dropout=0.1))
    train(small_cfg(data, work / "half", name, tiny, dropout=0.1, max_iters=10))
    train(small_cfg(data, work / "half", name, tiny, dropout=0.1, resume=True))

    def max_difference(x: str, y: str) -> float:
        a, b = load_checkpoint(work / x / LAST).model, load_checkpoint(work / y / LAST).model
        return max((a[k] - b[k]).abs().max().item() for k in a)

    diff, floor = max_difference("straight", "half"), max_difference("straight", "again")
    ok = diff <= max(1e-6, 2 * floor)
    row("resume", "PASS" if ok else "FAIL", f"10 + resume + 10 against 20 straight: max |dw| {diff:.2e} (two straight "
        f"runs: {floor:.2e}; tolerance the larger of 1e-6 and twice that)", diff=diff, floor=floor)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="small shapes: a smoke test of every check")
    parser.add_argument("--json", default="cuda_check.json", help="where to write the results")
    parser.add_argument("--only", nargs="*", help="run only these checks")
    args = parser.parse_args()
    device = resolve_device(args.device)
    REPORT["json"] = args.json
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        checks = [("preflight", lambda: preflight(device, args.tiny)),
                  ("env", lambda: env(device)), ("attention", lambda: attention(device, args.tiny)),
                  ("greedy", lambda: greedy(device, args.tiny)), ("flash", lambda: flash(device, args.tiny)),
                  ("syncs", lambda: syncs(device, work, args.tiny)), ("compile", lambda: compiled(device, args.tiny)),
                  ("speed", lambda: speed(device, args.tiny)), ("fp16", lambda: fp16(device, work, args.tiny)),
                  ("generation", lambda: generation(device, args.tiny)),
                  ("resume", lambda: resume(device, work, args.tiny)),
                  ("torchrun", lambda: torchrun(device, work, args.tiny)),  # last: processes to start
                  ("torchrun_gpu", lambda: torchrun_gpu(device, work, args.tiny))]
        for name, fn in checks:
            if not args.only or name in args.only:
                fn()
    seconds = time.perf_counter() - REPORT["started"]
    write_report()
    print("\n| check | status | s | result |\n|---|---|---|---|")
    for r in ROWS:
        print(f"| {r['check']} | {r['status']} | {r.get('seconds', 0):.0f} | {r['detail']} |")
    counts = {status: sum(r["status"] == status for r in ROWS) for status in ("PASS", "FAIL", "SKIP")}
    print(f"\nchecks: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP in {seconds:.0f} s")
    return 1 if any(r["status"] == "FAIL" for r in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
