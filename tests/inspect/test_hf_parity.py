"""What the probes read equals what transformers reports for the same weights: its eager attention's
weights (output_attentions) and its hidden states (output_hidden_states, whose last entry is after
the final norm, where ours is before it)."""

import pytest
import torch

from llmlab.inspect.lens import lens_logits
from llmlab.inspect.trace import trace
from llmlab.model.hf import load_hf_model

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_attention_and_residual_stream_match_transformers(tmp_path, kind):
    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        hf = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.GPT2Config(vocab_size=97, n_positions=64, n_embd=64, n_layer=3, n_head=4,
                                         resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
        hf = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():                           # peaked attention, so a wrong pattern cannot hide in a flat one
        for name, p in hf.named_parameters():
            if any(k in name for k in ("q_proj", "k_proj", "c_attn")):
                p.mul_(8)
    hf.save_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ours, _ = load_hf_model(tmp_path)
    ids = torch.randint(0, 97, (1, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = hf(ids, output_attentions=True, output_hidden_states=True)
    tr = trace(ours.eval(), ids[0].tolist(), attention_layers=range(3))
    for layer in range(3):
        torch.testing.assert_close(tr.attentions[layer], reference.attentions[layer][0], atol=1e-5, rtol=1e-4)
    for layer in range(3):
        torch.testing.assert_close(tr.residual[layer], reference.hidden_states[layer][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.final_norm(tr.residual[3]), reference.hidden_states[3][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lens_logits(ours, tr.residual[3]), reference.logits[0], atol=1e-4, rtol=1e-4)
