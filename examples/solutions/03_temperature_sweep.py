"""Chapter 3, exercise "Sweep temperature and top-p": the same SmolLM2 prompt, four seeds at each
setting, all 20 rows decoded as one batch (each row its own SamplingConfig and seed). Checks:
temperature 0 gives one text whatever the seed; top-k 1 is greedy at any temperature; a tiny top-p
(below 1/vocabulary size) keeps only the top token, so it is greedy too; high temperature gives several different texts.

    python examples/solutions/03_temperature_sweep.py
"""

import time

from llmlab.infer import Engine, SamplingConfig

t0 = time.perf_counter()
engine = Engine.load("smollm2", device="cpu")
prompt = "Write one sentence about the sea."
settings = {"temperature 0": dict(temperature=0.0), "temperature 0.7": dict(temperature=0.7),
            "temperature 1.5": dict(temperature=1.5), "T 1.5, top-k 1": dict(temperature=1.5, top_k=1),
            "T 1.5, top-p 1e-5": dict(temperature=1.5, top_p=1e-5)}
seeds = [0, 1, 2, 3]
configs = [SamplingConfig(max_new_tokens=12, seed=s, **kw) for kw in settings.values() for s in seeds]
completions = engine.generate_batch([prompt] * len(configs), configs)
texts = {name: [c.text for c in completions[i * len(seeds):(i + 1) * len(seeds)]] for i, name in enumerate(settings)}
for name, rows in texts.items():
    print(f"{name:18s} {len(set(rows))} distinct of {len(rows)}: {rows[0]!r}")
greedy = texts["temperature 0"][0]
assert len(set(texts["temperature 0"])) == 1, "greedy decoding ignores the seed"
assert set(texts["T 1.5, top-k 1"]) == {greedy}, "top-k 1 keeps only the most likely token"
assert set(texts["T 1.5, top-p 1e-5"]) == {greedy}, "a nucleus smaller than 1/vocab is the top token alone"
assert len(set(texts["temperature 1.5"])) > 1, "at temperature 1.5 the seeds should disagree"
print(f"all checks passed in {time.perf_counter() - t0:.1f} s")
