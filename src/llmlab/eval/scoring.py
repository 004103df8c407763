"""Scoring requests against a model: the three questions an evaluation harness asks.

    loglikelihoods          how likely is `continuation` after `context`?  (multiple choice)
    rolling_loglikelihoods  how likely is this whole text?                 (bits per byte)
    generate_until          what does the model write after this prompt?   (exact match)

Tokenization follows EleutherAI's lm-evaluation-harness, so both give the same numbers on the same
model (tests/eval/test_lm_eval_parity.py checks it):
- spaces at the end of the context move to the start of the continuation ("Answer: " + "Paris"
  is scored as "Answer:" + " Paris"): BPE vocabularies glue a space to the word after it, so
  " Paris" is one common token where "Paris" after a dangling " " is two rare ones;
- the continuation's tokens are encode(context + continuation) minus the first len(encode(context))
  tokens, so a merge across the boundary is tokenized as the model would see the whole string;
- an empty context is the end-of-text token, and a sequence longer than the model's context keeps
  its last tokens.

Shared contexts are run once. HellaSwag asks for four endings of one context, ARC for four answers
of one question; scoring each pair alone would run the context four times. Instead the context and
every continuation go into one row, as a tree:

    row        [ c1 c2 c3 c4 | a1 a2 | b1 b2 b3 | d1 ]     context, then each choice (minus its last token)
    positions  [  0  1  2  3 |  4  5 |  4  5  6 |  4 ]     every choice starts where the context ends
    attention  a choice's tokens see the context and the earlier tokens of their own choice only

so each choice computes exactly what it would alone (the same positions, the same keys), and the
context's keys are computed once. Rows of many documents are then padded into one batch, and the
vocabulary projection runs only at the positions whose prediction is scored (`logits_mask`): with
SmolLM2's 49,152-token vocabulary that projection is ~20% of a position's FLOPs, and its (T, V)
float32 logits would be 200 KB a position.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmlab.core.errors import LLMLabError

PAD_BRANCH = -1   # padding: sees only other padding, and nothing real sees it


@dataclass(frozen=True)
class Request:
    context: str
    continuation: str


@dataclass(frozen=True)
class Loglikelihood:
    logprob: float      # sum of the continuation's token log-probabilities (nats)
    is_greedy: bool     # every continuation token is the model's argmax at its position
    tokens: int         # how many tokens the continuation is


def context_token(tokenizer) -> int:
    """The token an empty context becomes: end-of-text (lm-eval's `prefix_token`)."""
    token = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.bos_id
    if token is None:
        raise LLMLabError("the tokenizer has no end-of-text (or BOS) token, which scoring a text with no "
                          "context needs as its first token; give the tokenizer an eos token")
    return token


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval tokenizes them (see the module docstring)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    prefix = [tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id is not None else []
    if not context:
        return prefix or [context_token(tokenizer)], tokenizer.encode(continuation)
    context_ids = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    return prefix + context_ids, whole[len(context_ids):]


@dataclass
class _Row:
    """One row of a batch: a context and the continuations that share it (a tree, see above)."""
    context: list[int]
    branches: list[tuple[int, list[int]]]    # (request index, continuation ids)

    def tokens(self) -> int:
        return len(self.context) + sum(len(c) - 1 for _, c in self.branches)


def _rows(encoded: list[tuple[list[int], list[int]]], block_size: int) -> list[_Row]:
    """Group requests by context; a group too long for the context window is split, and a single
    request too long keeps its last block_size + 1 tokens (the context shrinks from the left). A
    continuation longer than the window by itself (a long answer, a small model) is scored on its
    last block_size tokens only, each with the continuation's own earlier tokens as context."""
    groups: dict[tuple[int, ...], _Row] = {}
    for i, (ctx, cont) in enumerate(encoded):
        if not cont:
            raise LLMLabError(f"request {i} has an empty continuation: there is nothing to score")
        row = groups.setdefault(tuple(ctx), _Row(list(ctx), []))
        row.branches.append((i, cont))
    rows = []
    for row in groups.values():
        if row.tokens() <= block_size:
            rows.append(row)
            continue
        for i, cont in row.branches:   # one request per row, truncated as lm-eval does
            whole = (row.context + cont)[-(block_size + 1):]
            n_ctx = max(len(whole) - len(cont), 1)
            rows.append(_Row(whole[:n_ctx], [(i, whole[n_ctx:])]))
    return rows


def _batches(rows: list[_Row], max_batch_tokens: int) -> Iterator[list[_Row]]:
    """Rows sorted longest first, cut into batches of at most max_batch_tokens padded tokens."""
    rows = sorted(rows, key=lambda r: -r.tokens())
    batch: list[_Row] = []
    for row in rows:
        if batch and batch[0].tokens() * (len(batch) + 1) > max_batch_tokens:
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


def _layout(batch: list[_Row], device) -> dict:
    """The padded tensors of one batch: ids, positions, tree mask, and where each score comes from."""
    T = max(r.tokens() for r in batch)
    ids = torch.zeros(len(batch), T, dtype=torch.long)
    pos = torch.zeros(len(batch), T, dtype=torch.long)
    branch = torch.full((len(batch), T), PAD_BRANCH, dtype=torch.long)
    scored = []   # (request index, row, [column predicting each continuation token], continuation ids)
    for b, row in enumerate(batch):
        n = len(row.context)
        ids[b, :n], pos[b, :n], branch[b, :n] = torch.tensor(row.context), torch.arange(n), 0
        col = n
        for k, (i, cont) in enumerate(row.branches, start=1):
            m = len(cont) - 1
            ids[b, col:col + m] = torch.tensor(cont[:-1], dtype=torch.long)
            pos[b, col:col + m] = torch.arange(n, n + m)
            branch[b, col:col + m] = k
            # the context's last token predicts the first continuation token, then each of ours the next
            scored.append((i, b, [n - 1] + list(range(col, col + m)), cont))
            col += m
        pos[b, col:] = torch.arange(T - col)
    # token j is visible to token i: j is context or on i's own branch (pads: on their own), and not later
    same = (branch[:, None, :] == branch[:, :, None]) | ((branch[:, None, :] == 0) & (branch[:, :, None] != PAD_BRANCH))
    mask = same & (pos[:, None, :] <= pos[:, :, None])
    wanted = torch.zeros(len(batch), T, dtype=torch.bool)
    for _, b, cols, _ in scored:
        wanted[b, cols] = True
    return {"ids": ids.to(device), "positions": pos.to(device), "mask": mask[:, None].to(device),
            "wanted": wanted.to(device), "scored": scored}


def loglikelihoods(model: torch.nn.Module, tokenizer, requests: list[Request], *, device: torch.device | str = "cpu",
                   max_batch_tokens: int = 4096, progress: str | None = None) -> list[Loglikelihood]:
    """The log-likelihood of each request's continuation given its context, in request order."""
    from llmlab.core.progress import progress as progress_bar

    encoded = [encode_pair(tokenizer, r.context, r.continuation) for r in requests]
    rows = _rows(encoded, model.config.block_size)
    results: list[Loglikelihood | None] = [None] * len(requests)
    model.eval()
    bar = progress_bar(total=len(requests), desc=progress, unit="req", disable=None if progress else True)
    with bar, torch.no_grad():
        for batch in _batches(rows, max_batch_tokens):
            lay = _layout(batch, device)
            out = model(lay["ids"], positions=lay["positions"], attn_mask=lay["mask"], logits_mask=lay["wanted"])
            logits = out["logits"]                                           # (N, V): the wanted positions, row-major
            logprobs = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
            # where each (row, column) landed among the N wanted positions
            index = torch.full(lay["wanted"].shape, -1, dtype=torch.long, device=logprobs.device)
            index[lay["wanted"]] = torch.arange(logprobs.size(0), device=logprobs.device)
            for i, b, cols, cont in lay["scored"]:
                lp = logprobs[index[b, cols]]                                  # (len(cont), V)
                target = torch.tensor(cont, device=lp.device)
                results[i] = Loglikelihood(float(lp.gather(1, target[:, None]).sum()),
                                           bool((lp.argmax(dim=-1) == target).all()), len(cont))
            bar.update(len(lay["scored"]))
    return results


def rolling_loglikelihoods(model: torch.nn.Module, tokenizer, texts: list[str], *, device: torch.device | str = "cpu",
                           progress: str | None = None) -> list[tuple[float, int]]:
    """(summed log-probability of every token of the text, tokens) per text. The text follows the
    end-of-text token, so its first token is scored too. A text longer than the context is scored
    in windows that each predict the next block_size tokens, as lm-eval's rolling windows do: each
    window is a full context, so the last, partial one also sees the block_size tokens before it
    (llmlab.eval.perplexity's windows with stride = ctx would start it nearly cold)."""
    from llmlab.core.progress import progress as progress_bar

    out, ctx = [], model.config.block_size
    model.eval()
    with torch.no_grad(), progress_bar(total=len(texts), desc=progress, unit="text",
                                       disable=None if progress else True) as bar:
        for text in texts:
            ids = [context_token(tokenizer)] + tokenizer.encode(text)
            total, done = 0.0, 1                              # ids[done:] are still to be scored
            while done < len(ids):
                end = min(done + ctx, len(ids))
                start = max(0, end - ctx - 1)                 # the window feeds ids[start:end - 1]
                window = torch.tensor([ids[start:end - 1]], device=device)
                logits = model(window)["logits"][0, done - start - 1:].float()
                targets = torch.tensor(ids[done:end], device=logits.device)
                total += float(F.log_softmax(logits, dim=-1).gather(1, targets[:, None]).sum())
                done = end
            out.append((total, len(ids) - 1))
            bar.update(1)
    return out


def generate_until(model: torch.nn.Module, tokenizer, prompts: list[str], stop: list[list[str]],
                   max_new_tokens: list[int], *, device: torch.device | str = "cpu", max_batch: int = 32) -> list[str]:
    """Greedy completions of raw prompts (no chat template), each cut at the first of its stop strings.
    Batched through the continuous-batching engine; greedy output equals generating one at a time."""
    from llmlab.infer.engine import Engine
    from llmlab.infer.sampling import SamplingConfig

    if not (len(prompts) == len(stop) == len(max_new_tokens)):
        raise LLMLabError(f"{len(prompts)} prompts, {len(stop)} stop lists, {len(max_new_tokens)} lengths: give one each")
    if not prompts:
        return []
    engine = Engine(model, tokenizer, torch.device(device))
    configs = [SamplingConfig(max_new_tokens=n, temperature=0.0, stop=list(s)) for s, n in zip(stop, max_new_tokens)]
    # A prompt too long for the context keeps its last tokens, leaving room for the answer (lm-eval's rule).
    encoded = [engine.encode_prompt(p, raw=True)[-(model.config.block_size - n):] for p, n in zip(prompts, max_new_tokens)]
    completions = engine.generate_batch(encoded, configs, raw=True, max_batch=max_batch)
    texts = []
    for completion, stops in zip(completions, stop):
        text = completion.text
        for s in stops:   # the engine withholds a stop string; cut again in case one spans the last tokens
            if s and s in text:
                text = text[:text.index(s)]
        texts.append(text)
    return texts
