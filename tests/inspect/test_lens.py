"""The logit lens reads every layer through the model's own head; at the last layer it is the model."""

import json

import pytest
import torch

from llmlab.inspect.lens import LensResult, lens_logits, logit_lens, plot_lens, to_json
from llmlab.inspect.trace import trace
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.tokenizer.char import CharTokenizer

TOKENIZER = CharTokenizer([chr(ord("a") + i) for i in range(26)])
CONFIGS = pytest.mark.parametrize("config", [
    ModelConfig(vocab_size=26, block_size=24, n_layer=3, n_head=4, n_kv_head=2, n_embd=32, tie_embeddings=False),
    ModelConfig(vocab_size=26, block_size=24, n_layer=2, n_head=2, n_embd=16, position="learned",
                norm="layernorm", mlp="gelu", bias=True)], ids=["llama", "gpt2"])


def model_for(config, seed=0):
    torch.manual_seed(seed)
    return Transformer(config).eval()


@CONFIGS
def test_lens_at_the_last_layer_is_the_models_output(config):
    model = model_for(config)
    ids = torch.randint(0, 26, (13,)).tolist()
    tr = trace(model, ids)
    logits = model(torch.tensor([ids]))["logits"][0]
    torch.testing.assert_close(lens_logits(model, tr.residual[-1]), logits, atol=1e-5, rtol=1e-5)
    result = logit_lens(model, tr, TOKENIZER, top_k=3)
    assert len(result.top) == config.n_layer + 1
    assert [t for t, _ in result.top[-1]] == logits[-1].topk(3).indices.tolist()
    assert result.target == int(logits[-1].argmax()) and result.target_rank[-1] == 0
    # layer 0 is the embedding read straight out: lm_head(final_norm(tok_emb [+ pos_emb]))
    x = torch.tensor([ids])
    embedded = model.tok_emb(x) + (model.pos_emb(torch.arange(13)) if config.position == "learned" else 0)
    first = lens_logits(model, embedded[0]).log_softmax(-1)
    assert result.top1[0] == first.argmax(-1).tolist()


def test_ranks_and_probabilities_match_a_brute_force_count():
    model = model_for(ModelConfig(vocab_size=26, block_size=24, n_layer=2, n_head=2, n_embd=16))
    ids = torch.randint(0, 26, (9,)).tolist()
    tr = trace(model, ids)
    result = logit_lens(model, tr, TOKENIZER, target=7)
    for i, h in enumerate(tr.residual):
        probs = lens_logits(model, h).softmax(-1)
        assert result.target_rank[i] == sorted(probs[-1].tolist(), reverse=True).index(probs[-1, 7].item())
        assert abs(result.target_prob[i] - float(probs[-1, 7])) < 1e-6
        for t in range(8):
            assert result.next_rank[i][t] == int((probs[t] > probs[t, ids[t + 1]]).sum())


def test_first_top1_layer_is_where_the_target_stays_on_top():
    def result(ranks):
        return LensResult(tokens=[], top=[[]] * len(ranks), target=0, target_rank=ranks, target_prob=[0] * len(ranks),
                          next_rank=[], top1=[])
    assert result([5, 0, 3, 0, 0]).first_top1_layer() == 3      # the early top-1 at layer 1 does not hold
    assert result([0, 0, 0]).first_top1_layer() == 0
    assert result([2, 1, 1]).first_top1_layer() is None


def test_json_has_one_entry_per_layer_ending_with_the_output(tmp_path):
    model = model_for(ModelConfig(vocab_size=26, block_size=24, n_layer=2, n_head=2, n_embd=16))
    ids = TOKENIZER.encode("thecatsat")
    result = logit_lens(model, trace(model, ids), TOKENIZER, top_k=4)
    data = json.loads(json.dumps(to_json(result, TOKENIZER)))
    assert [layer["layer"] for layer in data["layers"]] == [0, 1, 2]
    assert data["layers"][-1]["is_output"] and not data["layers"][0]["is_output"]
    top = data["layers"][-1]["top"]
    assert len(top) == 4 and set(top[0]) == {"id", "token", "prob"} and top[0]["token"] == TOKENIZER.decode([top[0]["id"]])
    assert top[0]["prob"] >= top[1]["prob"]
    path = plot_lens(result, TOKENIZER, tmp_path / "lens.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reading_the_last_positions_only_gives_the_same_numbers_there():
    model = model_for(ModelConfig(vocab_size=26, block_size=24, n_layer=2, n_head=2, n_embd=16))
    tr = trace(model, torch.randint(0, 26, (11,)).tolist())
    full, last = logit_lens(model, tr, TOKENIZER), logit_lens(model, tr, TOKENIZER, positions=4)
    assert last.start == 7 and len(last.tokens) == 4 and full.start == 0
    assert [row[7:] for row in full.next_rank] == last.next_rank
    assert [row[7:] for row in full.top1] == last.top1
    assert (full.top, full.target_rank) == (last.top, last.target_rank)
