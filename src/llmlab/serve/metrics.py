"""Prometheus metrics for GET /metrics, in a registry of our own.

A private CollectorRegistry (not prometheus_client's global one) means two servers in one process
(the tests start several) never collide on metric names, and /metrics shows only what this server
measures. The engine thread writes most of these (prometheus_client's metrics are thread-safe);
the HTTP layer counts requests by endpoint and status.

Latency buckets are spread from 1 ms to a minute: a tiny CPU model answers in milliseconds, a
135M model on a laptop in a second or more, and quantiles from too-coarse buckets say nothing.
"""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATE_WINDOW_S = 5.0   # tokens/s is the mean over this many trailing seconds


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("llmlab_queue_depth", "requests waiting for a place in the batch", registry=r)
        self.running = Gauge("llmlab_running_sequences", "sequences in the running batch", registry=r)
        self.kv_blocks_used = Gauge("llmlab_kv_blocks_used", "KV cache blocks holding a running sequence", registry=r)
        self.kv_blocks_total = Gauge("llmlab_kv_blocks_total", "KV cache blocks in the pool", registry=r)
        self.tokens_per_second = Gauge("llmlab_generation_tokens_per_second",
                                       f"tokens generated per second, mean of the last {RATE_WINDOW_S:g} s", registry=r)
        self.requests = Counter("llmlab_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("llmlab_prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("llmlab_generation_tokens", "tokens generated", registry=r)
        self.preemptions = Counter("llmlab_preemptions", "sequences preempted for lack of KV blocks", registry=r)
        self.prefix_cache_hit_tokens = Counter("llmlab_prefix_cache_hit_tokens",
                                               "prompt tokens served from the prefix cache", registry=r)
        self.ttft = Histogram("llmlab_time_to_first_token_seconds", "submission to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token = Histogram("llmlab_inter_token_latency_seconds", "time between a request's tokens",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("llmlab_e2e_request_latency_seconds", "submission to last token",
                             buckets=LATENCY_BUCKETS, registry=r)
        # The engine reports running totals; counters take the increase since the last report.
        self._last_totals = {"preemptions": 0, "prefix_cache_hit_tokens": 0}
        self._recent: deque[tuple[float, int]] = deque()   # (time, tokens generated in that step)

    def observe_stats(self, stats: dict) -> None:
        """The engine's stats() after a step: gauges set, counters advanced by the increase."""
        self.queue_depth.set(stats.get("waiting", 0))
        self.running.set(stats.get("running", 0))
        self.kv_blocks_used.set(stats.get("kv_blocks_used", 0))
        self.kv_blocks_total.set(stats.get("kv_blocks_total", 0))
        for name, counter in (("preemptions", self.preemptions), ("prefix_cache_hit_tokens",
                                                                   self.prefix_cache_hit_tokens)):
            total = stats.get(name, 0)
            if total > self._last_totals[name]:
                counter.inc(total - self._last_totals[name])
            self._last_totals[name] = total

    def observe_tokens(self, count: int, now: float | None = None) -> None:
        """`count` tokens generated in a step (0 when idle: the rate still decays to 0)."""
        now = time.perf_counter() if now is None else now
        if count:
            self.generation_tokens.inc(count)
            self._recent.append((now, count))
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()
        if not self._recent:
            self.tokens_per_second.set(0.0)
            return
        span = max(now - self._recent[0][0], 1e-3) if len(self._recent) > 1 else RATE_WINDOW_S
        self.tokens_per_second.set(sum(n for _, n in self._recent) / min(span, RATE_WINDOW_S))

    def request_done(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        """(the text exposition format, its content type) for GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
