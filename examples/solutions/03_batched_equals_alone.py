"""Chapter 3, exercise "Right padding needs no mask": prompts of different lengths decoded as one
right-padded batch give exactly the tokens each gives alone, because every row is advanced by its
own length and read at its own last token. Then the broken version: treat the pad slots as prompt
(advance every row by the padded length) and the short rows change.

    python examples/solutions/03_batched_equals_alone.py
"""

import torch

from llmlab.infer import SamplingConfig
from llmlab.infer.generate import decode_steps
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer

torch.manual_seed(0)
model = Transformer(ModelConfig(vocab_size=64, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)).eval()
with torch.no_grad():
    for p in model.parameters():
        if p.dim() == 2:
            p.normal_(0.0, 0.3)  # large random weights: greedy text that does not repeat one token

greedy = SamplingConfig(max_new_tokens=12, temperature=0)
prompts = [[5, 9, 2, 33, 17, 8, 41], [12, 3], [7, 7, 21, 60]]


def tokens(batch: list[list[int]]) -> list[list[int]]:
    steps = list(decode_steps(model, batch, greedy))
    return [[int(s.ids[row]) for s in steps] for row in range(len(batch))]


batched = tokens(prompts)
alone = [tokens([p])[0] for p in prompts]
for p, b, a in zip(prompts, batched, alone):
    print(f"prompt of {len(p)}: batched {b}\n             alone   {a}")
assert batched == alone, "a right-padded batch must give each row the tokens it gets alone"
print("right-padded batch == each prompt alone: OK")

# The broken version: pad the short prompts with token 0 *as part of the prompt*, which is what
# advancing every row by the padded length T would mean. The model now reads the pads.
longest = max(map(len, prompts))
padded = [p + [0] * (longest - len(p)) for p in prompts]
broken = tokens(padded)
changed = [i for i, (p, b, a) in enumerate(zip(prompts, broken, alone)) if b != a]
print(f"rows whose tokens change when the pads count as prompt: {changed}")
assert changed and all(len(prompts[i]) < longest for i in changed) and broken[0] == alone[0]
