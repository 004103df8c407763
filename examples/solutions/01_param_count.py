"""Chapter 1, exercise: count the parameters by hand, then check against `num_params`.

For width C, L blocks, H query heads and K key/value heads of size D, MLP hidden size F, vocabulary V
and context T (the block size):

    attention   C*H*D (wq) + 2*C*K*D (wk, wv) + H*D*C (wo)          [+ biases]
    MLP         3*C*F for SwiGLU (gate, up, down), 2*C*F for GELU    [+ biases]
    norm        C per RMSNorm (a gain), 2*C per LayerNorm with bias (gain and shift)
    total       V*C (token embedding) + L*(attention + MLP + 2 norms) + a final norm
                + T*C for learned positions + V*C again when the head is not tied

Run: python examples/solutions/01_param_count.py    (a few seconds; exits non-zero on a mismatch)
"""

from __future__ import annotations


from llmlab.model import MODEL_PRESETS, ModelConfig, Transformer


def count_by_hand(c: ModelConfig) -> dict[str, int]:
    C, L, H, K, D, F, V, T = (c.n_embd, c.n_layer, c.n_head, c.n_kv_head, c.head_dim, c.mlp_hidden,
                              c.vocab_size, c.block_size)
    norm = 2 * C if (c.norm == "layernorm" and c.bias) else C
    attention = C * H * D + 2 * C * K * D + H * D * C
    if c.qkv_bias:
        attention += (H + 2 * K) * D
    if c.bias:
        attention += C                                   # the output projection's bias
    swiglu = c.mlp == "swiglu"
    mlp = (3 if swiglu else 2) * C * F
    if c.bias:
        mlp += (2 * F if swiglu else F) + C
    parts = {"token embedding": V * C, "blocks": L * (attention + mlp + 2 * norm), "final norm": norm,
             "positions": T * C if c.position == "learned" else 0,
             "untied head": 0 if c.tie_embeddings else V * C}
    return parts


VARIANTS = {
    "shakespeare-char (Llama block)": {},
    "GPT-2 block": dict(position="learned", norm="layernorm", mlp="gelu", bias=True),
    "untied head": dict(tie_embeddings=False),
    "GQA, 2 key/value heads": dict(n_kv_head=2),
}


def main() -> None:
    base = MODEL_PRESETS["shakespeare-char"].replace(vocab_size=65)   # tinyshakespeare's 65 symbols
    for name, change in VARIANTS.items():
        config = base.replace(**change)   # re-derives e.g. the MLP width for GELU
        parts = count_by_hand(config)
        by_hand, counted = sum(parts.values()), Transformer(config).num_params()
        detail = ", ".join(f"{k} {v:,}" for k, v in parts.items() if v)
        print(f"{name:32s} by hand {by_hand:>9,}  num_params {counted:>9,}   ({detail})")
        assert by_hand == counted, f"{name}: the formula is off by {counted - by_hand:,}"
    print("OK: the closed form matches num_params for every variant")


if __name__ == "__main__":
    main()
