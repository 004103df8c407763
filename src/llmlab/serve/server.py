"""`run_server`: uvicorn around the app, with llmlab's graceful shutdown.

uvicorn on SIGTERM stops reading new connections and then waits, unboundedly, for the open ones;
and afterwards it re-raises the signal, so the process ends "killed by SIGTERM" rather than with
status 0. A serving process wants instead (what a container orchestrator's stop expects):

    1. stop accepting work: new requests get 503 (a load balancer retries them elsewhere)
    2. let the running requests finish, for up to shutdown_grace_s
    3. cancel what is left: each open stream gets an error event and `data: [DONE]`
    4. close the connections and exit 0

A second signal skips the waiting (force exit), as uvicorn's own Ctrl-C twice does.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from llmlab.core.errors import LLMLabError
from llmlab.serve.app import create_app
from llmlab.serve.config import ServeConfig
from llmlab.serve.metrics import Metrics
from llmlab.serve.worker import EngineWorker

log = logging.getLogger("llmlab.serve")


class Server(uvicorn.Server):
    """uvicorn.Server whose shutdown drains the engine first (steps 1-3 above).
    `begin_shutdown()` starts the same sequence from any thread (tests run the server in one)."""

    def __init__(self, app: Any, worker: EngineWorker, config: ServeConfig, log_level: str = "info",
                 access_log: bool = True):
        super().__init__(uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="off",
                                        # after our drain, the streams are over: this only bounds a stuck one
                                        timeout_graceful_shutdown=5))
        self.app, self.worker, self.serve_config = app, worker, config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        # Runs as the signal handler on the main thread (uvicorn installs it). Not appending to
        # self._captured_signals is what keeps uvicorn from re-raising the signal at the end.
        if self._draining:
            log.warning("second signal: exiting without waiting for running requests")
            self.force_exit = self.should_exit = True
            return
        self.begin_shutdown()

    def begin_shutdown(self) -> None:
        if self._draining or self._loop is None:
            self.should_exit = True
            return
        self._draining = True
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain()))

    async def _drain(self) -> None:
        self.app.state.accepting = False
        grace = self.serve_config.shutdown_grace_s
        running = self.worker.active_count
        if running:
            log.info("shutting down: %d request(s) running, waiting up to %g s for them", running, grace)
        deadline = time.monotonic() + grace
        while self.worker.active_count and time.monotonic() < deadline and not self.force_exit:
            await asyncio.sleep(0.05)
        if self.worker.active_count:
            log.warning("shutting down: cancelling %d request(s) still running", self.worker.active_count)
        await asyncio.to_thread(self.worker.stop, True)
        self.should_exit = True


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: any free one; read it back with getsockname())."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise LLMLabError(f"cannot listen on {host}:{port} ({e.strerror}): pick another --port, or stop what "
                          "holds it") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def build(engine: Any, config: ServeConfig, embedder_factory: Any = None,
          start: bool = True, make_app: Any = None) -> tuple[Any, EngineWorker]:
    """(app, worker) for an engine: what run_server serves, and what tests drive. start: run the
    worker on a thread of its own (else the caller runs worker.run()). make_app: (worker, config,
    metrics) -> app, for an app built on create_app (default: create_app itself)."""
    metrics = Metrics()
    worker = EngineWorker(engine, metrics, config.request_timeout_s)
    if start:
        worker.start()
    try:
        if make_app is None:
            app = create_app(worker, config, metrics, embedder_factory)
        else:
            app = make_app(worker, config, metrics)
    except BaseException:
        worker.stop(cancel_running=True)
        raise
    return app, worker


@contextmanager
def serve_in_thread(app: Any, worker: EngineWorker, config: ServeConfig, host: str = "127.0.0.1",
                    start_timeout_s: float = 10.0) -> Iterator[tuple[str, Server]]:
    """(base URL, server) of `app` (from `build`) served on a free port of `host` by a thread of
    this process: for tests, notebooks and benchmarks that talk to a real socket. On exit the
    server drains as on SIGTERM, then the worker stops."""
    sock = bind_socket(host, 0)
    server = Server(app, worker, config, log_level="warning", access_log=False)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="llmlab-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        if not server.started:
            raise LLMLabError(f"the server on {host} did not start within {start_timeout_s:.0f} s")
        port = sock.getsockname()[1]
        yield (f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"), server
    finally:
        server.begin_shutdown()
        thread.join(15)
        worker.stop(cancel_running=True)
        sock.close()


def run_server(engine: Any, config: ServeConfig, log_level: str = "info", make_app: Any = None,
               title: str = "llmlab serve", pages: str = "chat page at /") -> int:
    """Serve `engine` (a ContinuousEngine, or a no-argument function returning one, called after
    the port is bound so a taken port fails fast) until SIGTERM/SIGINT; returns 0 after a graceful
    shutdown. make_app: see `build`; title and pages: what the start-up line calls it and shows."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))   # uvicorn's own look
    log.addHandler(handler)
    log.setLevel(log_level.upper())
    log.propagate = False
    sock = bind_socket(config.host, config.port)
    try:
        if callable(engine) and not hasattr(engine, "step"):
            engine = engine()
        app, worker = build(engine, config, start=False, make_app=make_app)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    name = config.model_name or getattr(engine, "name", "") or "llmlab"
    print(f"{title}: {name} on http://{shown}:{port}  (OpenAI API under /v1, {pages}; "
          "Ctrl-C or SIGTERM stops it gracefully)", file=sys.stderr, flush=True)
    server = Server(app, worker, config, log_level)
    # The engine loop runs on the main thread and HTTP on a second one (see EngineWorker.run), so
    # the signal handlers, which Python runs on the main thread, are installed here, not by uvicorn.
    http = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="llmlab-http", daemon=True)
    previous = {sig: signal.signal(sig, server.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        http.start()
        worker.run(give_up=lambda: not http.is_alive())
        http.join(10)
    finally:
        worker.stop(cancel_running=True)
        for sig, old in previous.items():
            signal.signal(sig, old)
        sock.close()
        log.removeHandler(handler)
    return 0
