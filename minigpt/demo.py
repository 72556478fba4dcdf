"""End-to-end demo on bundled data: Tiny Shakespeare -> character tokenizer -> a small GPT trained
for a few hundred steps on the CPU -> validation loss -> a sample of generated text.

Run with ``python -m minigpt.demo`` (or ``make demo``). It is deliberately short (about a minute on
two CPU cores), so expect text with Shakespeare's shape rather than his sense.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import GPT, GPTConfig, CharTokenizer, generate, resolve_device, seed_everything

DATA = Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare" / "input.txt"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps (default 1500, about a minute on 2 CPU cores)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args(argv)

    seed_everything(args.seed)
    device = resolve_device(args.device)
    text = DATA.read_text(encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    data = torch.tensor(tok.encode(text), dtype=torch.long)
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    print(f"corpus: {DATA.name}, {len(text):,} characters, vocabulary {tok.vocab_size}")

    config = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=4, n_head=4, n_embd=128)
    model = GPT(config).to(device)
    print(f"model: {config.n_layer} layers x {config.n_head} heads x {config.n_embd} channels, "
          f"{model.num_parameters():,} parameters, on {device}")
    optimizer = model.configure_optimizer(0.1, 1e-3, (0.9, 0.99), device.type)

    def batch(source: torch.Tensor, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(source) - config.block_size - 1, (size,))
        x = torch.stack([source[s: s + config.block_size] for s in starts])  # (B, T)
        y = torch.stack([source[s + 1: s + 1 + config.block_size] for s in starts])  # (B, T), shifted by one
        return x.to(device), y.to(device)

    start = time.time()
    bar = tqdm(range(args.steps), desc="train", unit="step")
    for _ in bar:
        _, loss = model(*batch(train))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")

    model.eval()
    with torch.no_grad():
        val_loss = torch.stack([model(*batch(val))[1] for _ in range(20)]).mean().item()
    print(f"trained {args.steps} steps in {time.time() - start:.0f}s; val loss {val_loss:.3f} "
          f"(a uniform guess is {torch.log(torch.tensor(float(tok.vocab_size))).item():.3f})")

    prompt = torch.tensor([tok.encode("ROMEO:\n")], device=device)
    out = generate(model, prompt, max_new_tokens=300, temperature=0.8, top_k=20)
    print("\n--- sample ---\n" + tok.decode(out[0].tolist()))


if __name__ == "__main__":
    main()
