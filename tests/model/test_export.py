"""Export: an llmlab run (tiny Llama + byte-level BPE) to a Hugging Face directory and to GGUF
(F32/F16/Q8_0), read back by transformers, by our GGUF reader, and checked against `gguf`'s quantizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmlab.cli import main
from llmlab.core.config import config_to_dict
from llmlab.core.errors import LLMLabError
from llmlab.model.checkpoint import save_checkpoint
from llmlab.model.config import ModelConfig
from llmlab.model.export import export_model, permute_qk, quantize_q8_0
from llmlab.model.gguf import dequantize, load_gguf_state, unpermute_qk
from llmlab.model.transformer import Transformer
from llmlab.tokenizer import BPETokenizer, CharTokenizer, train_bpe
from llmlab.tokenizer.formats import read_gguf_tokenizer

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings and "
        "arrows of outrageous fortune, or to take arms against a sea of troubles, and by opposing end them. "
        "1603 1623 ") * 8
SAMPLE = "To be or not to be: 42 arrows, the question!"


def _make_run(tmp_path, tokenizer, **overrides):
    config = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=4, n_kv_head=2,
                         n_embd=64, **overrides)
    torch.manual_seed(0)
    model = Transformer(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(0.5, 0.2)  # so a mix-up of norms or biases shows in the logits
            if ".wq." in name or ".wk." in name:
                p.mul_(20)  # peaked attention: a wrong RoPE pairing then changes the logits clearly
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "ckpt.pt", {"model": model.state_dict(), "model_config": config_to_dict(config),
                                      "tokenizer": tokenizer.to_dict()})
    return run, model


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(TEXT, 300, "gpt4")


def _logits(model, ids):
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return out["logits"] if isinstance(out, dict) else out.logits


def test_q8_0_quantizer_matches_gguf():
    w = np.random.default_rng(0).standard_normal((16, 96)).astype(np.float32) * 3
    w[0, :32] = 0.0  # an all-zero block: scale 0, no division by zero
    ours = quantize_q8_0(w)
    assert np.array_equal(ours, gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0))
    assert np.abs(dequantize(ours, "Q8_0", w.shape) - w).max() <= np.abs(w).max() / 127


def test_qk_permutation_roundtrip():
    w = np.arange(8 * 3 * 5, dtype=np.float32).reshape(8 * 3, 5)
    assert np.array_equal(unpermute_qk(permute_qk(w, 3), 3), w)


def test_export_hf_loads_in_transformers(tmp_path, bpe):
    run, model = _make_run(tmp_path, bpe)
    out = tmp_path / "hf"
    assert main(["export", str(run), "--to", "hf", str(out), "--json"]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = bpe.encode(SAMPLE)
    assert hf_tok(SAMPLE, add_special_tokens=False)["input_ids"] == ids
    assert (_logits(model, ids) - _logits(hf, ids)).abs().max().item() < 1e-4


@pytest.mark.parametrize("dtype,tol", [("f32", 1e-5), ("f16", 2e-2), ("q8_0", 0.15)])
def test_export_gguf_roundtrip(tmp_path, bpe, dtype, tol):
    run, model = _make_run(tmp_path, bpe)
    path = tmp_path / f"m-{dtype}.gguf"
    summary = export_model(run, "gguf", path, dtype=dtype)
    assert summary["files"] == [str(path)]
    config, state = load_gguf_state(path)
    assert config.n_kv_head == 2 and config.tie_embeddings
    ours = Transformer.from_state_dict(config, state).eval()
    ids = bpe.encode(SAMPLE)
    diff = (_logits(model, ids) - _logits(ours, ids)).abs().max().item()
    assert diff < tol, diff
    tokenizer = read_gguf_tokenizer(path)
    assert tokenizer.encode(SAMPLE) == ids and tokenizer.decode(ids) == SAMPLE
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.attn_q.weight"] == dtype.upper()


@pytest.mark.parametrize("qkv_bias", [False, True])  # llama and qwen2 architectures
def test_export_gguf_loads_in_transformers(tmp_path, bpe, qkv_bias):
    """transformers' GGUF loader undoes llama.cpp's q/k permutation (llama arch only) itself: equal
    logits show that our file follows llama.cpp's conventions, not just our own reader's."""
    run, model = _make_run(tmp_path, bpe, qkv_bias=qkv_bias)
    export_model(run, "gguf", tmp_path / "m.gguf", dtype="f32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    ids = bpe.encode(SAMPLE)
    assert (_logits(model, ids) - _logits(hf, ids)).abs().max().item() < 1e-4


def test_export_errors(tmp_path, bpe, capsys):
    with pytest.raises(LLMLabError, match="does not exist"):
        export_model(tmp_path / "nope", "hf", tmp_path / "out")
    run, _ = _make_run(tmp_path, CharTokenizer.train(TEXT))
    export_model(run, "gguf", tmp_path / "c.gguf", with_tokenizer=False)  # weights alone are fine
    assert load_gguf_state(tmp_path / "c.gguf")[0].n_layer == 2
    assert "tokenizer.ggml.model" not in gguf.GGUFReader(str(tmp_path / "c.gguf")).fields
    export_model(run, "hf", tmp_path / "c_hf")
    (tmp_path / "run").rename(tmp_path / "char_run")
    gpt2_run, _ = _make_run(tmp_path, bpe, position="learned", norm="layernorm", mlp="gelu", bias=True)
    with pytest.raises(LLMLabError, match="--to hf"):
        export_model(gpt2_run, "gguf", tmp_path / "g.gguf")
    assert main(["export", str(gpt2_run), "--to", "gguf", str(tmp_path / "g.gguf")]) == 2
    assert "--to hf" in capsys.readouterr().err
    assert not (tmp_path / "g.gguf").exists()
    json.loads((tmp_path / "c_hf" / "config.json").read_text())
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


@pytest.mark.slow
def test_smollm2_exported_to_hf_matches_transformers(tmp_path):
    """The real model: SmolLM2 (Q4_1 GGUF, dequantized by us) exported to an HF directory; transformers
    loads weights, tokenizer and chat template, and agrees on logits and greedy continuation."""
    from llmlab.infer import Engine, SamplingConfig

    out = tmp_path / "smol"
    assert main(["export", "smollm2", "--to", "hf", str(out)]) == 0
    engine = Engine.load(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "Name three plays by Shakespeare."}]
    text = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == text
    ids = engine.tokenizer.encode(text, allowed_special=True)
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids
    assert (_logits(engine.model, ids) - _logits(hf, ids)).abs().max().item() < 1e-3
    ours = engine.generate(ids, SamplingConfig(max_new_tokens=16, temperature=0.0, ignore_eos=True))
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, min_new_tokens=16)
    assert ours.token_ids == theirs[0, len(ids):].tolist()


def test_export_gguf_qwen2_roundtrip(tmp_path, bpe):
    """q/k biases make the qwen2 architecture, whose GGUF tensors keep the rotate-halves row order:
    our reader must not un-permute them (only llama-architecture files are permuted)."""
    run, model = _make_run(tmp_path, bpe, qkv_bias=True)
    export_model(run, "gguf", tmp_path / "q.gguf", dtype="f32")
    config, state = load_gguf_state(tmp_path / "q.gguf")
    assert config.qkv_bias
    ids = bpe.encode(SAMPLE)
    ours = Transformer.from_state_dict(config, state).eval()
    assert (_logits(model, ids) - _logits(ours, ids)).abs().max().item() < 1e-5


CHAR_TEXT = TEXT + "Naïve café, Größe: “quoted” — 😀 ü\n\tend.\n"


def test_char_run_exports_to_hf_with_its_tokenizer(tmp_path):
    """The model `make demo` trains (characters) leaves llmlab with its tokenizer: transformers loads
    the directory and gives the same ids, text and logits. Characters outside the vocabulary have no
    unknown token in HF: they are dropped there, and refused by our CharTokenizer."""
    char = CharTokenizer.train(CHAR_TEXT)
    run, model = _make_run(tmp_path, char)
    out = tmp_path / "hf"
    assert main(["export", str(run), "--to", "hf", str(out)]) == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = char.encode(CHAR_TEXT)
    assert hf_tok(CHAR_TEXT)["input_ids"] == ids               # no BOS: the model was trained without one
    assert hf_tok.decode(ids) == CHAR_TEXT
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    sample = char.encode(CHAR_TEXT[-60:])
    assert (_logits(model, sample) - _logits(hf, sample)).abs().max().item() < 1e-4
    assert hf_tok("To be§", add_special_tokens=False)["input_ids"] == char.encode("To be")
    with pytest.raises(LLMLabError, match="not in this character tokenizer"):
        char.encode("To be§")


def test_char_run_exports_to_gguf_with_its_tokenizer(tmp_path):
    """GGUF: a SentencePiece ("llama") vocabulary of the characters, spaces spelled "▁" as llama.cpp
    looks them up, no merges, no BOS, no space prefix; read back by `gguf` and by us, same ids."""
    char = CharTokenizer.train(CHAR_TEXT)
    run, model = _make_run(tmp_path, char)
    path = tmp_path / "c.gguf"
    assert main(["export", str(run), "--to", "gguf", str(path), "--gguf-type", "f32"]) == 0
    fields = gguf.GGUFReader(str(path)).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert [t.replace("\u2581", " ") for t in tokens] == char.chars and len(set(tokens)) == len(tokens)
    assert set(fields["tokenizer.ggml.token_type"].contents()) == {1}  # all normal
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False
    assert fields["tokenizer.ggml.add_space_prefix"].contents() is False
    ours = read_gguf_tokenizer(path)
    ids = char.encode(CHAR_TEXT)
    assert ours.encode(CHAR_TEXT, add_special=True) == ids and ours.decode(ids) == CHAR_TEXT
    assert ours.eos_id is None  # an ordinary character is never taken for llama.cpp's default EOS (id 2)
    config, state = load_gguf_state(path)
    back, sample = Transformer.from_state_dict(config, state).eval(), ids[-60:]
    assert (_logits(model, sample) - _logits(back, sample)).abs().max().item() < 1e-5


def test_failed_gguf_export_leaves_no_partial_file(tmp_path, bpe, monkeypatch):
    """A write that fails midway (disk full) leaves the previous file as it was and no temporary."""
    run, _ = _make_run(tmp_path, bpe)
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.gguf").write_bytes(b"the previous model")

    def disk_full(self, *args, **kwargs):
        self.fout[0].write(b"half of the tensors")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    for name in ("m.gguf", "new.gguf"):
        with pytest.raises(LLMLabError, match="No space left on device"):
            export_model(run, "gguf", out / name)
        assert sorted(p.name for p in out.iterdir()) == ["m.gguf"]
    assert (out / "m.gguf").read_bytes() == b"the previous model"


def test_gguf_pre_tokenizer_names_are_llama_cpps(bpe):
    """tokenizer.ggml.pre must be a name llama.cpp knows for exactly our split (src/llama-vocab.cpp):
    "gpt2" is not one (llama.cpp falls back to a different default split), llama-bpe also switches on
    ignore_merges, qwen2 is the single-digit pattern."""
    from llmlab.model.export import _tokenizer_pre

    def with_(pattern, **changes):
        return BPETokenizer(bpe.vocab, bpe.merges, pattern, bpe.special_tokens, **changes)

    assert _tokenizer_pre(with_("gpt2")) == "gpt-2"
    assert _tokenizer_pre(with_("gpt2", split_digits=True)) == "smollm"
    assert _tokenizer_pre(with_("llama3")) == "smaug-bpe" == _tokenizer_pre(with_("gpt4"))
    assert _tokenizer_pre(with_("llama3", ignore_merges=True)) == "llama-bpe"
    assert _tokenizer_pre(with_("qwen2")) == "qwen2"
    with pytest.raises(LLMLabError, match="no llama.cpp name"):
        _tokenizer_pre(with_(r"\w+|\s+"))
