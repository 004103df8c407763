"""A BERT-style bidirectional encoder for sentence embeddings (all-MiniLM-L6-v2), in plain PyTorch.

BERT (Devlin et al. 2018) is a post-LayerNorm Transformer encoder: token + position + segment
embeddings, then N blocks of  x = LN(x + Attn(x));  x = LN(x + FFN(x))  with GELU (erf form).
Sentence-BERT (Reimers & Gurevych 2019) turns it into a sentence encoder by mean-pooling the
last hidden states over the real (non-padding) tokens; all-MiniLM-L6-v2 then L2-normalises
the pooled vector so a dot product is a cosine similarity.

The weights load directly from the model's `model.safetensors` (HF BertModel names), so no
`transformers` import is needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.core.errors import LLMLabError


@dataclass
class EncoderConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, path: Path) -> "EncoderConfig":
        c = json.loads(path.read_text())
        if c.get("model_type") not in ("bert", None):
            raise LLMLabError(f"{path}: model_type {c.get('model_type')!r} is not a BERT encoder")
        return cls(c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                   c["intermediate_size"], c["max_position_embeddings"], c.get("type_vocab_size", 2),
                   c.get("layer_norm_eps", 1e-12))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)  # q, k, v fused into one matmul
        self.attn_out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.ln_attn = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.ff_in = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.ff_out = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.ln_ff = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        # attn_bias is 0 for real keys and -inf-ish for padding, broadcast over heads and queries.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        y = y.transpose(1, 2).reshape(b, t, d)
        x = self.ln_attn(x + self.attn_out(y))  # post-LN, as in the original BERT
        return self.ln_ff(x + self.ff_out(F.gelu(self.ff_in(x))))


class Encoder(nn.Module):
    """Token ids -> contextual hidden states; `embed` gives pooled, normalised sentence vectors."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.pos_emb = nn.Embedding(cfg.max_position, cfg.hidden_size)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.ln_emb = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.num_layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        pos = torch.arange(t, device=ids.device)
        # Single-segment input: token type 0 everywhere, so add row 0 of the segment table.
        x = self.ln_emb(self.tok_emb(ids) + self.pos_emb(pos)[None] + self.type_emb.weight[0])
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill(~mask.bool(), torch.finfo(x.dtype).min)[:, None, None, :]
        for block in self.blocks:
            x = block(x, bias)
        return x

    def pool(self, ids: torch.Tensor, mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Mean of the last hidden states over real tokens (Sentence-BERT pooling), then L2 norm.
        With autograd, for training (rag/adapt.py); `embed` is the same under inference_mode."""
        h = self.forward(ids, mask)
        m = mask.to(h.dtype)[..., None]
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1) if normalize else pooled

    @torch.inference_mode()
    def embed(self, ids: torch.Tensor, mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.pool(ids, mask, normalize)

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Our weights under HF BertModel names (the inverse of `from_pretrained`'s renaming):
        the fused qkv matrix is split back into query, key and value."""
        sd = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        out = {"embeddings.word_embeddings.weight": sd["tok_emb.weight"],
               "embeddings.position_embeddings.weight": sd["pos_emb.weight"],
               "embeddings.token_type_embeddings.weight": sd["type_emb.weight"],
               "embeddings.LayerNorm.weight": sd["ln_emb.weight"], "embeddings.LayerNorm.bias": sd["ln_emb.bias"]}
        for i in range(self.cfg.num_layers):
            p = f"encoder.layer.{i}."
            for part in ("weight", "bias"):
                for name, t in zip(("query", "key", "value"), sd[f"blocks.{i}.qkv.{part}"].chunk(3)):
                    out[f"{p}attention.self.{name}.{part}"] = t
                out[f"{p}attention.output.dense.{part}"] = sd[f"blocks.{i}.attn_out.{part}"]
                out[f"{p}attention.output.LayerNorm.{part}"] = sd[f"blocks.{i}.ln_attn.{part}"]
                out[f"{p}intermediate.dense.{part}"] = sd[f"blocks.{i}.ff_in.{part}"]
                out[f"{p}output.dense.{part}"] = sd[f"blocks.{i}.ff_out.{part}"]
                out[f"{p}output.LayerNorm.{part}"] = sd[f"blocks.{i}.ln_ff.{part}"]
        # safetensors stores each tensor on its own: chunk() views must become separate copies.
        return {k: v.contiguous().clone() for k, v in out.items()}

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json + model.safetensors (HF BertModel names), each atomically, so
        `Encoder.from_pretrained` and transformers' BertModel read the directory back. There is no
        pooler (mean pooling does not use it): load with BertModel(..., add_pooling_layer=False)."""
        from safetensors.torch import save_file

        from llmlab.core.io import atomic_path, atomic_write_json

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        c = self.cfg
        atomic_write_json(directory / "config.json", {
            "architectures": ["BertModel"], "model_type": "bert", "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size, "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
            "intermediate_size": c.intermediate_size, "max_position_embeddings": c.max_position,
            "type_vocab_size": c.type_vocab_size, "layer_norm_eps": c.layer_norm_eps, "hidden_act": "gelu",
            "position_embedding_type": "absolute", "pad_token_id": 0})
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file(self.hf_state_dict(), str(tmp), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "Encoder":
        """Load a BERT checkpoint directory (config.json + model.safetensors, HF BertModel names)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        for name in ("config.json", "model.safetensors"):
            if not (directory / name).is_file():
                raise LLMLabError(f"{directory / name} is missing: pass a BERT model directory "
                                  "(e.g. llmlab.core.assets.minilm_dir())")
        cfg = EncoderConfig.from_hf(directory / "config.json")
        sd = load_file(str(directory / "model.safetensors"))
        sd = {k.removeprefix("bert."): v for k, v in sd.items()}
        model = cls(cfg)
        new = {"tok_emb.weight": sd["embeddings.word_embeddings.weight"],
               "pos_emb.weight": sd["embeddings.position_embeddings.weight"],
               "type_emb.weight": sd["embeddings.token_type_embeddings.weight"],
               "ln_emb.weight": sd["embeddings.LayerNorm.weight"], "ln_emb.bias": sd["embeddings.LayerNorm.bias"]}
        for i in range(cfg.num_layers):
            p = f"encoder.layer.{i}."
            for part in ("weight", "bias"):
                new[f"blocks.{i}.qkv.{part}"] = torch.cat(
                    [sd[f"{p}attention.self.{n}.{part}"] for n in ("query", "key", "value")])
                new[f"blocks.{i}.attn_out.{part}"] = sd[f"{p}attention.output.dense.{part}"]
                new[f"blocks.{i}.ln_attn.{part}"] = sd[f"{p}attention.output.LayerNorm.{part}"]
                new[f"blocks.{i}.ff_in.{part}"] = sd[f"{p}intermediate.dense.{part}"]
                new[f"blocks.{i}.ff_out.{part}"] = sd[f"{p}output.dense.{part}"]
                new[f"blocks.{i}.ln_ff.{part}"] = sd[f"{p}output.LayerNorm.{part}"]
        model.load_state_dict(new)
        return model.eval()

