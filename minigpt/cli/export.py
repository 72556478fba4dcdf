"""``python -m minigpt export --ckpt OUT --to hf|peft|onnx PATH``: a classifier out of minigpt, for
transformers (a ``*ForSequenceClassification`` folder), PEFT (an adapter over such a base) or
onnxruntime (one .onnx file). Each is written beside PATH first and renamed into place at the end,
so a failure leaves nothing behind and ``--overwrite`` loses the old output only once the new is whole."""

from __future__ import annotations

import warnings
from pathlib import Path

from ..files import atomic_path, check_new_folder, write_folder
from ..errors import MiniGPTError, MiniGPTWarning
from ..interop.hf_classifier import save_hf_classifier
from ..interop.onnx_export import save_onnx
from ..interop.peft_adapter import save_peft_adapter
from ..loading import load_classifier
from . import ArgumentParser

FORMATS = {"hf": "a Hugging Face folder (AutoModelForSequenceClassification, pipeline('text-classification'))",
           "peft": "PATH/base (a Hugging Face folder without the LoRA updates) and PATH/adapter (a PEFT LoRA adapter "
                   "with the head in modules_to_save); for classifiers trained with strategy = \"lora\"",
           "onnx": "one .onnx file (inputs input_ids and attention_mask, output logits) for onnxruntime"}


def _check_file_target(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise MiniGPTError(f"{path} is a folder; the ONNX export writes one file (name it, e.g. model.onnx)")
    if path.exists() and not overwrite:
        raise MiniGPTError(f"{path} already exists; choose another path or pass --overwrite")


def warn_long_text(meta: dict, to: str) -> None:
    """transformers and ONNX read one piece of max_length tokens: say so when the classifier reads more."""
    how = ("in windows" if meta.get("long_text") == "windows" else
           "as its head and tail" if meta.get("truncate") == "head_tail" else None)
    if how is not None:
        cut = "cut to max_length tokens by its tokenizer" if to != "onnx" else "cut by the caller"
        warnings.warn(f"this classifier reads a text longer than {meta['max_length']} tokens {how}; the {to} export "
                      f"reads one piece ({cut}), so such texts may get other logits (minigpt reads the rule back from "
                      f"the folder's config)", MiniGPTWarning, stacklevel=2)


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="minigpt export", description=__doc__.split("\n\n")[0],
                       epilog="formats: " + "; ".join(f"{k}: {v}" for k, v in FORMATS.items()))
    p.add_argument_group("what to read").add_argument("--ckpt", required=True,
                                                      help="classification checkpoint or its out_dir")
    write = p.add_argument_group("what to write")
    write.add_argument("path", help="the folder (hf, peft) or .onnx file to write")
    write.add_argument("--to", required=True, choices=list(FORMATS), help="the format (see below)")
    write.add_argument("--overwrite", action="store_true", help="replace what is at PATH (only once the new one is whole)")
    args = p.parse_args(argv)
    path = Path(args.path)

    if args.to == "onnx":
        _check_file_target(path, args.overwrite)
        model, _, meta = load_classifier(args.ckpt, attn_backend="manual")  # plain tensor ops: what ONNX expresses
        warn_long_text(meta, args.to)
        with atomic_path(path) as tmp:
            save_onnx(model, tmp, meta["max_length"])
        print(f"wrote {path} (ONNX: input_ids, attention_mask -> logits over {meta['labels']})")
        return 0
    check_new_folder(path, args.overwrite)
    model, tok, meta = load_classifier(args.ckpt, merge=args.to != "peft")
    warn_long_text(meta, args.to)
    if args.to == "hf":
        write_folder(path, args.overwrite, lambda tmp: save_hf_classifier(model, tok, meta, tmp))
        print(f"wrote {path} (transformers: AutoModelForSequenceClassification.from_pretrained or pipeline)")
        return 0
    if not meta.get("lora"):
        raise MiniGPTError(f"{args.ckpt} was not trained with strategy = \"lora\"; a PEFT adapter holds LoRA updates "
                           f"(export it with --to hf)")

    def both(tmp: Path) -> None:
        (tmp / "base").mkdir()
        (tmp / "adapter").mkdir()
        save_hf_classifier(model, tok, meta, tmp / "base", fold_lora=False)
        save_peft_adapter(model, meta["lora"], tmp / "adapter", base="../base")

    write_folder(path, args.overwrite, both)
    print(f"wrote {path}/base and {path}/adapter (peft: PeftModel.from_pretrained(AutoModelForSequenceClassification"
          f".from_pretrained('{path}/base'), '{path}/adapter'))")
    return 0
