"""Tokenizers behind one small interface: GPT-2 byte-level BPE (tiktoken, offline) and characters.

Both turn ``str`` into ``list[int]`` and back, report ``vocab_size`` and ``eot_token`` (``None``
when the vocabulary has no end-of-text token), and describe themselves as a JSON-able dict
(``to_meta``) that data files and checkpoints store, so ``tokenizer_from_meta`` rebuilds the same
tokenizer later.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np
import tiktoken

from ..files import read_json, read_text
from ..errors import MiniGPTError

EOT_TEXT = "<|endoftext|>"
TOKENIZER_KINDS = ("char", "gpt2")  # what corpus preparation and a classifier from scratch build (or a tokenizer.json)

# GPT-2's pre-tokenisation regex: contractions, letter runs, number runs, punctuation runs and
# whitespace, each optionally led by one space (from the GPT-2 release, as tiktoken's "gpt2").
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class UnknownCharacter(MiniGPTError):
    """A character outside a character vocabulary: ``char``, at index ``position`` of the text encoded."""

    def __init__(self, char: str, position: int, vocab_size: int):
        super().__init__(f"character {char!r} (U+{ord(char):04X}) at position {position} is not in this "
                         f"character vocabulary of {vocab_size} characters")
        self.char, self.position = char, position


class Tokenizer(Protocol):
    """What the rest of minigpt needs from a tokenizer."""

    vocab_size: int
    eot_token: int | None  # ends a text (where a sample stops); None without one
    bos_token: int | None  # put before every text (Llama's <s>); None for GPT-2 and characters

    def encode(self, text: str, allow_special: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def decode_bytes(self, ids: Sequence[int]) -> bytes: ...

    def to_meta(self) -> dict: ...


def document_start(tok: Tokenizer) -> int | None:
    """The token a prepared corpus puts before each document, where ``bos_aligned`` windows start:
    the tokenizer's beginning of text, else its end of text (GPT-2's ``<|endoftext|>``, as in llm.c's
    shards); None for a tokenizer with neither (characters)."""
    return tok.bos_token if tok.bos_token is not None else tok.eot_token


def _gpt2_byte_alphabet() -> dict[str, int]:
    """GPT-2 stores each byte as a printable unicode character in encoder.json; map it back.

    Bytes that are printable and not whitespace stand for themselves; the other 68 are shifted to
    code points 256, 257, ... in byte order (the convention of GPT-2's encoder.py).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    char_to_byte = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            char_to_byte[chr(256 + shifted)] = b
            shifted += 1
    return char_to_byte


def load_gpt2_ranks(encoder_json: Path, vocab_bpe: Path) -> dict[bytes, int]:
    """Read GPT-2's ``encoder.json`` and ``vocab.bpe`` into tiktoken's ``{token bytes: rank}`` table.

    The ids in encoder.json are the BPE ranks; the merges file is checked against them so a mismatched
    pair of files is reported instead of producing wrong ids.
    """
    for path in (encoder_json, vocab_bpe):
        if not Path(path).is_file():
            raise MiniGPTError(f"GPT-2 tokenizer file not found: {path}")
    alphabet = _gpt2_byte_alphabet()

    def to_bytes(token: str) -> bytes:
        return bytes(alphabet[ch] for ch in token)

    encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
    ranks = {to_bytes(tok): idx for tok, idx in encoder.items() if tok != EOT_TEXT}
    merges = Path(vocab_bpe).read_text(encoding="utf-8").split("\n")[1:]  # line 0 is "#version: 0.2"
    merges = [m for m in merges if m]
    if len(ranks) != 256 + len(merges):
        raise MiniGPTError(
            f"{encoder_json} has {len(ranks)} tokens but {vocab_bpe} has {len(merges)} merges "
            f"(expected 256 + merges): the two files do not belong together"
        )
    for line_no, merge in enumerate(merges, start=2):
        left, right = merge.split(" ")
        if ranks.get(to_bytes(left + right)) != 256 + line_no - 2:
            raise MiniGPTError(f"{vocab_bpe}:{line_no}: merge {merge!r} disagrees with {encoder_json}")
    return ranks


@functools.lru_cache(maxsize=None)
def _gpt2_encoding(encoder_json: str, vocab_bpe: str) -> tiktoken.Encoding:
    ranks = load_gpt2_ranks(Path(encoder_json), Path(vocab_bpe))
    return tiktoken.Encoding(
        name="minigpt-gpt2",
        pat_str=GPT2_SPLIT_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT_TEXT: len(ranks)},
    )


def bundled_gpt2_files() -> tuple[Path, Path]:
    """Paths of the ``encoder.json`` and ``vocab.bpe`` shipped inside the package."""
    root = resources.files("minigpt") / "assets" / "gpt2"
    return Path(str(root / "encoder.json")), Path(str(root / "vocab.bpe"))


class GPT2Tokenizer:
    """GPT-2 byte-level BPE (50,257 tokens) through tiktoken, built offline from local files.

    ``<|endoftext|>`` typed in user text is encoded as ordinary text unless ``allow_special=True``.
    Any unicode string round-trips: ``decode(encode(s)) == s``.
    """

    kind = "gpt2"

    def __init__(self, encoder_json: str | Path | None = None, vocab_bpe: str | Path | None = None):
        default_json, default_bpe = bundled_gpt2_files()
        self.encoder_json = Path(encoder_json or default_json)
        self.vocab_bpe = Path(vocab_bpe or default_bpe)
        self._enc = _gpt2_encoding(str(self.encoder_json.resolve()), str(self.vocab_bpe.resolve()))
        self.vocab_size: int = self._enc.n_vocab
        self.eot_token: int | None = self._enc.eot_token
        self.bos_token: int | None = None  # GPT-2 puts nothing before a text

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        allowed = {EOT_TEXT} if allow_special else set()
        return self._enc.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_array(self, text: str) -> np.ndarray:
        """The ids of ``text`` as an array (uint32), with ``<|endoftext|>`` in the text read as text."""
        return self._enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

    def encode_batch(self, texts: Iterable[str], allow_special: bool = False) -> list[list[int]]:
        allowed = {EOT_TEXT} if allow_special else set()
        return self._enc.encode_batch(list(texts), allowed_special=allowed, disallowed_special=())

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(list(ids))

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Raw bytes; a token can hold part of a multi-byte character, so streaming decodes from here."""
        return self._enc.decode_bytes(list(ids))

    def to_meta(self) -> dict:
        return {"kind": self.kind}


class CharTokenizer:
    """One token per unicode character, with the vocabulary taken from a corpus.

    The vocabulary (sorted characters) is stored in ``to_meta()`` so a checkpoint decodes the same
    way it was trained. A character outside the vocabulary is an error that names it, unless the
    tokenizer has an ``unknown`` character (one of the vocabulary), which then stands for it: a
    classifier trained on some texts must still read characters its training texts never had.
    """

    kind = "char"

    def __init__(self, chars: Sequence[str], unknown: str | None = None):
        chars = list(chars)
        if not chars:
            raise MiniGPTError("a character tokenizer needs at least one character in its vocabulary")
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise MiniGPTError("a character vocabulary must be distinct single characters")
        if unknown is not None and unknown not in chars:
            raise MiniGPTError(f"the unknown character {unknown!r} must be in the vocabulary")
        self.chars = chars
        self.stoi = {ch: i for i, ch in enumerate(chars)}
        order = sorted(range(len(chars)), key=lambda i: ord(chars[i]))
        self._codes = np.array([ord(chars[i]) for i in order], dtype=np.uint32)  # sorted code points
        self._ids = np.array(order, dtype=np.int64)  # the id of each
        self.unknown = unknown
        self.vocab_size: int = len(chars)
        self.eot_token: int | None = None
        self.bos_token: int | None = None

    @classmethod
    def from_text(cls, text: str, unknown: str | None = None) -> "CharTokenizer":
        """The sorted characters of ``text`` (plus ``unknown``, if given, to stand for any other)."""
        return cls(sorted(set(text) | ({unknown} if unknown else set())), unknown)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """The ids of ``text`` as an array (vectorised: code points looked up in a sorted table)."""
        codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)  # one per character
        slot = np.minimum(np.searchsorted(self._codes, codes), len(self._codes) - 1)
        known = self._codes[slot] == codes
        ids = self._ids[slot]
        if not known.all():
            if self.unknown is None:
                pos = int(np.argmin(known))
                raise UnknownCharacter(text[pos], pos, self.vocab_size)
            ids = np.where(known, ids, self.stoi[self.unknown])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        wrong = [i for i in ids if not 0 <= i < self.vocab_size]  # (a negative index would count from the end)
        if wrong:
            raise MiniGPTError(f"token id {wrong[0]} is outside this character vocabulary of {self.vocab_size} "
                               f"characters (ids 0 to {self.vocab_size - 1}): a model larger than its tokenizer?")
        return "".join(self.chars[i] for i in ids)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def to_meta(self) -> dict:
        meta = {"kind": self.kind, "chars": self.chars}
        if self.unknown is not None:
            meta["unknown"] = self.unknown
        return meta


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` (the byte-level BPE of SmolLM, Qwen2, Llama 3, ...) through
    the ``tokenizers`` library, so its ids are the ones transformers' ``AutoTokenizer`` gives.

    ``encode`` never adds special tokens and reads special-token text (``<|im_start|>``) as text
    unless ``allow_special``; ``bos_token`` is the id the folder's tokenizer puts before a text (or
    None), which generation and classification put there too; ``eot_token`` is its end of text
    (the end-of-sequence token), where a sample stops. The whole ``tokenizer.json`` is kept in
    ``to_meta()``, so a checkpoint or prepared data carries its tokenizer with it, together with its
    sha256 (``fingerprint``), which ``tokenizer_from_meta`` checks when it is there (metadata written
    before it was added has none).
    """

    kind = "hf"

    def __init__(self, tokenizer_json: str, eos_token: str | None = None, source: str = "tokenizer.json"):
        try:
            from tokenizers import Tokenizer as Backend
        except ImportError:
            raise MiniGPTError(f"{source}: reading a Hugging Face tokenizer needs the tokenizers library: "
                               f"pip install 'minigpt[hf]'") from None
        try:
            self._tok = Backend.from_str(tokenizer_json)
        except Exception as err:  # the Rust library raises a plain Exception for a file it cannot parse
            raise MiniGPTError(f"{source}: not a tokenizer.json the tokenizers library reads ({err})") from None
        if eos_token is not None and not isinstance(eos_token, str):
            raise MiniGPTError(f"{source}: the end-of-sequence token must be the token's text, got {eos_token!r}")
        self._json, self._eos_text = tokenizer_json, eos_token
        self.fingerprint = fingerprint(tokenizer_json)
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)
        with_specials = self._tok.encode("a", add_special_tokens=True).ids
        plain = self._tok.encode("a", add_special_tokens=False).ids
        adds_bos = len(with_specials) > len(plain) and with_specials[1:len(plain) + 1] == plain
        self.bos_token: int | None = with_specials[0] if adds_bos else None
        self.eot_token: int | None = self._tok.token_to_id(eos_token) if eos_token else None
        spec = json.loads(tokenizer_json)
        self._byte_level = "ByteLevel" in json.dumps(spec.get("decoder")) or "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
        self._bytes_of = _gpt2_byte_alphabet()
        self._special = {t["id"] for t in spec.get("added_tokens", [])}

    @classmethod
    def from_folder(cls, path: str | Path) -> "HFTokenizer":
        """The tokenizer of a Hugging Face model folder (tokenizer.json, with the end-of-sequence token
        named in tokenizer_config.json), or a tokenizer.json file itself."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise MiniGPTError(f"{path} has no tokenizer.json (a Hugging Face fast tokenizer file)")
        eos = None
        config = file.parent / "tokenizer_config.json"
        if config.is_file():
            settings = read_json(config)
            if not isinstance(settings, dict):
                raise MiniGPTError(f"{config}: not a JSON object (a tokenizer config is one)")
            eos = settings.get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos  # an AddedToken written out: its text
            if eos is not None and not isinstance(eos, str):
                raise MiniGPTError(f"{config}: eos_token must be the token's text (a string, or an object with a "
                                   f"string 'content'), got {settings.get('eos_token')!r}")
        return cls(read_text(file, "tokenizer.json"), eos, str(file))

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        self._tok.encode_special_tokens = not allow_special
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int64)

    def encode_batch(self, texts: Iterable[str], allow_special: bool = False) -> list[list[int]]:
        self._tok.encode_special_tokens = not allow_special
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Raw bytes: a byte-level token's characters stand for bytes (GPT-2's alphabet), so a token
        that holds part of a character is not decoded on its own."""
        if not self._byte_level:
            return self.decode(ids).encode("utf-8")
        out = bytearray()
        for i in ids:
            token = self._tok.id_to_token(int(i)) or ""
            out += token.encode("utf-8") if int(i) in self._special else bytes(self._bytes_of[ch] for ch in token)
        return bytes(out)

    def to_meta(self) -> dict:
        return {"kind": self.kind, "tokenizer_json": self._json, "eos_token": self._eos_text, "sha256": self.fingerprint}


def fingerprint(tokenizer_json: str) -> str:
    """The sha256 of a tokenizer.json's text, which tokenizer metadata stores beside it."""
    return hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest()


FINGERPRINT_KEYS = ("sha256",)  # derived from the rest of a tokenizer's metadata; older metadata has none


def same_tokenizer(a: dict, b: dict) -> bool:
    """Whether two tokenizer metadata dicts (``to_meta()``) describe the same tokenizer, whichever
    version of minigpt wrote them (with or without a fingerprint)."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    strip = lambda meta: {k: v for k, v in meta.items() if k not in FINGERPRINT_KEYS}  # noqa: E731
    return strip(a) == strip(b)


def build_tokenizer(kind: str, text: str = "", unknown: str | None = None) -> Tokenizer:
    """A new tokenizer of ``kind``: GPT-2 BPE, characters with the vocabulary of ``text`` (plus
    ``unknown``), or the path of a Hugging Face folder or tokenizer.json."""
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "char":
        return CharTokenizer.from_text(text, unknown)
    if Path(kind).exists():
        return HFTokenizer.from_folder(kind)
    raise MiniGPTError(f"unknown tokenizer {kind!r}; expected {', '.join(TOKENIZER_KINDS)}, or the path of a "
                       f"Hugging Face folder or tokenizer.json")


def tokenizer_from_meta(meta: dict) -> Tokenizer:
    """Rebuild a tokenizer from what ``to_meta()`` stored; an HF tokenizer's text must match the
    fingerprint stored with it (when there is one)."""
    if not isinstance(meta, dict):
        raise MiniGPTError(f"tokenizer metadata must be an object, got {type(meta).__name__}")
    kind = meta.get("kind")
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "char":
        if "chars" not in meta:
            raise MiniGPTError("char tokenizer metadata has no 'chars' vocabulary")
        return CharTokenizer(meta["chars"], meta.get("unknown"))
    if kind == "hf":
        text, eos = meta.get("tokenizer_json"), meta.get("eos_token")
        if not isinstance(text, str):
            raise MiniGPTError("hf tokenizer metadata has no 'tokenizer_json' text")
        if eos is not None and not isinstance(eos, str):
            raise MiniGPTError(f"hf tokenizer metadata: eos_token must be a string, got {eos!r}")
        stored = meta.get("sha256")
        if stored is not None and stored != fingerprint(text):
            raise MiniGPTError(f"hf tokenizer metadata: its tokenizer_json does not match its sha256 fingerprint "
                               f"({str(stored)[:12]}... != {fingerprint(text)[:12]}...): the tokenizer was altered or damaged")
        return _hf_from_json(text, eos)
    raise MiniGPTError(f"unknown tokenizer kind {kind!r}; expected char, gpt2 or hf")


@functools.lru_cache(maxsize=8)
def _hf_from_json(tokenizer_json: str, eos_token: str | None) -> HFTokenizer:
    """Built once per tokenizer.json: a checkpoint's tokenizer is read back more than once."""
    return HFTokenizer(tokenizer_json, eos_token)


class StreamDecoder:
    """Decode tokens one at a time without printing broken characters.

    A byte-level BPE token can end in the middle of a multi-byte UTF-8 character (Chinese, emoji);
    its bytes are held back until the character is complete. ``flush()`` returns what is left
    (an incomplete tail becomes U+FFFD).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self._utf8.decode(self.tokenizer.decode_bytes([token]))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)
