"""Byte-level BPE: exact ids against Hugging Face `tokenizers`, lossless round trips, training."""

from __future__ import annotations

import json
import random

import pytest

from llmlab.core.assets import smollm2_gguf
from llmlab.core.errors import LLMLabError
from llmlab.data.shakespeare import shakespeare_text
from llmlab.tokenizer import BPETokenizer, build_tokenizer, load_tokenizer, train_bpe
from llmlab.tokenizer.fast import fast_encoder
from llmlab.tokenizer.formats import read_hf_tokenizer, save_hf_tokenizer
from llmlab.tokenizer.patterns import PATTERNS

tokenizers = pytest.importorskip("tokenizers")

VARIED = "\n".join([
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "ROMEO:\nBut, soft! what light through yonder window breaks?\n\n",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)  # O(2^n)\n",
    "\t\tindented\twith tabs   and    runs of     spaces \n\n\n   trailing   ",
    "Numbers: 3.14159, 1,000,000, 2026-11-24, 0xFF, 1e-9, 12345678901234567890",
    "Unicode: naïve café, Größe, Ελληνικά, русский текст, 日本語のテキスト, 中文文本, 한국어, العربية, हिन्दी",
    "Emoji: 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 ✨; combining: e\u0301 a\u0308; zero-width: a\u200bb",
    "Contractions: I'm, you're, they've, it's, we'll, he'd, DON'T, Y'ALL'RE",
    "Symbols: <html><body class=\"x\">&amp;</body></html> {\"json\": [1, 2]} $$ \\LaTeX_{x}^2 @user #tag",
])


@pytest.fixture(scope="module")
def smollm2():
    return load_tokenizer("smollm2")


@pytest.fixture(scope="module")
def smollm2_reference():
    """HF `tokenizers` built straight from the GGUF's vocabulary and merges (read with `gguf`),
    with SmolLM2's pre-tokenizer: isolated digits, then GPT-2 byte-level splitting."""
    import gguf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    reader = gguf.GGUFReader(str(smollm2_gguf()))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    hf = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    hf.decoder = decoders.ByteLevel()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    hf.add_special_tokens([t for t, kind in zip(tokens, types) if kind == 3])
    return hf


def test_smollm2_ids_equal_hf_tokenizers(smollm2, smollm2_reference):
    shakespeare = shakespeare_text(tiny=True)[:20000]
    for text in [VARIED, shakespeare, *VARIED.split("\n"), " ", "", "   leading", "a  b   c"]:
        ours = smollm2.encode(text)
        assert ours == smollm2_reference.encode(text, add_special_tokens=False).ids, text[:60]
        assert smollm2.decode(ours) == text


def test_special_tokens_only_when_allowed(smollm2, smollm2_reference):
    text = "<|im_start|>user\nhello<|im_end|>\n"
    with_specials = smollm2.encode(text, allowed_special=True)
    assert with_specials[0] == 1 and with_specials == smollm2_reference.encode(text).ids
    assert 1 not in smollm2.encode(text)  # by default the same characters are plain text
    assert smollm2.decode(smollm2.encode(text)) == text


@pytest.mark.parametrize("pattern", ["gpt2", "llama3"])
def test_trained_tokenizer_equals_hf_with_the_same_vocabulary(pattern, tmp_path):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    text = shakespeare_text(tiny=True)[:300_000] + VARIED
    ours = train_bpe(text, 600, pattern)
    save_hf_tokenizer(ours, tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    hf = Tokenizer(models.BPE(data["model"]["vocab"], [tuple(m) for m in data["model"]["merges"]]))
    # The reference splits with HF's own pre-tokenizers, not with our exported pattern.
    if pattern == "gpt2":
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PATTERNS["llama3"]), "isolated"),
                                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    fast = fast_encoder(ours)
    reloaded = read_hf_tokenizer(tmp_path / "tokenizer.json")
    for line in [VARIED, *VARIED.split("\n"), shakespeare_text()[-5000:]]:
        expected = hf.encode(line, add_special_tokens=False).ids
        assert ours.encode(line) == expected
        assert fast(line) == expected
        assert reloaded.encode(line) == expected


def test_training_is_deterministic_and_compresses():
    text = shakespeare_text(tiny=True)[:200_000]
    a, b = train_bpe(text, 512, "gpt4"), train_bpe(text, 512, "gpt4")
    assert a.merges == b.merges and a.vocab_size == 512
    held = shakespeare_text(tiny=True)[-50_000:]
    assert len(held.encode()) / len(a.encode(held)) > 1.8  # bytes per token (1.95 here); raw bytes: 1.0
    # The first merges of English text are the frequent pairs: "e " and " t" style pairs.
    assert any(a.vocab[256 + i] in (b" t", b"e ", b"th", b"he") for i in range(3))


def test_round_trip_is_lossless_on_anything():
    tok = train_bpe(shakespeare_text(tiny=True)[:100_000], 400, "gpt4")
    rng = random.Random(0)
    weird = "".join(chr(rng.choice([rng.randrange(0x20, 0x7F), rng.randrange(0xA0, 0x2FFF),
                                    rng.randrange(0x1F300, 0x1FAFF), rng.randrange(0, 0x20)])) for _ in range(20000))
    for text in [weird, VARIED, "\x00\x01\x7f", "\r\n\r\n"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("a\ud800b")) == "a\ufffdb"       # documented: lone surrogate -> U+FFFD
    random_bytes = random.Random(1).randbytes(10_000_000)
    ids = [tok.byte_ids[b] for b in random_bytes]
    assert tok.decode_bytes(ids) == random_bytes                  # bytes are exact ...
    assert isinstance(tok.decode(ids), str)                       # ... text decodes leniently (U+FFFD)


def test_save_load_and_specs(tmp_path):
    tok = build_tokenizer("bpe:300:gpt2", shakespeare_text(tiny=True)[:50_000])
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 300 and tok.eos_id == 299
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.encode("O Romeo, Romeo!") == tok.encode("O Romeo, Romeo!")
    with pytest.raises(LLMLabError, match="bpe:<vocab size>"):
        build_tokenizer("bpe:lots", "text")
    with pytest.raises(LLMLabError, match="no tokenizer at"):
        load_tokenizer(tmp_path / "missing")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00 truncated")
    with pytest.raises(LLMLabError, match="not a readable GGUF"):
        load_tokenizer(bad)
