"""Embedding PCA: exact on a plane, faithful distances, neighbours found by cosine, rows read through the modules."""

import dataclasses

import pytest
import torch

from llmlab.core.errors import LLMLabError
from llmlab.inspect import embeddings
from llmlab.inspect.embeddings import embedding_projection, pca_2d, plot_embeddings
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.tokenizer.char import CharTokenizer

TOKENIZER = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz ROMEJULIT")
CONFIG = ModelConfig(vocab_size=TOKENIZER.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=24)


def model_for(config: ModelConfig = CONFIG, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(config).eval()


def plane_points(n: int, dim: int, seed: int = 1) -> torch.Tensor:
    """n points offset + a*u + b*v: exactly on a 2-D affine plane in R^dim."""
    g = torch.Generator().manual_seed(seed)
    offset, basis = torch.randn(dim, generator=g), torch.randn(2, dim, generator=g)
    return offset + torch.randn(n, 2, generator=g) @ basis


def pairwise(x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x.double(), x.double())


def test_pca_of_points_on_a_plane_explains_everything_and_keeps_distances():
    points = plane_points(7, CONFIG.n_embd)
    model = model_for()
    words = list("abcdefg")
    with torch.no_grad():
        for word, point in zip(words, points):
            model.tok_emb.weight[TOKENIZER.encode(word)[0]] = point
    result = embedding_projection(model, TOKENIZER, words)
    assert sum(result["explained_variance"]) == pytest.approx(1.0, abs=1e-6)
    assert result["explained_variance"][0] >= result["explained_variance"][1] > 0
    coords = torch.tensor([[w["x"], w["y"]] for w in result["words"]])
    torch.testing.assert_close(pairwise(coords), pairwise(points), atol=1e-4, rtol=1e-4)
    # Off the plane (random rows), two components no longer explain everything.
    random = embedding_projection(model_for(), TOKENIZER, words)
    assert sum(random["explained_variance"]) < 0.9
    # pca_2d on its own: cosine matrix aside, the same picture.
    direct, ratios = pca_2d(points)
    torch.testing.assert_close(pairwise(direct), pairwise(points), atol=1e-4, rtol=1e-4)


def test_a_copied_row_is_the_first_neighbour_with_cosine_one(monkeypatch):
    monkeypatch.setattr(embeddings, "CHUNK", 5)   # several vocabulary chunks, the copy in a later one
    model = model_for()
    a, b = TOKENIZER.encode("c")[0], TOKENIZER.encode("x")[0]
    with torch.no_grad():
        model.tok_emb.weight[b] = model.tok_emb.weight[a]
    result = embedding_projection(model, TOKENIZER, ["c", "k", "ROMEO"], neighbours=4)
    near = result["words"][0]["neighbours"]
    assert len(near) == 4 and near[0]["id"] == b and near[0]["token"] == "x"
    assert near[0]["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert a not in [n["id"] for n in near]
    assert [n["cosine"] for n in near] == sorted((n["cosine"] for n in near), reverse=True)
    # The same ranking as a brute-force cosine against the whole table.
    table = torch.nn.functional.normalize(model.tok_emb.weight.detach(), dim=-1)
    sims = table @ table[TOKENIZER.encode("k")[0]]
    sims[TOKENIZER.encode("k")[0]] = -2
    assert [n["id"] for n in result["words"][1]["neighbours"]] == sims.topk(4).indices.tolist()
    romeo = result["words"][2]
    assert romeo["multi_token"] and romeo["pieces"] == list("ROMEO") and romeo["neighbours"] is None
    assert result["cosine"][0][0] == pytest.approx(1.0, abs=1e-6)


def test_multi_token_words_are_the_mean_of_their_rows_and_output_reads_the_head():
    untied = model_for(dataclasses.replace(CONFIG, tie_embeddings=False))
    words = ["ROMEO", "JULIET", "a"]
    inp = embedding_projection(untied, TOKENIZER, words, table="input")
    out = embedding_projection(untied, TOKENIZER, words, table="output")
    for result, weight in ((inp, untied.tok_emb.weight), (out, untied.lm_head.weight)):
        vectors = torch.stack([weight[TOKENIZER.encode(w)].mean(0) for w in words]).detach()
        unit = torch.nn.functional.normalize(vectors, dim=-1)
        torch.testing.assert_close(torch.tensor(result["cosine"]), unit @ unit.T, atol=1e-5, rtol=1e-5)
    assert inp["cosine"] != out["cosine"] and not out["tied"]
    tied = model_for()
    assert embedding_projection(tied, TOKENIZER, words, "input")["cosine"] == \
        embedding_projection(tied, TOKENIZER, words, "output")["cosine"]


def test_plot_writes_a_png(tmp_path):
    result = embedding_projection(model_for(), TOKENIZER, ["ROMEO", "JULIET", "king", "queen", "a"])
    path = plot_embeddings(result, tmp_path / "emb" / "embeddings.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_bad_inputs_raise_llmlab_errors():
    model = model_for()
    with pytest.raises(LLMLabError, match="--tokens"):
        embedding_projection(model, TOKENIZER, ["a"])
    with pytest.raises(LLMLabError, match="--tokens"):
        embedding_projection(model, TOKENIZER, ["a", ""])
    with pytest.raises(LLMLabError, match="--table"):
        embedding_projection(model, TOKENIZER, ["a", "b"], table="middle")
