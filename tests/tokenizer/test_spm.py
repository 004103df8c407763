"""The tokenizer families the README advertises, id for id against Hugging Face `tokenizers`:
SentencePiece-style BPE (Llama 2 / Mistral / TinyLlama: "▁", byte fallback, BOS) from tokenizer.json
and from GGUF ("llama" vocabularies with scores), Llama 3's ignore_merges, Qwen2's NFC normalizer and
pre-tokenizer. Every vocabulary is trained here by `tokenizers` itself; nothing is downloaded."""

from __future__ import annotations

import json
import random

import pytest

from llmlab.core.errors import LLMLabError
from llmlab.data.shakespeare import shakespeare_text
from llmlab.tokenizer import load_tokenizer
from llmlab.tokenizer.formats import hf_tokenizer_json, read_gguf_tokenizer, save_hf_tokenizer

tokenizers = pytest.importorskip("tokenizers")
gguf = pytest.importorskip("gguf")
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors  # noqa: E402

TEXTS = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "ROMEO:\nBut, soft! what light through yonder window breaks?\n\n",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # O(2^n)\n",
    "\t\ttabs   and    runs of     spaces \n\n\n   trailing   ",
    "Numbers: 3.14159, 1,000,000, 2026-11-24, 12345678901234567890",
    "Unicode: naïve café, Größe, Ελληνικά, русский, 日本語, 中文, 한국어, العربية",
    "Emoji: 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 ✨; combining: e\u0301 a\u0308; zero-width: a\u200bb",
    "", " ", "  two leading", "x", "\n", "▁literal▁marks▁",
]
SPECIALS = ["<unk>", "<s>", "</s>"]


@pytest.fixture(scope="module")
def llama_vocab():
    """A Llama-2-shaped vocabulary trained by `tokenizers`: <unk> <s> </s>, the 256 byte tokens, then
    pieces; a small alphabet, so most non-English characters need byte fallback."""
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIALS, limit_alphabet=70,
                                             show_progress=False)
    hf = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    hf.train_from_iterator(shakespeare_text(tiny=True)[:300_000].split("\n"), trainer)
    trained = json.loads(hf.to_str())["model"]
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for token, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    return vocab, [tuple(m) for m in trained["merges"]]


def _reference(vocab, merges, form: str) -> Tokenizer:
    """The same vocabulary in one of the shapes real tokenizer.json files have."""
    if form == "unk":  # no byte tokens: unknown characters become <unk>, runs of them fused into one
        vocab = {t: i for i, t in enumerate(t for t in vocab if not t.startswith("<0x"))}
    hf = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=form != "unk", fuse_unk=True))
    spm_decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    if form in ("legacy", "unk"):  # Llama 2 / TinyLlama as converted by transformers (legacy=True)
        hf.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        hf.decoder = spm_decoder
    elif form == "metaspace":  # Mistral / legacy=False conversions
        hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        hf.decoder = spm_decoder
    else:                     # tokenizers' own SentencePieceBPETokenizer shape, NFKC included
        hf.normalizer = normalizers.NFKC()
        hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
        hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace("▁", "always", True)])
    hf.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in SPECIALS])
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return hf


def _check(ours, hf, texts, specials_text="<s>[INST] Who art thou? [/INST] A friend.</s><s>hi"):
    for text in texts:
        expected = hf.encode(text, add_special_tokens=False).ids
        assert ours.encode(text) == expected, repr(text)
        assert ours.encode(text, add_special=True) == hf.encode(text).ids, repr(text)
        assert ours.decode(expected) == hf.decode(expected, skip_special_tokens=False), repr(text)
    assert ours.encode(specials_text, allowed_special=True) == hf.encode(specials_text, add_special_tokens=False).ids
    rng = random.Random(0)  # arbitrary ids, byte tokens among them: invalid UTF-8 runs decode as HF does
    for _ in range(50):
        ids = [rng.randrange(ours.vocab_size) for _ in range(rng.randrange(1, 12))]
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False), ids


@pytest.mark.parametrize("form", ["legacy", "metaspace", "metaspace-split", "unk"])
def test_sentencepiece_tokenizer_json_equals_tokenizers(tmp_path, llama_vocab, form):
    vocab, merges = llama_vocab
    hf = _reference(vocab, merges, form)
    hf.save(str(tmp_path / "tokenizer.json"))
    ours = load_tokenizer(tmp_path)
    assert ours.kind == "spm" and ours.add_bos and ours.bos_id == 1
    texts = TEXTS + [shakespeare_text(tiny=True)[-3000:]]
    _check(ours, hf, texts)
    # ... and what we write back is the same tokenizer for `tokenizers` and for our own reader
    _check(ours, Tokenizer.from_str(json.dumps(hf_tokenizer_json(ours))), texts[:8])
    save_hf_tokenizer(ours, tmp_path / "again")
    assert load_tokenizer(tmp_path / "again").encode(texts[0], add_special=True) == hf.encode(texts[0]).ids


def test_sentencepiece_hf_export_loads_in_transformers(tmp_path, llama_vocab):
    transformers = pytest.importorskip("transformers")
    vocab, merges = llama_vocab
    _reference(vocab, merges, "legacy").save(str(tmp_path / "tokenizer.json"))
    ours = load_tokenizer(tmp_path)
    save_hf_tokenizer(ours, tmp_path / "out")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    for text in TEXTS[:7]:
        assert theirs(text)["input_ids"] == ours.encode(text, add_special=True), text  # BOS included


def _write_gguf(path, tokens, types, **fields):
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(fields.pop("model", "llama"))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    for key, value in fields.items():
        getattr(writer, f"add_{key}")(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_llama_vocabulary_equals_tokenizers(tmp_path, llama_vocab):
    """A "llama" GGUF vocabulary has scores, not merges. Reference: `tokenizers` with the merges
    transformers derives from those scores (`generate_merges`) and llama.cpp's space handling
    (a prefix space, every space as "▁": the legacy form)."""
    transformers = pytest.importorskip("transformers")
    from transformers.tokenization_utils_base import generate_merges

    vocab, _ = llama_vocab
    tokens = list(vocab)
    types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259)
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    _write_gguf(tmp_path / "t.gguf", tokens, types, token_scores=scores, bos_token_id=1, eos_token_id=2,
                unk_token_id=0)
    ours = read_gguf_tokenizer(tmp_path / "t.gguf")
    assert ours.add_bos and ours.unk_id == 0 and ours.eos_id == 2  # llama.cpp: a "llama" vocabulary adds BOS
    hf = _reference(vocab, generate_merges(vocab, dict(zip(tokens, scores))), "legacy")
    _check(ours, hf, TEXTS + [shakespeare_text(tiny=True)[-3000:]])
    # transformers' own GGUF tokenizer agrees wherever the text does not start with a space (it uses
    # Metaspace, which adds no "▁" where one leads; llama.cpp always prepends one)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="t.gguf")
    for text in [t for t in TEXTS if t and not t.startswith((" ", "▁"))]:
        assert theirs(text)["input_ids"] == ours.encode(text, add_special=True), text


def test_sentencepiece_tokenizer_survives_gguf_export(tmp_path, llama_vocab):
    """Written as a "llama" GGUF vocabulary (scores ranking the merges, token types, BOS and prefix
    flags, as llmlab export does) and read back, a tokenizer.json tokenizer gives the same ids."""
    from llmlab.model.export import _add_tokenizer

    vocab, merges = llama_vocab
    _reference(vocab, merges, "legacy").save(str(tmp_path / "tokenizer.json"))
    ours = load_tokenizer(tmp_path)
    writer = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    _add_tokenizer(writer, ours)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    back = read_gguf_tokenizer(tmp_path / "t.gguf")
    assert (back.add_bos, back.bos_id, back.eos_id, back.unk_id) == (True, 1, 2, 0)
    for line in shakespeare_text(tiny=True)[:100_000].split("\n") + TEXTS:
        assert back.encode(line, add_special=True) == ours.encode(line, add_special=True), line


@pytest.fixture(scope="module")
def byte_level():
    """A byte-level BPE trained by `tokenizers` with Llama 3's split, and its vocabulary plus one token
    that no merge produces (" Romeoandjuliet"), which only ignore_merges can emit."""
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3), "isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.train_from_iterator([shakespeare_text(tiny=True)[:200_000]], tokenizers.trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|begin_of_text|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(hf.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab["ĠRomeoandjuliet"] = len(vocab)
    return vocab, [tuple(m) for m in model["merges"]]


LLAMA3 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
BYTE_TEXTS = TEXTS + ["O Romeoandjuliet, wherefore art thou Romeoandjuliet?", "e\u0301te\u0301 vs \u00e9t\u00e9 1234567"]


def _byte_level_reference(vocab, merges, regex: str, ignore_merges: bool, nfc: bool) -> Tokenizer:
    hf = Tokenizer(models.BPE(vocab, merges, ignore_merges=ignore_merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), "isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    if nfc:
        hf.normalizer = normalizers.NFC()  # as Qwen2's tokenizer.json has it
    hf.add_special_tokens([AddedToken("<|begin_of_text|>", normalized=False, special=True)])
    hf.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", vocab["<|begin_of_text|>"])])])
    return hf


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_byte_level_ignore_merges_normalizer_and_bos_equal_tokenizers(tmp_path, byte_level, family):
    """Llama 3: ignore_merges + BOS from the post-processor. Qwen2: NFC + single-digit split."""
    vocab, merges = byte_level
    hf = _byte_level_reference(vocab, merges, LLAMA3 if family == "llama3" else QWEN2,
                               ignore_merges=family == "llama3", nfc=family == "qwen2")
    hf.save(str(tmp_path / "tokenizer.json"))
    ours = load_tokenizer(tmp_path)
    for text in BYTE_TEXTS:
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids, text
    assert ours.add_bos and ours.bos_id == vocab["<|begin_of_text|>"]
    for text in BYTE_TEXTS:
        assert ours.encode(text, add_special=True) == hf.encode(text).ids, text
    if family == "llama3":  # the test can see ignore_merges: without it the word splits
        assert vocab["ĠRomeoandjuliet"] in ours.encode(BYTE_TEXTS[-2])
        plain = _byte_level_reference(vocab, merges, LLAMA3, ignore_merges=False, nfc=False)
        assert vocab["ĠRomeoandjuliet"] not in plain.encode(BYTE_TEXTS[-2]).ids
    fast = Tokenizer.from_str(json.dumps(hf_tokenizer_json(ours)))  # written back: the same tokenizer
    assert [fast.encode(t).ids for t in BYTE_TEXTS] == [hf.encode(t).ids for t in BYTE_TEXTS]


@pytest.mark.parametrize("pre,regex,ignore_merges", [("llama-bpe", LLAMA3, True), ("smaug-bpe", LLAMA3, False),
                                                     ("qwen2", QWEN2, False)])
def test_gguf_byte_level_pre_tokenizers(tmp_path, byte_level, pre, regex, ignore_merges):
    """llama.cpp names: llama-bpe is Llama 3's regex with ignore_merges and BOS; smaug-bpe the same
    regex without them; qwen2 splits digits one by one."""
    vocab, merges = byte_level
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    types = [3 if t == "<|begin_of_text|>" else 1 for t in tokens]
    _write_gguf(tmp_path / "b.gguf", tokens, types, model="gpt2", tokenizer_pre=pre,
                token_merges=[f"{a} {b}" for a, b in merges], bos_token_id=vocab["<|begin_of_text|>"])
    ours = read_gguf_tokenizer(tmp_path / "b.gguf")
    hf = _byte_level_reference(vocab, merges, regex, ignore_merges, nfc=False)
    for text in BYTE_TEXTS:
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids, (pre, text)
    assert ours.add_bos == (pre == "llama-bpe")  # llama.cpp's default when the file does not say


def test_bad_tokenizer_config_names_the_file(tmp_path, byte_level):
    vocab, merges = byte_level
    _byte_level_reference(vocab, merges, LLAMA3, False, False).save(str(tmp_path / "tokenizer.json"))
    config = tmp_path / "tokenizer_config.json"
    for content, needle in [('{"chat_template": ', "not valid JSON"), ("[1, 2]", "JSON object"),
                            ('{"bos_token": 5}', "bos_token"), ('{"add_bos_token": "yes"}', "add_bos_token"),
                            ('{"chat_template": 42}', "chat_template"), (b"\xff\xfe{}", "not valid JSON")]:
        config.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(LLMLabError, match=needle) as err:
            load_tokenizer(tmp_path)
        assert str(config) in str(err.value) and "delete it" in str(err.value)
    config.write_text('{"add_bos_token": false, "bos_token": {"content": "<|begin_of_text|>"}}')
    assert not load_tokenizer(tmp_path).add_bos  # an explicit setting overrides the post-processor


def test_cli_text_file_missing_is_a_clear_error(tmp_path, capsys):
    from llmlab.cli import main

    missing = tmp_path / "missing.txt"
    assert main(["tokenizer", "encode", "smollm2", "--text-file", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert main(["tokenizer", "inspect", "smollm2", "--text-file", str(tmp_path / "latin1.txt")]) == 2
    assert "UTF-8" in capsys.readouterr().err
