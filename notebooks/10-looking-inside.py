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
# # 10. Looking inside — notebook
#
# The companion of [docs/10-looking-inside.md](../docs/10-looking-inside.md). We open up
# SmolLM2-135M-Instruct (it ships with `make install`) and look at one prompt in three ways:
#
# 1. the **logit lens**: what each of its 30 layers would predict if the model stopped there;
# 2. **attention maps**: which earlier tokens a head reads;
# 3. **induction heads**: score every head on a copying probe, then **ablate** the best ones and
#    watch the next-token distribution move.
#
# Every probe reads the model through `llmlab.inspect`, which records the residual stream and
# attention weights from `Transformer.forward` and hooks named Linear layers only inside a `with`
# block: outside it the model runs exactly as loaded. The model is loaded once (about 5 s).

# %%
import math
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Image, display

from llmlab.inspect.ablate import ablation_effect, plot_effect
from llmlab.inspect.attention import head_summary, plot_layer
from llmlab.inspect.heads import copy_loss, head_scores, plot_scores, ranked
from llmlab.inspect.lens import format_table, logit_lens, plot_lens
from llmlab.inspect.trace import encode_prompt, parse_heads, token_text, trace
from llmlab.model.source import load_model

OUT = Path("out")
model, tokenizer, _ = load_model("smollm2")
model.eval()
print(f"SmolLM2: {len(model.blocks)} layers x {model.config.n_head} heads, {model.num_params():,} parameters")

# %% [markdown]
# ## The logit lens: the answer arrives late
#
# `trace` runs the prompt once and keeps the residual stream entering every block. `logit_lens`
# reads each of them through the model's own final norm and output head. The last row (`out`) is
# the model itself.

# %%
PROMPT = "The capital of France is Paris. The capital of Italy is"
ids = encode_prompt(tokenizer, PROMPT)
tokens = [token_text(tokenizer, i) for i in ids]
(rome,) = tokenizer.encode(" Rome")
capital = trace(model, ids, attention_layers=[0, 8])
lens = logit_lens(model, capital, tokenizer, target=rome)
print(format_table(lens, tokenizer, every=3))
print(f"' Rome' stays top-1 from layer {lens.first_top1_layer()} of {len(lens.top) - 1}")

# %% [markdown]
# The rank of ` Rome` per layer, on a log scale: thousands through the middle of the network, then a
# fast climb in the last six layers.

# %%
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(range(len(lens.target_rank)), [r + 1 for r in lens.target_rank], "o-", ms=3)
ax.set_yscale("log")
ax.invert_yaxis()
ax.set_xlabel("layer (0 = embedding, 30 = output)")
ax.set_ylabel("rank of ' Rome' + 1")
ax.set_title("logit lens at the last position", fontsize=10)
display(fig)
plt.close(fig)

# %% [markdown]
# The library's heatmap shows every position: the colour is the rank of the text's own next token
# at that depth (light = already predicted), the cell text is the layer's top-1 guess.

# %%
display(Image(filename=plot_lens(lens, tokenizer, OUT / "logit-lens.png")))

# %% [markdown]
# ## Attention: the first token as a sink
#
# Row t of a head's map is the softmax over positions 0..t. `head_summary` gives each head's mean
# entropy (bits) and its mass on the first, previous and own token. In layer 0 heads read broadly;
# by layer 8 nearly all attention parks on the first token, the attention sink.

# %%
for layer in (0, 8):
    rows = head_summary(capital.attentions[layer])
    print(f"layer {layer}: entropy " + " ".join(f"{r['entropy_bits']:.1f}" for r in rows)
          + " | first-token mass " + " ".join(f"{r['first_token']:.2f}" for r in rows))
display(Image(filename=plot_layer(capital.attentions[8], tokens, 8, OUT / "attention-layer8.png",
                                  heads=[0, 1, 2, 3])))

# %% [markdown]
# ## Induction heads
#
# The probe feeds random tokens written twice, `r1 … rn r1 … rn`. In the second copy only copying
# predicts anything, and an induction head at r_j attends to r_{j+1} of the first copy. Its
# score is that attention mass, averaged over the second copy (uniform attention would score
# about 0.01-0.02 here). One forward pass scores all 270 heads.

# %%
scores = head_scores(model, tokenizer, "induction", length=50, batch=4, seed=0)
best = ranked(scores, 5)
print(f"mean induction score over {scores.numel()} heads: {scores.mean():.3f}")
for b in best:
    print(f"  head {b['head']:>5}  {b['score']:.3f}")
display(Image(filename=plot_scores(scores, "induction", OUT / "heads-induction.png", top=10)))

# %% [markdown]
# A picture suggests a story; an ablation tests it. `copy_loss` is the loss on the second copy with
# chosen heads zeroed before `attn.wo` mixes them: intact, with the 5 best induction heads removed,
# and with 5 unremarkable heads removed. (Two probe sequences instead of the CLI's four keep the
# three forward passes quick; `llmlab inspect heads --ablate-top 5` reports 2.98 intact and 11.60
# ablated on four.)

# %%
top5 = parse_heads(",".join(b["head"] for b in best), model)
others = parse_heads("2.0,5.3,9.1,12.4,25.2", model)
print(f"copy loss, nats/token: intact {copy_loss(model, tokenizer, batch=2):.3f}; "
      f"top 5 ablated {copy_loss(model, tokenizer, top5, batch=2):.3f}; "
      f"5 other heads ablated {copy_loss(model, tokenizer, others, batch=2):.3f}; "
      f"a uniform guess over the vocabulary {math.log(model.config.vocab_size):.1f}")

# %% [markdown]
# ## The same heads on a sentence
#
# Made-up words, so that nothing but copying can predict the end. Head 18.6's map, drawn here
# straight from the trace, shows the induction stripe: in the second copy each row's weight sits on
# a line parallel to the diagonal, one past the earlier copy of the current token.

# %%
NONSENSE = ("Zorblat quinx meravol tesh, plindor vask ulmetra fipsy. "
            "Zorblat quinx meravol tesh, plindor vask")
nonsense_ids = encode_prompt(tokenizer, NONSENSE)
nonsense_tokens = [token_text(tokenizer, i) for i in nonsense_ids]
weights = trace(model, nonsense_ids, attention_layers=[18]).attentions[18][6]

fig, ax = plt.subplots(figsize=(6.5, 5.5))
ax.imshow(weights.sqrt().numpy(), cmap="magma", vmin=0, vmax=1)
ax.set_xticks(range(len(nonsense_tokens)), [t.replace(" ", "·") for t in nonsense_tokens], rotation=90, fontsize=6)
ax.set_yticks(range(len(nonsense_tokens)), [t.replace(" ", "·") for t in nonsense_tokens], fontsize=6)
ax.set_xlabel("key (read)")
ax.set_ylabel("query (reading)")
ax.set_title("head 18.6, sqrt of the attention weight", fontsize=10)
display(fig)
plt.close(fig)

# %% [markdown]
# Ablating the five induction heads should destroy the prediction of ` ul` (from `ulmetra`);
# ablating five other heads should barely move it. `ablation_effect` reports KL(before ‖ after) in
# nats and the top tokens on both sides.

# %%
effects = {name: ablation_effect(model, tokenizer, nonsense_ids, heads)
           for name, heads in (("top-5 induction heads", top5), ("5 other heads", others))}
for name, effect in effects.items():
    top = effect["top_token"]
    print(f"{name:>22}: KL {effect['kl_nats']:.3f} nats; {top['token']!r} p {top['prob_before']:.3f} -> "
          f"{top['prob_after']:.4f} (rank {top['rank_after']} after); new top: "
          + ", ".join(f"{t['token']!r} {t['prob']:.2f}" for t in effect["top_after"][:3]))
display(Image(filename=plot_effect(effects["top-5 induction heads"], OUT / "ablate.png")))

# %% [markdown]
# ## Try this
#
# - Change `PROMPT` to "The Eiffel Tower is in the city of" and the target to " Paris". Predict
#   the layer where it becomes top-1 before you run the lens (the chapter measured 29).
# - Ablate only head 18.6 (`parse_heads("18.6", model)`), then the top 2 and the top 10 of
#   `ranked(scores, 10)`. Is the copy loss of the top 5 the sum of the single heads' effects?
# - Pass `mode="mean"` to `ablation_effect` and `copy_loss`. Which ablation is gentler, and why
#   would zeroing a head that writes a constant mislead you?
