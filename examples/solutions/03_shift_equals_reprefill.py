"""Chapter 3, exercise "What does --overflow shift keep?": with a 32-token context and a 10-token
prompt, predict when the first shift happens; then check that after it the model continues exactly
as greedy generation from the kept newest half (16 tokens, positions restarting at 0) would.

    python examples/solutions/03_shift_equals_reprefill.py
"""

import torch

from llmlab.core.errors import LLMLabError
from llmlab.infer import SamplingConfig
from llmlab.infer.generate import decode_steps
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer

CONTEXT = 32
torch.manual_seed(0)
model = Transformer(ModelConfig(vocab_size=64, block_size=CONTEXT, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)).eval()
with torch.no_grad():
    for p in model.parameters():
        if p.dim() == 2:
            p.normal_(0.0, 0.3)


def greedy(prompt: list[int], n: int, overflow: str = "error") -> list[int]:
    config = SamplingConfig(max_new_tokens=n, temperature=0)
    return [int(s.ids[0]) for s in decode_steps(model, [prompt], config, overflow=overflow)]


prompt = list(range(1, 11))  # 10 tokens
try:
    greedy(prompt, 60)
    raise SystemExit("--overflow error should refuse 10 + 60 tokens in a 32-token context")
except LLMLabError as e:
    print(f"overflow=error: {e}")
shifted = greedy(prompt, 60, overflow="shift")
assert len(shifted) == 60

# Prediction: the prompt fills slots 0-9 and each generated token but the newest is written to the
# next slot, so the cache is full (32 slots) once 23 tokens are out; the 24th (index 23) is the
# first one computed after the shift, from the newest 16 tokens of prompt + the first 23.
first_after = CONTEXT - len(prompt) + 1
assert shifted[:first_after] == greedy(prompt, first_after, overflow="shift")
kept = (prompt + shifted[:first_after])[-CONTEXT // 2:]
fresh = greedy(kept, CONTEXT // 2)
print(f"kept after the shift: {kept}\nshift continues:  {shifted[first_after:first_after + 16]}\n"
      f"fresh from kept:  {fresh}")
assert shifted[first_after:first_after + 16] == fresh, "after a shift the model sees only the kept half"
print(f"first shift before token {first_after}, continuation == greedy from the kept {CONTEXT // 2} tokens: OK")
