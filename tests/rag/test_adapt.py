"""Encoder adaptation: save/load round trip, hard-negative mining guards, and a short training run
that must lower the contrastive loss and move the right passages up the ranking."""

import json

import numpy as np
import pytest
import torch

from llmlab.core.assets import minilm_dir
from llmlab.core.errors import LLMLabError
from llmlab.model.encoder import Encoder, EncoderConfig
from llmlab.rag.adapt import AdaptConfig, adapt_encoder, contrastive_loss, lr_factor, mine_hard_negatives

IDS = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0]])
MASK = (IDS != 0).long()


def test_save_pretrained_round_trip_and_pool(tmp_path):
    model = Encoder.from_pretrained(minilm_dir())
    model.save_pretrained(tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    assert EncoderConfig.from_hf(tmp_path / "enc" / "config.json") == model.cfg
    again = Encoder.from_pretrained(tmp_path / "enc")
    assert torch.equal(again.embed(IDS, MASK), model.embed(IDS, MASK))
    pooled = model.pool(IDS, MASK)  # the training path: same vectors, with a graph to backpropagate through
    assert pooled.requires_grad and torch.allclose(pooled.detach(), model.embed(IDS, MASK))


@pytest.mark.slow  # importing transformers alone takes ~5 s
def test_hf_bertmodel_reads_saved_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = Encoder.from_pretrained(minilm_dir())
    model.save_pretrained(tmp_path)
    hf = transformers.BertModel.from_pretrained(str(tmp_path), add_pooling_layer=False).eval()
    with torch.no_grad():
        hidden = hf(input_ids=IDS, attention_mask=MASK).last_hidden_state
        ours = model(IDS, MASK)
    assert torch.allclose(hidden[MASK.bool()], ours[MASK.bool()], atol=1e-4)


def test_mining_skips_positive_same_doc_and_overlapping_passages():
    positive = "The flux valve opens at dawn. It closes again at dusk when the pressure drops."
    passages = [
        {"text": positive, "doc": "a"},
        {"text": "More about the flux valve: opening the valve at dawn needs a key.", "doc": "a"},  # same doc
        {"text": "Intro. The flux valve opens at dawn. Extra words about the valve.", "doc": "b"},  # contains lead
        {"text": "  the FLUX valve opens at dawn.  It closes again at dusk when the pressure drops.", "doc": "c"},
        {"text": "It closes again at dusk", "doc": "e"},  # a piece of the positive (overlapping window)
        {"text": "The pressure valve in the boiler room opens when the flux is high.", "doc": "d"},  # the one
        {"text": "Cats sleep most of the day.", "doc": "f"},  # shares no word: BM25 score 0
    ]
    pair = {"query": "When does the flux valve open?", "passage": positive, "doc": "a"}
    negatives = mine_hard_negatives([pair], passages, bm25_top=20, seed=0, per_query=5)
    assert negatives == [[passages[5]["text"]]]
    assert mine_hard_negatives([pair], passages, seed=1) == negatives  # only one candidate, whatever the seed
    # Without a doc key the same-document guard cannot apply; the text guards still do.
    no_doc = mine_hard_negatives([{k: v for k, v in pair.items() if k != "doc"}], passages, per_query=5)[0]
    assert sorted(no_doc) == sorted([passages[1]["text"], passages[5]["text"]])
    assert mine_hard_negatives([pair], [], per_query=3) == [[]]


def test_mining_is_seeded_and_stays_in_the_bm25_top():
    passages = [{"text": f"valve number {i} " + "filler " * i, "doc": str(i)} for i in range(30)]
    pair = {"query": "valve", "passage": "something else", "doc": "x"}
    first = mine_hard_negatives([pair], passages, bm25_top=5, seed=3, per_query=2)
    assert first == mine_hard_negatives([pair], passages, bm25_top=5, seed=3, per_query=2)
    # BM25 favours the short passages, so the top 5 are numbers 0..4.
    assert all(int(t.split()[2]) < 5 for t in first[0]) and len(set(first[0])) == 2


def test_contrastive_loss_and_schedule():
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    assert contrastive_loss(q, q, 0.05) < contrastive_loss(q, q.roll(1, 0), 0.05)  # own positive on the diagonal
    # Column 1 holds query 0's positive text again: masked, not pushed away.
    p = torch.stack([q[0], q[0], q[2]])
    clash = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    assert contrastive_loss(q, p, 0.05, clash) < contrastive_loss(q, p, 0.05)
    assert [round(lr_factor(s, 10, 2), 2) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]


# Invented codenames the base model cannot know, each naming an ordinary passage; for every codename a
# distractor passage that *mentions* it but says nothing, so the base model (and BM25) rank the distractor
# first: the BM25-mined hard negatives, and the lexical trap adaptation has to undo.
FACTS = [
    ("quibbleworth", "What does the quibbleworth do?", "The billing service sends invoices to customers every month."),
    ("zarnok", "Where does the zarnok run?", "The nightly backup job copies the database to a bucket in Frankfurt."),
    ("flimbert", "Who looks after the flimbert?", "The on-call engineer restarts the message queue when it stalls."),
    ("vontrel", "How is the vontrel started?", "Type make serve in the repository root to launch the web server."),
    ("plorix", "What feeds the plorix?", "Sensor readings from the greenhouse arrive every ten seconds over MQTT."),
    ("dravask", "When is the dravask rotated?", "Keys for the payment gateway are replaced on the first Monday of a quarter."),
    ("snirple", "What does the snirple check?", "The linter rejects pull requests whose functions exceed fifty lines."),
    ("yoltrane", "What breaks the yoltrane?", "The search index fails to rebuild when a document has no title field."),
]
PAIRS = [{"query": q, "passage": p, "doc": f"fact{i}"} for i, (_, q, p) in enumerate(FACTS)]
PASSAGES = ([{"text": p, "doc": f"fact{i}"} for i, (_, _, p) in enumerate(FACTS)]
            + [{"text": f"The {name} is listed in the old wiki glossary, without a description.", "doc": f"wiki{i}"}
               for i, (name, _, _) in enumerate(FACTS)])


def ranks_of_positives(embedder) -> np.ndarray:
    scores = embedder.embed([p["query"] for p in PAIRS]) @ embedder.embed([p["text"] for p in PASSAGES]).T
    return np.array([(scores[i] > scores[i, i]).sum() + 1 for i in range(len(PAIRS))])


def test_adaptation_lowers_loss_and_moves_positives_up(tmp_path):
    from llmlab.rag.embed import Embedder

    base_ranks = ranks_of_positives(Embedder())
    assert (base_ranks > 1).sum() >= 5  # the setup is hard for the base model
    config = AdaptConfig(epochs=2, batch_size=4, lr=2e-4, max_seq_len=64, max_query_len=32)
    out = tmp_path / "adapted"
    record = adapt_encoder(None, PAIRS, PASSAGES, out, config, show_progress=False)

    assert record["with_hard_negative"] == len(PAIRS) and record["steps"] == 4
    assert record["loss_last"] < record["loss_first"] and record["epoch_losses"][-1] < 0.5 * record["epoch_losses"][0]
    saved = json.loads((out / "adapt.json").read_text())
    assert saved["format_version"] == 1 and saved["base"] == "all-MiniLM-L6-v2" and saved["pairs"] == len(PAIRS)
    assert saved["config"]["lr"] == 2e-4 and saved["loss_last"] == record["loss_last"]
    assert (out / "vocab.txt").read_bytes() == (minilm_dir() / "vocab.txt").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["adapted"]  # the temp dir was renamed, nothing left over

    adapted_ranks = ranks_of_positives(Embedder(model_dir=out))
    assert adapted_ranks.sum() < base_ranks.sum()
    assert (adapted_ranks == 1).sum() >= (base_ranks == 1).sum() + 4, (base_ranks, adapted_ranks)

    # Same seed, same data: the same model (no dropout in our encoder, seeded order and sampling).
    def rerun() -> tuple[dict, bytes]:
        rec = adapt_encoder(out, PAIRS[:4], PASSAGES, tmp_path / "again", AdaptConfig(epochs=1, batch_size=4),
                            show_progress=False)
        return rec, (tmp_path / "again" / "model.safetensors").read_bytes()

    first, weights = rerun()
    assert first["base"] == "adapted"
    second, weights_again = rerun()  # over the previous output: replaced whole
    assert second["loss_last"] == first["loss_last"] and weights_again == weights


def test_interrupted_or_refused_run_leaves_out_dir_alone(tmp_path, monkeypatch):
    import llmlab.rag.adapt as adapt

    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "mine.txt").write_text("do not delete")
    with pytest.raises(LLMLabError, match="not an adapted-encoder directory"):
        adapt_encoder(None, PAIRS, PASSAGES, keep, AdaptConfig())
    with pytest.raises(LLMLabError, match="pair 0"):
        adapt_encoder(None, [{"query": "q"}], PASSAGES, tmp_path / "x", AdaptConfig())
    with pytest.raises(LLMLabError, match="temperature"):
        adapt_encoder(None, PAIRS, PASSAGES, tmp_path / "x", AdaptConfig(temperature=0))

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(adapt, "contrastive_loss", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        adapt_encoder(None, PAIRS, PASSAGES, tmp_path / "out", AdaptConfig(batch_size=4), show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]
    assert (keep / "mine.txt").read_text() == "do not delete"
