"""OpenAI's HTTP shapes: request bodies in (validated), response and stream-chunk dicts out.

Pure functions and plain data: nothing here knows of the engine, the event loop or FastAPI, so the
whole API surface is tested without a server (tests/serve/test_protocol.py). Field names, nesting
and defaults follow the OpenAI API reference (chat completions, legacy completions, embeddings),
because clients parse them strictly: an `openai` SDK, LangChain or a curl script must not be able
to tell this server from the real one for what it supports, and must get a clear 400 for what it
does not (tools, JSON mode, echo) instead of a silently different answer.
"""

from __future__ import annotations

import json
import numbers
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmlab.core.errors import LLMLabError
from llmlab.infer.sampling import SamplingConfig

MAX_TOP_LOGPROBS = 20     # OpenAI's limit for chat top_logprobs
MAX_STOP = 4              # OpenAI accepts up to 4 stop sequences
CHAT_ROLES = ("system", "developer", "user", "assistant")
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "audio", "modalities", "prediction")


class APIError(Exception):
    """An error as OpenAI reports it: HTTP status plus {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def parse_json(raw: bytes) -> dict:
    """The request body as a JSON object, or a 400 saying what is wrong with it."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(f"the request body is not valid JSON ({e}); send a JSON object") from None
    if not isinstance(body, dict):
        raise invalid(f"the request body must be a JSON object, not {type(body).__name__}")
    return body


# --- field readers: each names the parameter and the type it wanted, as OpenAI's 400s do ------

def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _int(body: dict, name: str, default: int | None, low: int | None = None, high: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if not _is_int(v):
        raise invalid(f"{name} must be an integer, got {json.dumps(v)}", name)
    if (low is not None and v < low) or (high is not None and v > high):
        span = f"at least {low}" if high is None else f"between {low} and {high}"
        raise invalid(f"{name} must be {span}, got {v}", name)
    return int(v)


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not _is_number(v):
        raise invalid(f"{name} must be a number, got {json.dumps(v)}", name)
    if not low <= v <= high:
        raise invalid(f"{name} must be between {low:g} and {high:g}, got {v}", name)
    return float(v)


def _bool(body: dict, name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise invalid(f"{name} must be true or false, got {json.dumps(v)}", name)
    return v


def _stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise invalid("stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP:
        raise invalid(f"stop takes at most {MAX_STOP} sequences, got {len(stops)}", "stop")
    return [s for s in stops if s]


def _refuse_unsupported(body: dict) -> None:
    for name in UNSUPPORTED:
        if body.get(name) not in (None, [], {}):
            raise invalid(f"{name} is not supported by this server (plain text generation only)", name)
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise invalid('response_format: only {"type": "text"} is supported (no JSON mode)', "response_format")
    if body.get("logit_bias"):
        raise invalid("logit_bias is not supported by this server", "logit_bias")


@dataclass
class GenerationRequest:
    """A chat or completions request, validated: what the engine needs plus how to answer."""

    kind: str                         # "chat" or "completion"
    model: str
    prompts: list[Any]                # chat: [messages]; completion: one str or list[int] per prompt
    sampling: SamplingConfig          # max_new_tokens is a placeholder until the prompt is measured
    max_tokens: int | None            # None: chat fills the context (OpenAI's default), completions 16
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0             # alternatives per token; completions' `logprobs: k` lands here too

    def sampling_for(self, index: int, max_new_tokens: int) -> SamplingConfig:
        """Choice `index`'s config: the token budget set, and a seed of its own (seed + index), so
        n seeded choices are n different samples that a rerun repeats."""
        seed = None if self.sampling.seed is None else self.sampling.seed + index
        return _replace(self.sampling, max_new_tokens=max_new_tokens, seed=seed)


def _replace(config: SamplingConfig, **changes: Any) -> SamplingConfig:
    import dataclasses
    return dataclasses.replace(config, **changes)


def _common(body: dict, kind: str, max_n: int) -> dict:
    """The fields chat and completions share, validated."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model is required: a name from GET /v1/models", "model")
    _refuse_unsupported(body)
    stream = _bool(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise invalid("stream_options is an object, and only allowed with stream: true", "stream_options")
    include_usage = _bool(options or {}, "include_usage", False)
    max_tokens = _int(body, "max_completion_tokens", None, 1) if kind == "chat" else None
    max_tokens = max_tokens if max_tokens is not None else _int(body, "max_tokens", None, 1)
    n = _int(body, "n", 1, 1, max_n)
    best_of = _int(body, "best_of", None, 1)
    if best_of is not None and best_of != n:
        raise invalid("best_of other than n is not supported", "best_of")
    try:
        sampling = SamplingConfig(
            max_new_tokens=max_tokens or 16, temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
            # top_p 0 is valid for OpenAI (only the top token); SamplingConfig wants it above 0
            top_p=max(_number(body, "top_p", 1.0, 0.0, 1.0), 1e-6),
            presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
            frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
            stop=_stop(body), seed=_int(body, "seed", None, -(2 ** 63), 2 ** 63 - 1),
            # vLLM's extensions, so load generators and benchmarks written for it work unchanged
            ignore_eos=_bool(body, "ignore_eos", False), top_k=max(_int(body, "top_k", 0, -1), 0),  # -1: off
            min_p=_number(body, "min_p", 0.0, 0.0, 0.999),
            repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.01, 10.0))
    except LLMLabError as e:  # a rule of SamplingConfig's own that the checks above do not cover
        raise invalid(str(e)) from None
    if body.get("user") is not None and not isinstance(body.get("user"), str):
        raise invalid("user must be a string", "user")
    return dict(model=model, sampling=sampling, max_tokens=max_tokens, n=n, stream=stream,
                include_usage=include_usage)


def _message_text(message: Any, i: int) -> dict:
    if not isinstance(message, dict):
        raise invalid(f"messages[{i}] must be an object with role and content", f"messages[{i}]")
    role, content = message.get("role"), message.get("content")
    if role not in CHAT_ROLES:
        raise invalid(f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}, got {json.dumps(role)}",
                      f"messages[{i}].role")
    if isinstance(content, list):   # content parts: text only
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid(f"messages[{i}].content: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                              "are supported", f"messages[{i}].content")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise invalid(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")
    # "developer" is OpenAI's newer name for the system role; chat templates know "system".
    return {"role": "system" if role == "developer" else role, "content": content}


def parse_chat(body: dict, max_n: int = 16) -> GenerationRequest:
    """POST /v1/chat/completions body -> GenerationRequest (APIError 400 when it cannot be served)."""
    common = _common(body, "chat", max_n)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages is required: a non-empty list of {role, content} objects", "messages")
    messages = [_message_text(m, i) for i, m in enumerate(messages)]
    logprobs = _bool(body, "logprobs", False)
    top = _int(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    if top and not logprobs:
        raise invalid("top_logprobs needs logprobs: true", "top_logprobs")
    common["sampling"] = _replace(common["sampling"], logprobs=logprobs, top_logprobs=top)
    return GenerationRequest("chat", prompts=[messages], logprobs=logprobs, top_logprobs=top, **common)


def parse_completion(body: dict, max_n: int = 16) -> GenerationRequest:
    """POST /v1/completions body -> GenerationRequest. prompt: a string, a list of strings, a list
    of token ids, or a list of such lists; each prompt gets n choices (index = prompt * n + j)."""
    common = _common(body, "completion", max_n)
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt)):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(
            isinstance(p, str) or (isinstance(p, list) and p and all(_is_int(t) for t in p)) for p in prompt):
        prompts = list(prompt)
    else:
        raise invalid("prompt is required: a string, a list of strings, a list of token ids or a list of them",
                      "prompt")
    if any(isinstance(p, list) and min(p) < 0 for p in prompts):
        raise invalid("prompt token ids must be 0 or more", "prompt")
    if _bool(body, "echo", False):
        raise invalid("echo is not supported by this server", "echo")
    if body.get("suffix") is not None:
        raise invalid("suffix (fill-in-the-middle) is not supported by this server", "suffix")
    top = _int(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
    common["sampling"] = _replace(common["sampling"], logprobs=top is not None, top_logprobs=top or 0)
    return GenerationRequest("completion", prompts=prompts, logprobs=top is not None, top_logprobs=top or 0,
                             **common)


def parse_embeddings(body: dict) -> tuple[str, list[str], str]:
    """POST /v1/embeddings body -> (model, texts, encoding_format)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model is required (e.g. minilm)", "model")
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise invalid("input must be a string or a non-empty list of strings (token-id inputs are not supported)",
                      "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise invalid(f"encoding_format must be float or base64, got {json.dumps(fmt)}", "encoding_format")
    return model, texts, fmt


# --- responses ---------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


@dataclass
class Choice:
    """One sequence's reply as its TokenEvents arrive (for a whole response, or a stream's usage)."""

    index: int
    prompt_index: int = 0
    text: str = ""
    finish_reason: str | None = None
    tokens: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    preemptions: int = 0

    def add(self, event: Any) -> None:
        self.text += event.text
        if event.token_id is not None and event.logprob is not None:
            self.tokens.append((event.token_id, event.logprob, list(event.top_logprobs or [])))
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason
        self.prompt_tokens, self.completion_tokens = event.prompt_tokens, event.completion_tokens
        self.cached_tokens, self.preemptions = event.cached_tokens, event.preemptions


TokenBytes = Callable[[int], bytes]


def _token_text(token_bytes: TokenBytes, token: int) -> str:
    # A byte-level token can be part of a UTF-8 character; "bytes" carries the exact value.
    return token_bytes(token).decode("utf-8", errors="replace")


def chat_logprobs(tokens: list, token_bytes: TokenBytes) -> dict:
    """choices[].logprobs of a chat completion: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    def entry(token: int, logprob: float) -> dict:
        return {"token": _token_text(token_bytes, token), "logprob": logprob, "bytes": list(token_bytes(token))}

    return {"content": [{**entry(t, lp), "top_logprobs": [entry(a, alp) for a, alp in top]}
                        for t, lp, top in tokens], "refusal": None}


def completion_logprobs(tokens: list, token_bytes: TokenBytes, offset: int = 0) -> dict:
    """choices[].logprobs of a legacy completion; text_offset counts characters of the generated
    text from `offset` (a stream passes the length already sent)."""
    strings = [_token_text(token_bytes, t) for t, _, _ in tokens]
    offsets = []
    for s in strings:
        offsets.append(offset)
        offset += len(s)
    return {"tokens": strings, "token_logprobs": [lp for _, lp, _ in tokens],
            "top_logprobs": [{_token_text(token_bytes, a): alp for a, alp in top} for _, _, top in tokens],
            "text_offset": offsets}


def usage(choices: list[Choice]) -> dict:
    """OpenAI bills a prompt once however many choices it has; cached_tokens is the part of each
    prompt that every one of its choices found in the prefix cache."""
    prompts: dict[int, list[Choice]] = {}
    for c in choices:
        prompts.setdefault(c.prompt_index, []).append(c)
    prompt_tokens = sum(group[0].prompt_tokens for group in prompts.values())
    cached = sum(min(c.cached_tokens for c in group) for group in prompts.values())
    completion_tokens = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_details": {"cached_tokens": cached}}


def debug_info(choices: list[Choice]) -> dict:
    """The non-OpenAI "llmlab" field: how often the scheduler preempted each choice."""
    return {"preemptions": sum(c.preemptions for c in choices)}


def chat_completion(id: str, created: int, model: str, choices: list[Choice], token_bytes: TokenBytes,
                    logprobs: bool) -> dict:
    return {"id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": c.index, "message": {"role": "assistant", "content": c.text, "refusal": None},
                         "logprobs": chat_logprobs(c.tokens, token_bytes) if logprobs else None,
                         "finish_reason": c.finish_reason} for c in choices],
            "usage": usage(choices), "system_fingerprint": None, "llmlab": debug_info(choices)}


def completion(id: str, created: int, model: str, choices: list[Choice], token_bytes: TokenBytes,
               logprobs: bool) -> dict:
    return {"id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": c.index, "text": c.text,
                         "logprobs": completion_logprobs(c.tokens, token_bytes) if logprobs else None,
                         "finish_reason": c.finish_reason} for c in choices],
            "usage": usage(choices), "system_fingerprint": None, "llmlab": debug_info(choices)}


def chat_chunk(id: str, created: int, model: str, index: int, delta: dict, finish_reason: str | None = None,
               logprobs: dict | None = None, include_usage: bool = False, extra: dict | None = None) -> dict:
    """One chat.completion.chunk. With include_usage every chunk carries "usage": null and a last
    chunk with no choices carries the totals (OpenAI's stream_options.include_usage)."""
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    return _chunk("chat.completion.chunk", id, created, model, choice, include_usage, extra)


def completion_chunk(id: str, created: int, model: str, index: int, text: str, finish_reason: str | None = None,
                     logprobs: dict | None = None, include_usage: bool = False, extra: dict | None = None) -> dict:
    choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
    return _chunk("text_completion", id, created, model, choice, include_usage, extra)


def _chunk(kind: str, id: str, created: int, model: str, choice: dict, include_usage: bool,
           extra: dict | None) -> dict:
    chunk = {"id": id, "object": kind, "created": created, "model": model, "system_fingerprint": None,
             "choices": [choice]}
    if include_usage:
        chunk["usage"] = None
    if extra:
        chunk["llmlab"] = extra
    return chunk


def usage_chunk(id: str, created: int, model: str, kind: str, choices: list[Choice]) -> dict:
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return {"id": id, "object": obj, "created": created, "model": model, "system_fingerprint": None,
            "choices": [], "usage": usage(choices)}


def embeddings_response(model: str, vectors: Any, prompt_tokens: int, encoding_format: str) -> dict:
    """vectors: float32 array (n, dim). base64 is the little-endian float32 bytes (what the openai
    SDK asks for by default, and decodes)."""
    import base64

    import numpy as np

    def encode(row: Any) -> Any:
        if encoding_format == "base64":
            return base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode("ascii")
        return [float(x) for x in row]

    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(row)} for i, row in enumerate(vectors)],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def models_response(names: list[str], created: int) -> dict:
    return {"object": "list", "data": [{"id": n, "object": "model", "created": created, "owned_by": "llmlab"}
                                       for n in names]}


def sse(data: dict | str) -> str:
    """One server-sent event: `data: {json}` and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"
