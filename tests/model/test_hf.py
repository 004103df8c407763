"""Hugging Face directories: tiny random models that transformers itself creates and saves are loaded
by our code and give the same logits; our models exported to HF load back in transformers."""

from __future__ import annotations

import json

import pytest
import torch

from llmlab.core.errors import LLMLabError
from llmlab.model.config import ModelConfig
from llmlab.model.hf import load_hf_model, save_hf_dir
from llmlab.model.transformer import Transformer

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64)


def _hf_model(kind: str, tie: bool):
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(num_key_value_heads=2, tie_word_embeddings=tie, rope_theta=5000.0, **TINY)
        model = transformers.LlamaForCausalLM(cfg)
    elif kind == "mistral":
        cfg = transformers.MistralConfig(num_key_value_heads=2, tie_word_embeddings=tie, **TINY)
        model = transformers.MistralForCausalLM(cfg)
    elif kind == "qwen2":
        cfg = transformers.Qwen2Config(num_key_value_heads=2, tie_word_embeddings=tie, **TINY)
        model = transformers.Qwen2ForCausalLM(cfg)
        with torch.no_grad():  # biases start at zero: make them count
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    else:
        cfg = transformers.GPT2Config(vocab_size=97, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                      tie_word_embeddings=tie, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
        model = transformers.GPT2LMHeadModel(cfg)
    return model.eval()


def _hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("kind,tie", [("llama", False), ("llama", True), ("mistral", False), ("qwen2", True),
                                      ("gpt2", True)])
def test_load_hf_dir_matches_transformers(tmp_path, kind, tie):
    hf = _hf_model(kind, tie)
    hf.save_pretrained(tmp_path)
    ours, tokenizer = load_hf_model(tmp_path)
    assert tokenizer is None  # no tokenizer files were saved
    assert ours.config.tie_embeddings == tie
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours.eval()(ids)["logits"] - _hf_logits(hf, ids)).abs().max().item()
    assert diff < 1e-4, diff


def test_sharded_checkpoint(tmp_path):
    hf = _hf_model("llama", False)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ours, _ = load_hf_model(tmp_path)
    ids = torch.arange(30).view(1, 30)
    with torch.no_grad():
        assert (ours.eval()(ids)["logits"] - _hf_logits(hf, ids)).abs().max().item() < 1e-4
    sorted(tmp_path.glob("model-*.safetensors"))[-1].unlink()  # an interrupted download
    with pytest.raises(LLMLabError, match="missing shard"):
        load_hf_model(tmp_path)


@pytest.mark.parametrize("preset", [
    ModelConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, tie_embeddings=False),
    ModelConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32, qkv_bias=True),
    ModelConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32, position="learned",
                norm="layernorm", mlp="gelu", bias=True),
    # the nanogpt-cpu shape: exact GELU, no biases (GPT-2 files get zero biases)
    ModelConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32, position="learned",
                norm="layernorm", mlp="gelu-exact", bias=False),
])
def test_export_loads_in_transformers(tmp_path, preset):
    torch.manual_seed(0)
    ours = Transformer(preset).eval()
    with torch.no_grad():  # random norms and biases, so a wrong mapping cannot hide behind ones/zeros
        for name, p in ours.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(0.5, 0.2)
    save_hf_dir(ours.state_dict(), preset, None, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 50, (1, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (ours(ids)["logits"] - _hf_logits(hf, ids)).abs().max().item()
    assert diff < 1e-4, diff
    # and back: our reader gets the same model
    again, _ = load_hf_model(tmp_path)
    with torch.no_grad():
        assert torch.allclose(again.eval()(ids)["logits"], ours(ids)["logits"], atol=1e-5)


def test_bad_directories(tmp_path):
    with pytest.raises(LLMLabError, match="config.json"):
        load_hf_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(LLMLabError, match="not supported"):
        load_hf_model(tmp_path)
    hf = _hf_model("llama", False)
    hf.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    with pytest.raises(LLMLabError, match="model.safetensors"):
        load_hf_model(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    cfg.pop("rope_parameters", None)
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LLMLabError, match="yarn"):
        load_hf_model(tmp_path / "m")


@pytest.mark.parametrize("scaling", [
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 16},
])
def test_rope_scaling_matches_transformers(tmp_path, scaling):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_key_value_heads=2, **TINY)
    cfg.rope_parameters = {**scaling, "rope_theta": 10000.0}
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # peaked attention, so the positions matter for the logits
        for layer in hf.model.layers:
            layer.self_attn.q_proj.weight.mul_(20)
            layer.self_attn.k_proj.weight.mul_(20)
    hf.save_pretrained(tmp_path)
    ours, _ = load_hf_model(tmp_path)
    ids = torch.randint(0, 97, (1, 60), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (ours.eval()(ids)["logits"] - _hf_logits(hf, ids)).abs().max().item() < 1e-4
    scaled = ours.rope_cos.clone()
    ours.init_rope()  # unscaled tables: the logits must now differ (the test can see scaling)
    assert not torch.allclose(scaled, ours.rope_cos)


def test_hf_dir_with_a_sentencepiece_tokenizer(tmp_path):
    """A Llama-2-shaped directory: weights saved by transformers, a SentencePiece-style tokenizer.json
    (trained here by `tokenizers`) and the tokenizer_config.json Llama 2 ships. The tokenizer loads
    with its BOS rule and gives the ids `tokenizers` gives; a malformed config is a clear error."""
    tk = pytest.importorskip("tokenizers")
    from llmlab.data.shakespeare import shakespeare_text

    _hf_model("llama", False).save_pretrained(tmp_path)
    hf_tok = tk.Tokenizer(tk.models.BPE(unk_token="<unk>", fuse_unk=True))
    hf_tok.normalizer = tk.normalizers.Sequence([tk.normalizers.Prepend("▁"), tk.normalizers.Replace(" ", "▁")])
    hf_tok.pre_tokenizer = None
    hf_tok.decoder = tk.decoders.Sequence([tk.decoders.Replace("▁", " "), tk.decoders.Fuse(),
                                           tk.decoders.Strip(" ", 1, 0)])
    trainer = tk.trainers.BpeTrainer(vocab_size=97, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=40,
                                     show_progress=False)
    hf_tok.train_from_iterator(shakespeare_text(tiny=True)[:50_000].split("\n"), trainer)
    hf_tok.post_processor = tk.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf_tok.save(str(tmp_path / "tokenizer.json"))
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": True,
              "bos_token": "<s>", "eos_token": "</s>", "unk_token": {"content": "<unk>", "special": True}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    _, tokenizer = load_hf_model(tmp_path)
    assert tokenizer.kind == "spm" and tokenizer.add_bos and tokenizer.eos_id == 2
    for text in ["ROMEO: But, soft!", "  two spaces, and an ünknown ☃ or two ☃☃", "line\nbreak"]:
        assert tokenizer.encode(text, add_special=True) == hf_tok.encode(text).ids, text
        ids = hf_tok.encode(text).ids
        assert tokenizer.decode(ids) == hf_tok.decode(ids, skip_special_tokens=False)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": "yes"}))
    with pytest.raises(LLMLabError, match="tokenizer_config.json: add_bos_token must be true or false"):
        load_hf_model(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    hf_tok.add_special_tokens(["<extra>"])  # id 97: past the model's 97-row embedding
    hf_tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(LLMLabError, match="belongs to another model"):
        load_hf_model(tmp_path)
