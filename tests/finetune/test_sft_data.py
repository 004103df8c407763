"""SFT data: JSONL reading, assistant-only masking, packing == one-by-one, bucketing, resume purity."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from llmlab.core.assets import smollm2_gguf
from llmlab.core.errors import LLMLabError
from llmlab.finetune.sft_data import Example, SFTDataset, encode_example, read_examples, split_examples
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.tokenizer.char import CharTokenizer
from llmlab.tokenizer.formats import read_gguf_tokenizer
from llmlab.train.loss import causal_lm_loss


@pytest.fixture(scope="module")
def tok():
    return read_gguf_tokenizer(smollm2_gguf())


def chat(*turns: str, system: str | None = None) -> Example:
    roles = ["user", "assistant"] * len(turns)
    messages = [{"role": "system", "content": system}] if system is not None else []
    return Example(messages=messages + [{"role": r, "content": c} for r, c in zip(roles, turns)])


def target_runs(ids: list[int], is_target: list[bool]) -> list[list[int]]:
    """The maximal runs of consecutive target tokens."""
    runs, current = [], []
    for i, t in zip(ids, is_target):
        if t:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


# ---------------------------------------------------------------------- masking


def test_only_the_assistant_turn_and_its_end_of_turn_are_targets(tok):
    example = chat("What is the capital of Portugal?", "Lisbon is the capital.")
    ids, is_target = encode_example(tok, example)
    runs = target_runs(ids, is_target)
    assert len(runs) == 1
    assert tok.decode(runs[0]) == "Lisbon is the capital.<|im_end|>\n"
    prompt = tok.decode([i for i, t in zip(ids, is_target) if not t])
    assert "capital of Portugal" in prompt and "You are a helpful AI assistant" in prompt  # default system prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    # The tokens are exactly those of the whole rendered conversation.
    assert ids == tok.encode(tok.apply_chat_template(example.messages, add_generation_prompt=False), allowed_special=True)


def test_two_assistant_turns_are_both_targets_and_users_never(tok):
    example = chat("Hi there", "Hello! How can I help?", "Tell me a joke", "Why did the chicken cross?",
                   system="Be brief.")
    ids, is_target = encode_example(tok, example)
    runs = [tok.decode(r) for r in target_runs(ids, is_target)]
    assert runs == ["Hello! How can I help?<|im_end|>\n", "Why did the chicken cross?<|im_end|>\n"]
    targets_text = "".join(runs)
    assert "Hi there" not in targets_text and "joke" not in targets_text and "Be brief" not in targets_text
    assert "You are a helpful" not in tok.decode(ids)    # an explicit system prompt replaces the default


def test_turns_after_the_last_assistant_are_left_out(tok):
    example = Example(messages=chat("a question", "an answer").messages + [{"role": "user", "content": "thanks"}])
    ids, _ = encode_example(tok, example)
    assert "thanks" not in tok.decode(ids) and tok.decode(ids).endswith("an answer<|im_end|>\n")


def test_plain_text_is_all_targets_and_ends_with_eos(tok):
    ids, is_target = encode_example(tok, Example(text="Once upon a time"))
    assert all(is_target) and ids[-1] == tok.eos_id and tok.decode(ids[:-1]) == "Once upon a time"


def test_chatml_fallback_needs_chatml_special_tokens(tok):
    no_template = copy.copy(tok)
    no_template.chat_template = None      # has <|im_start|>/<|im_end|> specials: plain ChatML is honest
    ids, is_target = encode_example(no_template, chat("hi", "yo"))
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    with pytest.raises(LLMLabError, match="no chat template"):
        encode_example(CharTokenizer.train("abc hiyo"), chat("hi", "yo"))


def test_a_template_that_rewrites_earlier_turns_is_refused(tok):
    last_only = copy.copy(tok)   # renders only the final message: not prefix-stable
    last_only.chat_template = ("{% for m in messages %}{% if loop.last %}{{ '<|im_start|>' + m['role'] + '\n' + "
                               "m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
                               "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    with pytest.raises(LLMLabError, match="prefix-stable at message 2"):
        encode_example(last_only, chat("hi", "yo"))


# ---------------------------------------------------------------------- reading


def write_lines(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_three_forms_and_blank_lines(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [
        json.dumps({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}),
        "",
        json.dumps({"instruction": "Translate", "input": "chat", "output": "cat", "id": 7}),
        json.dumps({"instruction": "Say hi", "output": "hi"}),
        "   ",
        json.dumps({"text": "plain"}),
    ])
    examples = read_examples(path)
    assert [e.messages[0]["content"] if e.messages else e.text for e in examples] == [
        "u", "Translate\n\nchat", "Say hi", "plain"]
    assert examples[1].messages[1] == {"role": "assistant", "content": "cat"}


GOOD = json.dumps({"text": "fine"})
BAD_LINES = [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"prompt": "x", "completion": "y"}', "no known form"),
    ('{"messages": []}', "non-empty list"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', "unknown role 'bot'"),
    ('{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]}', "non-string content"),
    ('{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]}', "empty content"),
    ('{"messages": ["hi"]}', "must be an object with 'role' and 'content'"),
    ('{"instruction": "do it"}', "needs 'output'"),
    ('{"instruction": "do it", "output": ""}', "'output' is empty"),
    ('{"text": 5}', "must be a string"),
    ('{"text": ""}', "'text' is empty"),
]


@pytest.mark.parametrize("line,what", BAD_LINES)
def test_malformed_line_names_file_line_and_problem(tmp_path, line, what):
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, "", line, GOOD])
    with pytest.raises(LLMLabError) as info:
        read_examples(path)
    assert "bad.jsonl:3:" in str(info.value) and what in str(info.value)


def test_no_known_form_lists_the_forms(tmp_path):
    with pytest.raises(LLMLabError, match=r"messages.*instruction.*text"):
        read_examples(write_lines(tmp_path / "x.jsonl", ['{"q": 1}']))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(LLMLabError, match="no such file"):
        read_examples(tmp_path / "nope.jsonl")
    with pytest.raises(LLMLabError, match="no examples"):
        read_examples(write_lines(tmp_path / "e.jsonl", ["", " "]))


def test_split_examples_is_deterministic_and_a_partition():
    examples = [Example(text=str(i)) for i in range(50)]
    train, val = split_examples(examples, 0.2, seed=3)
    assert (train, val) == split_examples(examples, 0.2, seed=3)
    assert len(val) == 10 and sorted(e.text for e in train + val) == sorted(e.text for e in examples)
    assert val != split_examples(examples, 0.2, seed=4)[1]
    assert len(split_examples(examples[:3], 0.01)[1]) == 1
    with pytest.raises(LLMLabError):
        split_examples(examples, 1.0)


# ---------------------------------------------------------------------- packing and bucketing


def mixed_examples() -> list[Example]:
    words = "the quick brown fox jumps over a lazy dog while seven owls watch quietly".split()
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(14):
        pick = lambda n: " ".join(words[j] for j in torch.randint(len(words), (n,), generator=g).tolist())  # noqa: E731
        if i % 4 == 0:
            out.append(Example(text=pick(5 + i)))
        elif i % 4 == 1:
            out.append(chat(pick(3), pick(4), pick(2), pick(6 + i)))
        else:
            out.append(chat(pick(2 + i % 5), pick(1 + i)))
    return out


@pytest.fixture(scope="module", params=["rope", "learned"])
def tiny_model(tok, request):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32,
                                    position=request.param))
    with torch.no_grad():   # large random weights: any leak across examples shows in the loss
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.double().eval()


def loss64(model, batch):
    """causal_lm_loss without its float32 cast: in float64 the sums agree to ~1e-10, so a tight
    tolerance is meaningful (float32 summation order alone moves a 2,000-nat sum by ~1e-4)."""
    logits = model(batch["input_ids"], positions=batch.get("positions"), attn_mask=batch.get("attn_mask"))["logits"]
    labels = batch["labels"]
    return (torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                                              reduction="sum"), (labels != -100).sum())


def one_by_one(tok, model, examples, loss_fn) -> tuple[float, int]:
    loss, count = 0.0, 0
    with torch.no_grad():
        for example in examples:
            ids, is_target = encode_example(tok, example)
            labels = [ids[t + 1] if is_target[t + 1] else -100 for t in range(len(ids) - 1)]
            s, n = loss_fn(model, {"input_ids": torch.tensor([ids[:-1]]), "labels": torch.tensor([labels])})
            loss, count = loss + float(s), count + int(n)
    return loss, count


def totals(model, batches, loss_fn=loss64) -> tuple[float, int]:
    loss, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            s, n = loss_fn(model, batch)
            loss, count = loss + float(s), count + int(n)
    return loss, count


def test_packed_and_bucketed_equal_one_by_one(tok, tiny_model):
    examples = mixed_examples()
    expected_loss, expected_count = one_by_one(tok, tiny_model, examples, loss64)
    packed = SFTDataset(examples, [], tok, seq_len=96, pack=True)
    bucketed = SFTDataset(examples, [], tok, seq_len=96, pack=False, bucket_size=4)
    assert packed.stats["train"]["rows"] < len(examples)        # it really packed several per row
    assert packed.stats["train"]["target_tokens"] == expected_count
    for ds, batch_size in ((packed, 3), (bucketed, 5)):
        loss, count = totals(tiny_model, ds.all_batches("train", batch_size))
        assert count == expected_count and abs(loss - expected_loss) < 1e-5
        # And through the trainer's own loss (float32 cross-entropy): equal to float32 rounding.
        loss32, count32 = totals(tiny_model, ds.all_batches("train", batch_size), causal_lm_loss)
        assert count32 == expected_count and loss32 == pytest.approx(expected_loss, rel=1e-6)

    # The test has teeth: without the document mask it differs; without restarting positions too,
    # for learned positions (RoPE scores depend only on relative positions, so there it would not).
    for drop in ("attn_mask",) + (("positions",) if tiny_model.config.position == "learned" else ()):
        leaky = [{k: v for k, v in b.items() if k != drop} for b in packed.all_batches("train", 3)]
        assert abs(totals(tiny_model, leaky)[0] - expected_loss) > 1e-3


def test_packed_rows_layout(tok):
    ds = SFTDataset(mixed_examples(), [], tok, seq_len=96, pack=True)
    batch = ds.get_batch("train", 8, 96, torch.Generator().manual_seed(1))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["positions"].shape == (8, 96)
    assert batch["attn_mask"].shape == (8, 1, 96, 96) and batch["input_ids"].dtype == torch.long
    mask = batch["attn_mask"][:, 0]
    pad = batch["labels"] == -100
    pad &= batch["input_ids"] == ds.pad_id
    for b in range(8):
        real = (batch["positions"][b] > 0).nonzero()
        end = int(real.max()) + 1 if len(real) else 0     # padding follows the last example
        assert not mask[b, :end, end:].any()                # real tokens never see padding
        assert not mask[b, end:, :end].any()                # padding never sees real tokens
        assert mask[b].diagonal().all()                     # every query sees itself: no empty softmax rows
        assert (batch["labels"][b, end:] == -100).all() and pad[b, end:].all()


def test_bucketed_batches_are_similar_lengths_padded_to_their_longest(tok):
    examples = [Example(text=" ".join(["word"] * n)) for n in (2, 3, 3, 4, 30, 31, 33, 35)]
    ds = SFTDataset(examples, [], tok, seq_len=64, pack=False, bucket_size=4)
    g = torch.Generator().manual_seed(0)
    widths = set()
    for _ in range(20):
        batch = ds.get_batch("train", 3, 64, g)
        assert "attn_mask" not in batch
        lengths = (batch["labels"] != -100).sum(1)
        width = batch["input_ids"].shape[1]
        assert width == int(lengths.max()) and width < 64
        assert (lengths < 10).all() or (lengths > 25).all()   # one bucket: all short or all long
        widths.add(width < 10)
    assert widths == {True, False}                          # both buckets get drawn


def test_overlong_skip_and_truncate(tok):
    lengths = [len(encode_example(tok, Example(text=" ".join(["w"] * n)))[0]) for n in (5, 10, 40, 60)]
    examples = [Example(text=" ".join(["w"] * n)) for n in (5, 10, 40, 60)]
    seq_len = 30
    long = sum(n > seq_len + 1 for n in lengths)
    assert long == 2
    skipped = SFTDataset(examples, [], tok, seq_len=seq_len, overlong="skip")
    s = skipped.stats["train"]
    assert (s["examples"], s["kept"], s["skipped"], s["truncated"]) == (4, 2, 2, 0)
    assert s["tokens"] == sum(n - 1 for n in lengths if n <= seq_len + 1)
    truncated = SFTDataset(examples, [], tok, seq_len=seq_len, overlong="truncate")
    t = truncated.stats["train"]
    assert (t["kept"], t["skipped"], t["truncated"]) == (4, 0, 2)
    assert t["tokens"] == sum(min(n, seq_len + 1) - 1 for n in lengths)
    assert "2 skipped" in skipped.summary() and "2 truncated" in truncated.summary()
    # A chat example truncated before its answer has nothing to learn: dropped and counted.
    prompt_heavy = chat(" ".join(["w"] * 80), "answer")
    d = SFTDataset([prompt_heavy, examples[0]], [], tok, seq_len=seq_len, overlong="truncate").stats["train"]
    assert (d["kept"], d["no_targets"]) == (1, 1)
    with pytest.raises(LLMLabError, match="no training example fits"):
        SFTDataset(examples[2:], [], tok, seq_len=seq_len)
    with pytest.raises(LLMLabError, match="overlong"):
        SFTDataset(examples, [], tok, seq_len=seq_len, overlong="wrap")


@pytest.mark.parametrize("pack", [True, False])
def test_same_generator_state_same_batch(tok, pack):
    examples = mixed_examples()
    ds = SFTDataset(examples, examples[:4], tok, seq_len=96, pack=pack, bucket_size=4, seed=1)
    g = torch.Generator().manual_seed(42)
    ds.get_batch("train", 4, 96, g)
    state = g.get_state()
    first = ds.get_batch("train", 4, 96, g)
    again = SFTDataset(examples, examples[:4], tok, seq_len=96, pack=pack, bucket_size=4, seed=1)
    for source in (ds, again):   # the same dataset after a restore, and a rebuilt one
        g.set_state(state)
        batch = source.get_batch("train", 4, 96, g)
        assert batch.keys() == first.keys() and all(torch.equal(batch[k], first[k]) for k in first)
    assert not torch.equal(ds.get_batch("train", 4, 96, g)["input_ids"], first["input_ids"])
    assert ds.get_batch("val", 2, 96, g)["input_ids"].shape[0] == 2


def test_get_batch_errors(tok):
    ds = SFTDataset(mixed_examples(), [], tok, seq_len=96)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(LLMLabError, match="seq_len 96"):
        ds.get_batch("train", 2, 128, g)
    with pytest.raises(LLMLabError, match="'val' split has no examples"):
        ds.get_batch("val", 2, 96, g)
    with pytest.raises(LLMLabError, match="unknown split"):
        ds.get_batch("test", 2, 96, g)
