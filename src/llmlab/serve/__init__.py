"""Serving: an OpenAI-compatible HTTP API over the continuous-batching engine (llmlab.infer.continuous).

    config.py    ServeConfig: host, port, API keys, CORS, body/prompt limits, timeouts, shutdown grace
    protocol.py  OpenAI request bodies -> validated GenerationRequest; response, chunk and error dicts
    worker.py    EngineWorker: the one engine thread; submit/cancel in, TokenEvents out to asyncio queues
    metrics.py   Prometheus metrics (own registry): queue, batch, KV blocks, latencies, tokens/s
    app.py       create_app: FastAPI routes /v1/chat/completions, /v1/completions, /v1/embeddings, ...
    server.py    run_server: uvicorn with a graceful SIGTERM (503 new work, drain, cancel, exit 0)

The scheduler lives in llmlab.infer and knows nothing of HTTP; this package is the thin async layer
over it. FastAPI and uvicorn are imported only here, so the rest of llmlab does not need them.
"""

from llmlab.serve.config import ServeConfig

__all__ = ["ServeConfig"]
