"""PEFT adapter directories: our adapters load in peft and compute the same logits on the HF export
of the same base; adapters peft saves load into our model with the same logits; bad files say why."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from llmlab.core.errors import LLMLabError
from llmlab.finetune.config import LoRAConfig
from llmlab.finetune.lora import apply_lora, lora_layers
from llmlab.finetune.peft import _hf_module, is_peft_dir, load_peft_adapter, read_peft_adapter, save_peft_adapter
from llmlab.model.config import ModelConfig
from llmlab.model.hf import save_hf_dir
from llmlab.model.transformer import Transformer

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(3))


def tiny_config(tie: bool, **over) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                                 position="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=tie),
                          **over})


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def base(request, tmp_path_factory):
    """(config, state dict, HF directory) of one tiny random Llama, norms randomised so a wrong
    mapping cannot hide behind ones."""
    torch.manual_seed(0)
    config = tiny_config(request.param)
    model = Transformer(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
    directory = tmp_path_factory.mktemp("base")
    save_hf_dir(model.state_dict(), config, None, directory)
    return config, {k: v.clone() for k, v in model.state_dict().items()}, directory


def ours(base) -> Transformer:
    config, state, _ = base
    model = Transformer(config)
    model.load_state_dict(state)
    return model.eval()


def hf(base):
    return transformers.AutoModelForCausalLM.from_pretrained(base[2], dtype=torch.float32).eval()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        out = model(IDS)
    return out["logits"] if isinstance(out, dict) else out.logits


def randomize(layers, seed: int = 1) -> None:
    """Random A, B (and DoRA magnitudes): an adapter at init computes nothing, so it would prove nothing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a, b, m in layers:
            a.copy_(torch.randn(a.shape, generator=g) * 0.3)
            b.copy_(torch.randn(b.shape, generator=g) * 0.2)
            if m is not None:
                m.mul_(1 + 0.2 * torch.rand(m.shape, generator=g))


def peft_layers(model) -> dict:
    """HF module name -> (A, B, magnitude) of every LoRA layer in a PeftModel."""
    out = {}
    for name, module in model.base_model.model.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer) and "default" in module.lora_A:
            mag = module.lora_magnitude_vector["default"].weight if module.use_dora.get("default") else None
            out[name] = (module.lora_A["default"].weight, module.lora_B["default"].weight, mag)
    return out


def no_peft_warnings(caught, tied_head: bool = False) -> None:
    """PEFT loads our files without a complaint. The one it must make: an adapted lm_head on a tied
    model gets no adapter on the embedding (it warns about exactly that; ours unties the same way)."""
    mine = [str(w.message) for w in caught if "peft" in w.filename or "adapter" in str(w.message).lower()]
    if tied_head:
        mine = [m for m in mine if "ensure_weight_tying" not in m]
    assert not mine, mine


def test_plain_models_agree(base):
    assert (logits(ours(base)) - logits(hf(base))).abs().max().item() < 1e-4


@pytest.mark.parametrize("method,targets,rslora,expect", [
    ("lora", "all-linear", False, ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]),
    ("lora", "attn.wq,attn.wv", False, ["q_proj", "v_proj"]),
    ("lora", "blocks.1.attn.wq,mlp.w_down,lm_head", True,
     ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj", "lm_head"]),
    ("dora", "all-linear", False, None),
    ("dora", "attn.wq,attn.wv", True, ["q_proj", "v_proj"]),
])
def test_ours_to_peft(base, tmp_path, method, targets, rslora, expect):
    model = ours(base)
    config = LoRAConfig(r=4, alpha=8, dropout=0.0, targets=targets, rslora=rslora)
    names = apply_lora(model, config, method)
    randomize([(m.lora_A, m.lora_B, m.magnitude) for m in lora_layers(model).values()])
    adapted = logits(model)
    assert (adapted - logits(ours(base))).abs().max().item() > 1e-2  # the adapter does something
    files = save_peft_adapter(model, method, config, "tiny-llama", tmp_path)
    assert {f.name for f in files} >= {"adapter_config.json", "adapter_model.safetensors"}
    written = json.loads((tmp_path / "adapter_config.json").read_text())
    if expect is not None:
        assert sorted(written["target_modules"]) == sorted(expect)
    assert written["use_dora"] == (method == "dora") and written["use_rslora"] == rslora
    assert is_peft_dir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theirs = peft.PeftModel.from_pretrained(hf(base), tmp_path).eval()
    no_peft_warnings(caught, tied_head=base[0].tie_embeddings and "lm_head" in names)
    assert len(peft_layers(theirs)) == len(names)  # exactly the layers we adapted, no more
    assert (logits(theirs) - adapted).abs().max().item() < 1e-4
    # and back into a fresh base of ours: bit-identical
    again = ours(base)
    load_peft_adapter(again, tmp_path)
    assert list(lora_layers(again)) == names
    assert torch.equal(logits(again), adapted)


@pytest.mark.parametrize("targets,rslora,dora", [
    (["q_proj", "v_proj"], False, False),
    ("all-linear", False, False),
    (["q_proj", "down_proj"], True, False),
    (["model.layers.1.self_attn.k_proj", "lm_head"], False, False),
    (["k_proj", "o_proj", "up_proj", "gate_proj"], False, True),
    ("all-linear", True, True),
])
def test_peft_to_ours(base, tmp_path, targets, rslora, dora):
    torch.manual_seed(5)
    theirs = peft.get_peft_model(hf(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0,
                                                           use_rslora=rslora, use_dora=dora))
    randomize(peft_layers(theirs).values(), seed=2)
    theirs.save_pretrained(tmp_path)
    expected = logits(theirs.eval())
    model = ours(base)
    config = load_peft_adapter(model, tmp_path)
    assert (config.r, config.alpha, config.rslora) == (4, 8.0, rslora)
    assert len(lora_layers(model)) == len(peft_layers(theirs))
    assert all((m.magnitude is not None) == dora for m in lora_layers(model).values())
    assert (logits(model) - expected).abs().max().item() < 1e-4
    assert (logits(model) - logits(ours(base))).abs().max().item() > 1e-2


@pytest.mark.parametrize("options", [
    dict(target_modules=["self_attn.q_proj", "mlp.up_proj"]),                        # dotted suffixes
    dict(target_modules="all-linear", exclude_modules=["model.layers.0.self_attn.q_proj", "down_proj"]),
    dict(target_modules=["layers.1.self_attn.v_proj"]),                               # one layer, as a suffix
])
def test_peft_targets_as_peft_matches_them(base, tmp_path, options):
    theirs = peft.get_peft_model(hf(base), peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, **options))
    randomize(peft_layers(theirs).values(), seed=3)
    theirs.save_pretrained(tmp_path)
    model = ours(base)
    load_peft_adapter(model, tmp_path)
    assert {_hf_module(n) for n in lora_layers(model)} == set(peft_layers(theirs))
    assert (logits(model) - logits(theirs.eval())).abs().max().item() < 1e-4


def test_qlora_adapter_says_its_base_was_nf4(base, tmp_path):
    from safetensors import safe_open

    model = ours(base)
    config = LoRAConfig(r=4, alpha=8, dropout=0.0, targets="attn.wq,mlp.w_up", nf4_block=32)
    apply_lora(model, config, "qlora")
    randomize([(m.lora_A, m.lora_B, None) for m in lora_layers(model).values()])
    trained = logits(model)
    save_peft_adapter(model, "qlora", config, "tiny-llama", tmp_path)
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        assert "NF4" in f.metadata()["llmlab_nf4"]
    assert "dequantize(quantize(W))" in (tmp_path / "README.md").read_text()
    assert read_peft_adapter(tmp_path)[1] == "qlora"
    # by default it rebuilds the NF4 base it was trained on: the fine-tune's own outputs
    rebuilt = ours(base)
    load_peft_adapter(rebuilt, tmp_path)
    assert torch.allclose(logits(rebuilt), trained, atol=1e-5)
    # method="lora" puts it on the float base, as PEFT does: PEFT's outputs, close to but not the NF4 ones
    on_float = ours(base)
    load_peft_adapter(on_float, tmp_path, method="lora")
    theirs = peft.PeftModel.from_pretrained(hf(base), tmp_path).eval()
    assert (logits(on_float) - logits(theirs)).abs().max().item() < 1e-4
    assert not torch.allclose(logits(on_float), trained, atol=1e-4)


# ----------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def good_adapter(tmp_path_factory):
    model = Transformer(tiny_config(False)).eval()
    config = LoRAConfig(r=4, alpha=8, dropout=0.0, targets="attn.wq,attn.wv")
    apply_lora(model, config)
    directory = tmp_path_factory.mktemp("good")
    save_peft_adapter(model, "lora", config, "tiny-base", directory)
    return directory


def edit_config(**changes):
    def edit(directory):
        path = directory / "adapter_config.json"
        cfg = json.loads(path.read_text())
        path.write_text(json.dumps({**cfg, **changes}))
    return edit


def edit_weights(keep):
    def edit(directory):
        from safetensors.torch import load_file, save_file
        path = directory / "adapter_model.safetensors"
        save_file({k: v for k, v in load_file(str(path)).items() if keep(k)}, str(path))
    return edit


def move_to_bin(directory):
    (directory / "adapter_model.safetensors").rename(directory / "adapter_model.bin")


def truncate(directory):
    path = directory / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])


CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


@pytest.mark.parametrize("edit,file,words", [
    (lambda d: (d / CONFIG).unlink(), CONFIG, "not a PEFT adapter directory"),
    (lambda d: (d / CONFIG).write_text("{not json"), CONFIG, "not valid JSON"),
    (edit_config(peft_type="IA3"), CONFIG, "LoRA adapters"),
    (edit_config(rank_pattern={"q_proj": 8}), CONFIG, "rank_pattern"),
    (edit_config(alpha_pattern={"q_proj": 32}), CONFIG, "alpha_pattern"),
    (edit_config(layers_to_transform=[0]), CONFIG, "layers_to_transform"),
    (edit_config(modules_to_save=["lm_head"]), CONFIG, "modules_to_save"),
    (edit_config(lora_bias=True), CONFIG, "lora_bias"),
    (edit_config(bias="all"), CONFIG, "bias"),
    (edit_config(fan_in_fan_out=True), CONFIG, "fan_in_fan_out"),
    (edit_config(target_modules=r".*\.q_proj"), CONFIG, "regular expression"),
    (edit_config(target_modules=["q_proj", "embed_tokens"]), CONFIG, "embed_tokens"),
    (edit_config(init_lora_weights="pissa"), CONFIG, "rewrites the base"),
    (edit_config(task_type="SEQ_CLS"), CONFIG, "causal"),
    (edit_config(r=8), WEIGHTS, "r=8"),
    (edit_config(use_dora=True), WEIGHTS, "DoRA magnitude"),
    (edit_config(target_modules=["q_proj", "v_proj", "k_proj"]), "adapter_config.json targets", "no weights for"),
    (edit_weights(lambda k: "layers.1.self_attn.q_proj" not in k), "adapter_config.json targets", "blocks.1.attn.wq"),
    (edit_weights(lambda k: "lora_B" not in k or "layers.0.self_attn.q_proj" not in k), WEIGHTS, "lora_B"),
    (move_to_bin, WEIGHTS, "safe_serialization"),
    (truncate, WEIGHTS, "truncated"),
])
def test_bad_adapter_files(good_adapter, tmp_path, edit, file, words):
    directory = tmp_path / "adapter"
    shutil.copytree(good_adapter, directory)
    edit(directory)
    with pytest.raises(LLMLabError) as e:
        load_peft_adapter(Transformer(tiny_config(False)), directory)
    assert file in str(e.value) and words in str(e.value), str(e.value)


@pytest.mark.parametrize("model_config,words", [
    (tiny_config(False, n_embd=64), "made for tiny-base"),
    (tiny_config(False, n_layer=1), "made for tiny-base"),
    (tiny_config(False, position="learned", norm="layernorm", mlp="gelu", n_kv_head=4), "Llama-family"),
])
def test_adapter_for_another_model(good_adapter, model_config, words):
    with pytest.raises(LLMLabError, match=words):
        load_peft_adapter(Transformer(model_config), good_adapter)


def test_loading_twice_and_saving_nothing_are_errors(good_adapter, tmp_path):
    model = Transformer(tiny_config(False))
    with pytest.raises(LLMLabError, match="no LoRA layers"):
        save_peft_adapter(model, "lora", LoRAConfig(), "x", tmp_path)
    load_peft_adapter(model, good_adapter)
    with pytest.raises(LLMLabError, match="already has LoRA layers"):
        load_peft_adapter(model, good_adapter)
    with pytest.raises(LLMLabError, match="does not describe"):
        save_peft_adapter(model, "dora", LoRAConfig(r=4), "x", tmp_path)
    gpt2 = Transformer(tiny_config(False, position="learned", norm="layernorm", mlp="gelu", n_kv_head=4))
    apply_lora(gpt2, LoRAConfig(r=4))
    with pytest.raises(LLMLabError, match="Llama-family"):
        save_peft_adapter(gpt2, "lora", LoRAConfig(r=4), "x", tmp_path)


def test_is_peft_dir(good_adapter, base, tmp_path):
    assert is_peft_dir(good_adapter)
    assert not is_peft_dir(base[2])            # a model directory, not an adapter
    assert not is_peft_dir(tmp_path / "none")
    (tmp_path / CONFIG).write_text("[1, 2]")
    assert not is_peft_dir(tmp_path)
