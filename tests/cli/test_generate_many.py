"""`llmlab generate --prompts FILE`: many prompts through the continuous-batching scheduler, each
reply the same as generating it alone."""

from __future__ import annotations

import json
import subprocess
import sys

from llmlab.infer import Engine, SamplingConfig
from llmlab.model.config import ModelConfig
from llmlab.model.hf import save_hf_dir
from llmlab.tokenizer.char import CharTokenizer

ALPHABET = [chr(c) for c in range(32, 127)] + ["\n"]
CONFIG = ModelConfig(vocab_size=len(ALPHABET), block_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)


def test_prompts_file_equals_one_by_one(tmp_path, varied_model):
    save_hf_dir(varied_model(CONFIG).state_dict(), CONFIG, CharTokenizer(ALPHABET), tmp_path / "model")
    prompts = ["Once upon a time", "To be, or not", "x", "The rain in Spain falls"]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    proc = subprocess.run([sys.executable, "-m", "llmlab", "generate", "--model", str(tmp_path / "model"),
                           "--prompts", str(tmp_path / "p.jsonl"), "--max-batch", "2", "--max-new-tokens", "10",
                           "--temperature", "0", "--json", "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    engine = Engine.load(str(tmp_path / "model"), device="cpu")
    alone = [engine.generate(p, SamplingConfig(max_new_tokens=10, temperature=0)).token_ids for p in prompts]
    assert [r["prompt"] for r in rows] == prompts and [r["token_ids"] for r in rows] == alone
    assert "4 prompts, 40 tokens" in proc.stderr

    (tmp_path / "bad.jsonl").write_text('{"text": "no prompt field"}\n')
    bad = subprocess.run([sys.executable, "-m", "llmlab", "generate", "--model", str(tmp_path / "model"),
                          "--prompts", str(tmp_path / "bad.jsonl")], capture_output=True, text=True)
    assert bad.returncode == 2 and 'line 1: needs a string field "prompt"' in bad.stderr
