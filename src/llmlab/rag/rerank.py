"""Reranking retrieved passages with the local chat model, in one batched forward pass.

    reranker = LMReranker(Engine.load("smollm2"))
    hits = retriever.search(question, k=10)
    best = reranker.rerank(question, hits, top=10, keep=5)     # each hit gains "rerank_score"

Two ways to turn a causal LM into a relevance scorer, both zero-shot:

"likelihood" (default): query likelihood, UPR (Sachan et al. 2022, "Improving Passage Retrieval
    with Zero-Shot Question Generation"). Score a passage by how well it lets the model *write the
    question*: the mean log P(question tokens | "Passage: {p}\nPlease write a question based on
    this passage."). The question is the same for every candidate, so the scores are comparable;
    reading the passage first and the question second lets the model's causal attention do the
    cross-encoding a trained reranker would. Only the question's log-probs matter, so the output
    head (49k wide) runs only at those positions (Transformer.forward's logits_mask).
"yesno": ask "Does the passage answer the question?" and score log P(Yes) - log P(No) at the
    answer position (the pointwise prompting of Liang et al. 2022, HELM's MS MARCO setup, and
    Nogueira et al. 2020's monoT5 without its fine-tuning).

Measured on 14 paraphrased pydocs questions (hybrid first stage with HyDE, MRR@10 0.545; gold
doc in the top 20 for 11 of them): reranking the top 10 with the likelihood score gave 0.595
("lm") / 0.610 ("rrf"), with passage_tokens=96 0.613 / 0.574. The yes/no score alone fell to
0.31 (plain hybrid top 10, from 0.50; blended with the first stage it only got back to ~0.48):
this small model's Yes/No judgement is close to noise, while its question-writing likelihood
still tracks what a passage is about. So "likelihood" is the default. Between the blends neither
won consistently ("lm" ahead in 2 of 4 settings, "rrf" in the other 2); "rrf" is the default as
the safer one: the 135M model's score alone can never push the first stage's best hit far down.
Cost: one forward pass over N x ~215 tokens (passage_tokens=160): on one CPU thread of a shared
2-core machine ~7 s for N=10 and ~14 s for N=20; passage_tokens=96 ranked as well on these.

Batching: the candidates are right-padded to one length. With causal attention a real token never
attends to a later position, so padding after a sequence changes none of its logits, positions
start at 0 for every row, and no mask is needed; candidates are sorted by length first so a batch
pads only to its own longest member. The scores equal unbatched ones (to float rounding).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from llmlab.core.device import autocast
from llmlab.core.errors import LLMLabError
from llmlab.rag.hybrid import reciprocal_rank_fusion

UPR_INSTRUCTION = "Please write a question based on this passage."
YESNO_INSTRUCTION = "Does the passage answer the question? Answer Yes or No."
# The chat template's default system prompt costs ~20 tokens per candidate; a short one is enough.
SYSTEM = "You are a helpful assistant."
_MARK = "\x00PASSAGE\x00"  # where the passage goes in the rendered template (never in real text)
METHODS = ("likelihood", "yesno")


class LMReranker:
    """Scores (question, passage) pairs with `engine.model` (an llmlab Transformer)."""

    def __init__(self, engine, passage_tokens: int = 160, batch_size: int = 8, method: str = "likelihood"):
        if method not in METHODS:
            raise LLMLabError(f"unknown rerank method {method!r}: use one of {', '.join(METHODS)}")
        if passage_tokens < 8:
            raise LLMLabError(f"passage_tokens={passage_tokens} leaves too little of a passage to judge: use 8 or more")
        if batch_size < 1:
            raise LLMLabError(f"batch_size={batch_size}: use 1 or more")
        if not getattr(engine, "has_chat_template", False):
            raise LLMLabError(f"{getattr(engine, 'name', 'the model')} has no chat template; the LM reranker needs "
                              "an instruction-tuned chat model such as smollm2")
        self.engine, self.method = engine, method
        self.passage_tokens, self.batch_size = passage_tokens, batch_size
        self.tokenizer, self.model = engine.tokenizer, engine.model
        self.device = engine.device
        self.dtype = next(self.model.parameters()).dtype
        # bf16 autocast where the weights are float32 on a GPU; float32 on the CPU (bf16 matmuls
        # there are slower, and the scores would drift from the unbatched ones).
        self.amp = torch.bfloat16 if self.device.type == "cuda" and self.dtype == torch.float32 else None
        self.last_ms = 0.0

    # ---- building the sequences ----------------------------------------------------------
    def _template(self, user: str) -> tuple[list[int], list[int]]:
        """Token ids of the chat prompt before and after the passage, for a user message holding _MARK."""
        text = self.tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM},
                                                   {"role": "user", "content": user}], add_generation_prompt=True)
        before, after = text.split(_MARK)
        encode = self.tokenizer.encode
        return encode(before, allowed_special=True), encode(after, allowed_special=True)

    def _passage_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(" ".join(text.split()))[:self.passage_tokens]

    def _sequences(self, question: str, texts: Sequence[str]) -> list[tuple[list[int], int, int]]:
        """(ids, first scored position, number scored) per passage. For "likelihood" the scored
        positions are those *predicting* the question's tokens; for "yesno" the last one."""
        question = " ".join(question.split())
        if self.method == "likelihood":
            before, after = self._template(f"Passage: {_MARK}\n{UPR_INSTRUCTION}")
            q_ids = self.tokenizer.encode(question)
            if not q_ids:
                raise LLMLabError("the question to rerank for is empty: pass the user's question text")
            out = []
            for text in texts:
                prompt = before + self._passage_ids(text) + after
                out.append((prompt + q_ids, len(prompt) - 1, len(q_ids)))
            return out
        before, after = self._template(f"Passage: {_MARK}\nQuestion: {question}\n{YESNO_INSTRUCTION}")
        out = []
        for text in texts:
            ids = before + self._passage_ids(text) + after
            out.append((ids, len(ids) - 1, 1))
        return out

    def _answer_ids(self) -> tuple[int, int]:
        yes, no = self.tokenizer.encode("Yes"), self.tokenizer.encode("No")
        if len(yes) != 1 or len(no) != 1:
            raise LLMLabError(f"the yes/no reranker needs 'Yes' and 'No' to be single tokens in {self.engine.name}'s "
                              "vocabulary; use method='likelihood'")
        return yes[0], no[0]

    # ---- scoring -------------------------------------------------------------------------
    @torch.inference_mode()
    def _score_batch(self, seqs: list[tuple[list[int], int, int]]) -> list[float]:
        width = max(len(ids) for ids, _, _ in seqs)
        if width > self.engine.max_context:
            raise LLMLabError(f"a rerank sequence of {width} tokens exceeds the model's context of "
                              f"{self.engine.max_context}: lower passage_tokens or shorten the question")
        pad = self.tokenizer.eos_id if self.tokenizer.eos_id is not None else 0
        idx = torch.full((len(seqs), width), pad, dtype=torch.long)
        scored = torch.zeros((len(seqs), width), dtype=torch.bool)
        for row, (ids, start, n) in enumerate(seqs):
            idx[row, :len(ids)] = torch.tensor(ids)
            scored[row, start:start + n] = True
        idx, scored = idx.to(self.device), scored.to(self.device)
        with autocast(self.device, self.amp):
            logits = self.model(idx, logits_mask=scored)["logits"].float()            # (N scored, V)
        logp = F.log_softmax(logits, dim=-1)
        counts = [n for _, _, n in seqs]
        if self.method == "yesno":
            yes, no = self._answer_ids()
            return (logp[:, yes] - logp[:, no]).tolist()
        # the token each scored position predicts is the next one in its row
        targets = torch.cat([idx[row, start + 1:start + 1 + n] for row, (_, start, n) in enumerate(seqs)])
        token_logp = logp.gather(1, targets[:, None])[:, 0]
        return [float(part.mean()) for part in token_logp.split(counts)]

    def scores(self, question: str, texts: Sequence[str]) -> np.ndarray:
        """float64 [len(texts)] relevance scores, higher = more relevant (see the module docstring)."""
        t0 = time.perf_counter()
        if not texts:
            return np.zeros(0)
        seqs = self._sequences(question, texts)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
        out = np.zeros(len(seqs))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            out[batch] = self._score_batch([seqs[i] for i in batch])
        self.last_ms = (time.perf_counter() - t0) * 1000
        return out

    def rerank(self, question: str, hits: list[dict], top: int = 10, keep: int = 5,
               blend: str | float = "rrf") -> list[dict]:
        """The first `top` hits re-scored, best `keep` returned (new dicts, "rerank_score" added).

        blend: "lm"   order by the LM score alone;
               "rrf"  reciprocal-rank fusion (k=60) of the first-stage order and the LM order;
               w      a float in [0, 1]: w * z(LM score) + (1 - w) * z(first-stage score), z being
                      the z-score over these candidates (scores on unlike scales made comparable).
        rerank_score is the value the order follows; lm_score keeps the raw LM score.
        """
        if keep < 1 or top < 1:
            raise LLMLabError(f"rerank needs top >= 1 and keep >= 1 (got top={top}, keep={keep})")
        if isinstance(blend, str) and blend not in ("lm", "rrf"):
            raise LLMLabError(f"unknown blend {blend!r}: use 'lm', 'rrf' or a weight in [0, 1]")
        if not isinstance(blend, str) and not 0.0 <= float(blend) <= 1.0:
            raise LLMLabError(f"blend weight {blend} is outside [0, 1]: 1 is the LM score alone, 0 the first stage alone")
        candidates = hits[:top]
        if not candidates:
            return []
        lm = self.scores(question, [h["text"] for h in candidates])
        if blend == "lm":
            final = lm
        elif blend == "rrf":
            lm_order = sorted(range(len(lm)), key=lambda i: -lm[i])
            fused = dict(reciprocal_rank_fusion([list(range(len(lm))), lm_order]))
            final = np.array([fused[i] for i in range(len(lm))])
        else:
            first = np.array([float(h.get("score", 0.0)) for h in candidates])
            final = float(blend) * _z(lm) + (1 - float(blend)) * _z(first)
        order = sorted(range(len(candidates)), key=lambda i: (-final[i], i))  # ties keep first-stage order
        return [{**candidates[i], "rerank_score": float(final[i]), "lm_score": float(lm[i])} for i in order[:keep]]


def _z(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)
