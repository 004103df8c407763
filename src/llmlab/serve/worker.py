"""`EngineWorker`: the one thread that owns the ContinuousEngine, and the queues around it.

The engine is not thread-safe and every step is a blocking forward pass, so it cannot run on the
event loop (it would freeze every other connection for the length of a step). Instead:

    HTTP handlers (event loop)  --submit/cancel commands-->  queue.SimpleQueue  -->  engine thread
    engine thread  --TokenEvents, via loop.call_soon_threadsafe-->  each request's asyncio.Queue

The engine thread drains the commands before every step, so a cancelled request's KV blocks are
free before the next forward pass, and a new request joins the batch at the next step (continuous
batching). With no work it sleeps on a threading.Event that the next command sets: no polling.

Each handler's asyncio.Queue receives TokenEvents, then (instead of more events) an APIError when
the request ends early: timeout, shutdown, or an engine failure.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from llmlab.core.errors import LLMLabError
from llmlab.infer.continuous import QueueFull
from llmlab.serve.protocol import APIError

log = logging.getLogger("llmlab.serve")

IDLE_WAKE_S = 1.0          # an idle engine thread still looks at the clock this often (timeouts)


def shutting_down_error() -> APIError:
    return APIError(503, "the server is shutting down; retry on another instance or after it restarts",
                    "server_error", code="server_shutting_down")


@dataclass
class _Active:
    """What the engine thread keeps per running request: where its events go, and its clock."""

    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    submitted: float
    deadline: float | None
    last_token: float | None = None
    tokens: int = 0


@dataclass
class _Submit:
    items: list[tuple[list[int], Any, str | None]]   # (prompt ids, SamplingConfig, adapter)
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    done: asyncio.Future
    ids: list[str] = field(default_factory=list)
    sent: float = field(default_factory=time.perf_counter)   # TTFT, e2e and the timeout count from here


class EngineWorker:
    def __init__(self, engine: Any, metrics: Any = None, request_timeout_s: float = 0.0):
        """engine: a ContinuousEngine (or anything with its submit/cancel/has_work/step/stats).
        metrics: a llmlab.serve.metrics.Metrics, or None."""
        self.engine, self.metrics, self.request_timeout_s = engine, metrics, request_timeout_s
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._active: dict[str, _Active] = {}      # engine thread only
        self._stop: bool | None = None             # None: running; else "cancel the running ones?"
        self._thread: threading.Thread | None = None
        self._finished = False                     # the loop has ended (commands sent before it starts wait)
        self._closed = False                       # the thread has exited (or is about to): submit answers 503
        self._close_lock = threading.Lock()        # no submission slips in between that and the last drain
        self.stats: dict = engine.stats()          # a snapshot, replaced (never mutated) by the engine thread
        self.active_count = 0                      # requests with events still to come (read from any thread)
        self.last_error: str | None = None

    # ------------------------------------------------------------------ any thread

    def start(self) -> "EngineWorker":
        """Run the engine loop on a thread of its own (tests; `run` is what `llmlab serve` uses)."""
        self._thread = threading.Thread(target=self.run, name="llmlab-engine", daemon=True)
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return not self._finished

    async def submit(self, items: list[tuple[list[int], Any, str | None]], events: asyncio.Queue) -> list[str]:
        """Queue sequences for one HTTP request, all or none; their events go to `events`.
        Raises APIError: 429 when the engine's queue is full, 400 for a request it refuses
        (too long, unknown adapter), 503 when the server is stopping."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        with self._close_lock:
            if self._closed:
                raise shutting_down_error()
            self._send(_Submit(items, loop, events, done))
        return await done

    def cancel(self, request_ids: Iterable[str]) -> None:
        """Forget these requests (client gone): their blocks are freed before the next step."""
        ids = list(request_ids)
        if ids:
            self._send(("cancel", ids))

    def stop(self, cancel_running: bool = True, timeout: float | None = 10.0) -> None:
        """Stop the engine thread: at once, ending running requests with a 503 (cancel_running), or
        once they have all finished. New submissions are refused from now on either way."""
        self._send(("stop", cancel_running))
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _send(self, command: Any) -> None:
        self._commands.put(command)
        self._wake.set()

    # ------------------------------------------------------------------ the engine thread

    def run(self, give_up: Any = None) -> None:
        """The engine loop, on the calling thread, until stop() (or until give_up() is true, checked
        at least every IDLE_WAKE_S: the HTTP side died). `llmlab serve` runs it on the main thread:
        here torch's small matrix products ran 1.3-2x slower on a second thread than on the main one."""
        try:
            self._loop(give_up)
        finally:
            self._finished = True

    def _loop(self, give_up: Any) -> None:
        while True:
            if give_up is not None and give_up() and self._stop is None:
                self._stop = True
            # clear before draining: a command sent after the drain sets the event again, so the
            # wait below returns at once instead of sleeping on it
            self._wake.clear()
            self._drain_commands()
            if self._stop is not None and (self._stop or not self._active):
                self._end_all(shutting_down_error)
                with self._close_lock:
                    self._closed = True
                self._drain_commands()     # submissions sent meanwhile: answered 503, not left hanging
                self._publish_stats(0)
                return
            self._expire()
            if self.engine.has_work():
                self._step()
            else:
                self._publish_stats(0)
                self._wake.wait(IDLE_WAKE_S)

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, _Submit):
                self._submit(command)
            elif command[0] == "cancel":
                for rid in command[1]:
                    if self._active.pop(rid, None) is not None:
                        self.engine.cancel(rid)
                self.active_count = len(self._active)
            elif command[0] == "stop":
                self._stop = bool(self._stop) or command[1]

    def _submit(self, command: _Submit) -> None:
        if self._stop is not None:
            self._resolve(command, shutting_down_error())
            return
        ids: list[str] = []
        try:
            for prompt_ids, config, adapter in command.items:
                ids.append(self.engine.submit(prompt_ids, config, adapter))
        except Exception as e:
            for rid in ids:        # all or none: n choices half-queued would never complete
                self.engine.cancel(rid)
            if isinstance(e, QueueFull):
                error = APIError(429, f"the server is busy ({e}); retry shortly", "rate_limit_error",
                                 code="queue_full", headers={"Retry-After": "1"})
            elif isinstance(e, LLMLabError):
                error = APIError(400, str(e), "invalid_request_error")
            else:
                log.error("submit failed:\n%s", traceback.format_exc())
                error = APIError(500, f"internal error in the engine ({type(e).__name__}: {e})", "server_error")
            self._resolve(command, error)
            return
        sent = command.sent
        deadline = sent + self.request_timeout_s if self.request_timeout_s else None
        for rid in ids:
            self._active[rid] = _Active(command.loop, command.events, sent, deadline)
        self.active_count = len(self._active)
        command.ids = ids
        self._resolve(command, ids)

    def _resolve(self, command: _Submit, result: Any) -> None:
        def settle() -> None:
            if command.done.cancelled():        # the handler went away while we submitted
                self.cancel(command.ids)
            elif isinstance(result, BaseException):
                command.done.set_exception(result)
            else:
                command.done.set_result(result)
        _post(command.loop, settle)

    def _step(self) -> None:
        try:
            events = self.engine.step()
        except Exception as e:   # a bug or out-of-memory: fail the running requests, keep serving
            log.error("engine step failed:\n%s", traceback.format_exc())
            self.last_error = f"{type(e).__name__}: {e}"
            error = APIError(500, f"internal error in the engine ({self.last_error})", "server_error")
            for rid in list(self._active):
                try:
                    self.engine.cancel(rid)
                except Exception:
                    pass
            self._end_all(lambda: error)
            return
        now = time.perf_counter()
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        tokens = 0
        for event in events:
            active = self._active.get(event.request_id)
            if active is None:      # cancelled while the step ran
                continue
            if event.token_id is not None:
                tokens += 1
                self._observe_token(active, now)
            if event.finish_reason is not None:
                del self._active[event.request_id]
                if self.metrics is not None:
                    self.metrics.e2e.observe(now - active.submitted)
                    self.metrics.prompt_tokens.inc(event.prompt_tokens)
            by_loop.setdefault(active.loop, []).append((active.events, event))
        self.active_count = len(self._active)
        # one callback per loop per step, not per token: 64 streams cost one wakeup of the loop
        for loop, pairs in by_loop.items():
            _post(loop, _deliver, pairs)
        self._publish_stats(tokens)

    def _observe_token(self, active: _Active, now: float) -> None:
        if self.metrics is not None:
            if active.last_token is None:
                self.metrics.ttft.observe(now - active.submitted)
            else:
                self.metrics.inter_token.observe(now - active.last_token)
        active.last_token = now
        active.tokens += 1

    def _expire(self) -> None:
        if not self.request_timeout_s or not self._active:
            return
        now = time.perf_counter()
        late = [rid for rid, a in self._active.items() if a.deadline is not None and now > a.deadline]
        for rid in late:
            self.engine.cancel(rid)
            active = self._active.pop(rid)
            error = APIError(504, f"the request ran past the server's request timeout of {self.request_timeout_s:g} s; "
                                  "ask for fewer tokens", "timeout_error", code="request_timeout")
            _post(active.loop, _deliver, [(active.events, error)])
        self.active_count = len(self._active)

    def _end_all(self, make_error: Any) -> None:
        for rid, active in list(self._active.items()):
            self.engine.cancel(rid)
            _post(active.loop, _deliver, [(active.events, make_error())])
        self._active.clear()
        self.active_count = 0

    def _publish_stats(self, tokens: int) -> None:
        self.stats = self.engine.stats()
        if self.metrics is not None:
            self.metrics.observe_stats(self.stats)
            self.metrics.observe_tokens(tokens)


def _post(loop: asyncio.AbstractEventLoop, callback: Any, *args: Any) -> None:
    """Run callback(*args) on `loop`; a loop already closed (its server gone) has nobody to tell,
    and must not take the engine thread down with it."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass


def _deliver(pairs: list[tuple[asyncio.Queue, Any]]) -> None:
    """On the event loop: hand each event to its request's queue."""
    for events, item in pairs:
        events.put_nowait(item)
