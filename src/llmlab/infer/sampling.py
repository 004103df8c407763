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
    presence_penalty: float = field(default=0.0, metadata={"help": "subtract this once from every seen token (OpenAI; 0: off)"})
    stop: list[str] = field(default_factory=list, metadata={"help": "stop when the text ends with one of these strings"})
    stop_token_ids: list[int] = field(default_factory=list, metadata={"help": "extra token ids that end generation"})
    ignore_eos: bool = field(default=False, metadata={"help": "keep generating past the end-of-sequence token"})
    seed: int | None = field(default=None, metadata={"help": "random seed for sampling"})
    logprobs: bool = field(default=False, metadata={"help": "return the log-probability of each chosen token"})
    top_logprobs: int = field(default=0, metadata={"help": "with logprobs: also the k most likely tokens at each step (0-20)"})

    def __post_init__(self) -> None:
        from llmlab.core.config import check, check_fields

        check_fields(self)
        check(self, "max_new_tokens", self.max_new_tokens >= 1, "must be at least 1")
        check(self, "temperature", self.temperature >= 0, "must be 0 (greedy) or more")
        check(self, "top_k", self.top_k >= 0, "must be 0 (off) or more")
        check(self, "top_p", 0 < self.top_p <= 1, "must be in (0, 1]; 1 is off")
        check(self, "min_p", 0 <= self.min_p < 1, "must be in [0, 1); 0 is off")
        check(self, "repetition_penalty", self.repetition_penalty > 0, "must be positive; 1 is off")
        check(self, "top_logprobs", 0 <= self.top_logprobs <= 20, "must be in [0, 20]")


@dataclass
class RowSampling:
    """Per-row sampling parameters as (B,) tensors, so one batch can mix requests: a greedy row
    beside a sampled one, each with its own temperature, filters, penalties and random generator.
    Built once per batch (`for_rows`), not per step; the flags say which stages any row uses, so
    a batch that needs no sort or penalty pays for none."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor
    repetition_penalty: torch.Tensor
    frequency_penalty: torch.Tensor
    presence_penalty: torch.Tensor
    generators: list[torch.Generator | None]
    uses: frozenset[str] = frozenset()

    @classmethod
    def for_rows(cls, configs: list[SamplingConfig], device: torch.device | str = "cpu",
                 generators: list[torch.Generator | None] | None = None) -> "RowSampling":
        def column(name: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([getattr(c, name) for c in configs], dtype=dtype, device=device)

        if generators is None:
            generators = [torch.Generator().manual_seed(c.seed) if c.seed is not None else None for c in configs]
        uses = {name for name, on in (
            ("sample", any(c.temperature > 0 for c in configs)),
            ("top_k", any(c.top_k > 0 and c.temperature > 0 for c in configs)),
            ("top_p", any(c.top_p < 1.0 and c.temperature > 0 for c in configs)),
            ("min_p", any(c.min_p > 0.0 and c.temperature > 0 for c in configs)),
            ("penalty", any(c.repetition_penalty != 1.0 or c.frequency_penalty != 0.0 or c.presence_penalty != 0.0
                            for c in configs))) if on}
        return cls(column("temperature", torch.float32), column("top_k", torch.long), column("top_p", torch.float32),
                   column("min_p", torch.float32), column("repetition_penalty", torch.float32),
                   column("frequency_penalty", torch.float32), column("presence_penalty", torch.float32),
                   list(generators), frozenset(uses))


def filter_logits(logits: torch.Tensor, top_k: int | torch.Tensor = 0, top_p: float | torch.Tensor = 1.0,
                  min_p: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Set the logits of excluded tokens to -inf, per row (each argument a number or a (B,) tensor).
    top-p is nucleus sampling (Holtzman et al. 2020, arXiv:1904.09751), applied after top-k;
    min-p keeps tokens with p >= min_p * p_max (Nguyen et al. 2024, arXiv:2407.01082)."""
    B, V = logits.shape
    as_col = lambda value, dtype: torch.as_tensor(value, dtype=dtype, device=logits.device).expand(B)[:, None]
    top_k, top_p, min_p = as_col(top_k, torch.long), as_col(top_p, torch.float32), as_col(min_p, torch.float32)
    # One descending sort serves all three filters; the verdicts are scattered back at the end.
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    rank = torch.arange(V, device=logits.device)[None, :]
    drop = (top_k > 0) & (rank >= top_k)
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(-1)
    drop |= (probs.cumsum(-1) - probs >= top_p) & (top_p < 1.0)   # the tokens before already reach top_p
    drop |= probs < min_p * probs[:, :1]                           # probs[:, 0] is each row's top token
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def apply_penalties(logits: torch.Tensor, history: torch.Tensor, config: SamplingConfig | RowSampling,
                    prompt_len: int | torch.Tensor | None = None) -> torch.Tensor:
    """history (B, N) ids already in the sequence (prompt, then generated), -1 for padding.
    prompt_len (an int or (B,)): how many leading columns of each row are prompt. The repetition
    penalty looks at the whole history (CTRL, as transformers applies it); the presence and frequency
    penalties at the generated tokens only (OpenAI's meaning, as vLLM applies them). None: all count."""
    if isinstance(config, SamplingConfig):
        config = RowSampling.for_rows([config], logits.device, generators=[None])
    if "penalty" not in config.uses:
        return logits
    real = history >= 0
    ids = history.clamp(min=0)
    counts = torch.zeros_like(logits).scatter_add_(1, ids, real.to(logits.dtype))
    generated = counts
    if prompt_len is not None:
        column = torch.arange(history.size(1), device=history.device)[None, :]
        later = real & (column >= torch.as_tensor(prompt_len, device=history.device).reshape(-1, 1))
        generated = torch.zeros_like(logits).scatter_add_(1, ids, later.to(logits.dtype))
    rep = config.repetition_penalty[:, None].to(logits.device)
    # CTRL's penalty (Keskar et al. 2019): shrink a seen token's logit towards "less likely".
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(counts > 0, penalised, logits)
    logits = logits - config.frequency_penalty[:, None].to(logits.device) * generated
    return logits - config.presence_penalty[:, None].to(logits.device) * (generated > 0)


def sample_next(logits: torch.Tensor, config: SamplingConfig | RowSampling, history: torch.Tensor | None = None,
                generator: torch.Generator | None = None,
                prompt_len: int | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V) logits -> (next ids (B,), their log-probabilities under the final distribution (B,)).

    config: one SamplingConfig for every row (with `generator`), or per-row `RowSampling`."""
    next_ids, logprobs = sample_distribution(logits, config, history, generator, prompt_len)
    return next_ids, logprobs.gather(-1, next_ids[:, None]).squeeze(1)


def sample_distribution(logits: torch.Tensor, config: SamplingConfig | RowSampling,
                        history: torch.Tensor | None = None, generator: torch.Generator | None = None,
                        prompt_len: int | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """As sample_next, but with the whole final distribution: (next ids (B,), log-probabilities (B, V)),
    after penalties, temperature and filters (OpenAI's top_logprobs are read from it)."""
    if isinstance(config, SamplingConfig):
        config = RowSampling.for_rows([config] * logits.size(0), logits.device, [generator] * logits.size(0))
    logits = logits.float()
    if history is not None:
        logits = apply_penalties(logits, history, config, prompt_len)
    next_ids = logits.argmax(-1)
    logprobs = logits.log_softmax(-1)
    if "sample" in config.uses:
        sampled = config.temperature.to(logits.device) > 0
        temperature = torch.where(sampled, config.temperature.to(logits.device), 1.0)[:, None]
        scaled = logits / temperature
        if config.uses & {"top_k", "top_p", "min_p"}:
            scaled = filter_logits(scaled, config.top_k, config.top_p, config.min_p)
        sampled_logprobs = scaled.log_softmax(-1)
        probs = sampled_logprobs.exp().cpu()
        for b in sampled.nonzero().flatten().tolist():
            next_ids[b] = int(torch.multinomial(probs[b], 1, generator=config.generators[b]))
        logprobs = torch.where(sampled[:, None], sampled_logprobs, logprobs)
    return next_ids, logprobs
