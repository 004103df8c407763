"""lm-eval driving an llmlab model through LLMLabLM: on three local tasks (one per request type,
written here as lm-eval task YAMLs over JSONL files), lm_eval.simple_evaluate's per-item answers
and metrics equal calling llmlab.eval.scoring directly on the same prompts."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("datasets")

from lm_eval.tasks import TaskManager  # noqa: E402

from llmlab.core.errors import LLMLabError  # noqa: E402
from llmlab.eval.lm_eval_adapter import LLMLabLM, parity, write_local_tasks  # noqa: E402
from llmlab.eval.scoring import Request, generate_until, loglikelihoods, rolling_loglikelihoods  # noqa: E402
from llmlab.model.config import ModelConfig  # noqa: E402
from llmlab.tokenizer.bpe import train_bpe  # noqa: E402

MC = [{"question": "Which gas do plants take in?", "choices": ["carbon dioxide", "oxygen", "helium"], "label": 0},
      {"question": "What is the capital of France?", "choices": ["Rome", "Paris"], "label": 1},
      {"question": "Where did the cat sit?", "choices": ["on the mat", "on a roof", "in the sea", "nowhere"], "label": 2}]
ROLLING = [{"text": "The cat sat on the mat. A man is sitting on a roof."},
           {"text": " ".join(["He starts pulling up roofing, and the cat sat on the mat."] * 8)}]   # > the context
GENERATE = [{"question": "Q: Which gas do plants take in?\nA:", "answer": " carbon"},
            {"question": "Q: What is the capital of France?\nA:", "answer": " Paris"}]
TEXT = " ".join(f"{d['question']} {' '.join(d['choices'])}" for d in MC) + " " + ROLLING[1]["text"] * 3

TASKS = {
    "llmlab_mc": """output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "llmlab_rolling": """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
""",
    "llmlab_generate": """output_type: generate_until
doc_to_text: "{{question}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
""",
}
DATA = {"llmlab_mc": MC, "llmlab_rolling": ROLLING, "llmlab_generate": GENERATE}


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(TEXT, 320)


@pytest.fixture(scope="module")
def model(tokenizer, varied_model):
    # block_size 32 < the long rolling text: lm-eval's windows and ours must agree past one window
    return varied_model(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=4,
                                    n_kv_head=2, n_embd=32), seed=3)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """One lm-eval task per request type, reading a local JSONL through `datasets`' json builder."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    for name, body in TASKS.items():
        data = root / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in DATA[name]))
        (root / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                           f"    test: {data}\ntest_split: test\n{body}")
    return root


@pytest.fixture(scope="module")
def evaluated(model, tokenizer, task_dir, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
    monkeypatch_module.setenv("HF_DATASETS_OFFLINE", "1")
    return lm_eval.simple_evaluate(model=LLMLabLM(model=model, tokenizer=tokenizer), tasks=list(TASKS),
                                   task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
                                   log_samples=True, bootstrap_iters=0)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_multiple_choice_equals_our_scoring(evaluated, model, tokenizer):
    samples = evaluated["samples"]["llmlab_mc"]
    assert [s["doc_id"] for s in samples] == list(range(len(MC)))
    correct, correct_norm = [], []
    for doc, sample in zip(MC, samples):
        # the prompt as lm-eval renders it; each choice after its default target delimiter " "
        requests = [Request(f"Question: {doc['question']}\nAnswer:", " " + c) for c in doc["choices"]]
        ours = loglikelihoods(model, tokenizer, requests)
        theirs = [r[0] for r in sample["resps"]]   # resps: one [(logprob, is_greedy)] per choice
        # equal up to float32 rounding: lm-eval sends all documents at once, so the batches differ
        assert [lp for lp, _ in theirs] == pytest.approx([o.logprob for o in ours], abs=1e-5)
        assert [greedy for _, greedy in theirs] == [o.is_greedy for o in ours]
        lps = [o.logprob for o in ours]
        norm = [lp / len(c) for lp, c in zip(lps, doc["choices"])]   # acc_norm: per character, space not counted
        correct.append(float(lps.index(max(lps)) == doc["label"]))
        correct_norm.append(float(norm.index(max(norm)) == doc["label"]))
        assert sample["acc"] == correct[-1] and sample["acc_norm"] == correct_norm[-1]
    result = evaluated["results"]["llmlab_mc"]
    assert result["acc,none"] == pytest.approx(sum(correct) / len(MC))
    assert result["acc_norm,none"] == pytest.approx(sum(correct_norm) / len(MC))


def test_rolling_equals_our_scoring(evaluated, model, tokenizer):
    samples = evaluated["samples"]["llmlab_rolling"]
    ours = rolling_loglikelihoods(model, tokenizer, [d["text"] for d in ROLLING])
    assert ours[1][1] > model.config.block_size   # the long text really spans several windows
    assert [s["resps"][0][0] for s in samples] == pytest.approx([lp for lp, _ in ours], abs=1e-5)
    total_bytes = sum(len(d["text"].encode()) for d in ROLLING)
    bpb = -sum(lp for lp, _ in ours) / total_bytes / math.log(2)
    assert evaluated["results"]["llmlab_rolling"]["bits_per_byte,none"] == pytest.approx(bpb)


def test_generate_equals_our_generation(evaluated, model, tokenizer):
    samples = evaluated["samples"]["llmlab_generate"]
    ours = generate_until(model, tokenizer, [d["question"] for d in GENERATE], [["\n", "."]] * len(GENERATE),
                          [6] * len(GENERATE))
    assert [s["resps"][0][0] for s in samples] == ours
    assert any(ours), "the random model should write something, or this test checks nothing"
    exact = sum(o == d["answer"] for o, d in zip(ours, GENERATE)) / len(GENERATE)
    assert evaluated["results"]["llmlab_generate"]["exact_match,none"] == pytest.approx(exact)


def test_model_args_string_loads_an_llmlab_model(tmp_path, model, tokenizer):
    """`--model llmlab --model_args model=DIR,...` goes through the registry and our loaders."""
    from llmlab.model.hf import save_hf_dir

    save_hf_dir(model.state_dict(), model.config, tokenizer, tmp_path)
    lm = lm_eval.api.registry.get_model("llmlab").create_from_arg_string(
        f"model={tmp_path},device=cpu,dtype=float32,max_batch_tokens=256", {"batch_size": 8, "device": None})
    assert isinstance(lm, LLMLabLM) and lm.max_batch_tokens == 256
    from lm_eval.api.instance import Instance
    request = Instance("loglikelihood", {}, ("Question: Where did the cat sit?\nAnswer:", " on the mat"), 0)
    want = loglikelihoods(model, tokenizer, [Request(*request.args)])[0]
    assert lm.loglikelihood([request]) == [(pytest.approx(want.logprob, abs=1e-5), want.is_greedy)]


def test_generation_kwargs(model, tokenizer):
    lm = LLMLabLM(model=model, tokenizer=tokenizer, max_gen_toks=7)
    assert lm.generation_limits({"until": "\n\n"}) == (["\n\n"], 7)
    assert lm.generation_limits({"until": ["Q:"], "max_new_tokens": 3, "temperature": 0.0}) == (["Q:"], 3)
    with pytest.raises(LLMLabError, match="greedily"):
        lm.generation_limits({"until": ["\n"], "do_sample": True, "temperature": 0.7})
    with pytest.raises(LLMLabError, match="dtype"):
        LLMLabLM(model=model, tokenizer=tokenizer, dtype="float8")


def test_importing_llmlab_eval_does_not_import_lm_eval():
    code = "import sys, llmlab.eval, llmlab.eval.scoring; assert 'lm_eval' not in sys.modules, 'lm_eval imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_parity_flags_any_difference():
    ours = [{"logprobs": [-1.0, -2.0], "acc": 1.0, "acc_norm": 1.0}, {"logprobs": [-3.0, -1.0], "acc": 0.0, "acc_norm": 1.0}]
    same = [dict(o) for o in ours]
    assert parity(ours, same) == {"n": 2, "max_abs_diff": 0.0, "acc": (0.5, 0.5), "acc_norm": (1.0, 1.0),
                                  "items_differ": 0, "equal": True}
    off = [dict(ours[0]), {**ours[1], "logprobs": [-3.0, -1.0002]}]
    assert parity(ours, off)["max_abs_diff"] == pytest.approx(2e-4) and not parity(ours, off)["equal"]
    flipped = [dict(ours[0]), {**ours[1], "acc_norm": 0.0}]
    assert parity(ours, flipped)["items_differ"] == 1 and not parity(ours, flipped)["equal"]
    with pytest.raises(LLMLabError, match="same items"):
        parity(ours, same[:1])


def test_local_tasks_include_lm_evals_own_yaml(tmp_path):
    """Our copy of an lm-eval task changes where the data comes from, nothing else."""
    write_local_tasks(["arc_easy", "hellaswag"], tmp_path, limit=3)
    arc = (tmp_path / "arc_easy_local.yaml").read_text()
    assert "lm_eval/tasks/arc/arc_easy.yaml" in arc and "doc_to_text" not in arc
    assert "test_split: test" in arc and "validation_split: null" in arc
    rows = [json.loads(line) for line in (tmp_path / "arc_easy.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and set(rows[0]) == {"id", "question", "choices", "answerKey"}
    assert rows[0]["choices"]["text"][rows[0]["choices"]["label"].index(rows[0]["answerKey"])]
    hellaswag = [json.loads(line) for line in (tmp_path / "hellaswag.jsonl").read_text().splitlines()]
    assert {"ctx_a", "ctx_b", "activity_label", "endings", "label"} <= set(hellaswag[0])
    with pytest.raises(LLMLabError, match="known: arc_easy"):
        write_local_tasks(["mmlu"], tmp_path)
