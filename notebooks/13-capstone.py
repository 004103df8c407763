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
# # 13. Capstone: a documentation assistant — notebook
#
# The companion of [docs/13-capstone.md](../docs/13-capstone.md). We build the assistant of
# `llmlab assistant` step by step over three short notes about Quillmate, a note-taking tool
# that does not exist, so SmolLM2 cannot answer from memory: whatever it gets right comes from
# the notes.
#
# 1. **structure chunks**: cut a note along its headings; each chunk carries its heading path
#    (the header line that gets embedded) and its parent section (what the answerer reads);
# 2. **retrieval** for a paraphrased question, through `Assistant`;
# 3. the **relevance gate**: abstain, without a model call, when nothing retrieved is similar
#    enough to the question;
# 4. the **grounded prompt**: numbered passages, an answer that cites `[n]`, citations resolved
#    to `file § section`;
# 5. the **LM reranker**: SmolLM2 re-orders the candidates by how well each lets it write the question.
#
# SmolLM2 is loaded once, in step 4 (a few seconds); steps 1-3 use only the MiniLM encoder.

# %%
import shutil
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt

import llmlab
from llmlab.assistant.config import AssistantConfig
from llmlab.assistant.pipeline import Assistant
from llmlab.rag.chunking import chunk_document
from llmlab.rag.embed import Embedder
from llmlab.rag.ingest import iter_files, read_document
from llmlab.rag.rerank import LMReranker
from llmlab.rag.store import Store

OUT = Path("out")
# The three notes ship in the repository's examples/; copy them beside us, so that the sources
# (and citations) read out/notes/sync.md, and so that you can edit them for the "try this" prompts.
EXAMPLES = Path(llmlab.__file__).resolve().parents[2] / "examples" / "assistant" / "notes"
NOTES = OUT / "notes"
shutil.rmtree(NOTES, ignore_errors=True)
shutil.copytree(EXAMPLES, NOTES)
print(sorted(p.name for p in NOTES.iterdir()))

# %% [markdown]
# ## 1. Chunks that follow the headings
#
# `chunk_document(..., method="structure")` parses the note's outline (markdown `#` headings here)
# and never lets a chunk cross a section. Every chunk's text starts with a **header line**, the
# heading path, because a chunk deep in a section rarely names its subject; that line is part of
# what is embedded and indexed. Every chunk also carries a **window**: its whole section when the
# section fits `parent_tokens`, which is what the answerer will read.
#
# At `size=200` each section of these notes is one chunk, so the window is the chunk itself. To see
# the two differ, we cut `sync.md` into chunks of at most 40 MiniLM tokens.

# %%
embedder = Embedder()                                   # MiniLM, offline; sizes are in its tokens
doc = read_document(NOTES / "sync.md")
for size in (200, 40):
    chunks = chunk_document(doc.text, embedder.count_tokens, method="structure", size=size, title=doc.title)
    print(f"size {size}: {len(chunks)} chunks")


def show(text: str, width: int = 84) -> list[str]:
    return textwrap.wrap(" ".join(text.split()), width) or [""]


for i, c in enumerate(chunks, 1):
    header, body = c.text.split("\n", 1)
    print(f"\nchunk {i}  chars [{c.start}, {c.end})  section: {c.section}")
    print(f"  ┌─ header │ {header}")
    for line in show(body):
        print(f"  ├─ body   │ {line}")
    same = "the chunk itself" if c.window == c.text else f"{embedder.count_tokens(c.window)} tokens"
    print(f"  └─ window │ ({same}) " + show(c.window.split('\n', 1)[1], 60)[0] + " ...")

# %% [markdown]
# The three chunks of *Conflicts* match a question on their own words, but all hand the answerer
# the same 72-token section: small pieces for matching, the whole section for answering.
#
# ## 2. Index the notes, ask a paraphrased question
#
# This is what `llmlab assistant index out/notes --store out/kb` does: structure chunks of 200
# tokens, embedded by MiniLM, stored in SQLite beside BM25 and an HNSW graph (chapter 4).
# `Assistant` opens the store; `rerank=False` keeps SmolLM2 out of retrieval for now, so this is
# hybrid search (dense + BM25, weighted fusion) alone.

# %%
kb = OUT / "kb"
shutil.rmtree(kb, ignore_errors=True)                   # a fresh store each run
store = Store(kb, create=True)
docs = [read_document(p) for p in iter_files([NOTES])]
stats = store.index(docs, embedder, [], "structure", 200, 0)
store.close()
print({k: stats[k] for k in ("documents", "chunks", "embedded")})

config = AssistantConfig(rerank=False, k=3, max_new_tokens=40)
assistant = Assistant(kb, config)
question = "what happens if I edit the same note on my laptop and my desktop?"
hits = assistant.retrieve(question)
print(f"\n{question!r}")
for rank, h in enumerate(hits, 1):
    print(f"  {rank}. {h['score']:.3f}  {Path(h['source']).name:13} § {h['section']}")

# %% [markdown]
# The question says "my laptop and my desktop" where the note says "two machines", yet
# *Conflicts* comes first: the dense side matches by meaning, BM25 by "same note" and "edit(ed)",
# and the header line adds "syncing notes between machines" to the chunk.
#
# ## 3. The relevance gate
#
# Retrieval always returns *something*, even for a question the notes cannot answer. The fused
# scores cannot tell: they are normalised per query, so an off-topic top hit can score nearly as
# high as an on-topic one (the `fused` column below). `Assistant.support` is the highest *cosine*
# similarity between the question and a retrieved chunk, a fixed scale across questions. Below
# `min_similarity` the assistant abstains without asking the model.

# %%
questions = [
    ("what happens if I edit the same note on my laptop and my desktop?", True),
    ("can I stop syncing for a while?", True),
    ("how do I jump quickly to another note?", True),
    ("how much disk space do I need?", True),
    ("what is the capital of France?", False),
    ("how do I bake sourdough bread?", False),
    ("how do I make my python class work with a with statement?", False),
]
support = []
print("fused  support")
for q, on_topic in questions:
    found = assistant.retrieve(q)
    support.append(assistant.support(q, found))
    print(f"{found[0]['score']:5.2f}  {support[-1]:7.3f}  {'on ' if on_topic else 'off'}  {q}")

plt.figure(figsize=(9, 3.2))
labels = [textwrap.shorten(q, 44, placeholder=" ...") for q, _ in questions]
plt.barh(labels, support, color=["tab:blue" if on else "tab:gray" for _, on in questions])
plt.axvline(config.min_similarity, color="tab:red", ls="--", label=f"min_similarity = {config.min_similarity}")
plt.gca().invert_yaxis(); plt.xlabel("support: best cosine of a retrieved chunk"); plt.legend(loc="lower right")
plt.tight_layout(); plt.show()

off_topic = questions[4][0]
gated = assistant.answer(off_topic)                     # no model call: the gate answers
print(f"{off_topic!r} -> {gated['answer']!r} (abstained: {gated['abstained']}, timings {gated['timings_ms']})")

# %% [markdown]
# Blue bars are questions the notes answer, gray ones they do not. The Python question is the
# closest miss: a how-to about software, like the notes, that nothing in them answers.
#
# ## 4. The grounded prompt, the answer, the citations
#
# `prepare` retrieves, swaps each chunk for its parent window cut to `passage_words` (100) words
# around the chunk (said once when two chunks share it; these notes' sections are shorter than
# that, so nothing is cut here), packs what fits the token budget and numbers the passages. The system turn sets the rules:
# answer only from the passages, cite `[n]`, or say the fixed abstention sentence. Preparing the
# first answer loads SmolLM2 (its tokenizer measures the budget).

# %%
prepared = assistant.prepare(question)
for m in prepared.messages:
    print(f"--- {m['role']}\n{m['content']}")

# %% [markdown]
# Passage [2] is the opening paragraph of `install.md`: it sits above the first subheading, so its
# parent section is the whole document. Each heading path appears twice, as the passage's label
# and as the first line of its parent window (the chunker writes it there).
#
# Now the base SmolLM2-135M-Instruct answers (greedy, at most 40 tokens). A model this small often
# answers beside the point, without citing, or cites a passage that does not hold the answer;
# teaching it to quote, cite and abstain is what `llmlab assistant tune` is for.

# %%
reply = assistant.answer(question)
print(reply["answer"])
print("citations:", [c["label"] for c in reply["citations"]] or "none", "| abstained:", reply["abstained"],
      "| timings ms:", reply["timings_ms"])

# %% [markdown]
# Reading an answer back is plain string work, so we can check it without the model: `finish`
# keeps the distinct `[n]` in order of first use, drops numbers with no passage, and resolves each
# to the file and section it came from.

# %%
done = assistant.finish("Both versions are kept; the other one is saved as a .conflict file [1]. "
                        "Syncing copies changed files [3][1], not [7].", prepared)
for c in done["citations"]:
    print(f"[{c['number']}] {c['label']}")

# %% [markdown]
# ## 5. The LM reranker
#
# The default pipeline (`rerank=True`) hands the first `candidates` (20) hybrid hits to SmolLM2
# and keeps the best `k`. Here we rerank our three hits. SmolLM2 scores each passage by
# query likelihood: the mean log-probability of the question's tokens after "Passage: ... Please
# write a question based on this passage." (UPR, Sachan et al. 2022). The question is the same for
# every candidate, so the scores compare. `assistant.helper` is the base chat model, here the one
# loaded above (with a tuned answerer it would be a second, untuned copy, so that tuning never
# changes retrieval).

# %%
reranker = LMReranker(assistant.helper)
before = hits                                           # the three hits of step 2
after = reranker.rerank(question, before, top=len(before), keep=len(before))
rank_before = {h["id"]: r for r, h in enumerate(before, 1)}
print(f"{'after':>5} {'before':>6} {'LM score':>9}  section")
for r, h in enumerate(after, 1):
    print(f"{r:5d} {rank_before[h['id']]:6d} {h['lm_score']:9.3f}  {h['section']}")
print(f"scored {len(before)} passages in {reranker.last_ms:.0f} ms")
assistant.close()

# %% [markdown]
# ## Try this
#
# 1. Edit `out/notes/sync.md` (say that conflicts now keep the newer version only), then index
#    into the *existing* store: `Store(kb).index([read_document(p) for p in iter_files([NOTES])],
#    embedder, [], "structure", 200, 0)` (the index cell starts a fresh one). Predict first: how
#    many chunks does it embed (`"embedded"`), and which? Open a new `Assistant` and ask again.
# 2. Find the gate's edge: write on-topic questions that share no word with the notes ("does it
#    work on a Chromebook?") and off-topic ones that share many ("what is a vault in banking?").
#    Which side of `min_similarity` does each land on?
# 3. Rerank with `LMReranker(assistant.helper, method="yesno")` instead of query likelihood. Does
#    the order change? Look at the scores: does a 135M model answer "Yes" to everything?
