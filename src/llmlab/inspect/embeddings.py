"""Where chosen tokens sit in the embedding space: a 2-D PCA picture and their nearest neighbours.

    embedding_projection(model, tokenizer, ["ROMEO", "JULIET", "king", "queen"])  -> a JSON-able dict
    plot_embeddings(result, "embeddings.png")

Each word's vector is its row of the token-embedding table (table="input", what the model reads)
or of the output head (table="output", what it scores predictions against; with tied embeddings,
Press & Wolf 2017, arXiv:1608.05859, the two are the same matrix). A word the tokenizer splits
into several tokens gets the mean of their rows, and is flagged: that average is a crude stand-in,
since the model itself never sees it (a character-level model makes "ROMEO" five tokens).

The picture is principal component analysis (Pearson 1901): centre the words' vectors, take the
two directions of largest variance (the top right-singular vectors of the centred matrix) and
draw each word at its coordinates along them. How to read it:

  * Each axis says how much of the words' variance it shows ("PC1 (41% of variance)"). The
    distances are faithful only to the extent the two add up to near 100%; with hundreds of
    dimensions and a handful of words they often do not, so check `cosine`, the full pairwise
    cosine similarities, before reading much into closeness.
  * Directions, not the axes' signs, carry meaning: word2vec's king - man + woman ~ queen
    (Mikolov et al. 2013, arXiv:1301.3781) shows up as parallel offsets between pairs.
  * Neighbours (single-token words only) are the vocabulary rows with the highest cosine
    similarity: near-synonyms, case and leading-space variants of the same word ("king", " King")
    are typical for a BPE model; an untrained model's neighbours are noise.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.core.errors import LLMLabError
from llmlab.inspect import plots
from llmlab.inspect.trace import token_text

TABLES = ("input", "output")
CHUNK = 8192          # vocabulary rows compared at once: a 49k x 576 table never needs a full float copy


def _rows(model: nn.Module, table: str, ids: torch.Tensor) -> torch.Tensor:
    """Rows of the chosen table as float32, read through the module so quantized tables work."""
    if table == "input":
        return model.tok_emb(ids).float()
    head = model.lm_head
    if hasattr(head, "dequantize_rows"):          # a quantized head (llmlab.quant.linear)
        return head.dequantize_rows(ids).float()
    return head.weight[ids].float()


def pca_2d(vectors: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """(N, C) -> (coordinates (N, 2), explained-variance ratio of each component). Signs are fixed
    so each component's largest-|value| coordinate is positive (SVD's signs are arbitrary)."""
    centred = vectors.double() - vectors.double().mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(2, vh.size(0))
    coords = torch.zeros(vectors.size(0), 2, dtype=torch.float64)
    coords[:, :k] = centred @ vh[:k].T
    for j in range(k):
        if coords[coords[:, j].abs().argmax(), j] < 0:
            coords[:, j] = -coords[:, j]
    total = float(s.pow(2).sum())
    ratios = [float(s[j] ** 2) / total if total > 0 and j < k else 0.0 for j in range(2)]
    return coords.float(), ratios


def nearest_tokens(model: nn.Module, table: str, queries: torch.Tensor, exclude: list[int],
                   k: int) -> list[list[tuple[int, float]]]:
    """For each query vector (Q, C), the k vocabulary rows of highest cosine similarity, skipping
    the id in `exclude` (its own token). The vocabulary is read CHUNK rows at a time."""
    vocab = model.config.vocab_size
    device = queries.device
    q = F.normalize(queries.float(), dim=-1)
    best_sim = torch.full((q.size(0), 0), float("-inf"), device=device)
    best_ids = torch.zeros((q.size(0), 0), dtype=torch.long, device=device)
    excluded = torch.tensor(exclude, device=device)
    for start in range(0, vocab, CHUNK):
        ids = torch.arange(start, min(start + CHUNK, vocab), device=device)
        sim = q @ F.normalize(_rows(model, table, ids), dim=-1).T                # (Q, chunk)
        sim[ids[None, :] == excluded[:, None]] = float("-inf")
        best_sim = torch.cat([best_sim, sim], dim=1)
        best_ids = torch.cat([best_ids, ids.expand(q.size(0), -1)], dim=1)
        best_sim, order = best_sim.topk(min(k, best_sim.size(1)), dim=1)
        best_ids = best_ids.gather(1, order)
    return [[(int(i), float(s)) for i, s in zip(ids_row, sim_row) if s != float("-inf")]
            for ids_row, sim_row in zip(best_ids.tolist(), best_sim.tolist())]


@torch.no_grad()
def embedding_projection(model: nn.Module, tokenizer, words: list[str], table: str = "input",
                         neighbours: int = 5) -> dict:
    """Embed `words` (each the mean of its tokens' rows), project them onto 2 principal components,
    and list pairwise cosines and, for single-token words, the nearest vocabulary tokens."""
    if table not in TABLES:
        raise LLMLabError(f"--table {table!r}: use input (the token embedding) or output (the head's rows)")
    if len(words) < 2:
        raise LLMLabError(f"--tokens: give at least 2 comma-separated words to compare, got {len(words)}")
    if any(not w for w in words):
        raise LLMLabError("--tokens: an empty word (two commas in a row, or a trailing comma?); remove it")
    if neighbours < 0:
        raise LLMLabError(f"--neighbours {neighbours}: give 0 or more")
    device = next(model.parameters()).device
    entries, vectors = [], []
    for word in words:
        ids = tokenizer.encode(word)
        if not ids:
            raise LLMLabError(f"--tokens: {word!r} encodes to no tokens; choose another word")
        vectors.append(_rows(model, table, torch.tensor(ids, device=device)).mean(0))
        entries.append({"word": word, "ids": ids, "pieces": [token_text(tokenizer, i) for i in ids],
                        "multi_token": len(ids) > 1})
    matrix = torch.stack(vectors)                                               # (N, C)
    coords, ratios = pca_2d(matrix.cpu())
    unit = F.normalize(matrix, dim=-1)
    cosine = (unit @ unit.T).clamp(-1, 1).cpu()

    single = [i for i, e in enumerate(entries) if not e["multi_token"]]
    found = nearest_tokens(model, table, matrix[single], [entries[i]["ids"][0] for i in single],
                           neighbours) if single and neighbours else [[] for _ in single]
    for i, entry in enumerate(entries):
        entry["x"], entry["y"] = float(coords[i, 0]), float(coords[i, 1])
        entry["neighbours"] = None
    for i, near in zip(single, found):
        entries[i]["neighbours"] = [{"id": t, "token": token_text(tokenizer, t), "cosine": s} for t, s in near]
    return {"table": table, "tied": bool(getattr(model.config, "tie_embeddings", False)),
            "words": entries, "explained_variance": ratios, "cosine": cosine.tolist(),
            "note": "multi-token words are the mean of their tokens' rows; neighbours only for single-token words"}


def plot_embeddings(result: dict, path: str | Path) -> Path:
    """A scatter of the words on the first two principal components, each labelled."""
    fig, (ax,) = plots.figure(1, 1, cell=(6.0, 5.0))
    for entry in result["words"]:
        multi = entry["multi_token"]
        ax.scatter([entry["x"]], [entry["y"]], s=30, marker="o",
                   facecolors="none" if multi else "tab:blue", edgecolors="tab:blue")
        ax.annotate(plots.axis_label(entry["word"], 20), (entry["x"], entry["y"]), xytext=(4, 3),
                    textcoords="offset points", fontsize=8)
    pc1, pc2 = result["explained_variance"]
    ax.set_xlabel(f"PC1 ({pc1:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({pc2:.0%} of variance)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    hollow = any(e["multi_token"] for e in result["words"])
    ax.set_title(f"{result['table']} embeddings, PCA of {len(result['words'])} words"
                 + ("\n(hollow: several tokens, their mean)" if hollow else ""), fontsize=9)
    return plots.save(fig, path)
