"""A byte-level BPE tokenizer (GPT-2's scheme) trained on a corpus by the Hugging Face ``tokenizers``
library's trainer: ``train_bpe`` streams the texts and returns the ``tokenizer.json``, and
``save_tokenizer`` writes the folder that ``HFTokenizer.from_folder`` and transformers'
``AutoTokenizer.from_pretrained`` read.

As in GPT-2, a text is cut into words by GPT-2's pre-tokenisation regex, each word's UTF-8 bytes are
written as 256 printable characters, and the merges are learned on those. All 256 bytes are in the
vocabulary, so every string encodes (there is no unknown token) and decodes back to itself. The
special tokens (end of text, padding, any others) take the first ids. Nothing is added to a text
when it is encoded: documents are separated by the end-of-text token, which corpus preparation puts
before each one (GPT-2's convention).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..files import write_json
from ..errors import MiniGPTError
from .tokenizers import EOT_TEXT

BYTES = 256  # the base vocabulary of a byte-level BPE: one token per byte
PAD_TEXT = "<|pad|>"


def special_tokens(eot_token: str, pad_token: str | None = PAD_TEXT, others: Sequence[str] = ()) -> list[str]:
    """The special tokens in id order: end of text first, then padding (if any), then ``others``."""
    return check_specials([eot_token, *([pad_token] if pad_token else []), *others])


def check_specials(tokens: Sequence[str]) -> list[str]:
    """``tokens`` as a list, checked: at least one (the end of text), each non-blank text, all distinct."""
    tokens = list(tokens)
    if not tokens:
        raise MiniGPTError("a tokenizer needs an end-of-text token (the first special token)")
    for token in tokens:
        if not isinstance(token, str) or not token.strip():
            raise MiniGPTError(f"a special token must be non-blank text, got {token!r}")
    repeated = sorted({t for t in tokens if tokens.count(t) > 1})
    if repeated:
        raise MiniGPTError(f"special token {repeated[0]!r} is given twice; the special tokens must differ")
    return tokens


def check_vocab_size(vocab_size: int, specials: Sequence[str]) -> None:
    """A byte-level BPE holds the 256 bytes and the special tokens before any merge."""
    least = BYTES + len(specials)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < least:
        raise MiniGPTError(f"vocab_size must be at least {least} (the {BYTES} bytes and {len(specials)} special "
                           f"tokens {', '.join(specials)}), got {vocab_size}")
    if vocab_size > 2**31 - 1:
        raise MiniGPTError(f"vocab_size {vocab_size:,} is beyond what a token id can hold (2**31 - 1)")


def train_bpe(texts: Iterable[str], vocab_size: int, specials: Sequence[str] = (EOT_TEXT, PAD_TEXT),
              min_frequency: int = 2, show_progress: bool = False, name: str = "the input") -> str:
    """The ``tokenizer.json`` text of a byte-level BPE with at most ``vocab_size`` tokens (fewer when
    the corpus runs out of pairs seen ``min_frequency`` times), learned from ``texts``, which are
    read once, as a stream. ``specials`` take ids 0, 1, ...; ``name`` names the corpus in errors."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        raise MiniGPTError("training a tokenizer needs the tokenizers library: pip install 'minigpt[hf]'") from None
    specials = check_specials(specials)
    check_vocab_size(vocab_size, specials)
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 0:
        raise MiniGPTError(f"min_frequency must be a whole number at least 0, got {min_frequency!r}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    nonblank = [0]  # texts that hold more than whitespace

    def counted() -> Iterator[str]:
        for text in texts:
            nonblank[0] += bool(text.strip())
            yield text

    tokenizer.train_from_iterator(counted(), trainer)  # an error of the reader (a bad record) comes out as it is
    if not nonblank[0]:
        raise MiniGPTError(f"{name}: the corpus is empty (no document holds any text to learn a tokenizer from)")
    return tokenizer.to_str()


def tokenizer_config(eot_token: str, pad_token: str | None, model_max_length: int) -> dict:
    """``tokenizer_config.json`` for transformers (``AutoTokenizer`` builds a PreTrainedTokenizerFast on
    tokenizer.json) and minigpt (``eos_token`` names the end-of-text token)."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": eot_token,
            "pad_token": pad_token or None, "unk_token": None, "model_max_length": model_max_length,
            "clean_up_tokenization_spaces": False}


def save_tokenizer(folder: str | Path, tokenizer_json: str, eot_token: str, pad_token: str | None,
                   model_max_length: int = 1024) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``folder`` (which exists)."""
    folder = Path(folder)
    (folder / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    write_json(folder / "tokenizer_config.json", tokenizer_config(eot_token, pad_token, model_max_length))
