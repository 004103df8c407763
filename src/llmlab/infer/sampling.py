"""Turning the last position's logits into the next token.

Order of operations (each optional): repetition penalty -> frequency penalty -> temperature ->
top-k -> top-p -> min-p -> sample (or argmax when temperature is 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingConfig:
    max_new_tokens: int = field(default=256, metadata={"help": "tokens to generate at most"})
    temperature: float = field(default=0.7, metadata={"help": "softmax temperature; 0 = greedy"})
    top_k: int = field(default=0, metadata={"help": "keep the k most likely tokens (0: off)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling: smallest set with this much probability (1: off)"})
    min_p: float = field(default=0.0, metadata={"help": "drop tokens below min_p x the top token's probability (0: off)"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "divide logits of already-seen tokens by this (CTRL; 1: off)"})
    frequency_penalty: float = field(default=0.0, metadata={"help": "subtract this x the count of each seen token (OpenAI; 0: off)"})
    stop: list[str] = field(default_factory=list, metadata={"help": "stop when the text ends with one of these strings"})
    stop_token_ids: list[int] = field(default_factory=list, metadata={"help": "extra token ids that end generation"})
    ignore_eos: bool = field(default=False, metadata={"help": "keep generating past the end-of-sequence token"})
    seed: int | None = field(default=None, metadata={"help": "random seed for sampling"})
    logprobs: bool = field(default=False, metadata={"help": "return the log-probability of each chosen token"})


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Set the logits of excluded tokens to -inf. top-p is nucleus sampling (Holtzman et al. 2020,
    arXiv:1904.09751); min-p keeps tokens with p >= min_p * p_max (Nguyen et al. 2024, arXiv:2407.01082)."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs >= top_p   # the tokens before already reach top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    if min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, float("-inf"))
    return logits


def apply_penalties(logits: torch.Tensor, history: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """history (B, N) ids already in the sequence (prompt + generated), -1 for padding."""
    if config.repetition_penalty == 1.0 and config.frequency_penalty == 0.0:
        return logits
    vocab = logits.size(-1)
    counts = torch.zeros_like(logits)
    valid = history >= 0
    counts.scatter_add_(1, history.clamp(min=0), valid.to(logits.dtype))
    seen = counts > 0
    if config.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / config.repetition_penalty, logits * config.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if config.frequency_penalty:
        logits = logits - config.frequency_penalty * counts[:, :vocab]
    return logits


def sample_next(logits: torch.Tensor, config: SamplingConfig, history: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V) logits -> (next ids (B,), their log-probabilities under the final distribution (B,))."""
    logits = logits.float()
    if history is not None:
        logits = apply_penalties(logits, history, config)
    if config.temperature <= 0:
        next_ids = logits.argmax(-1)
        logprobs = logits.log_softmax(-1)
    else:
        logits = filter_logits(logits / config.temperature, config.top_k, config.top_p, config.min_p)
        logprobs = logits.log_softmax(-1)
        next_ids = torch.multinomial(logprobs.exp().cpu(), 1, generator=generator).squeeze(1).to(logits.device)
    return next_ids, logprobs.gather(-1, next_ids[:, None]).squeeze(1)
