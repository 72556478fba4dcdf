import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def load_bench(name: str):
    """bench/<name>.py as a module (bench/ is a folder of scripts, not a package); a test imports it
    with ``from conftest import load_bench``."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def char_corpus():
    """``char_corpus(root, chars)``: the first ``chars`` characters of the bundled Tiny Shakespeare,
    prepared at character level under ``root``; returns the prepared folder."""
    from minigpt.data.corpus import prepare_corpus

    def prepare(root: Path, chars: int) -> Path:
        text = (REPO / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:chars]
        (root / "input.txt").write_text(text, encoding="utf-8")
        prepare_corpus(root / "input.txt", root / "char", "char", progress=False)
        return root / "char"

    return prepare


@pytest.fixture
def shared_data() -> Path:
    """../shared/data for optional larger checks; the test is skipped where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture
def check_export_round_trip():
    """A check for any Hugging Face causal LM: import its weights, export them again (exactly its
    tensors, the tied head stored once), load the export into a fresh model of its class, and import
    that back to exactly the weights first imported."""
    from minigpt.interop.hf import from_hf_state_dict, to_hf_config, to_hf_state_dict

    def check(hf, tie: bool) -> None:
        ours = from_hf_state_dict(hf.config.to_dict(), hf.state_dict())
        exported = to_hf_state_dict(ours)
        reference = {k: v for k, v in hf.state_dict().items() if not (tie and k == "lm_head.weight")}
        assert set(exported) == set(reference)
        for key, value in reference.items():
            assert torch.equal(exported[key], value), key
        cls = type(hf)
        fresh = cls(cls.config_class(**to_hf_config(ours.config)))
        fresh.load_state_dict(exported, strict=not tie)
        again = from_hf_state_dict(fresh.config.to_dict(), fresh.state_dict())
        for (k1, v1), (k2, v2) in zip(ours.state_dict().items(), again.state_dict().items()):
            assert k1 == k2 and torch.equal(v1, v2), k1

    return check


@pytest.fixture
def step_logits(monkeypatch):
    """``step_logits()`` -> a new list that receives, from then on, each generation step's processed
    logits (B, V) (what ``SamplingConfig.process`` returns), until the next call starts another."""
    from minigpt.infer.generate import SamplingConfig

    target, real = [[]], SamplingConfig.process

    def recording(self, *args):
        out = real(self, *args)
        target[0].append(out)
        return out

    monkeypatch.setattr(SamplingConfig, "process", recording)

    def new_list() -> list:
        target[0] = []
        return target[0]

    return new_list
