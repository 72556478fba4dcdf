"""Training throughput and MFU on this machine, against the matmul peak measured in the same run.

    python bench/train_speed.py                 # every row (several minutes on 2 CPU cores)
    python bench/train_speed.py --only baby     # rows whose name contains "baby"
    python bench/train_speed.py --no-compile    # skip the torch.compile rows

MFU = (6N + 12·L·H·Q·T) FLOPs per token × tokens/s ÷ peak, with N the non-embedding parameters and
the peak the best of several large square matmuls in the same dtype, timed a moment earlier.
"paired MFU" guards against a machine whose speed drifts (a shared host): the timed steps run in 4
chunks with the peak measured again before, between and after them, each chunk's FLOP/s is divided
by the mean of the two peaks around it, and the column shows the median over the chunks.
The baseline: each shape's first row trains Hugging Face's GPT2LMHeadModel (a well-known reference
implementation; needs `transformers`, in the dev extra) of the same shape, from the same weights, with
the same optimizer, in eager fp32 with its SDPA attention. "vs HF" is a row's paired MFU over the
baseline's (fp32 rows), so the ratio holds on any machine, whatever its peak and drift.
Every row of a shape trains from the same initial weights on the same batches for the same number
of steps, so the final losses (last column) can be compared directly, e.g. bf16 against fp32 or
minigpt against the baseline.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from minigpt import GPT, GPTConfig, GPT2Tokenizer, CharTokenizer
from minigpt.device import autocast, keep_freed_host_memory, native_bf16
from minigpt.interop.hf import to_hf_config, to_hf_state_dict
from minigpt.model.model import adamw, decay_groups
from minigpt.perf import measure_matmul_peak

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT / "data" / "tinyshakespeare" / "input.txt"
PEAK_N, PEAK_REPEATS = 2048, 8  # the peak: best of 8 timings of a 2048² matmul (fewer reads about 10% lower here)


@dataclass
class Shape:
    name: str
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    tokenizer: str  # "char" or "gpt2"
    steps: int
    options: dict = field(default_factory=dict)  # other GPTConfig fields, as the matching config file sets them


SHAPES = [
    # as configs/shakespeare_char.toml: exact GELU, untied LM head
    Shape("baby char 4x4x128 T64 B12", 4, 4, 128, 64, 12, "char", 60, dict(activation="gelu", tie_weights=False)),
    Shape("6x384 T256 B8 gpt2-vocab", 6, 6, 384, 256, 8, "gpt2", 12),
    Shape("gpt2-124M T256 B4", 12, 12, 768, 256, 4, "gpt2", 4),
]


def cpu_name() -> str:
    """The processor's model name (Linux), so that a table can be told apart from one made on another machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def token_stream(kind: str) -> tuple[np.ndarray, int]:
    text = SHAKESPEARE.read_text(encoding="utf-8")
    tok = CharTokenizer.from_text(text) if kind == "char" else GPT2Tokenizer()
    return np.asarray(tok.encode(text[:400_000]), dtype=np.int64), tok.vocab_size


def batches(tokens: np.ndarray, shape: Shape, n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        starts = rng.integers(0, len(tokens) - shape.block_size - 1, shape.batch_size)
        window = torch.from_numpy(np.stack([tokens[s: s + shape.block_size + 1] for s in starts]))
        out.append((window[:, :-1], window[:, 1:]))
    return out


class HFBaseline(torch.nn.Module):
    """Hugging Face's GPT2LMHeadModel with minigpt's weights, called as minigpt's GPT is:
    (x, y) -> (logits, loss), the loss over every position as minigpt computes it."""

    def __init__(self, model: GPT):
        super().__init__()
        import transformers  # a test/bench reference only, not a dependency of the library

        hf_config = transformers.GPT2Config(**to_hf_config(model.config), attn_implementation="sdpa")
        self.hf = transformers.GPT2LMHeadModel(hf_config)
        missing, unexpected = self.hf.load_state_dict(to_hf_state_dict(model), strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # a tied head has no key
        if model.config.tie_weights:
            assert self.hf.lm_head.weight is self.hf.transformer.wte.weight

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.hf(input_ids=x).logits  # (B, T, V)
        return logits, torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())


def train_iteration(model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batches, dtype: torch.dtype,
                    device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """One optimizer step as the trainer takes it: forward (autocast to `dtype`) and backward for each
    (x, y) micro-batch, gradient clipping in one batched pass, AdamW. `model` may be a compiled wrapper.
    Returns the last micro-batch's loss."""
    for x, y in micro_batches:
        with autocast(device, dtype):
            _, loss = model(x, y)
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


@dataclass
class Result:
    tokens_per_s: float  # over all timed steps
    loss: float  # after the last step
    flops_per_token: float  # of the shape (the same for minigpt and the baseline)
    chunks: list[tuple[float, float]]  # per timed chunk: (tokens/s, mean of the peaks measured just before and after)

    @property
    def paired_mfu(self) -> float:
        return statistics.median(self.flops_per_token * rate / peak for rate, peak in self.chunks)


def run(shape: Shape, vocab: int, data, backend: str, dtype: torch.dtype, compile_model: bool, warmup: int,
        activation: str | None = None, chunks: int = 4, baseline: bool = False) -> Result:
    """Train `shape` for warmup + steps steps (`baseline`: Hugging Face's GPT-2 with the same weights).
    The timed steps run in `chunks` chunks with the matmul peak of `dtype` measured before, between and
    after them (outside the timing), so that each chunk's throughput can be set against the machine's
    speed at that moment."""
    torch.manual_seed(0)
    options = dict(shape.options)
    if activation:  # the --activation override wins over the shape's own
        options["activation"] = activation
    config = GPTConfig(vocab_size=vocab, block_size=shape.block_size, n_layer=shape.n_layer, n_head=shape.n_head,
                       n_embd=shape.n_embd, attn_backend=backend, **options)
    model = GPT(config)
    per_token = model.flops_per_token()
    if baseline:
        model = HFBaseline(model)
    optimizer = adamw(decay_groups(model.parameters(), 0.1), 1e-3, (0.9, 0.99), "cpu")  # as GPT.configure_optimizer
    step_model = torch.compile(model) if compile_model else model
    device = torch.device("cpu")
    tokens_per_step = shape.batch_size * shape.block_size

    def train_steps(batches) -> torch.Tensor:
        for batch in batches:
            loss = train_iteration(step_model, optimizer, [batch], dtype)
        return loss

    loss = train_steps(data[:warmup])
    bounds = np.linspace(warmup, warmup + shape.steps, min(chunks, shape.steps) + 1).round().astype(int)
    peaks = [measure_matmul_peak(device, dtype, n=PEAK_N, repeats=PEAK_REPEATS)]
    rates, elapsed = [], 0.0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        start = time.perf_counter()
        loss = train_steps(data[lo:hi])
        seconds = time.perf_counter() - start
        elapsed += seconds
        rates.append((hi - lo) * tokens_per_step / seconds)
        peaks.append(measure_matmul_peak(device, dtype, n=PEAK_N, repeats=PEAK_REPEATS))
    chunk_peaks = [(a + b) / 2 for a, b in zip(peaks[:-1], peaks[1:])]
    return Result(shape.steps * tokens_per_step / elapsed, loss.item(), per_token, list(zip(rates, chunk_peaks)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run only shapes whose name contains this")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile rows")
    parser.add_argument("--no-bf16", action="store_true", help="skip bf16 autocast rows")
    parser.add_argument("--no-baseline", action="store_true", help="skip the Hugging Face GPT-2 baseline rows")
    parser.add_argument("--bf16-anyway", action="store_true",
                        help="run bf16 rows even on a CPU without native bf16 matmuls (slow: a fallback kernel)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every shape's timed steps")
    parser.add_argument("--activation", choices=["gelu_tanh", "gelu"],
                        help="MLP activation for every row (default: each shape's; gelu_tanh is GPT-2's, gelu the exact erf form)")
    parser.add_argument("--malloc-default", action="store_true",
                        help="leave glibc's malloc as it is (the trainer, and by default this bench, keep freed memory)")
    args = parser.parse_args()

    kept = False if args.malloc_default else keep_freed_host_memory()  # as the trainer does on the CPU
    device = torch.device("cpu")
    print(f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, MLP activation {args.activation or 'per shape'}, "
          f"freed memory {'kept' if kept else 'returned to the OS'}")
    if not args.no_bf16 and not native_bf16(device) and not args.bf16_anyway:
        args.no_bf16 = True
        print("bf16 rows skipped: this CPU has no native bf16 matmul (no AVX-512 / AMX), so they would measure a "
              "slow fallback for many minutes (--bf16-anyway runs them)")
    if not args.no_baseline and importlib.util.find_spec("transformers") is None:
        args.no_baseline = True
        print("baseline rows skipped: transformers is not installed (pip install -e '.[dev]')")
    peak32 = measure_matmul_peak(device, torch.float32, n=PEAK_N, repeats=PEAK_REPEATS)
    line = f"matmul peak: fp32 {peak32 / 1e9:.1f} GFLOP/s"
    peak16 = None
    if not args.no_bf16:  # only measured when bf16 rows run
        peak16 = measure_matmul_peak(device, torch.bfloat16, n=PEAK_N, repeats=PEAK_REPEATS)
        line += f", bf16 {peak16 / 1e9:.1f} GFLOP/s ({peak16 / peak32:.1f}x)"
    print(line + "\n")

    header = (f"| {'shape':<28} | {'model':<8} | {'attention':<9} | {'dtype':<5} | {'compile':<7} | {'tokens/s':>9} "
              f"| {'MFU':>5} | {'paired MFU':>10} | {'vs HF':>5} | {'vs fp32':>7} | {'loss':>6} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for shape in SHAPES:
        if args.only not in shape.name:
            continue
        shape.steps = max(2, round(shape.steps * args.steps_scale))
        tokens, vocab = token_stream(shape.tokenizer)
        warmup = 8  # untimed steps: compilation (and recompiles) for compiled rows, cache warm-up for the rest
        data = batches(tokens, shape, warmup + shape.steps)  # every row trains on the same batches
        variants = [] if args.no_baseline else [("HF GPT-2", "sdpa", torch.float32, False)]
        variants += [("minigpt", "sdpa", torch.float32, False), ("minigpt", "manual", torch.float32, False)]
        if not args.no_bf16:
            variants.append(("minigpt", "sdpa", torch.bfloat16, False))
        if not args.no_compile:
            variants.append(("minigpt", "sdpa", torch.float32, True))
            if not args.no_bf16:
                variants.append(("minigpt", "sdpa", torch.bfloat16, True))
        fp32_tok_s = baseline_mfu = None
        for impl, backend, dtype, comp in variants:
            dname = "bf16" if dtype == torch.bfloat16 else "fp32"
            row = f"| {shape.name:<28} | {impl:<8} | {backend:<9} | {dname:<5} | {str(comp):<7} |"
            try:
                result = run(shape, vocab, data, backend, dtype, comp, warmup=warmup, activation=args.activation,
                             baseline=impl != "minigpt")
            except Exception as err:  # report a row that cannot run (e.g. compile without a compiler)
                print(f"{row} failed: {type(err).__name__}: {err}"[:220])
                continue
            tok_s, paired = result.tokens_per_s, result.paired_mfu
            if impl != "minigpt":
                baseline_mfu = paired
            elif backend == "sdpa" and dtype == torch.float32 and not comp:
                fp32_tok_s = tok_s
            vs_hf = f"{paired / baseline_mfu:.2f}x" if baseline_mfu and dtype == torch.float32 else "-"
            vs_fp32 = f"{tok_s / fp32_tok_s:.2f}x" if fp32_tok_s and impl == "minigpt" else "-"
            peak = peak16 if dtype == torch.bfloat16 else peak32
            print(f"{row} {tok_s:>9,.0f} | {result.flops_per_token * tok_s / peak:>5.1%} | {paired:>10.1%} | "
                  f"{vs_hf:>5} | {vs_fp32:>7} | {result.loss:>6.3f} |", flush=True)


if __name__ == "__main__":
    main()
