"""`ModelConfig`: every architectural choice of the Transformer, as one typed dataclass.

Two families share one model class and differ only in these switches:

    field          GPT-2 style        Llama style
    position       "learned"          "rope"            (Su et al. 2021, arXiv:2104.09864)
    norm           "layernorm"        "rmsnorm"         (Zhang & Sennrich 2019, arXiv:1910.07467)
    mlp            "gelu"             "swiglu"          (Shazeer 2020, arXiv:2002.05202)
                   (GPT-2's tanh approximation; "gelu-exact" is the erf form nanoGPT uses)
    bias           True               False
    n_kv_head      = n_head           < n_head (GQA)    (Ainslie et al. 2023, arXiv:2305.13245)
    tie_embeddings True               optional

A ModelConfig checks itself when built (every size positive, heads that divide, an even head size
for RoPE, ...) and raises `ConfigError` naming the flag and what would fit, so a bad shape fails
before any data or weights are touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from llmlab.core.config import ConfigError, check, check_fields


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _join(values: list[int]) -> str:
    """[1, 2, 3, 6] -> '1, 2, 3 or 6'."""
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


@dataclass
class ModelConfig:
    vocab_size: int = field(default=0, metadata={"help": "vocabulary size (0: taken from the tokenizer)"})
    block_size: int = field(default=256, metadata={"help": "context length in tokens"})
    n_layer: int = field(default=6, metadata={"help": "number of Transformer blocks"})
    n_head: int = field(default=6, metadata={"help": "attention heads (query heads)"})
    n_kv_head: int | None = field(default=None, metadata={"help": "key/value heads for grouped-query attention (None: = n_head)"})
    n_embd: int = field(default=384, metadata={"help": "model width (residual stream size)"})
    head_dim: int | None = field(default=None, metadata={"help": "size of one head (None: n_embd / n_head)"})
    mlp_hidden: int | None = field(default=None, metadata={"help": "MLP hidden size (None: 4*n_embd for gelu, ~8/3*n_embd for swiglu)"})
    position: str = field(default="rope", metadata={"help": "position encoding", "choices": ["learned", "rope"]})
    rope_theta: float = field(default=10000.0, metadata={"help": "RoPE base frequency"})
    norm: str = field(default="rmsnorm", metadata={"help": "normalisation layer", "choices": ["layernorm", "rmsnorm"]})
    norm_eps: float = field(default=1e-5, metadata={"help": "epsilon inside the norm"})
    mlp: str = field(default="swiglu", metadata={"help": "MLP type: gelu (GPT-2's tanh approximation), gelu-exact (erf, as torch's nn.GELU), swiglu", "choices": ["gelu", "gelu-exact", "swiglu"]})
    bias: bool = field(default=False, metadata={"help": "biases in linear layers and LayerNorm"})
    qkv_bias: bool | None = field(default=None, metadata={"help": "biases on q/k/v projections only (Qwen2); None: = bias"})
    tie_embeddings: bool = field(default=True, metadata={"help": "share the token embedding with the output head"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on attention and residual branches"})
    attention: str = field(default="sdpa", metadata={"help": "sdpa (fused kernel) or explicit (readable softmax(QK^T/sqrt(d))V)", "choices": ["sdpa", "explicit"]})

    # Fields that default to None and are derived from others in __post_init__.
    DERIVED = ("n_kv_head", "head_dim", "mlp_hidden", "qkv_bias")

    def __post_init__(self) -> None:
        # Remember which derived fields were given explicitly, so `replace` can re-derive the rest.
        object.__setattr__(self, "_explicit", {n for n in self.DERIVED if getattr(self, n) is not None})
        check_fields(self)
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            check(self, name, getattr(self, name) >= 1, "must be at least 1")
        check(self, "vocab_size", self.vocab_size >= 0, "must be at least 1 (or 0: taken from the tokenizer)")
        for name in ("n_kv_head", "head_dim", "mlp_hidden"):
            check(self, name, getattr(self, name) is None or getattr(self, name) >= 1, "must be at least 1")
        if self.head_dim is None and self.n_embd % self.n_head:
            raise self._indivisible()
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            self.head_dim = self.n_embd // self.n_head
        if self.qkv_bias is None:
            self.qkv_bias = self.bias
        if self.mlp_hidden is None:
            if self.mlp in ("gelu", "gelu-exact"):
                self.mlp_hidden = 4 * self.n_embd
            else:
                # SwiGLU has 3 matrices instead of 2: 2/3 of 4*d keeps the parameter count equal
                # (Shazeer 2020). Round up to a multiple of 64 for efficient matmuls.
                self.mlp_hidden = 64 * ((int(8 * self.n_embd / 3) + 63) // 64)
        if self.n_head % self.n_kv_head:
            # Each key/value head serves n_head / n_kv_head query heads (GQA), so it must divide.
            fits = _join(_divisors(self.n_head))
            raise ConfigError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head}): "
                              f"choose --n-kv-head {fits}")
        if self.position == "rope" and self.head_dim % 2:
            raise self._odd_rope()
        check(self, "rope_theta", self.rope_theta > 0, "must be positive")
        check(self, "norm_eps", self.norm_eps > 0, "must be positive (it keeps the norm away from 0/0)")
        check(self, "dropout", 0 <= self.dropout < 1, "must be in [0, 1): the probability of zeroing an activation")

    def _fitting_heads(self) -> list[int]:
        """Head counts near n_head that split n_embd into whole (and, for RoPE, even) heads."""
        step = 2 if self.position == "rope" else 1
        fits = [d for d in _divisors(self.n_embd) if (self.n_embd // d) % step == 0]
        return sorted(sorted(fits, key=lambda d: (abs(d - self.n_head), d))[:4])

    def _widths(self) -> str:
        """The two n_embd values nearest the given one that n_head splits into fitting heads."""
        m = self.n_head * (2 if self.position == "rope" else 1)
        below, above = (self.n_embd // m) * m, (self.n_embd // m + 1) * m
        return " or ".join(str(w) for w in (below, above) if w >= 1 and w != self.n_embd)

    def _indivisible(self) -> ConfigError:
        heads = self._fitting_heads()
        fits = f"--n-head {_join(heads)}, " if heads else ""
        return ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): each head gets "
                           f"n_embd / n_head dimensions; choose {fits}--n-embd {self._widths()}, "
                           "or set --head-dim explicitly")

    def _odd_rope(self) -> ConfigError:
        # RoPE rotates pairs of dimensions (Su et al. 2021, sec. 3.2), so a head needs an even size.
        why = f"head_dim {self.head_dim} must be even with --position rope (RoPE rotates pairs of dimensions)"
        if "head_dim" in self._explicit:
            return ConfigError(f"--head-dim {self.head_dim}: {why}; choose --head-dim {self.head_dim - 1} or "
                               f"{self.head_dim + 1}, or --position learned")
        heads = self._fitting_heads()
        fits = f"--n-head {_join(heads)}, " if heads else ""
        return ConfigError(f"{why}, and n_embd {self.n_embd} / n_head {self.n_head} = {self.head_dim}: "
                           f"choose {fits}--n-embd {self._widths()}, or --position learned")

    def replace(self, **changes) -> "ModelConfig":
        """A copy with `changes`; derived fields that were not given explicitly are derived again
        (`dataclasses.replace` would keep e.g. the old head_dim after n_embd changed)."""
        current = {f.name: getattr(self, f.name) for f in fields(self)
                   if f.name not in self.DERIVED or f.name in self._explicit}
        return ModelConfig(**{**current, **changes})


# Named model shapes (the training presets in llmlab.train.config pick one and may override fields).
MODEL_PRESETS: dict[str, ModelConfig] = {
    # nanoGPT's documented CPU run: GPT-2 style, 4 layers x 4 heads x 128, context 64, as its train.py
    # and model.py define it: no biases (its `bias = False` default) and the exact erf GELU (nn.GELU).
    "nanogpt-cpu": ModelConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, position="learned",
                               norm="layernorm", mlp="gelu-exact", bias=False, dropout=0.0),
    # Our default for Shakespeare on a laptop CPU: Llama style (RoPE, RMSNorm, SwiGLU).
    "shakespeare-char": ModelConfig(block_size=128, n_layer=4, n_head=4, n_embd=192, position="rope",
                                    norm="rmsnorm", mlp="swiglu", bias=False, dropout=0.0),
    # GPT-2 small (124M) for GPU users.
    "gpt2-124m": ModelConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768,
                             position="learned", norm="layernorm", mlp="gelu", bias=True),
    # A small Llama (GQA) for token datasets made by `llmlab data tokenize`.
    "small-llama": ModelConfig(block_size=256, n_layer=6, n_head=6, n_kv_head=2, n_embd=384,
                               position="rope", norm="rmsnorm", mlp="swiglu"),
}
