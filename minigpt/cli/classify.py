"""``python -m minigpt classify --ckpt OUT TEXT ...``: label and class probabilities from a fine-tuned classifier."""

from __future__ import annotations

import csv
import sys

from ..files import output_file, read_text
from ..device import DEVICE_HELP, resolve_device
from ..errors import MiniGPTError
from ..infer.predict import classify_texts
from ..interop.hf import HF_FAMILIES
from ..loading import load_classifier
from . import ArgumentParser, read_stdin


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="minigpt classify",
                       description="Classify texts with a fine-tuned checkpoint: label and class probabilities.")
    read = p.add_argument_group("what to read")
    read.add_argument("texts", nargs="*", help="texts to classify (or --file, or standard input: one text per line)")
    read.add_argument("--ckpt", required=True, help=f"classification checkpoint or its out_dir, a Hugging Face "
                   f"*ForSequenceClassification folder ({HF_FAMILIES}), or a PEFT LoRA adapter folder over one")
    read.add_argument("--base", help="for a PEFT adapter: its base folder (default: the adapter's base_model_name_or_path)")
    read.add_argument("--file", help="a text file with one text per line")
    p.add_argument_group("what to write").add_argument("--out", help="write a CSV (text, label, one probability column per class) instead of printing")
    p.add_argument_group("system").add_argument("--device", default="auto", help=DEVICE_HELP)
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    model, tok, meta = load_classifier(args.ckpt, device, base=args.base)
    out = output_file(args.out, "--out") if args.out is not None else None
    texts = list(args.texts)
    if args.file:
        texts += [line for line in read_text(args.file, "--file").split("\n") if line.strip()]
    if not texts and not args.texts and not sys.stdin.isatty():
        texts = [line for line in read_stdin().split("\n") if line.strip()]
    if not texts:
        raise MiniGPTError("no text to classify: give texts as arguments, --file, or standard input")
    labels, probs = classify_texts(model, tok, [t.rstrip("\r") for t in texts], meta, device)
    names = meta["labels"]
    if out is not None:
        with open(out, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label", *[f"p_{n}" for n in names]])
            for text, label, row in zip(texts, labels, probs.tolist()):
                writer.writerow([text, label, *[f"{x:.6f}" for x in row]])
        print(f"wrote {len(texts)} predictions to {args.out}")
        return 0
    for text, label, row in zip(texts, labels, probs.tolist()):
        shown = ", ".join(f"{n} {x:.3f}" for n, x in zip(names, row))
        print(f"{label}\t({shown})\t{text[:80]}")
    return 0
