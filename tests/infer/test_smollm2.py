"""SmolLM2-135M from its GGUF in our code: dequantization, logits and greedy text vs transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmlab.cli import main
from llmlab.core.assets import smollm2_gguf
from llmlab.core.errors import LLMLabError
from llmlab.infer import Engine, SamplingConfig
from llmlab.model.gguf import dequantize, load_gguf_state, open_gguf

gguf = pytest.importorskip("gguf")
PROMPT = ("The history of the theatre in London begins with the Romans, who built an amphitheatre near the "
          "river. Centuries later, in the time of Elizabeth, companies of players performed at inns and then in "
          "purpose-built playhouses such as the Globe, where the plays of Shakespeare were first performed "
          "before crowds of apprentices, lawyers and courtiers.")


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    return Engine.load("smollm2", device="cpu")


def test_dequantization_matches_the_gguf_library():
    reader = open_gguf(smollm2_gguf())
    seen = set()
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        if kind in seen:
            continue
        seen.add(kind)
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        ours = dequantize(tensor.data, kind, shape)
        ref = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        np.testing.assert_array_equal(ours, ref)
    assert {"Q4_1", "Q8_0", "F32"} <= seen
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    for qtype in (gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F16):
        data = gguf.quants.quantize(x, qtype)
        np.testing.assert_array_equal(dequantize(data, qtype.name, x.shape),
                                      gguf.quants.dequantize(data, qtype).reshape(x.shape))


@pytest.mark.slow
def test_logits_and_greedy_text_match_transformers(engine):
    transformers = pytest.importorskip("transformers")
    path = smollm2_gguf()
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                            dtype=torch.float32).eval()
    ids = engine.tokenizer.encode(PROMPT)[:64]
    assert len(ids) == 64
    with torch.no_grad():
        ours = engine.model(torch.tensor([ids]))["logits"]
        theirs = ref(torch.tensor([ids])).logits
    assert (ours - theirs).abs().max().item() <= 1e-3
    greedy = engine.generate(ids, SamplingConfig(max_new_tokens=32, temperature=0, ignore_eos=True))
    with torch.no_grad():
        expected = ref.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, 64:].tolist()
    assert greedy.token_ids == expected


@pytest.mark.slow
def test_chat_and_batch(engine):
    reply = engine.generate([{"role": "user", "content": "What is the capital of France?"}],
                            SamplingConfig(max_new_tokens=24, temperature=0), raw=False)
    assert "Paris" in reply.text and reply.finish_reason == "stop"
    prompts = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time, in a small village"]
    batch = engine.generate_batch(prompts, SamplingConfig(max_new_tokens=10, temperature=0, ignore_eos=True))
    alone = [engine.generate(p, SamplingConfig(max_new_tokens=10, temperature=0, ignore_eos=True)) for p in prompts]
    assert [c.token_ids for c in batch] == [c.token_ids for c in alone]
    config, _ = load_gguf_state(smollm2_gguf())
    assert (config.n_layer, config.n_head, config.n_kv_head, config.n_embd) == (30, 9, 3, 576)


@pytest.mark.slow
def test_generate_cli_json(capsys, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("Roses are red,")
    assert main(["generate", "--model", "smollm2", "--prompt-file", str(prompt), "--max-new-tokens", "8",
                 "--temperature", "0", "--raw", "--ignore-eos", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["usage"]["completion_tokens"] == 8 and len(out["token_ids"]) == 8
    assert out["finish_reason"] == "length" and out["timings"]["decode_tok_s"] > 0


def test_damaged_files_are_clear_errors(tmp_path):
    bad = tmp_path / "cut.gguf"
    with open(smollm2_gguf(), "rb") as f:
        bad.write_bytes(f.read(100_000))
    with pytest.raises(LLMLabError, match="not a readable GGUF"):
        Engine.load(str(bad))
    with pytest.raises(LLMLabError, match="cannot load model"):
        Engine.load(str(tmp_path / "nothing-here"))
