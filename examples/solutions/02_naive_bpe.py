"""Chapter 2, exercise: the textbook BPE loop gives the same merges as llmlab's `train_bpe`.

The textbook loop (Sennrich et al. 2016; minbpe's `BasicTokenizer` / `RegexTokenizer`) recounts every
adjacent pair of the whole corpus after each merge: O(merges x corpus). `train_bpe` keeps the counts
up to date incrementally instead. Both must learn the same merges in the same order, as long as they
agree on three rules:

1. the text is cut into pieces with the same pattern, and pairs never span two pieces;
2. a tie in count goes to the smaller pair (compare (a, b) as tuples of ids);
3. training stops when the best pair occurs fewer than `min_frequency` (2) times.

Run: python examples/solutions/02_naive_bpe.py    (a few seconds; exits non-zero on a mismatch)
"""

from __future__ import annotations

from llmlab.data.shakespeare import shakespeare_text
from llmlab.tokenizer import train_bpe
from llmlab.tokenizer.patterns import pretokenize

PARAGRAPH = """\
First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?

All:
Resolved. resolved.

First Citizen:
First, you know Caius Marcius is chief enemy to the people.

All:
We know't, we know't.

First Citizen:
Let us kill him, and we'll have corn at our own price.
Is't a verdict?
"""


def get_stats(chunks: list[list[int]]) -> dict[tuple[int, int], int]:
    """Count every adjacent pair in every chunk (overlapping pairs count: "aaa" has two (a, a))."""
    counts: dict[tuple[int, int], int] = {}
    for ids in chunks:
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of `pair`, left to right and without overlap, by `new_id`."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def naive_bpe(text: str, n_merges: int, pattern: str = "gpt4", min_frequency: int = 2) -> list[tuple[int, int]]:
    chunks = [list(piece.encode("utf-8")) for piece in pretokenize(text, pattern)]
    merges: list[tuple[int, int]] = []
    for new_id in range(256, 256 + n_merges):
        stats = get_stats(chunks)
        if not stats:
            break
        # Highest count; among equal counts the smallest pair, as train_bpe breaks ties.
        best = min(stats, key=lambda pair: (-stats[pair], pair))
        if stats[best] < min_frequency:
            break
        chunks = [merge(ids, best, new_id) for ids in chunks]
        merges.append(best)
    return merges


def first_difference(a: list, b: list) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def check(name: str, text: str, n_merges: int, show: int = 0) -> None:
    fast = train_bpe(text, 256 + n_merges + 1, pattern="gpt4")    # + 1: <|endoftext|>
    naive = naive_bpe(text, n_merges)
    vocab = [bytes([b]) for b in range(256)]
    for a, b in naive:
        vocab.append(vocab[a] + vocab[b])
    print(f"{name}: {len(naive)} merges from the textbook loop, {len(fast.merges)} from train_bpe")
    for rank, (a, b) in enumerate(naive[:show]):
        print(f"  merge {rank}: {vocab[a]!r} + {vocab[b]!r} -> {vocab[256 + rank]!r} (id {256 + rank})")
    where = first_difference(naive, fast.merges)
    assert where is None, f"{name}: the two trainers disagree from merge {where} on"
    assert fast.vocab[256:256 + len(naive)] == vocab[256:], f"{name}: the same merges must build the same tokens"


def main() -> None:
    check("paragraph", PARAGRAPH, 60, show=8)   # stops early: past 55 merges no pair occurs twice
    check("shakespeare-tiny, first 20,000 characters", shakespeare_text(tiny=True)[:20_000], 150)
    print("OK: the textbook loop and train_bpe learn the same merges, in the same order")


if __name__ == "__main__":
    main()
