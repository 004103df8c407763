"""`Engine`: a model + tokenizer pair that generates text, for the CLI, RAG and serving.

    engine = Engine.load("smollm2")        # or any source llmlab.model.source resolves
    engine.generate("Once upon a time", SamplingConfig(max_new_tokens=50, temperature=0))
    for delta in engine.chat_stream([{"role": "user", "content": "Hi"}], SamplingConfig()):
        print(delta, end="")

Speculative decoding (llmlab.infer.speculative) for single prompts, same text, fewer target passes:

    engine = Engine.load("smollm2", speculative=SpeculativeConfig("prompt-lookup"))
    engine = Engine.load("smollm2", speculative=SpeculativeConfig("draft", draft="smollm2", draft_native_gguf=True))
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from llmlab.core.device import pick_device, pick_dtype
from llmlab.core.errors import LLMLabError
from llmlab.infer.generate import Completion, Reply, Timings, decode_steps
from llmlab.infer.sampling import SamplingConfig
from llmlab.infer.speculative import SpeculativeConfig, SpeculativeStats, check_vocab, load_draft_model, speculative_steps
from llmlab.model.source import ModelSource, load_model
from llmlab.model.transformer import Transformer
from llmlab.tokenizer import Tokenizer


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, device: torch.device, name: str = "",
                 compile: bool = False, source: ModelSource | None = None,
                 speculative: SpeculativeConfig | None = None, draft_model: Transformer | None = None):
        self.model, self.tokenizer, self.device, self.name = model.eval(), tokenizer, device, name
        self.source = source
        self.speculative: SpeculativeConfig | None = None
        self.draft_model: Transformer | None = None
        self.use_speculative(speculative, draft_model)
        # compile: decode steps through one compiled graph per (batch, cache size)
        # (llmlab.infer.compiled_decode). The graph of short single prompts is compiled here, at
        # load; a larger one before the generation that first needs it. Either way the seconds are
        # reported as timings["compile_s"] of the next completion, never inside its decode speed.
        self.decode_fn, self._unreported_compile_s = None, 0.0
        if compile:
            from llmlab.infer.compiled_decode import CompiledDecode
            self.decode_fn = CompiledDecode(self.model)
            self._unreported_compile_s = self.decode_fn.prepare(1, 1)

    def _timings(self, batch: int, needed_slots: int) -> Timings:
        """Fresh timings for a generation, after compiling the graph it needs (if not yet done)."""
        timings = Timings(compile_s=self._unreported_compile_s)
        self._unreported_compile_s = 0.0
        if self.decode_fn is not None:
            timings.compile_s += self.decode_fn.prepare(batch, needed_slots)
        return timings

    def use_speculative(self, config: SpeculativeConfig | None, draft_model: Transformer | None = None) -> None:
        """Speculative decoding for `stream`/`generate` (single prompts; batches decode plainly), or
        None to turn it off. Method "draft" takes draft_model, else loads config.draft; a draft
        whose vocabulary differs from the target's is refused."""
        if config is not None and config.method == "draft":
            if draft_model is None:
                draft_model = load_draft_model(config, self.model, self.device)
            check_vocab(self.model, draft_model)
            draft_model = draft_model.eval()
        self.speculative = config
        self.draft_model = draft_model if config is not None and config.method == "draft" else None

    @classmethod
    def load(cls, spec: str | Path = "smollm2", device: str = "auto", dtype: str = "float32",
             compile: bool = False, adapter: str | Path | None = None, native_gguf: bool = False,
             speculative: SpeculativeConfig | None = None) -> "Engine":
        """adapter: a LoRA run directory or PEFT adapter directory, merged into the model at load.
        native_gguf: keep a GGUF's quantized blocks as int8/int4 layers (llmlab.quant.gguf_native).
        speculative: speculative decoding for single prompts; a draft model (speculative.draft)
        is loaded here, on the same device, in speculative.draft_dtype (default: `dtype`)."""
        dev = pick_device(device)
        model, tokenizer, source = load_model(spec, adapter=adapter, merge_adapters=True, native_gguf=native_gguf)
        if tokenizer is None:
            raise LLMLabError(f"{source.path} has weights but no tokenizer (tokenizer.json); add one to generate text")
        model = model.to(device=dev, dtype=pick_dtype(dtype))
        name = f"{source.name}+{Path(adapter).name}" if adapter else source.name
        engine = cls(model, tokenizer, dev, name, compile, source)
        engine.use_speculative(speculative)
        return engine

    @property
    def max_context(self) -> int:
        return self.model.config.block_size

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def _render(self, messages: list[dict]) -> list[int]:
        if not hasattr(self.tokenizer, "apply_chat_template"):
            raise LLMLabError(f"the {self.tokenizer.kind} tokenizer of {self.name} has no chat template; "
                              "send a raw prompt instead")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return self.tokenizer.encode(text, allowed_special=True)

    def fit_messages(self, messages: list[dict], max_new_tokens: int) -> list[int]:
        """The chat prompt with the oldest whole turns dropped until it fits the context with room for
        `max_new_tokens`; the system message is always kept, and the history restarts at a user turn."""
        budget = self.max_context - max_new_tokens
        system = messages[:1] if messages and messages[0].get("role") == "system" else []
        turns = list(messages[len(system):])
        ids = self._render(system + turns)
        while len(ids) > budget and len(turns) > 1:
            turns = turns[1:]
            while len(turns) > 1 and turns[0].get("role") != "user":
                turns = turns[1:]
            ids = self._render(system + turns)
        if len(ids) > budget:
            raise LLMLabError(f"the last message ({len(ids)} tokens with the system prompt and template) leaves no room "
                              f"for {max_new_tokens} new tokens in the context of {self.max_context}: shorten it "
                              "or lower --max-new-tokens")
        return ids

    def encode_prompt(self, prompt: str | list[int] | list[dict], raw: bool | None = None,
                      max_new_tokens: int | None = None) -> list[int]:
        """Token ids for a prompt: ids as given; text raw or wrapped in the chat template (raw=None:
        the template when the model has one, so a base model gets its text as is); or messages,
        fitted by whole turns when max_new_tokens is given (`fit_messages`)."""
        if isinstance(prompt, list) and (not prompt or isinstance(prompt[0], int)):
            return list(prompt)
        if isinstance(prompt, str) and (raw or (raw is None and not self.has_chat_template)):
            # BOS only where the model's files ask for it (Llama 2/3 and Mistral do; SmolLM2 and our
            # runs do not); a chat template writes its own.
            return self.tokenizer.encode(prompt, add_special=True)
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return self.fit_messages(messages, max_new_tokens) if max_new_tokens is not None else self._render(messages)

    def stream(self, prompt: str | list[int] | list[dict], config: SamplingConfig, raw: bool | None = None,
               overflow: str = "error", result: dict | None = None) -> Iterator[str]:
        """Yield text deltas; they add up to the completion's text. When done, `result` (if given)
        receives the Completion. overflow="truncate" drops whole old turns from messages, and the
        oldest tokens from other prompts. With speculative decoding on, timings["speculative"]
        holds its counts (drafted, accepted, acceptance_rate, target_passes, tokens_per_pass)."""
        fit = overflow == "truncate" and isinstance(prompt, list) and prompt and isinstance(prompt[0], dict)
        prompt_ids = self.encode_prompt(prompt, raw, config.max_new_tokens if fit else None)
        reply = Reply.for_config(config, self.tokenizer.eos_id)
        timings = self._timings(1, len(prompt_ids) + config.max_new_tokens)
        stats = None
        if self.speculative is not None:
            stats = SpeculativeStats(self.speculative.method)
            steps = speculative_steps(self.model, prompt_ids, config, self.speculative, self.draft_model, overflow,
                                      timings, stats, decode_fn=self.decode_fn)
        else:
            steps = decode_steps(self.model, [prompt_ids], config, overflow, timings, decode_fn=self.decode_fn)
        for step in steps:
            token = int(step.ids[0])
            delta = reply.add(token, float(step.logprobs[0]), self.tokenizer.decode_bytes([token]))
            if delta:
                yield delta
            if reply.finish:
                break
        if result is not None:
            timing = timings.as_dict()
            if stats is not None:
                timing["speculative"] = stats.as_dict()
            result["completion"] = reply.completion(len(prompt_ids), config.logprobs, timing)

    def generate(self, prompt: str | list[int] | list[dict], config: SamplingConfig, raw: bool | None = None,
                 overflow: str = "error") -> Completion:
        result: dict = {}
        for _ in self.stream(prompt, config, raw, overflow, result):
            pass
        return result["completion"]

    def chat_stream(self, messages: list[dict], config: SamplingConfig) -> Iterator[str]:
        return self.stream(messages, config, overflow="truncate")

    def generate_batch(self, prompts: list[str | list[int] | list[dict]], config: SamplingConfig | list[SamplingConfig],
                       raw: bool | None = None, max_batch: int = 64) -> list[Completion]:
        """Several prompts at once through the continuous-batching scheduler (llmlab.infer.continuous):
        greedy output equals unbatched, each prompt with its own SamplingConfig if a list is given.
        Up to max_batch decode together; the rest join as others finish."""
        from llmlab.infer.continuous import ContinuousEngine
        from llmlab.infer.scheduler import SchedulerConfig

        configs = config if isinstance(config, list) else [config] * len(prompts)
        if len(configs) != len(prompts):
            raise LLMLabError(f"{len(configs)} sampling configs for {len(prompts)} prompts: give one per prompt")
        encoded = [self.encode_prompt(p, raw) for p in prompts]
        # A pool that holds any max_batch of them whole (so nothing is preempted), and a step budget
        # that prefills a batch's prompts in one or a few passes, as a padded batch would.
        block, batch = 16, min(max_batch, len(prompts))
        longest = max(-(-(len(p) + c.max_new_tokens) // block) for p, c in zip(encoded, configs))
        batcher = ContinuousEngine(self.model, self.tokenizer, SchedulerConfig(
            max_batch=batch, max_step_tokens=min(4096, max(256, sum(map(len, encoded[:batch])))), block_size=block,
            num_blocks=batch * longest, max_queue=len(prompts)), name=self.name)
        return batcher.run(encoded, configs)
