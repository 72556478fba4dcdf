"""``python -m minigpt plot OUT_DIR``: draw OUT_DIR/loss.png from OUT_DIR/metrics.jsonl."""

from __future__ import annotations

from ..train.plots import plot_losses
from . import ArgumentParser


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="minigpt plot", description="Write OUT_DIR/loss.png from OUT_DIR/metrics.jsonl.")
    p.add_argument("out_dir")
    args = p.parse_args(argv)
    png = plot_losses(args.out_dir)
    if png:
        print(png)
    return 0 if png else 1
