"""Parity with EleutherAI's lm-evaluation-harness: its own arc_easy, hellaswag and piqa tasks (the
data swapped for the offline files), run by its Hugging Face model (HFLM) on the transformers export
of a tiny random Llama-style llmlab model, give the same prompts, per-choice log-likelihoods and
acc / acc_norm as llmlab.eval.harness.evaluate on the llmlab model. benchmarks/eval.py runs the
same comparison on SmolLM2-135M."""

from __future__ import annotations

import json

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("datasets")
pytest.importorskip("transformers")

from llmlab.eval.lm_eval_adapter import LM_EVAL_TASKS, lm_eval_items, parity, run_lm_eval, write_local_tasks  # noqa: E402

pytestmark = pytest.mark.slow   # ~15 s: lm-eval and transformers imports, two harnesses over 60 items

TASKS = list(LM_EVAL_TASKS)   # arc_easy (test split), hellaswag, piqa (validation)
N_ITEMS = 20


@pytest.fixture(scope="module")
def include_path(tmp_path_factory):
    return write_local_tasks(TASKS, tmp_path_factory.mktemp("lm_eval_tasks"), limit=N_ITEMS)


@pytest.fixture(scope="module")
def tiny(include_path):
    """A byte-level BPE learned on the items, and a random Llama-style model over it
    (GQA, RoPE, SwiGLU, tied head) whose weights are large enough to make choices differ.

    Both sides run it in float64. A random model spreads its bets over the whole vocabulary, so a
    long PIQA answer sums to ~-600 nats, where float32's rounding alone reaches 1e-4. In float64
    (our scorer still takes its log-softmax in float32, which leaves ~2e-5) a difference above 1e-4
    is a difference in what is computed, not in how it rounds. Real models score far fewer nats per
    item: benchmarks/eval.py compares SmolLM2 in float32."""
    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer
    from llmlab.tokenizer.bpe import train_bpe

    rows = [json.loads(line) for t in TASKS for line in (include_path / f"{t}.jsonl").read_text().splitlines()]
    text = " ".join(str(v) for row in rows for v in row.values())
    tokenizer = train_bpe(text, 1200)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=512, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
    model = Transformer(config).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.1)
    return model, tokenizer


@pytest.fixture(scope="module")
def theirs(tiny, include_path, tmp_path_factory):
    from lm_eval.models.huggingface import HFLM

    from llmlab.model.hf import save_hf_dir

    model, tokenizer = tiny
    hf_dir = tmp_path_factory.mktemp("hf")
    save_hf_dir(model.state_dict(), model.config, tokenizer, hf_dir)   # what `llmlab export --to hf` writes
    hflm = HFLM(pretrained=str(hf_dir), dtype="float64", device="cpu", batch_size=16)
    return run_lm_eval(hflm, TASKS, include_path)


@pytest.fixture(scope="module")
def ours(tiny):
    from llmlab.eval.harness import evaluate

    model, tokenizer = tiny
    return evaluate(model, tokenizer, ",".join(TASKS), limit=N_ITEMS, progress=False)


@pytest.mark.parametrize("task", TASKS)
def test_same_prompts_loglikelihoods_and_accuracy(task, ours, theirs):
    from llmlab.eval.tasks import get_tasks, load_docs

    split = LM_EVAL_TASKS[task][1]
    assert ours["tasks"][task]["split"] == split and ours["tasks"][task]["n"] == N_ITEMS
    docs = load_docs(get_tasks(task)[0], split, N_ITEMS)
    check = parity(ours["items"][task], lm_eval_items(theirs, task), docs)
    assert check["prompts_differ"] == 0       # every (context, continuation) lm-eval built is ours
    assert check["max_abs_diff"] < 1e-4, check
    assert check["items_differ"] == 0, check  # acc and acc_norm agree item by item
    assert check["equal"]
    result = theirs["results"][task + "_local"]
    assert ours["tasks"][task]["acc"] == pytest.approx(result["acc,none"])
    assert ours["tasks"][task]["acc_norm"] == pytest.approx(result["acc_norm,none"])
    assert ours["tasks"][task]["stderr"]["acc"] == pytest.approx(result["acc_stderr,none"])


def test_the_random_model_discriminates(ours):
    """Choices must get different scores, or equal accuracies would say nothing."""
    for task in TASKS:
        spreads = [max(it["logprobs"]) - min(it["logprobs"]) for it in ours["items"][task]]
        assert min(spreads) > 1e-3, task


# --- the other two request types, against HFLM directly: texts longer than the context, generation

ROLLING_TEXT = " ".join(["He starts pulling up roofing, and the cat sat on the mat."] * 8)
PROMPTS = ["Q: What is the capital of France?\nA:", "He starts pulling", "the cat"]


@pytest.fixture(scope="module")
def short_context(tmp_path_factory):
    """A random model with a 32-token context (so rolling scoring needs several windows), as an
    llmlab model and as lm-eval's HFLM over its export, both in float64."""
    from lm_eval.models.huggingface import HFLM

    from llmlab.model.config import ModelConfig
    from llmlab.model.hf import save_hf_dir
    from llmlab.model.transformer import Transformer
    from llmlab.tokenizer.bpe import train_bpe

    tokenizer = train_bpe(ROLLING_TEXT * 3 + " " + PROMPTS[0] + " Paris.", 320)
    torch.manual_seed(3)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=4,
                                    n_kv_head=2, n_embd=32)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    hf_dir = tmp_path_factory.mktemp("hf_short")
    save_hf_dir(model.state_dict(), model.config, tokenizer, hf_dir)
    return model, tokenizer, HFLM(pretrained=str(hf_dir), dtype="float64", device="cpu", batch_size=4)


def test_rolling_loglikelihood_equals_hflm_across_windows(short_context):
    from lm_eval.api.instance import Instance

    from llmlab.eval.scoring import rolling_loglikelihoods

    model, tokenizer, hflm = short_context
    # one window; one full window and a partial one (46 tokens); three full and a partial one (112)
    texts = ["The cat sat on the mat.", ROLLING_TEXT[:180], ROLLING_TEXT]
    ours = rolling_loglikelihoods(model, tokenizer, texts)
    assert [n > model.config.block_size for _, n in ours] == [False, True, True]
    theirs = hflm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)])
    assert [lp for lp, _ in ours] == pytest.approx(theirs, abs=1e-4)


def test_greedy_generation_equals_hflm(short_context):
    from lm_eval.api.instance import Instance

    from llmlab.eval.scoring import generate_until

    model, tokenizer, hflm = short_context
    kwargs = {"until": ["."], "max_gen_toks": 10, "do_sample": False}
    theirs = hflm.generate_until([Instance("generate_until", {}, (p, kwargs), i) for i, p in enumerate(PROMPTS)])
    ours = generate_until(model, tokenizer, PROMPTS, [["."]] * len(PROMPTS), [10] * len(PROMPTS))
    assert ours == theirs and any(ours)
