import shutil

import pytest

from minigpt import CharTokenizer, GPT2Tokenizer, MiniGPTError, tokenizer_from_meta
from minigpt.data.tokenizers import bundled_gpt2_files, load_gpt2_ranks

SAMPLES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x ** 2  # square\n\tif x != 0: pass",
    "lots   of    spaces\n\n\n  and\ttabs \t ",
    "   leading and trailing   ",
    "I'm sure they'll say we've done it, didn't we? 'quoted'",
    "numbers 1234567890 3.14159 -42 1e-5",
    "emoji 🤖🎉👍🏽 and flags 🇯🇵",
    "今天天气很好",
    "中文和English混合，标点。！？",
    "Ünïcödé naïve café, Ελληνικά, русский, العربية, हिन्दी",
    "<|endoftext|> typed by a user",
    "",
    "\u200b zero width \ufeff bom",
]


def test_hello_world_ids():
    assert GPT2Tokenizer().encode("Hello world") == [15496, 995]


def test_vocab_and_eot():
    tok = GPT2Tokenizer()
    assert tok.vocab_size == 50257 and tok.eot_token == 50256


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(text):
    tok = GPT2Tokenizer()
    assert tok.decode(tok.encode(text)) == text
    char = CharTokenizer.from_text(text or "x")
    assert char.decode(char.encode(text)) == text


def test_matches_transformers_gpt2_tokenizer_from_same_files(tmp_path):
    transformers = pytest.importorskip("transformers")
    encoder_json, vocab_bpe = bundled_gpt2_files()
    # a local tokenizer directory under Hugging Face's file names: same bytes, read by its own loader
    shutil.copy(encoder_json, tmp_path / "vocab.json")
    shutil.copy(vocab_bpe, tmp_path / "merges.txt")
    reference = transformers.GPT2Tokenizer.from_pretrained(tmp_path)
    ours = GPT2Tokenizer()
    for text in SAMPLES:
        if "<|endoftext|>" in text:
            continue  # transformers always treats it as special; checked separately below
        assert ours.encode(text) == reference.encode(text), text
    assert ours.encode("a<|endoftext|>b", allow_special=True) == reference.encode("a<|endoftext|>b")


def test_special_token_only_when_allowed():
    tok = GPT2Tokenizer()
    plain = tok.encode("<|endoftext|>")
    assert 50256 not in plain and len(plain) > 1
    assert tok.encode("<|endoftext|>", allow_special=True) == [50256]
    assert tok.decode(plain) == "<|endoftext|>"


def test_chinese_bytes_split_across_tokens_decode_from_bytes():
    tok = GPT2Tokenizer()
    ids = tok.encode("今天天气很好")
    assert ids == [20015, 232, 25465, 25465, 36365, 242, 36181, 230, 25001, 121]
    assert tok.decode_bytes(ids[:1]) + tok.decode_bytes(ids[1:]) == "今天天气很好".encode()


def test_mismatched_files_are_reported(tmp_path):
    encoder_json, vocab_bpe = bundled_gpt2_files()
    short = tmp_path / "vocab.bpe"
    short.write_text("\n".join(vocab_bpe.read_text(encoding="utf-8").split("\n")[:100]), encoding="utf-8")
    with pytest.raises(MiniGPTError, match="do not belong together"):
        load_gpt2_ranks(encoder_json, short)
    with pytest.raises(MiniGPTError, match="not found"):
        load_gpt2_ranks(tmp_path / "missing.json", vocab_bpe)


def test_char_tokenizer_vocab_meta_and_errors():
    tok = CharTokenizer.from_text("hello 世界")
    assert tok.chars == sorted(set("hello 世界")) and tok.vocab_size == 7 and tok.eot_token is None
    again = tokenizer_from_meta(tok.to_meta())
    assert again.encode("世界 hello") == tok.encode("世界 hello")
    with pytest.raises(MiniGPTError, match="'z'.*position 3"):
        tok.encode("helz")
    assert isinstance(tokenizer_from_meta({"kind": "gpt2"}), GPT2Tokenizer)
    with pytest.raises(MiniGPTError, match="kind"):
        tokenizer_from_meta({"kind": "sentencepiece"})


def test_char_tokenizer_with_an_unknown_character():
    tok = CharTokenizer.from_text("好的 ok", unknown="\ufffd")
    assert "\ufffd" in tok.chars and tok.vocab_size == 6
    ids = tok.encode("很好 ok!")  # 很 and ! were never seen
    assert tok.decode(ids) == "\ufffd好 ok\ufffd"
    again = tokenizer_from_meta(tok.to_meta())  # the unknown character survives a checkpoint
    assert again.unknown == "\ufffd" and again.encode("很好 ok!") == ids
    with pytest.raises(MiniGPTError, match="must be in the vocabulary"):
        CharTokenizer(["a", "b"], unknown="?")
