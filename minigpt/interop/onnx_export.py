"""A classifier as one ONNX file for CPU serving without PyTorch (onnxruntime): inputs ``input_ids``
and ``attention_mask`` (int64, batch and length dynamic, right-padded), output ``logits`` (B, K).

Exported with torch's exporter (``torch.onnx.export(dynamo=True)``, which needs the ``onnxscript``
package) from the classifier with LoRA merged and the explicit attention path, whose mask and
softmax are plain tensor operations; no KV cache.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from ..errors import MiniGPTError
from ..model.model import GPTClassifier

INPUTS, OUTPUTS = ["input_ids", "attention_mask"], ["logits"]
OPSET = 18


class _Logits(torch.nn.Module):
    """(input_ids, attention_mask) -> logits: the signature an ONNX client calls."""

    def __init__(self, classifier: GPTClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(input_ids, attention_mask=attention_mask, right_padded=True)[0]  # (B, K)


def save_onnx(classifier: GPTClassifier, path: str | Path, max_length: int) -> None:
    """Write ``classifier`` (in eval mode, on the CPU) to ``path`` as ONNX; lengths up to ``max_length``."""
    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise MiniGPTError("ONNX export needs the onnx and onnxscript packages: pip install 'minigpt[onnx]'") from None
    classifier = classifier.cpu().eval()
    example = (torch.zeros(2, min(8, max_length), dtype=torch.long), torch.ones(2, min(8, max_length), dtype=torch.long))
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=1, max=max_length)
    shapes = {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the exporter reports each stage on stdout/logging: one line is ours to print
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(_Logits(classifier), example, input_names=INPUTS, output_names=OUTPUTS,
                                        dynamic_shapes=shapes, opset_version=OPSET, dynamo=True, verbose=False,
                                        external_data=False)
    finally:
        quiet.setLevel(level)
    program.save(str(path))
