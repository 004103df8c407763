"""Native GGUF loading: a file's Q8_0 / Q4_0 / Q4_1 blocks become Int8Linear / Int4Linear layers
(group 32) holding the same integers and float16 constants, so every weight equals the float
path's dequantized value bit for bit, and no float copy of a matrix is made."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from llmlab.core.errors import LLMLabError
from llmlab.model.config import ModelConfig
from llmlab.model.export import gguf_tensor_name, save_gguf, to_gguf_rows, encode_float, write_gguf
from llmlab.model.gguf import load_gguf_state
from llmlab.model.source import load_model
from llmlab.model.transformer import Transformer
from llmlab.quant import kernels
from llmlab.quant.gguf_native import load_native_gguf, repack_q4_nibbles
from llmlab.quant.int4 import Int4Linear, unpack_int4
from llmlab.quant.int8 import Int8Linear
from llmlab.quant.linear import QuantizedEmbedding, QuantizedLinear
from llmlab.tokenizer import train_bpe

gguf = pytest.importorskip("gguf")

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. 1603 " * 8
# Longer than kernels.MAX_ROWS tokens: quantized layers then dequantize and run one float GEMM, so
# their logits compare with the float path's to float tolerance (the fused few-row kernels quantize
# the activations to int8 as llama.cpp does, which changes logits by much more).
PROMPT = "To be, or not to be: that is the question, whether 'tis nobler"


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(TEXT, 300, "gpt4")


def tiny_model(tokenizer, seed: int = 0, **overrides) -> Transformer:
    """A random llama-style model with rows of whole 32-weight blocks, norms away from 1 and peaked
    attention (so a wrong q/k row order or a mixed-up norm shows in the logits)."""
    fields = dict(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                  mlp_hidden=96)
    config = ModelConfig(**{**fields, **overrides})
    torch.manual_seed(seed)
    model = Transformer(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(0.5, 0.2)
            if ".wq." in name or ".wk." in name:
                p.mul_(20)
    return model


def logits(model, ids) -> torch.Tensor:
    assert len(ids) > kernels.MAX_ROWS
    with torch.no_grad():
        return model(torch.tensor([ids]))["logits"][0]


def float_matrices(model) -> list[str]:
    """Names of float parameters with more than one dimension (quantized layers keep theirs as buffers
    of integer codes and float16 constants)."""
    return [n for n, p in model.named_parameters() if p.dim() > 1]


def test_repack_q4_nibbles_puts_element_2j_in_the_low_nibble():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, size=(5, 3, 32), dtype=np.uint8)
    gguf_bytes = codes[..., :16] | (codes[..., 16:] << 4)        # GGUF: element j low, j + 16 high
    ours = torch.from_numpy(repack_q4_nibbles(gguf_bytes).reshape(5, -1))
    assert torch.equal(unpack_int4(ours), torch.from_numpy(codes.reshape(5, -1)))


@pytest.mark.parametrize("dtype,layer_type", [("q8_0", Int8Linear), ("q4_0", Int4Linear), ("q4_1", Int4Linear)])
@pytest.mark.parametrize("tie", [True, False])
def test_native_layers_hold_the_files_blocks(tmp_path, bpe, dtype, layer_type, tie):
    model = tiny_model(bpe, tie_embeddings=tie)
    path = save_gguf(model.state_dict(), model.config, bpe, tmp_path / f"m-{dtype}.gguf", dtype=dtype)
    native, tokenizer = load_native_gguf(path)
    config, state = load_gguf_state(path)                     # the float path: our dequantizer
    assert native.config == config and tokenizer.encode(PROMPT) == bpe.encode(PROMPT)

    quantized = {n: m for n, m in native.named_modules() if isinstance(m, QuantizedLinear)}
    assert len({id(m) for m in quantized.values()}) == 2 * 7 + (1 if tie else 2)
    for name, layer in quantized.items():
        assert type(layer) is layer_type and layer.group_size == 32, name
        key = "tok_emb.weight" if name == "tok_emb.table" else f"{name}.weight"
        assert torch.equal(layer.dequantize(), state[key]), name     # bit for bit
    if dtype == "q4_0":
        assert all(torch.equal(m.mins.float(), -8 * m.scales.float()) for m in quantized.values())
    assert isinstance(native.tok_emb, QuantizedEmbedding)
    assert (native.tok_emb.table is native.lm_head) == tie
    assert float_matrices(native) == []

    ids = bpe.encode(PROMPT)
    reference = Transformer.from_state_dict(config, state).eval()
    assert (logits(native.eval(), ids) - logits(reference, ids)).abs().max().item() < 1e-4


def test_qwen2_biases_and_unpermuted_rows(tmp_path, bpe):
    """qwen2 files keep q/k rows in our order and carry q/k/v biases: the biases go on the quantized
    layers, and nothing is un-permuted (a wrong permutation would change the logits a lot)."""
    model = tiny_model(bpe, qkv_bias=True)
    path = save_gguf(model.state_dict(), model.config, bpe, tmp_path / "q.gguf", dtype="q8_0")
    native, _ = load_native_gguf(path)
    config, state = load_gguf_state(path)
    wq = native.blocks[0].attn.wq
    assert isinstance(wq, Int8Linear) and torch.equal(wq.bias, state["blocks.0.attn.wq.bias"])
    ids = bpe.encode(PROMPT)
    reference = Transformer.from_state_dict(config, state).eval()
    assert (logits(native.eval(), ids) - logits(reference, ids)).abs().max().item() < 1e-4


def test_float_tensors_stay_float(tmp_path, bpe):
    """F16 files (and F16 tensors in quantized ones) load as ordinary float layers."""
    model = tiny_model(bpe)
    path = save_gguf(model.state_dict(), model.config, bpe, tmp_path / "h.gguf", dtype="f16")
    native, _ = load_native_gguf(path)
    assert not any(isinstance(m, (QuantizedLinear, QuantizedEmbedding)) for m in native.modules())
    assert isinstance(native.lm_head, nn.Linear) and native.lm_head.weight is native.tok_emb.weight
    config, state = load_gguf_state(path)
    ids = bpe.encode(PROMPT)
    assert torch.equal(logits(native.eval(), ids), logits(Transformer.from_state_dict(config, state).eval(), ids))


def test_q4_0_scale_too_large_for_min_loads_as_float(tmp_path, bpe):
    """-8 * d overflows float16 when |d| > 8188: that tensor alone is loaded as float."""
    model = tiny_model(bpe)
    with torch.no_grad():
        model.blocks[1].mlp.w_up.weight.mul_(5e6)           # peak ~1e5: d ~ -1.2e4, -8 d = inf in float16
    path = save_gguf(model.state_dict(), model.config, bpe, tmp_path / "big.gguf", dtype="q4_0")
    native, _ = load_native_gguf(path)
    _, state = load_gguf_state(path)
    w_up = native.blocks[1].mlp.w_up
    assert type(w_up) is nn.Linear and torch.equal(w_up.weight, state["blocks.1.mlp.w_up.weight"])
    assert isinstance(native.blocks[1].mlp.w_gate, Int4Linear)


def test_missing_tensor_is_a_clear_error(tmp_path, bpe):
    model = tiny_model(bpe)
    config = model.config
    tensors = [(gguf_tensor_name(n), *encode_float(to_gguf_rows(n, t.detach().numpy(), config, "llama"), "q8_0"))
               for n, t in model.state_dict().items() if n not in ("lm_head.weight", "blocks.1.mlp.w_down.weight")]
    path = write_gguf(tmp_path / "hole.gguf", config, bpe, tensors, "q8_0", "hole")
    with pytest.raises(LLMLabError, match=r"no tensor for blocks\.1\.mlp\.w_down"):
        load_native_gguf(path)


def test_source_loads_native_when_asked(tmp_path, bpe):
    model = tiny_model(bpe)
    path = save_gguf(model.state_dict(), model.config, bpe, tmp_path / "m.gguf", dtype="q4_1")
    native, _, source = load_model(path, native_gguf=True)
    assert source.kind == "gguf" and isinstance(native.blocks[0].attn.wo, Int4Linear)
    plain, _, _ = load_model(path)
    assert type(plain.blocks[0].attn.wo) is nn.Linear


@pytest.mark.slow
def test_smollm2_native_equals_float_path(capsys):
    """The built-in SmolLM2 file (Q4_1 matrices, Q8_0 token embedding tied to the head, F32 norms):
    every quantized tensor loads bit-exactly, logits agree with the dequantized float path, and
    building the model takes well under a second beyond parsing the file."""
    from llmlab.core.assets import smollm2_gguf

    path = smollm2_gguf()
    timings: dict[str, float] = {}
    native, tokenizer = load_native_gguf(path, timings=timings)
    with capsys.disabled():
        print("\nSmolLM2 native load: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    assert timings["model"] < 2.0   # ~0.5 s alone on one core; generous for a shared machine

    types: dict[str, int] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    assert types == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    assert isinstance(native.lm_head, Int8Linear) and native.tok_emb.table is native.lm_head
    assert float_matrices(native) == []

    reference, _, _ = load_model("smollm2")
    state = reference.state_dict()
    layers = {n: m for n, m in native.named_modules(remove_duplicate=False)
              if isinstance(m, QuantizedLinear) and n != "tok_emb.table"}
    assert len(layers) == 211
    for name, layer in layers.items():
        key = "tok_emb.weight" if name == "lm_head" else f"{name}.weight"
        assert torch.equal(layer.dequantize(), state[key]), name
    ids = tokenizer.encode("The three primary colours are red, yellow and blue; mixing them gives")
    diff = (logits(native.eval(), ids) - logits(reference.eval(), ids)).abs().max().item()
    assert diff < 1e-3, diff
