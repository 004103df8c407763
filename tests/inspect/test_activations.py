"""Activation statistics: norms from the model's own hidden states, a planted outlier found, exact histograms."""

import pytest
import torch

from llmlab.core.errors import LLMLabError
from llmlab.inspect.activations import activation_stats, plot_activations
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.tokenizer.char import CharTokenizer

CONFIG = ModelConfig(vocab_size=40, block_size=32, n_layer=3, n_head=4, n_embd=32, position="rope",
                     norm="rmsnorm", mlp="swiglu", bias=False)
IDS = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]
OUTLIER_DIM = 7


def model_for(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(CONFIG).eval()


def planted_model() -> Transformer:
    """Dimension OUTLIER_DIM is 3.0 in every token's embedding (the rest ~0.02), and every norm
    scales it by 4: after RMSNorm it is ~sqrt(32) * 4 ~ 22 at each linear input, everything else < 1."""
    model = model_for()
    with torch.no_grad():
        model.tok_emb.weight[:, OUTLIER_DIM] = 3.0
        for block in model.blocks:
            block.attn_norm.weight[OUTLIER_DIM] = 4.0
            block.mlp_norm.weight[OUTLIER_DIM] = 4.0
    return model


def test_residual_norms_are_the_models_own_hidden_state_norms():
    model = model_for()
    stats = activation_stats(model, IDS)
    hidden = model(torch.tensor([IDS]), return_hidden_states=True)["hidden_states"]
    expected = torch.stack([torch.linalg.vector_norm(h[0], dim=-1) for h in hidden])
    assert len(stats["residual_norm"]) == CONFIG.n_layer + 1
    torch.testing.assert_close(torch.tensor(stats["residual_norm"]), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(stats["residual_norm_by_layer"]), expected.mean(1), atol=1e-5, rtol=1e-5)


def test_planted_outlier_dimension_is_found_and_nothing_else():
    stats = activation_stats(planted_model(), IDS, threshold=6.0)
    dims = stats["outliers"]["dims"]
    assert [d["dim"] for d in dims] == [OUTLIER_DIM]
    assert dims[0]["layers_frac"] == 1.0 and dims[0]["positions_frac"] == 1.0
    assert 15 < dims[0]["max_abs"] < 30 and len(dims[0]["max_abs_by_layer"]) == CONFIG.n_layer
    # The largest residual entries are the planted dimension too.
    assert stats["massive_activations"][0]["dim"] == OUTLIER_DIM
    assert abs(stats["massive_activations"][0]["value"]) == pytest.approx(3.0, abs=0.2)
    # A threshold above what it reaches finds nothing; an unplanted model has no outliers at 6.
    assert activation_stats(planted_model(), IDS, threshold=50.0)["outliers"]["dims"] == []
    assert activation_stats(model_for(), IDS, threshold=6.0)["outliers"]["dims"] == []


def recorded_mlp_hidden(model: Transformer) -> list[torch.Tensor]:
    """The input of each w_down, caught with our own hooks (independent of trace.py)."""
    seen = []
    handles = [b.mlp.w_down.register_forward_pre_hook(lambda m, args: seen.append(args[0][0].clone()))
               for b in model.blocks]
    with torch.no_grad():
        model(torch.tensor([IDS]))
    for h in handles:
        h.remove()
    return seen


def test_mlp_histograms_count_every_entry_and_kurtosis_matches_hand_computation():
    model = model_for()
    stats = activation_stats(model, IDS, bins=17)
    hidden = recorded_mlp_hidden(model)
    for layer, x in zip(stats["mlp"], hidden):
        assert len(layer["hist"]["counts"]) == 17 and len(layer["hist"]["edges"]) == 18
        assert sum(layer["hist"]["counts"]) == len(IDS) * CONFIG.mlp_hidden
        values = x.double().flatten().tolist()
        n = len(values)
        mean = sum(values) / n
        m2 = sum((v - mean) ** 2 for v in values) / n
        m4 = sum((v - mean) ** 4 for v in values) / n
        assert layer["kurtosis"] == pytest.approx(m4 / m2 ** 2 - 3, rel=1e-6)
        assert layer["mean"] == pytest.approx(mean, abs=1e-7)
        assert layer["std"] == pytest.approx(m2 ** 0.5, rel=1e-6)
        assert layer["min"] == pytest.approx(min(values)) and layer["max"] == pytest.approx(max(values))
        peak = max(abs(v) for v in values)
        assert layer["frac_near_zero"] == pytest.approx(sum(abs(v) < 0.01 * peak for v in values) / n)


def test_tokens_are_labelled_and_plots_are_written(tmp_path):
    tokenizer = CharTokenizer.train("the quick brown fox")
    ids = tokenizer.encode("the fox")
    model = planted_model()
    stats = activation_stats(model, ids, tokenizer=tokenizer)
    assert stats["tokens"] == list("the fox")
    assert stats["massive_activations"][0]["token"] == stats["tokens"][stats["massive_activations"][0]["position"]]
    paths = plot_activations(stats, tmp_path / "out")
    assert [p.name for p in paths] == ["activations-residual-norms.png", "activations-mlp-hist.png",
                                       "activations-outliers.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000


def test_bad_inputs_raise_llmlab_errors():
    model = model_for()
    with pytest.raises(LLMLabError, match="empty"):
        activation_stats(model, [])
    with pytest.raises(LLMLabError, match="block_size"):
        activation_stats(model, [1] * (CONFIG.block_size + 1))
    with pytest.raises(LLMLabError, match="--threshold"):
        activation_stats(model, IDS, threshold=0)
    with pytest.raises(LLMLabError, match="--bins"):
        activation_stats(model, IDS, bins=0)
