"""A decoder-only Transformer that covers GPT-2 and Llama, readable top to bottom.

    norms -> rotary embeddings -> attention -> MLP -> Block -> Transformer

Shapes: B batch, T new tokens, S keys attended to (T without a cache), C = n_embd,
H query heads, K key/value heads, D head_dim. Every block is pre-norm:
    x = x + attn(norm(x));  x = x + mlp(norm(x))
(GPT-2's layout; normalising the input of each branch, not the residual stream, keeps the stream's
gradient path an identity and is what makes deep stacks train without warmup tricks; Xiong et al.
2020, arXiv:2002.04745.)

Linear layers are plain `nn.Linear`s with stable names (attn.wq/wk/wv/wo, mlp.w_up/w_gate/w_down,
lm_head), so LoRA adapters and quantized layers can replace them by module name.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from llmlab.model.config import ModelConfig
from llmlab.model.masks import bottom_right_causal

# ----------------------------------------------------------------------------- norms


class RMSNorm(nn.Module):
    """x / rms(x) * g: LayerNorm without the mean subtraction and bias (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Computed in float32 even under bf16 autocast: the mean of squares loses precision in bf16.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


# ----------------------------------------------------------------------------- rotary embeddings


def rope_frequencies(head_dim: int, max_positions: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, (max_positions, head_dim/2): angle = position * theta^(-2i/D)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+D/2}) of each head by a position-dependent angle.

    x: (B, heads, T, D); cos/sin: (B or 1, 1, T, D/2). Because a rotation by angle(m) on the query
    and angle(n) on the key leaves only angle(m - n) in their dot product, attention scores depend
    on relative position only (RoFormer, Su et al. 2021). The "halves" pairing is the one HF Llama
    checkpoints use.
    """
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return rotated.to(x.dtype)


# ----------------------------------------------------------------------------- attention


class KVCacheLike(Protocol):
    """What attention needs from a KV cache (llmlab.infer implements it). A cache may instead
    define attend(layer, q, k, v) -> (B, H, T, D) and do attention itself (the paged cache)."""

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, K, T, D) at `positions`; return all cached keys/values (B, K, S, D)."""


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.wq = nn.Linear(config.n_embd, config.n_head * config.head_dim, bias=config.qkv_bias)
        self.wk = nn.Linear(config.n_embd, config.n_kv_head * config.head_dim, bias=config.qkv_bias)
        self.wv = nn.Linear(config.n_embd, config.n_kv_head * config.head_dim, bias=config.qkv_bias)
        self.wo = nn.Linear(config.n_head * config.head_dim, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.explicit = config.attention == "explicit"
        # Set by llmlab.infer.compiled_decode: one-token (decode) steps take the explicit form,
        # which the compiler fuses into its graph; prompts keep the fused SDPA kernel.
        self.explicit_decode = False
        self.use_rope = config.position == "rope"

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                kv_cache: KVCacheLike | None = None, positions: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None,
                return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, C) -> (output (B, T, C), weights). attn_mask (B or 1, 1, T, S) bool, True = may
        attend; None is causal attention. return_weights: route to the explicit path and return its
        (B, H, T, S) softmax weights (SDPA never materialises them); else weights is None."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)     # (B, H, T, D)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        if self.use_rope:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if hasattr(kv_cache, "attend"):
            # A paged cache (llmlab.infer.paged_cache) packs many sequences into one row and runs
            # attention per sequence itself; everything else in the model is shared by the pack.
            y = kv_cache.attend(self.layer, q, k, v)                                 # (B, H, T, D)
            return self.wo(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)), None
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v, positions)                  # (B, K, S, D)
        # Grouped-query attention: each group of H/K query heads shares one key/value head.
        if self.n_kv_head != self.n_head:
            repeat = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        dropout = self.dropout if self.training else 0.0
        S = k.size(2)
        if attn_mask is None and S != T:
            # New queries against a filled cache: they are the last T of S positions. SDPA's
            # is_causal aligns its triangle to the top left, which would hide most of the cache
            # from them, so the bottom-right mask is given explicitly.
            attn_mask = bottom_right_causal(T, S, q.device)
        weights = None
        if self.explicit or return_weights or (self.explicit_decode and T == 1):
            y, weights = explicit_attention(q, k, v, attn_mask, dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout,
                                               is_causal=attn_mask is None and T > 1)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)          # (B, T, H*D)
        return F.dropout(self.wo(y), dropout, self.training), (weights if return_weights else None)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                       dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(D) + mask) V, written out (Vaswani et al. 2017); the same result as SDPA.
    attn_mask None means causal over T queries and T keys. Returns (output, weights (B, H, T, S))."""
    T, S = q.size(-2), k.size(-2)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))                   # (B, H, T, S)
    if attn_mask is None:
        attn_mask = bottom_right_causal(T, S, q.device)
    scores = scores.masked_fill(~attn_mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return F.dropout(weights, dropout, dropout > 0) @ v, weights                  # (B, H, T, D)


# ----------------------------------------------------------------------------- MLP


class MLP(nn.Module):
    """GELU: w_down(gelu(w_up x)).  SwiGLU: w_down(silu(w_gate x) * w_up x).

    "gelu" is GPT-2's tanh approximation (what its checkpoints were trained with), "gelu-exact"
    the erf form x * Phi(x) (Hendrycks & Gimpel 2016), torch's nn.GELU default and nanoGPT's."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        self.gelu_approximate = "none" if config.mlp == "gelu-exact" else "tanh"
        self.w_up = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        if self.swiglu:
            self.w_gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.w_down = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            hidden = F.silu(self.w_gate(x)) * self.w_up(x)
        else:
            hidden = F.gelu(self.w_up(x), approximate=self.gelu_approximate)
        return F.dropout(self.w_down(hidden), self.dropout, self.training)


# ----------------------------------------------------------------------------- block and model


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = make_norm(config)
        self.attn = Attention(config, layer)
        self.mlp_norm = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope, kv_cache=None, positions=None, attn_mask=None,
                return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attn(self.attn_norm(x), rope, kv_cache, positions, attn_mask, return_weights)
        x = x + attended
        return x + self.mlp(self.mlp_norm(x)), weights


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (it normally comes from the tokenizer)")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        if config.position == "learned":
            self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        else:
            # Not saved in checkpoints: they are a pure function of the config.
            self.register_buffer("rope_cos", torch.empty(0), persistent=False)
            self.register_buffer("rope_sin", torch.empty(0), persistent=False)
            self.init_rope()
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        # Gradient checkpointing (Chen et al. 2016, arXiv:1604.06174): in training, keep only each
        # block's input and recompute its activations during backward; ~1/3 more compute for memory
        # that no longer grows with depth. Set by fine-tuning's --grad-checkpoint.
        self.grad_checkpoint = False
        self.final_norm = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if self.tok_emb.weight.device.type == "meta":
            return  # built to adopt saved tensors (from_state_dict, quantized loads): nothing to initialise,
            # and random init on meta tensors would import torch's compiler stack (~2-10 s) for nothing
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch's output projection gets std 0.02/sqrt(2L), so
        # the residual stream's variance does not grow with depth (Radford et al. 2019, sec. 2.3).
        for name, p in self.named_parameters():
            if name.endswith("attn.wo.weight") or name.endswith("mlp.w_down.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def init_rope(self) -> None:
        """(Re)compute the RoPE tables, e.g. after building the model on the meta device."""
        c = self.config
        # The first parameter says where the model lives (not tok_emb.weight: the embedding may be
        # a quantized table whose .weight is computed).
        device = next(self.parameters()).device
        if device.type == "meta":
            return  # built on the meta device: from_state_dict calls this again with real tensors
        cos, sin = rope_frequencies(c.head_dim, c.block_size, c.rope_theta)
        self.rope_cos, self.rope_sin = cos.to(device), sin.to(device)

    @classmethod
    def skeleton(cls, config: ModelConfig) -> "Transformer":
        """The modules on the meta device with nothing initialised, for loaders that adopt saved tensors.
        nn.Linear / nn.Embedding would still run their random init on meta tensors, and the first such
        call imports torch's compiler stack (2-10 s): switched off while building."""
        saved = nn.Linear.reset_parameters, nn.Embedding.reset_parameters
        nn.Linear.reset_parameters = nn.Embedding.reset_parameters = lambda self: None
        try:
            with torch.device("meta"):
                return cls(config)
        finally:
            nn.Linear.reset_parameters, nn.Embedding.reset_parameters = saved

    @classmethod
    def from_state_dict(cls, config: ModelConfig, state: dict[str, torch.Tensor]) -> "Transformer":
        """Build on the meta device (no time spent on random init), then adopt the given tensors."""
        model = cls.skeleton(config)
        missing, unexpected = model.load_state_dict(state, assign=True, strict=False)
        missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_embeddings)]
        if missing or unexpected:
            raise ValueError(f"weights do not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        if config.tie_embeddings:
            model.lm_head.weight = model.tok_emb.weight
        if config.position == "rope":
            model.init_rope()
        return model

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                positions: torch.Tensor | None = None, kv_cache: KVCacheLike | None = None,
                attn_mask: torch.Tensor | None = None, return_hidden_states: bool = False,
                return_attention: bool | Collection[int] = False, last_only: bool = False,
                logits_index: torch.Tensor | None = None, logits_mask: torch.Tensor | None = None) -> dict[str, Any]:
        """idx (B, T) token ids -> {"logits": (B, T, V), "loss": scalar if targets, ...}.

        positions (B, T) or (T,): absolute positions of the tokens (default 0..T-1; with a KV cache,
        the engine passes where the new tokens sit). attn_mask (B, 1, T, S) bool, True = may attend;
        None means causal attention (llmlab.model.masks builds the others). Targets equal to -100
        are ignored by the loss.
        last_only: logits for the last position only; logits_index (B,): for position
        logits_index[b] of each row only (right-padded prompts end at different places). Generation
        needs no more, and for a 512-token prompt this skips ~20% of SmolLM2's prefill FLOPs, spent
        in the 49k-wide output head. Both give logits (B, 1, V).
        logits_mask (B, T) bool: logits only where it is True, as (N, V) in row-major order. A
        fine-tuning loss needs them only at target tokens; with the prompt masked, that skips most
        of the head's FLOPs and its (B, T, V) float32 activations, the largest tensors of a step.
        return_hidden_states: the residual stream at every depth, (B, T, C) each: entering each block,
        then leaving the last one (before final_norm), so logits = lm_head(final_norm(hidden[-1])).
        return_attention: True, or the indices of the layers wanted: their (B, H, T, S) attention
        weights, None for the others (computed by the explicit path, which materialises T x S
        scores per head, so long prompts ask for a few layers only). Both off cost nothing.
        """
        B, T = idx.shape
        if positions is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
            positions = torch.arange(T, device=idx.device)
        x = self.tok_emb(idx)                                                    # (B, T, C)
        rope = None
        if self.config.position == "learned":
            x = x + self.pos_emb(positions)
        else:
            # (B or 1, 1, T, D/2): broadcast over heads.
            rope = (self.rope_cos[positions].view(-1, 1, T, self.rope_cos.size(-1)),
                    self.rope_sin[positions].view(-1, 1, T, self.rope_sin.size(-1)))
        x = F.dropout(x, self.config.dropout, self.training)
        if isinstance(return_attention, bool):
            attention_layers = range(len(self.blocks)) if return_attention else ()
        else:
            attention_layers = set(return_attention)
        hidden_states, attentions = [], []
        for i, block in enumerate(self.blocks):
            if return_hidden_states:
                hidden_states.append(x)
            weigh = i in attention_layers
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                x, weights = torch.utils.checkpoint.checkpoint(block, x, rope, kv_cache, positions, attn_mask,
                                                               weigh, use_reentrant=False)
            else:
                x, weights = block(x, rope, kv_cache, positions, attn_mask, weigh)
            attentions.append(weights)
        if return_hidden_states:
            hidden_states.append(x)
        x = self.final_norm(x)
        if logits_mask is not None:
            head_input = x[logits_mask]                                                # (N, C)
        elif logits_index is not None:
            head_input = x[torch.arange(B, device=x.device), logits_index][:, None]    # (B, 1, C)
        else:
            head_input = x[:, -1:] if last_only else x
        out: dict[str, Any] = {"logits": self.lm_head(head_input)}
        if return_hidden_states:
            out["hidden_states"] = hidden_states
        if return_attention is not False:
            out["attentions"] = attentions
        if targets is not None:
            logits = out["logits"]
            out["loss"] = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                                          ignore_index=-100)
        return out

    # ------------------------------------------------------------------------- accounting

    def num_params(self, non_embedding: bool = False) -> int:
        """Unique parameters (a tied head counts once). non_embedding drops token/position tables."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and isinstance(self.tok_emb, nn.Embedding):   # not a quantized table
            n -= self.tok_emb.weight.numel()
            if self.config.position == "learned":
                n -= self.pos_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6 per weight used in a matmul (2 forward + 4 backward), plus
        attention's QK^T and AV products, 6 * 2 * L * T * H * D (Kaplan et al. 2020; PaLM app. B)."""
        c = self.config
        T = seq_len or c.block_size
        # num_params(non_embedding) already holds an untied head; a tied one is the embedding table,
        # which is dropped there but is still a matmul here.
        matmul_weights = self.num_params(non_embedding=True)
        if c.tie_embeddings:
            matmul_weights += c.vocab_size * c.n_embd
        return 6.0 * matmul_weights + 12.0 * c.n_layer * T * c.n_head * c.head_dim
