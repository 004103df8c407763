"""`Engine`: a model + tokenizer pair that generates text, for the CLI, RAG and serving.

    engine = Engine.load("smollm2")                      # or a .gguf, an llmlab run directory
    engine.generate("Once upon a time", SamplingConfig(max_new_tokens=50, temperature=0))
    for delta in engine.chat_stream([{"role": "user", "content": "Hi"}], SamplingConfig()):
        print(delta, end="")
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmlab.core.device import pick_device, pick_dtype
from llmlab.core.errors import LLMLabError
from llmlab.infer.generate import StreamState, Timings, decode_steps
from llmlab.infer.sampling import SamplingConfig
from llmlab.model.transformer import Transformer
from llmlab.tokenizer import Tokenizer


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str                      # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    logprobs: list[float] | None = None
    timings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {"text": self.text, "token_ids": self.token_ids, "finish_reason": self.finish_reason,
               "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": len(self.token_ids),
                         "total_tokens": self.prompt_tokens + len(self.token_ids)},
               "timings": self.timings}
        if self.logprobs is not None:
            out["logprobs"] = self.logprobs
        return out


def load_model(spec: str | Path) -> tuple[Transformer, Tokenizer, str]:
    """(model, tokenizer, description) from "smollm2", a .gguf file, a Hugging Face directory
    (config.json + *.safetensors + tokenizer.json), or an llmlab run directory / checkpoint."""
    spec = str(spec)
    if spec == "smollm2" or spec.endswith(".gguf"):
        from llmlab.core.assets import smollm2_gguf
        from llmlab.model.gguf import load_gguf_state, open_gguf
        from llmlab.tokenizer.formats import read_gguf_tokenizer

        path = smollm2_gguf() if spec == "smollm2" else Path(spec)
        reader = open_gguf(path)  # parsing the metadata takes seconds: do it once for both
        config, state = load_gguf_state(path, reader)
        return Transformer.from_state_dict(config, state), read_gguf_tokenizer(path, reader), path.name
    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file() and not (path / "ckpt.pt").exists() \
            and any(path.glob("*.safetensors")):
        from llmlab.model.hf import load_hf_model

        model, tokenizer = load_hf_model(path)
        if tokenizer is None:
            raise LLMLabError(f"{path} has weights but no tokenizer (tokenizer.json); add one to generate text")
        return model, tokenizer, path.name
    if path.exists():
        from llmlab.model.checkpoint import load_run_model
        model, tokenizer, _ = load_run_model(path)
        return model, tokenizer, path.name
    raise LLMLabError(f"cannot load model {spec!r}: give smollm2, a .gguf file, a Hugging Face model directory, "
                      "or an llmlab run directory")


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, device: torch.device, name: str = "",
                 compile: bool = False):
        self.model, self.tokenizer, self.device, self.name = model.eval(), tokenizer, device, name
        # compile: decode steps through one compiled graph (llmlab.infer.compiled_decode); the
        # first generation pays the compile time.
        self.decode_fn = None
        if compile:
            from llmlab.infer.compiled_decode import compile_decode_step
            self.decode_fn = compile_decode_step(self.model)

    @classmethod
    def load(cls, spec: str | Path = "smollm2", device: str = "auto", dtype: str = "float32",
             compile: bool = False) -> "Engine":
        dev = pick_device(device)
        model, tokenizer, name = load_model(spec)
        model = model.to(device=dev, dtype=pick_dtype(dtype))
        return cls(model, tokenizer, dev, name, compile)

    @property
    def max_context(self) -> int:
        return self.model.config.block_size

    def _stop_ids(self, config: SamplingConfig) -> set[int]:
        ids = set(config.stop_token_ids)
        if not config.ignore_eos and self.tokenizer.eos_id is not None:
            ids.add(self.tokenizer.eos_id)
        return ids

    def _token_bytes(self, token: int) -> bytes:
        if hasattr(self.tokenizer, "decode_bytes"):
            return self.tokenizer.decode_bytes([token])
        return self.tokenizer.decode([token]).encode("utf-8")

    def encode_prompt(self, prompt: str | list[int] | list[dict], raw: bool = True) -> list[int]:
        """Token ids for a prompt: ids as given, text (raw, or wrapped in the chat template), or messages."""
        if isinstance(prompt, list) and (not prompt or isinstance(prompt[0], int)):
            return list(prompt)
        if isinstance(prompt, list) or not raw:
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            if not hasattr(self.tokenizer, "apply_chat_template"):
                raise LLMLabError("this model's tokenizer has no chat template; use a raw prompt")
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            return self.tokenizer.encode(text, allowed_special=True)
        return self.tokenizer.encode(prompt)

    def stream(self, prompt: str | list[int] | list[dict], config: SamplingConfig, raw: bool = True,
               overflow: str = "error", result: dict | None = None) -> Iterator[str]:
        """Yield text deltas. When done, `result` (if given) receives the Completion."""
        prompt_ids = self.encode_prompt(prompt, raw)
        stop_ids, state, timings = self._stop_ids(config), StreamState(list(config.stop)), Timings()
        ids, logprobs, finish = [], [], "length"
        for step in decode_steps(self.model, [prompt_ids], config, overflow, timings,
                                 decode_fn=self.decode_fn):
            token = int(step.ids[0])
            if token in stop_ids:
                finish = "stop"
                break
            ids.append(token)
            logprobs.append(float(step.logprobs[0]))
            delta, hit = state.feed(self._token_bytes(token))
            if delta:
                yield delta
            if hit:
                finish = "stop"
                break
        tail = state.finish() if finish != "stop" or not state.stop else ""
        if tail:
            yield tail
        if result is not None:
            result["completion"] = Completion(state.text, ids, finish, len(prompt_ids),
                                              logprobs if config.logprobs else None, timings.as_dict())

    def generate(self, prompt: str | list[int] | list[dict], config: SamplingConfig, raw: bool = True,
                 overflow: str = "error") -> Completion:
        result: dict = {}
        for _ in self.stream(prompt, config, raw, overflow, result):
            pass
        return result["completion"]

    def chat_stream(self, messages: list[dict], config: SamplingConfig) -> Iterator[str]:
        return self.stream(messages, config, raw=False)

    def generate_batch(self, prompts: list[str | list[int]], config: SamplingConfig, raw: bool = True) -> list[Completion]:
        """Several prompts of different lengths in one padded batch (greedy output equals unbatched)."""
        encoded = [self.encode_prompt(p, raw) for p in prompts]
        stop_ids, timings = self._stop_ids(config), Timings()
        outputs: list[list[int]] = [[] for _ in encoded]
        finished = [""] * len(encoded)
        for step in decode_steps(self.model, encoded, config, "error", timings, decode_fn=self.decode_fn):
            for b, token in enumerate(step.ids.tolist()):
                if finished[b]:
                    continue
                if token in stop_ids:
                    finished[b] = "stop"
                else:
                    outputs[b].append(token)
            if all(finished):
                break
        return [Completion(self.tokenizer.decode(out), out, finished[b] or "length", len(encoded[b]),
                           timings=timings.as_dict()) for b, out in enumerate(outputs)]
