"""What bf16 autocast costs or gains against fp32 on this machine's CPU, step for step.

    python bench/bf16_speed.py

Times, in alternation so that a drifting machine hits both alike (best of the rounds):
- one training step of the baby Shakespeare model (as bench/train_speed.py's first shape);
- forward + backward of one Linear 384 -> 1536 over 2,048 tokens (a 6x384 model's MLP input layer).
On a CPU without native bf16 matmuls (minigpt.device.native_bf16 is False, e.g. AVX2 only) bf16 is
far slower; there the full speed bench skips its bf16 rows, and this script shows by how much.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from minigpt import GPT, GPTConfig
from minigpt.device import autocast, native_bf16
from train_speed import SHAPES, cpu_name  # bench/ is the script's folder, so on sys.path

CPU = torch.device("cpu")
DTYPES = (torch.float32, torch.bfloat16)


def best_times(step: Callable[[torch.dtype], None], rounds: int = 3, repeats: int = 3) -> dict[torch.dtype, float]:
    """Best seconds per call of step(dtype) for each dtype, alternating dtypes round by round (after a warm-up)."""
    best = {dtype: float("inf") for dtype in DTYPES}
    for dtype in DTYPES:
        step(dtype)
    for _ in range(rounds):
        for dtype in DTYPES:
            start = time.perf_counter()
            for _ in range(repeats):
                step(dtype)
            best[dtype] = min(best[dtype], (time.perf_counter() - start) / repeats)
    return best


def baby_step() -> Callable[[torch.dtype], None]:
    shape = SHAPES[0]
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=shape.block_size, n_layer=shape.n_layer, n_head=shape.n_head,
                          n_embd=shape.n_embd, **shape.options))
    optimizer = model.configure_optimizer(0.1, 1e-3, (0.9, 0.99), "cpu")
    x = torch.randint(0, 65, (shape.batch_size, shape.block_size))
    y = torch.randint(0, 65, (shape.batch_size, shape.block_size))

    def step(dtype: torch.dtype) -> None:
        with autocast(CPU, dtype):
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def linear_step() -> Callable[[torch.dtype], None]:
    layer = torch.nn.Linear(384, 1536)
    x = torch.randn(2048, 384, requires_grad=True)

    def step(dtype: torch.dtype) -> None:
        with autocast(CPU, dtype):
            out = layer(x)
        out.float().sum().backward()
    return step


def main() -> None:
    print(f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, native bf16 matmuls: {native_bf16(CPU)}\n")
    print("| work                                        | fp32 ms | bf16 ms | bf16 / fp32 time |")
    print("|---------------------------------------------|---------|---------|------------------|")
    for name, step in (("baby model, one training step", baby_step()),
                       ("Linear 384->1536, 2,048 tokens, fwd + bwd", linear_step())):
        best = best_times(step)
        fp32, bf16 = best[torch.float32] * 1e3, best[torch.bfloat16] * 1e3
        print(f"| {name:<43} | {fp32:>7.1f} | {bf16:>7.1f} | {bf16 / fp32:>15.2f}x |", flush=True)


if __name__ == "__main__":
    main()
