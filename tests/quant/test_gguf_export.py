"""GGUF export of Q8_0 / Q4_0 / Q4_1: llama.cpp's reference rounding for float weights (checked
against the `gguf` package's quantizer byte for byte), our group-32 int8/int4 layers written as
their own blocks (read back by `gguf`'s dequantizer and by our native loader unchanged), and, when
llama-cpp-python is installed, llama.cpp's logits for our files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmlab.cli import main
from llmlab.core.errors import LLMLabError
from llmlab.model.checkpoint import save_checkpoint
from llmlab.core.config import config_to_dict
from llmlab.model.config import ModelConfig
from llmlab.model.export import export_model, permute_qk, save_gguf
from llmlab.model.gguf import unpermute_qk
from llmlab.model.source import load_model
from llmlab.model.transformer import Transformer
from llmlab.quant import kernels
from llmlab.quant.gguf_export import (dequantized_state, pack_q4_0, pack_q4_1, pack_q8_0, quantize_q4_0,
                                      quantize_q4_1, save_quantized_gguf)
from llmlab.quant.gguf_native import layer_from_blocks, load_native_gguf
from llmlab.quant.int4 import Int4Linear
from llmlab.quant.int8 import Int8Linear
from llmlab.quant.linear import QuantizedEmbedding, QuantizedLinear
from llmlab.tokenizer import train_bpe

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. 1603 " * 8
PROMPT = "To be, or not to be: that is the question, whether 'tis nobler"   # > kernels.MAX_ROWS tokens
LINEARS = ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.w_gate", "mlp.w_up", "mlp.w_down")


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(TEXT, 300, "gpt4")


def tiny_model(tokenizer, seed: int = 0, **overrides) -> Transformer:
    fields = dict(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                  mlp_hidden=96)
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**{**fields, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.5, 0.2)
            if ".wq." in name or ".wk." in name:
                p.mul_(20)     # peaked attention: a wrong q/k row order changes the logits clearly
    return model


def quantize_model(model: Transformer, int4: str = "q4_1") -> Transformer:
    """Every block linear as Int4Linear (group 32; int4="q4_0": minimums -8 * scale), the tied head
    as Int8Linear (group 32), the embedding reading the head's rows."""
    for block in model.blocks:
        for path in LINEARS:
            parent, leaf = path.split(".")
            linear = getattr(getattr(block, parent), leaf)
            if int4 == "q4_0":
                layer = layer_from_blocks(quantize_q4_0(linear.weight.detach().numpy()), "Q4_0")
            else:
                layer = Int4Linear.from_linear(linear, group_size=32)
            setattr(getattr(block, parent), leaf, layer)
    model.lm_head = Int8Linear.from_linear(model.lm_head, group_size=32)
    model.tok_emb = QuantizedEmbedding(model.lm_head)
    return model


def logits(model, ids) -> torch.Tensor:
    assert len(ids) > kernels.MAX_ROWS    # the float-GEMM path: comparable to float tolerance
    with torch.no_grad():
        return model(torch.tensor([ids]))["logits"][0]


def tensors(path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def rows(t) -> np.ndarray:
    return np.asarray(t.data).reshape(int(t.shape[-1]), -1)


def gguf_values(t, config, name: str) -> torch.Tensor:
    """`gguf`'s own dequantization of a tensor, q/k rows back in our order."""
    values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(int(t.shape[-1]), -1)
    if ".attn_q." in name or ".attn_k." in name:
        values = unpermute_qk(values, config.n_head if ".attn_q." in name else config.n_kv_head)
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


# ----------------------------------------------------------------------------- block formats

def awkward_weights() -> np.ndarray:
    w = np.random.default_rng(0).standard_normal((8, 128)).astype(np.float32) * 2
    w[0, :32] = 0.0                      # an all-zero block
    w[1, :32] = 0.75                     # a constant block
    w[2, :32] = np.linspace(-3, 3, 32)   # the peak with both signs: the first one found wins
    w[3, 5], w[3, 9] = -4.0, 4.0
    return w


@pytest.mark.parametrize("ours,qtype", [(quantize_q4_0, Q.Q4_0), (quantize_q4_1, Q.Q4_1)])
def test_float_quantizers_match_llama_cpp_rounding(ours, qtype):
    w = awkward_weights()
    packed = ours(w)
    assert np.array_equal(packed, gguf.quants.quantize(w, qtype))
    back = gguf.quants.dequantize(packed, qtype)
    blocks = w.reshape(-1, 32)
    step = (np.abs(blocks).max(1) / 8) if qtype == Q.Q4_0 else (blocks.max(1) - blocks.min(1)) / 15
    assert (np.abs(back - w).reshape(-1, 32).max(1) <= step * 1.01 + 1e-6).all()


def test_packers_write_our_layers_exactly():
    """gguf's dequantizer reads each packed layer back to the layer's own values, bit for bit, and
    our native loader rebuilds the same codes and constants from the bytes."""
    torch.manual_seed(0)
    codes4 = torch.randint(0, 16, (6, 96), dtype=torch.uint8)
    scale = (torch.rand(6, 3) * 0.1 + 1e-3).half()
    low = (torch.randn(6, 3) * 0.3).half()
    int4 = Int4Linear.from_codes(codes4, scale, low)
    q4_1 = pack_q4_1(int4.qweight, int4.scales, int4.mins)
    assert torch.equal(torch.from_numpy(gguf.quants.dequantize(q4_1, Q.Q4_1)), int4.dequantize())
    again = layer_from_blocks(q4_1, "Q4_1")
    assert all(torch.equal(getattr(again, b), getattr(int4, b)) for b in ("qweight", "scales", "mins"))

    grid = Int4Linear.from_codes(codes4, scale, (-8 * scale.float()).half())
    q4_0 = pack_q4_0(grid.qweight, grid.scales)
    assert torch.equal(torch.from_numpy(gguf.quants.dequantize(q4_0, Q.Q4_0)), grid.dequantize())
    assert torch.equal(layer_from_blocks(q4_0, "Q4_0").qweight, grid.qweight)

    int8 = Int8Linear.from_codes(torch.randint(-128, 128, (6, 96), dtype=torch.int8), scale)
    q8_0 = pack_q8_0(int8.qweight, int8.scales)
    assert torch.equal(torch.from_numpy(gguf.quants.dequantize(q8_0, Q.Q8_0)), int8.dequantize())
    with pytest.raises(LLMLabError, match="group size of 32"):
        pack_q8_0(int8.qweight, int8.scales[:, :1])


# ----------------------------------------------------------------------------- whole models

@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1"])
def test_float_model_export(tmp_path, bpe, qtype):
    """Every matrix is `gguf`'s own quantization of the (q/k-permuted) weight; llmlab loads the file
    back to the same logits as the model with those values."""
    model = tiny_model(bpe)
    path = save_quantized_gguf(model, bpe, tmp_path / f"m.{qtype}.gguf", qtype=qtype, name="tiny")
    found = tensors(path)
    assert "output.weight" not in found and found["output_norm.weight"].tensor_type == Q.F32
    expected = {}
    for name, param in model.state_dict().items():
        if name == "lm_head.weight" or param.dim() == 1:
            continue
        gguf_name = name.replace("tok_emb", "token_embd").replace("blocks.", "blk.")
        gguf_name = gguf_name.replace(".attn.wq", ".attn_q").replace(".attn.wk", ".attn_k")
        gguf_name = gguf_name.replace(".attn.wv", ".attn_v").replace(".attn.wo", ".attn_output")
        gguf_name = gguf_name.replace(".mlp.w_", ".ffn_")
        w = param.numpy()
        if ".wq." in name or ".wk." in name:
            w = permute_qk(w, model.config.n_head if ".wq." in name else model.config.n_kv_head)
        t = found[gguf_name]
        assert t.tensor_type.name == qtype.upper(), gguf_name
        assert np.array_equal(rows(t), gguf.quants.quantize(np.ascontiguousarray(w), t.tensor_type)), gguf_name
        expected[name] = gguf_values(t, model.config, gguf_name)
    assert len(expected) == 1 + 2 * 7

    with torch.no_grad():
        for name, values in expected.items():
            model.get_parameter(name).copy_(values)
    loaded, tokenizer, _ = load_model(path)
    ids = bpe.encode(PROMPT)
    assert tokenizer.encode(PROMPT) == ids
    assert (logits(loaded, ids) - logits(model, ids)).abs().max().item() < 1e-4


@pytest.mark.parametrize("int4", ["q4_1", "q4_0"])
def test_quantized_model_round_trips_bit_exactly(tmp_path, bpe, int4):
    """Int4 group-32 layers -> Q4_1 (or Q4_0 when their minimums are -8 x scale) and the Int8 head
    -> Q8_0 (keep_exact) -> native load: the same codes and constants, so the same logits."""
    model = quantize_model(tiny_model(bpe), int4)
    notes: list[str] = []
    path = save_quantized_gguf(model, bpe, tmp_path / "m.gguf", qtype=int4, keep_exact=True, notes=notes)
    assert notes == []
    found = tensors(path)
    assert found["token_embd.weight"].tensor_type == Q.Q8_0 and found["blk.0.attn_q.weight"].tensor_type.name == \
        int4.upper()
    back, _ = load_native_gguf(path)
    ours = dict(model.named_modules(remove_duplicate=False))
    for name, layer in back.named_modules(remove_duplicate=False):
        if isinstance(layer, QuantizedLinear):
            for buffer_name, buffer in layer.named_buffers():
                assert torch.equal(buffer, ours[name].get_buffer(buffer_name)), (name, buffer_name)
    for gguf_name, t in found.items():       # gguf's dequantizer agrees with the layers' values
        if t.tensor_type != Q.F32:
            our_name = {"token_embd.weight": "lm_head"}.get(gguf_name)
            if our_name is None:
                block, _, rest = gguf_name.removeprefix("blk.").partition(".")
                our_name = f"blocks.{block}." + {"attn_q": "attn.wq", "attn_k": "attn.wk", "attn_v": "attn.wv",
                                                 "attn_output": "attn.wo", "ffn_gate": "mlp.w_gate",
                                                 "ffn_up": "mlp.w_up", "ffn_down": "mlp.w_down"}[rest[:-7]]
            assert torch.equal(gguf_values(t, model.config, gguf_name), ours[our_name].dequantize()), gguf_name
    ids = bpe.encode(PROMPT)
    assert torch.equal(logits(back, ids), logits(model, ids))


def test_layers_without_an_exact_form_are_requantized_and_noted(tmp_path, bpe):
    model = quantize_model(tiny_model(bpe))                          # Int4 with free minimums, Int8 head
    model.blocks[0].mlp.w_up = Int4Linear.from_linear(torch.nn.Linear(64, 96, bias=False), group_size=64)
    notes: list[str] = []
    path = save_quantized_gguf(model, bpe, tmp_path / "m.gguf", qtype="q4_0", notes=notes)
    assert len(notes) == 3 and all("requantized" in n for n in notes)
    assert any("Int8Linear group 32" in n and "tok_emb" in n for n in notes)   # the tied table
    assert any("Int4Linear group 64" in n and "blocks.0.mlp.w_up" in n for n in notes)
    found = tensors(path)
    assert {t.tensor_type for t in found.values() if len(t.shape) == 2} == {Q.Q4_0}
    w_down = model.blocks[1].mlp.w_down.dequantize().numpy()
    assert np.array_equal(rows(found["blk.1.ffn_down.weight"]), quantize_q4_0(w_down))


def test_rows_that_are_not_whole_blocks_are_f16(tmp_path, bpe):
    model = tiny_model(bpe, mlp_hidden=80)                             # ffn_down rows of 80 weights
    path = save_quantized_gguf(model, bpe, tmp_path / "m.gguf", qtype="q4_1")
    found = tensors(path)
    assert found["blk.0.ffn_down.weight"].tensor_type == Q.F16 and found["blk.0.ffn_up.weight"].tensor_type == Q.Q4_1
    back, _ = load_native_gguf(path)
    assert isinstance(back.blocks[0].mlp.w_up, Int4Linear) and type(back.blocks[0].mlp.w_down) is torch.nn.Linear


def test_float_export_of_a_quantized_model_dequantizes(tmp_path, bpe):
    model = quantize_model(tiny_model(bpe))
    state = dequantized_state(model)
    assert torch.equal(state["blocks.0.attn.wq.weight"], model.blocks[0].attn.wq.dequantize())
    assert state["lm_head.weight"] is state["tok_emb.weight"]
    path = save_quantized_gguf(model, bpe, tmp_path / "m.gguf", qtype="f32")
    loaded, _, _ = load_model(path)
    ids = bpe.encode(PROMPT)
    assert (logits(loaded, ids) - logits(model, ids)).abs().max().item() < 1e-4


def test_cli_exports_q4_and_re_exports_native_blocks_unchanged(tmp_path, bpe, capsys):
    model = tiny_model(bpe)
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "ckpt.pt", {"model": model.state_dict(), "model_config": config_to_dict(model.config),
                                      "tokenizer": bpe.to_dict()})
    first = tmp_path / "a.gguf"
    assert main(["export", str(run), "--to", "gguf", str(first), "--dtype", "q4_1"]) == 0
    second = tmp_path / "b.gguf"
    assert main(["export", str(first), "--native-gguf", "--to", "gguf", str(second), "--dtype", "q4_1"]) == 0
    a, b = tensors(first), tensors(second)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].tensor_type == b[name].tensor_type and np.array_equal(a[name].data, b[name].data), name
    summary = export_model(first, "gguf", tmp_path / "c.gguf", dtype="q8_0", native_gguf=True)
    assert summary["parameters"] == model.num_params() and any("Int4Linear group 32" in n for n in summary["notes"])
    capsys.readouterr()
    assert main(["export", str(run), "--native-gguf", "--to", "gguf", str(tmp_path / "d.gguf")]) == 2
    assert "--native-gguf" in capsys.readouterr().err


def test_quantize_directory_exports_its_int4_blocks(tmp_path, bpe):
    """A `llmlab quantize` directory (llmlab.quant.artifact) through `llmlab export --dtype q4_1`:
    its int4 group-32 layers land in the file unchanged; the int8 head is requantized, and said so."""
    from llmlab.quant.artifact import save_quantized

    model = quantize_model(tiny_model(bpe))
    save_quantized(model, bpe, tmp_path / "quant", {"method": "test"})
    summary = export_model(tmp_path / "quant", "gguf", tmp_path / "m.gguf", dtype="q4_1")
    assert any("Int8Linear group 32" in n for n in summary["notes"])
    back, _ = load_native_gguf(tmp_path / "m.gguf")
    for name in ("blocks.0.attn.wq", "blocks.1.mlp.w_down"):
        ours, theirs = model.get_submodule(name), back.get_submodule(name)
        assert all(torch.equal(getattr(ours, b), getattr(theirs, b)) for b in ("qweight", "scales", "mins"))


def test_save_gguf_q4_types_use_the_same_quantizers(tmp_path, bpe):
    model = tiny_model(bpe)
    save_gguf(model.state_dict(), model.config, bpe, tmp_path / "a.gguf", dtype="q4_0")
    save_quantized_gguf(model, bpe, tmp_path / "b.gguf", qtype="q4_0")
    a, b = tensors(tmp_path / "a.gguf"), tensors(tmp_path / "b.gguf")
    assert all(np.array_equal(a[n].data, b[n].data) for n in a) and a.keys() == b.keys()


@pytest.mark.slow
def test_transformers_reads_our_q4_1_file(tmp_path, bpe):
    """transformers' GGUF loader (gguf's dequantizer, its own undoing of llama.cpp's q/k order) gives
    the logits of our int4/int8 model: the file follows llama.cpp's conventions, not just ours."""
    transformers = pytest.importorskip("transformers")
    model = quantize_model(tiny_model(bpe))
    save_quantized_gguf(model, bpe, tmp_path / "m.gguf", qtype="q4_1", keep_exact=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    ids = bpe.encode(PROMPT)
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0]
    assert (theirs - logits(model, ids)).abs().max().item() < 1e-4


# ----------------------------------------------------------------------------- llama.cpp

@pytest.mark.parametrize("qtype", ["q4_1", "q8_0"])
def test_llama_cpp_reads_our_blocks(tmp_path, bpe, qtype):
    """llama.cpp's logits for our Q4_1 / Q8_0 file match ours for the same blocks. llama.cpp's CPU
    matmuls quantize activations to 8 bits, so the match is close rather than exact."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    model = quantize_model(tiny_model(bpe)) if qtype == "q4_1" else tiny_model(bpe)
    path = save_quantized_gguf(model, bpe, tmp_path / f"m.{qtype}.gguf", qtype=qtype)
    ours, _ = load_native_gguf(path)
    ids = bpe.encode(PROMPT)
    expected = logits(ours, ids).numpy()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
    llm.eval(ids)
    theirs = np.asarray(llm.scores[:len(ids)], dtype=np.float32)
    spread = expected.max() - expected.min()
    assert np.abs(theirs - expected).max() < 0.05 * spread, np.abs(theirs - expected).max() / spread
    assert np.corrcoef(theirs.ravel(), expected.ravel())[0, 1] > 0.999


@pytest.mark.slow
def test_smollm2_native_re_export_is_byte_identical(tmp_path):
    """SmolLM2's file (Q4_1 matrices, a Q8_0 embedding tied to the head) loaded natively and written
    again with keep_exact: every tensor's bytes are the original ones."""
    from llmlab.core.assets import smollm2_gguf

    model, tokenizer = load_native_gguf(smollm2_gguf())
    notes: list[str] = []
    path = save_quantized_gguf(model, tokenizer, tmp_path / "smol.gguf", qtype="q4_1", keep_exact=True, notes=notes)
    assert notes == []
    original, ours = tensors(smollm2_gguf()), tensors(path)
    assert original.keys() == ours.keys()
    for name, t in original.items():
        assert t.tensor_type == ours[name].tensor_type and np.array_equal(t.data, ours[name].data), name


def test_tied_head_of_a_quantized_model_is_written_once(tmp_path, bpe):
    """`llmlab quantize` unties the config when it quantizes a tied head, but the embedding still reads
    the head's storage (QuantizedEmbedding): the file must hold token_embd once and no output.weight,
    so llama.cpp and our loader tie them again."""
    from llmlab.quant.quantize import QuantizeConfig
    from llmlab.quant.quantize import quantize_model as quantize_whole_model

    model = tiny_model(bpe)
    quantize_whole_model(model, bpe, QuantizeConfig(method="int4", group_size=32), progress=False)
    assert not model.config.tie_embeddings and model.tok_emb.table is model.lm_head
    path = save_quantized_gguf(model, bpe, tmp_path / "m.gguf", qtype="q4_1")
    names = set(tensors(path))
    assert "token_embd.weight" in names and "output.weight" not in names
    back, _ = load_native_gguf(path)
    assert back.config.tie_embeddings or back.tok_emb.table is back.lm_head
    ids = bpe.encode("To be, or not to be, that is the question")
    torch.testing.assert_close(logits(back, ids), logits(model, ids), rtol=1e-4, atol=1e-4)
