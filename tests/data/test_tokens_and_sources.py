"""Token datasets on disk, named sources, and the built-in Shakespeare corpus."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from llmlab.core.errors import LLMLabError
from llmlab.data import sources
from llmlab.data.shakespeare import play_to_text, shakespeare_text
from llmlab.data.tokens import ShardWriter, TokenDataset, write_meta, write_token_dataset
from llmlab.tokenizer import CharTokenizer, load_tokenizer


def test_play_markdown_becomes_speaker_blocks():
    md = ("# Hamlet\n\n## ACT I\n\n_Enter BERNARDO_\n\n**BERNARDO**  \nWho's there?\n\n"
          "**FRANCISCO**  \nNay, answer me: stand,  \n_\\[Aside]_ and unfold yourself.\n\n_Exit_\n")
    assert play_to_text(md) == "BERNARDO:\nWho's there?\n\nFRANCISCO:\nNay, answer me: stand,\nand unfold yourself.\n"
    assert "[Aside]" in play_to_text(md, keep_directions=True)


def test_builtin_corpus_sizes_and_form():
    full, tiny = shakespeare_text(), shakespeare_text(tiny=True)
    assert 4_500_000 < len(full) < 5_200_000 and 1_000_000 < len(tiny) < 1_250_000
    assert full.startswith("THESEUS:\nNow, fair Hippolyta") and "ROMEO:\n" in tiny
    assert "**" not in full and "_" not in full and "#" not in full


def test_token_dataset_round_trip_and_batches(tmp_path):
    tok = CharTokenizer.train("abcdefgh")
    ids = np.arange(1000) % 8
    write_token_dataset(tmp_path, tok, {"train": ids[:900], "val": ids[900:]}, {"name": "test"})
    ds = TokenDataset.open(tmp_path)
    assert ds.num_tokens("train") == 900 and ds.meta["dtype"] == "uint16"
    assert ds.tokenizer.decode([0, 1]) == "ab"
    batch = ds.get_batch("train", 4, 16, torch.Generator().manual_seed(0))
    x, y = batch["input_ids"], batch["labels"]
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal((x + 1) % 8, y)  # the sequence counts up, so targets are inputs shifted by one
    x2 = ds.get_batch("train", 4, 16, torch.Generator().manual_seed(0))["input_ids"]
    assert torch.equal(x, x2)


def test_multi_shard_datasets_and_damage_is_detected(tmp_path):
    tok = CharTokenizer.train("ab")
    writer = ShardWriter(tmp_path, "train", np.dtype(np.uint16), shard_tokens=100)
    for _ in range(5):
        writer.add(np.zeros(60, dtype=np.int64))
    entries = writer.close()
    write_meta(tmp_path, tok, {"train": entries, "val": entries[:1]}, {})
    assert len(entries) == 3 and TokenDataset.open(tmp_path).num_tokens("train") == 300
    (tmp_path / entries[0]["file"]).write_bytes(b"\x00\x01")
    with pytest.raises(LLMLabError, match="missing or truncated"):
        TokenDataset.open(tmp_path)
    with pytest.raises(LLMLabError, match="not a token dataset"):
        TokenDataset.open(tmp_path / "elsewhere")


def test_prepare_caches_and_reuses(tmp_path, monkeypatch, shared_data):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    ds = sources.prepare_dataset(None, str(shared_data / "tinyshakespeare.txt"), "char")
    assert ds.tokenizer.vocab_size == 65                       # the classic 65 characters
    assert ds.num_tokens("train") + ds.num_tokens("val") == 1_115_394
    assert ds.meta["source"]["sha256"] == sources.REMOTE["tinyshakespeare"].sha256
    again = sources.prepare_dataset(None, str(shared_data / "tinyshakespeare.txt"), "char")
    assert again.directory == ds.directory
    saved = ds.tokenizer.save(tmp_path / "tok")
    assert load_tokenizer(saved.parent).encode("To be") == ds.tokenizer.encode("To be")


def test_remote_source_is_checked_and_offline_error_says_what_to_do(tmp_path, monkeypatch, shared_data):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    good = (shared_data / "wikitext-2" / "valid.txt").read_bytes()
    cached = tmp_path / "sources" / "wikitext-2-valid.txt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(good)
    assert hashlib.sha256(sources.fetch_remote("wikitext-2")).hexdigest() == sources.REMOTE["wikitext-2"].sha256

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    cached.write_bytes(good[:-10])  # a damaged cache is not trusted ...
    monkeypatch.setattr(sources.urllib.request, "urlopen", no_network)
    monkeypatch.setattr(sources, "shared_data_dirs", lambda: [])   # no verified local copy either
    with pytest.raises(LLMLabError, match="--data-file"):  # ... and offline the error says how to proceed
        sources.fetch_remote("wikitext-2")


def test_prepared_cache_follows_the_tokenizer_content_not_its_path(tmp_path, monkeypatch):
    """Retraining a tokenizer into the same directory must not reuse data tokenized by the old one."""
    from llmlab.tokenizer import train_bpe

    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare_text(tiny=True)[:20_000], encoding="utf-8")
    tok_dir = tmp_path / "tok"
    train_bpe(corpus.read_text(), 300, "gpt2").save(tok_dir)
    first = sources.prepare_dataset(None, str(corpus), str(tok_dir))
    assert sources.prepare_dataset(None, str(corpus), str(tok_dir)).directory == first.directory  # still cached
    retrained = train_bpe(corpus.read_text(), 400, "gpt4")
    retrained.save(tok_dir)
    second = sources.prepare_dataset(None, str(corpus), str(tok_dir))
    assert second.directory != first.directory
    assert second.tokenizer.vocab_size == 400
    assert second.tokenizer.encode("To be, or not to be") == retrained.encode("To be, or not to be")
