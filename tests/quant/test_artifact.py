"""Quantized model directories (llmlab.quant.artifact): save -> load gives the same logits bit for bit,
a tied table is stored once, the directory is recognised as its own kind of source, and files that do
not belong together (a newer format, shapes that disagree with the config) are refused clearly."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from torch import nn

from llmlab.core.errors import LLMLabError
from llmlab.model.config import ModelConfig
from llmlab.model.source import load_model, resolve_source
from llmlab.model.transformer import Transformer
from llmlab.quant.artifact import FORMAT_VERSION, WEIGHTS, load_quantized, save_quantized
from llmlab.quant.int4 import Int4Linear
from llmlab.quant.int8 import Int8Linear
from llmlab.quant.linear import QuantizedEmbedding
from llmlab.quant.nf4 import NF4Linear
from llmlab.quant.quantize import QuantizeConfig, quantize_model
from llmlab.tokenizer import CharTokenizer

TEXT = "ROMEO: what light through yonder window breaks?\n"
TOK = CharTokenizer.train(TEXT)
LAYER = {"int8": Int8Linear, "int4": Int4Linear, "nf4": NF4Linear}
IDS = torch.tensor([[1, 5, 9, 2, 7, 3, 3, 0, 11, 4, 6, 8]])


def tiny(tie: bool = True) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=TOK.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=64, tie_embeddings=tie)
    model = Transformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
            else:
                p.normal_(1.0, 0.2)    # norms: a lost or swapped norm weight shows in the logits
    return model


def quantized(method: str, tie: bool = True, **config) -> Transformer:
    model = tiny(tie)
    quantize_model(model, TOK, QuantizeConfig(method=method, group_size=32, **config), progress=False)
    return model


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)["logits"]


def stored_keys(directory) -> list[str]:
    with safe_open(str(directory / WEIGHTS), "pt") as f:
        return list(f.keys())


def edit_config(directory, change) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("method", ["int8", "int4", "nf4"])
def test_save_load_gives_bitwise_equal_logits(tmp_path, method, tie):
    model = quantized(method, tie)
    save_quantized(model, TOK, tmp_path / "q", QuantizeConfig(method=method).to_dict(), report={"bytes": 1})
    loaded, tokenizer = load_quantized(tmp_path / "q")
    assert tokenizer.encode(TEXT) == TOK.encode(TEXT)
    for T in (12, 5, 1):     # the GEMM path, the fused kernel's rows, one row
        assert torch.equal(logits(loaded, IDS[:, :T]), logits(model, IDS[:, :T])), T
    kind = LAYER[method]
    def layers(m):
        return sorted(n for n, layer in m.named_modules(remove_duplicate=False) if isinstance(layer, kind))

    assert layers(loaded) == layers(model) and "lm_head" in layers(loaded) and len(layers(loaded)) >= 8
    assert not any(type(m) is nn.Linear for m in loaded.modules())
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    keys = stored_keys(tmp_path / "q")
    if tie:
        # one quantized copy of the table: the embedding reads rows from the head
        assert isinstance(loaded.tok_emb, QuantizedEmbedding) and loaded.tok_emb.table is loaded.lm_head
        assert not any(k.startswith("tok_emb.") for k in keys)
        assert torch.equal(loaded.tok_emb(IDS), loaded.lm_head.dequantize()[IDS])
    else:
        assert isinstance(loaded.tok_emb, nn.Embedding) and "tok_emb.weight" in keys
        assert torch.equal(loaded.tok_emb.weight, model.tok_emb.weight)
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["format"] == "llmlab-quantized" and config["format_version"] == FORMAT_VERSION
    assert config["embedding"] == ("lm_head" if tie else "float") and config["report"] == {"bytes": 1}
    assert config["layers"]["lm_head"]["type"] == method and config["quantize"]["method"] == method


def test_tied_table_is_not_stored_twice(tmp_path):
    tied, untied = quantized("int4", tie=True), quantized("int4", tie=False)
    save_quantized(tied, None, tmp_path / "tied", {})
    save_quantized(untied, None, tmp_path / "untied", {})
    table = TOK.vocab_size * 64 * 4                            # the float table, in bytes
    size = {name: os.path.getsize(tmp_path / name / WEIGHTS) for name in ("tied", "untied")}
    assert size["untied"] - size["tied"] == pytest.approx(table, abs=200)


def test_skip_lm_head_keeps_the_head_float_and_tied(tmp_path):
    model = quantized("int4", skip=["lm_head"])
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.tok_emb.weight
    assert model.config.tie_embeddings and isinstance(model.blocks[0].mlp.w_up, Int4Linear)
    save_quantized(model, TOK, tmp_path / "q", {})
    keys = stored_keys(tmp_path / "q")
    assert "tok_emb.weight" in keys and "lm_head.weight" not in keys
    loaded, _ = load_quantized(tmp_path / "q")
    assert type(loaded.lm_head) is nn.Linear and loaded.lm_head.weight is loaded.tok_emb.weight
    assert "lm_head" not in json.loads((tmp_path / "q" / "config.json").read_text())["layers"]
    assert torch.equal(logits(loaded), logits(model))


def test_storage_report_matches_the_file(tmp_path):
    for method in ("int4", "int8", "nf4"):
        model = tiny()
        report = quantize_model(model, None, QuantizeConfig(method=method, group_size=32), progress=False)
        save_quantized(model, None, tmp_path / method, {}, report=report)
        size = os.path.getsize(tmp_path / method / WEIGHTS)
        # the file is the tensors plus a JSON header of a few hundred bytes per tensor
        assert report["bytes"] < size < report["bytes"] + 4096, (method, report["bytes"], size)


def test_a_newer_or_missing_format_version_is_refused(tmp_path):
    save_quantized(quantized("int4"), TOK, tmp_path / "q", {})
    edit_config(tmp_path / "q", lambda c: c.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(LLMLabError, match=rf"format version {FORMAT_VERSION + 1}.*upgrade llmlab"):
        load_quantized(tmp_path / "q")
    edit_config(tmp_path / "q", lambda c: c.pop("format_version"))
    with pytest.raises(LLMLabError, match="format version None"):
        load_quantized(tmp_path / "q")
    (tmp_path / "q" / "config.json").write_text("{half a file")
    with pytest.raises(LLMLabError, match="config.json cannot be read"):
        load_quantized(tmp_path / "q")


def test_tensors_that_do_not_fit_the_config_are_refused(tmp_path):
    save_quantized(quantized("int4"), TOK, tmp_path / "q", {})
    # a record that says group 64 where the file holds group-32 scales
    edit_config(tmp_path / "q", lambda c: c["layers"]["blocks.0.mlp.w_up"].update(group_size=64))
    with pytest.raises(LLMLabError, match=r"tensor blocks\.0\.mlp\.w_up\.(scales|mins) has shape \(192, 2\) but its "
                                          r"config expects \(192, 1\)"):
        load_quantized(tmp_path / "q")
    edit_config(tmp_path / "q", lambda c: c["layers"]["blocks.0.mlp.w_up"].update(group_size=32, type="int3"))
    with pytest.raises(LLMLabError, match="unknown quantized layer type 'int3'"):
        load_quantized(tmp_path / "q")
    edit_config(tmp_path / "q", lambda c: c["layers"].pop("blocks.0.mlp.w_up"))   # a float layer the file lacks
    with pytest.raises(LLMLabError, match="does not fit its config"):
        load_quantized(tmp_path / "q")
    (tmp_path / "q" / WEIGHTS).unlink()
    with pytest.raises(LLMLabError, match="has no model.safetensors"):
        load_quantized(tmp_path / "q")


def test_the_directory_is_a_quantized_source_and_an_hf_directory_is_not(tmp_path):
    model = quantized("int8")
    save_quantized(model, TOK, tmp_path / "q", {})
    source = resolve_source(tmp_path / "q")
    assert source.kind == "quantized" and source.weight_files() == [tmp_path / "q" / WEIGHTS]
    loaded, tokenizer, _ = load_model(str(tmp_path / "q"))
    assert isinstance(loaded.lm_head, Int8Linear) and tokenizer is not None
    assert torch.equal(logits(loaded), logits(model))
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama", "format": "pt"}))
    (hf / "model.safetensors").write_bytes(b"")
    assert resolve_source(hf).kind == "hf"
    (hf / "config.json").write_text("[1, 2]")          # valid JSON, but not an object
    assert resolve_source(hf).kind == "hf"


@pytest.mark.parametrize("method", ["int4", "nf4"])
def test_a_tied_quantized_model_runs_in_bfloat16(tmp_path, method):
    from llmlab.infer.generate import decode_steps
    from llmlab.infer.sampling import SamplingConfig

    save_quantized(quantized(method), TOK, tmp_path / "q", {})
    model = load_quantized(tmp_path / "q")[0].to(torch.bfloat16)
    assert model.tok_emb(IDS).dtype == torch.bfloat16 and model.tok_emb.weight.dtype == torch.bfloat16
    assert logits(model).dtype == torch.bfloat16
    if method == "int4":
        assert model.lm_head.scales.dtype == torch.float16      # the format's constants are not rounded
    steps = list(decode_steps(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=3, temperature=0.0)))  # bf16 cache
    assert len(steps) == 3


@pytest.mark.slow   # SmolLM2-135M: load ~10 s, quantize ~2 s, save and load ~2 s
def test_smollm2_int4_g64_directory(tmp_path):
    model, tokenizer, _ = load_model("smollm2")
    model = model.float().eval()
    ids = torch.tensor([tokenizer.encode("The capital of France is")])
    reference = logits(model, ids)[0, -1]
    report = quantize_model(model, tokenizer, QuantizeConfig(method="int4", group_size=64), progress=False)
    layers = [m for m in model.modules() if isinstance(m, Int4Linear)]
    assert len(layers) == 7 * model.config.n_layer + 1 and all(m.bits_per_weight() == 4.5 for m in layers)
    assert model.tok_emb.table is model.lm_head and report["float_linear_weights"] == 0
    assert 4.5 < report["bits_per_weight"] < 4.52          # the norms are all that stays float
    quantized_logits = logits(model, ids)
    assert int(quantized_logits[0, -1].argmax()) == int(reference.argmax())
    save_quantized(model, tokenizer, tmp_path / "q", {}, report=report)
    size = os.path.getsize(tmp_path / "q" / WEIGHTS)
    assert report["bytes"] < size < report["bytes"] * 1.01
    loaded, loaded_tokenizer = load_quantized(tmp_path / "q")
    assert loaded_tokenizer.encode("The capital") == tokenizer.encode("The capital")
    assert torch.equal(logits(loaded, ids), quantized_logits)
