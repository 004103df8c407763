"""`create_app`: the OpenAI-compatible HTTP API over an EngineWorker, as a FastAPI app.

    POST /v1/chat/completions   chat, streamed (SSE) or whole; n, logprobs, stop, seed, penalties
    POST /v1/completions        legacy completions: the same, for plain prompts and token ids
    POST /v1/embeddings         MiniLM sentence vectors (llmlab.rag.embed), loaded on first use
    GET  /v1/models             the base model, "base:adapter" per LoRA adapter, and minilm
    GET  /health, /metrics      liveness and load; Prometheus text format
    GET  /, /chat               the chat page (static/chat.html; `home_page` can put another page at /)

Hooks for an app built on this one (llmlab.assistant.app): `rewrite_chat` may replace a chat
request's body before it is served (and add fields to its response), `extra_models` are names it
serves that way on the base model, and app.state.guard / app.state.counted_paths let added routes
share the auth, shutdown and metrics of these.

Request bodies are read and validated by hand (llmlab.serve.protocol) rather than with pydantic
models, so every failure, malformed JSON included, comes back in OpenAI's error shape with the
status a client's SDK expects (400, 401, 404, 413, 429, 503), never FastAPI's own 422 format.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmlab.core.errors import LLMLabError
from llmlab.infer.continuous import TokenEvent
from llmlab.serve import protocol as P
from llmlab.serve.config import ServeConfig, read_api_keys
from llmlab.serve.metrics import Metrics
from llmlab.serve.protocol import APIError, Choice, invalid
from llmlab.serve.worker import EngineWorker, shutting_down_error

CHAT_PAGE = Path(__file__).parent / "static" / "chat.html"
EMBEDDING_MODEL = "minilm"
DISCONNECT_POLL_S = 0.25   # how often a whole (non-streamed) request checks that its client is still there
COUNTED_PATHS = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/health", "/metrics", "/"}


class _CountRequests:
    """ASGI middleware: count every answer by endpoint and status. Plain ASGI (not
    BaseHTTPMiddleware), which would buffer streams and hide client disconnects."""

    def __init__(self, app: Any, metrics: Metrics, paths: set[str] = COUNTED_PATHS):
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def tracking_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            path = scope.get("path", "")
            self.metrics.request_done(path if path in self.paths else "other", status)


class _EventStream(StreamingResponse):
    """SSE response that runs `on_close` however it ends: finished, client gone mid-stream (the
    body generator may be left suspended, never reaching its own `finally`), or server stopping."""

    def __init__(self, content: Any, on_close: Any):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


@dataclass
class ChatRewrite:
    """What a `rewrite_chat` hook makes of a chat request: the body to serve instead, fields added
    at the top level of the whole (non-streamed) response, and events sent ahead of a stream's
    first chunk; `reply`, when set, is the whole answer, sent without running the model (the
    assistant's relevance gate abstaining)."""

    body: dict
    fields: dict = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    reply: str | None = None


RewriteChat = Callable[[dict], Awaitable[ChatRewrite | None]]


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) one over `limit` bytes without reading it all into memory."""
    too_large = APIError(413, f"the request body is larger than the server's limit of {limit} bytes",
                         "invalid_request_error", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


class _Prompts:
    """Prompt text -> token ids with the model's tokenizer and chat template."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        params = inspect.signature(tokenizer.encode).parameters
        # BPE tokenizers take allowed_special (a template writes <|im_start|> as text); char ones do not
        self._special = {"allowed_special": True} if "allowed_special" in params else {}

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None)) and hasattr(self.tokenizer, "apply_chat_template")

    def encode(self, prompt: Any, model: str) -> list[int]:
        try:
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):   # chat messages
                if not self.has_chat_template:
                    raise invalid(f"model {model} has no chat template: send a plain prompt to /v1/completions",
                                  "messages")
                text = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True)
                return self.tokenizer.encode(text, **self._special)
            if isinstance(prompt, str):
                return self.tokenizer.encode(prompt, add_special=True)
        except LLMLabError as e:   # e.g. a character outside a char tokenizer's vocabulary
            raise invalid(str(e), "messages" if isinstance(prompt, list) else "prompt") from None
        vocab = self.tokenizer.vocab_size
        if max(prompt) >= vocab:
            raise invalid(f"prompt token id {max(prompt)} is outside the vocabulary of {vocab}", "prompt")
        return list(prompt)


def create_app(worker: EngineWorker, config: ServeConfig | None = None, metrics: Metrics | None = None,
               embedder_factory: Any = None, rewrite_chat: RewriteChat | None = None,
               extra_models: tuple[str, ...] = (), home_page: Path | None = None) -> FastAPI:
    """worker: a started EngineWorker. metrics: the one the worker writes to (None: a new one).
    embedder_factory: () -> llmlab.rag.embed.Embedder (default: the built-in MiniLM).
    rewrite_chat: async (chat body) -> ChatRewrite, or None to serve the body as it is; raising
    APIError answers with it. extra_models: chat model names (listed by /v1/models) that generate
    on the base model, for the rewrite to claim. home_page: the HTML file at / (default: chat)."""
    config = config or ServeConfig()
    metrics = metrics or worker.metrics or Metrics()
    engine = worker.engine
    model_name = config.model_name or getattr(engine, "name", "") or "llmlab"
    adapters = list(getattr(engine, "adapter_names", []))
    keys = read_api_keys(config.api_key_file) if config.api_key_file else None
    prompts = _Prompts(engine.tokenizer)
    created = int(time.time())

    app = FastAPI(title="llmlab", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.accepting = True        # False once shutdown starts: new requests get 503
    app.state.worker, app.state.metrics, app.state.config = worker, metrics, config
    app.state.embedder = None
    app.state.counted_paths = set(COUNTED_PATHS) | {"/chat"}   # an app built on this one adds its routes
    embedder_lock = asyncio.Lock()
    app.add_middleware(_CountRequests, metrics=metrics, paths=app.state.counted_paths)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return _error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return _error_response(APIError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", kind))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> JSONResponse:
        return _error_response(APIError(500, f"internal error ({type(e).__name__}: {e})", "server_error"))

    def guard(request: Request) -> None:
        """503 while shutting down, 401 without a valid key."""
        if not app.state.accepting or not worker.alive:
            raise shutting_down_error()
        if keys is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given = given.strip() if scheme.lower() == "bearer" else ""
        # compare with every key, whatever the earlier results, so the time taken leaks nothing
        matches = [hmac.compare_digest(given.encode(), key.encode()) for key in keys]
        if not given or not any(matches):
            raise APIError(401, "Incorrect or missing API key: send `Authorization: Bearer KEY` with a key "
                                "from the server's --api-key-file", "invalid_request_error", code="invalid_api_key")

    app.state.guard = guard

    def adapter_for(model: str, kind: str) -> str | None:
        if model == model_name or (model in extra_models and kind == "chat"):
            return None
        base, _, adapter = model.rpartition(":")
        if base == model_name and adapter in adapters:
            return adapter
        raise APIError(404, f"The model `{model}` does not exist; this server has: {', '.join(served_models())}",
                       "invalid_request_error", "model", "model_not_found")

    def served_models() -> list[str]:
        return [model_name] + [f"{model_name}:{a}" for a in adapters] + list(extra_models) + [EMBEDDING_MODEL]

    def token_budget(ids: list[int], req: P.GenerationRequest) -> int:
        """max_new_tokens for this prompt, or 400 context_length_exceeded."""
        context = engine.max_context
        # the KV pool can be smaller than the context (--num-blocks): a sequence must fit in it
        stats = worker.stats
        pool = stats.get("kv_blocks_total", 0) * getattr(getattr(engine, "config", None), "block_size", 0)
        room = min(context, pool) if pool else context
        max_prompt = min(config.max_prompt_tokens or room - 1, room - 1)
        where = "messages" if req.kind == "chat" else "prompt"
        if len(ids) > max_prompt:
            raise invalid(f"the prompt is {len(ids)} tokens, over the limit of {max_prompt}; shorten it",
                          where, "context_length_exceeded")
        if req.max_tokens is None:
            return room - len(ids) if req.kind == "chat" else min(16, room - len(ids))
        if len(ids) + req.max_tokens > room:
            raise invalid(f"This model's maximum context length is {room} tokens. However, you requested "
                          f"{len(ids) + req.max_tokens} tokens ({len(ids)} in the {where}, {req.max_tokens} in the "
                          "completion). Please reduce the length of the prompt or max_tokens.",
                          where, "context_length_exceeded")
        return req.max_tokens

    async def generate(request: Request, kind: str) -> Response:
        guard(request)
        body = P.parse_json(await read_body(request, config.max_body_bytes))
        rewrite = await rewrite_chat(body) if rewrite_chat is not None and kind == "chat" else None
        if rewrite is not None:
            body = rewrite.body
        req = P.parse_chat(body, config.max_n) if kind == "chat" else P.parse_completion(body, config.max_n)
        adapter = adapter_for(req.model, kind)
        items = []
        for p, prompt in enumerate(req.prompts):
            ids = prompts.encode(prompt, req.model)
            budget = token_budget(ids, req)
            items += [(ids, req.sampling_for(p * req.n + j, budget), adapter) for j in range(req.n)]
        events: asyncio.Queue = asyncio.Queue()
        if rewrite is not None and rewrite.reply is not None:   # the hook answered: no model call
            rids = [P.new_id("fixed") for _ in items]
            for rid, (ids, _, _) in zip(rids, items):
                events.put_nowait(TokenEvent(rid, None, rewrite.reply, None, [], "stop", len(ids), 0, 0, 0))
        else:
            rids = await worker.submit(items, events)
        choices = {rid: Choice(index=i, prompt_index=i // req.n) for i, rid in enumerate(rids)}
        pending = set(rids)
        response_id = P.new_id("chatcmpl" if kind == "chat" else "cmpl")
        if req.stream:
            ahead = rewrite.events if rewrite is not None else []
            return _EventStream(_stream(req, response_id, created_now(), choices, pending, events, ahead),
                                on_close=lambda: worker.cancel(pending))
        clock = asyncio.get_running_loop().time
        next_check = clock() + DISCONNECT_POLL_S
        try:
            while pending:
                try:
                    item = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    item = None
                # by the clock, not on a quiet queue: tokens arrive every few ms while nobody listens
                if clock() >= next_check:
                    next_check = clock() + DISCONNECT_POLL_S
                    if await request.is_disconnected():
                        return Response(status_code=499)   # nobody to answer; finally frees the blocks
                if item is None:
                    continue
                if isinstance(item, APIError):
                    raise item
                choices[item.request_id].add(item)
                if item.finish_reason is not None:
                    pending.discard(item.request_id)
        finally:
            worker.cancel(pending)
        build = P.chat_completion if kind == "chat" else P.completion
        body = build(response_id, created_now(), req.model, list(choices.values()), token_bytes, req.logprobs)
        return JSONResponse(body | rewrite.fields if rewrite is not None else body)

    def token_bytes(token: int) -> bytes:
        tok = engine.tokenizer
        return tok.decode_bytes([token])

    async def _stream(req: P.GenerationRequest, response_id: str, when: int, choices: dict[str, Choice],
                      pending: set[str], events: asyncio.Queue, ahead: list[dict] = ()):
        """SSE chunks in OpenAI's order: per choice a role chunk, content chunks, a finish chunk;
        then the usage chunk (stream_options.include_usage) and `data: [DONE]`. `ahead`: events
        of a ChatRewrite, sent first."""
        chat, usage = req.kind == "chat", req.include_usage
        for event in ahead:
            yield P.sse(event)
        started: set[str] = set()
        while pending:
            item = await events.get()
            if isinstance(item, APIError):      # the status line is long gone: say it in the stream
                yield P.sse(item.body())
                yield P.sse("[DONE]")
                return
            choice = choices[item.request_id]
            sent_chars = len(choice.text)
            choice.add(item)
            entry = choice.tokens[-1:] if req.logprobs and item.token_id is not None else []
            if chat:
                if item.request_id not in started:
                    started.add(item.request_id)
                    role = {"role": "assistant", "content": ""}
                    yield P.sse(P.chat_chunk(response_id, when, req.model, choice.index, role, include_usage=usage))
                if item.text or entry:
                    logprobs = P.chat_logprobs(entry, token_bytes) if entry else None
                    yield P.sse(P.chat_chunk(response_id, when, req.model, choice.index, {"content": item.text},
                                             logprobs=logprobs, include_usage=usage))
            elif item.text or entry:
                logprobs = P.completion_logprobs(entry, token_bytes, sent_chars) if req.logprobs else None
                yield P.sse(P.completion_chunk(response_id, when, req.model, choice.index, item.text, logprobs=logprobs,
                                               include_usage=usage))
            if item.finish_reason is not None:
                pending.discard(item.request_id)
                extra = P.debug_info([choice])
                make = P.chat_chunk if chat else P.completion_chunk
                empty = {} if chat else ""
                yield P.sse(make(response_id, when, req.model, choice.index, empty, item.finish_reason,
                                 include_usage=usage, extra=extra))
        if usage:
            yield P.sse(P.usage_chunk(response_id, when, req.model, req.kind, list(choices.values())))
        yield P.sse("[DONE]")

    def created_now() -> int:
        return int(time.time())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, "completion")

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        guard(request)
        model, texts, fmt = P.parse_embeddings(P.parse_json(await read_body(request, config.max_body_bytes)))
        if model != EMBEDDING_MODEL:
            raise APIError(404, f"The model `{model}` does not exist for embeddings; use {EMBEDDING_MODEL}",
                           "invalid_request_error", "model", "model_not_found")
        async with embedder_lock:   # one load, however many requests arrive before it is done
            if app.state.embedder is None:
                if embedder_factory is None:
                    from llmlab.rag.embed import Embedder
                    app.state.embedder = await run_in_threadpool(Embedder)
                else:
                    app.state.embedder = await run_in_threadpool(embedder_factory)
        embedder = app.state.embedder
        vectors = await run_in_threadpool(embedder.embed, texts)
        tokens = sum(min(embedder.count_tokens(t), embedder.max_seq_len) for t in texts)
        return JSONResponse(P.embeddings_response(model, vectors, tokens, fmt))

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        guard(request)
        return JSONResponse(P.models_response(served_models(), created))

    @app.get("/health")
    async def health() -> Response:
        status = "ok" if app.state.accepting and worker.alive else "shutting_down" if worker.alive else "stopped"
        body = {"status": status, "model": model_name, **{k: worker.stats.get(k) for k in (
            "waiting", "running", "kv_blocks_used", "kv_blocks_total")}, "last_error": worker.last_error}
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        text, content_type = metrics.render()
        return Response(text, media_type=content_type)

    def page(path: Path) -> Response:
        if not path.is_file():
            raise APIError(404, f"the page {path.name} (in {path.parent}) is not installed", "not_found_error")
        return FileResponse(path, media_type="text/html")

    @app.get("/")
    async def home() -> Response:
        return page(home_page or CHAT_PAGE)

    @app.get("/chat")
    async def chat_page() -> Response:
        return page(CHAT_PAGE)

    return app
