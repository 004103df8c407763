"""The HTTP server end to end: a real uvicorn on 127.0.0.1, driven by the official `openai` client.

A tiny random Llama-style model with a character tokenizer (and a minimal chat template) keeps
every request to milliseconds; its context of 512 tokens lets a long generation outlive a client
that walks away, so cancellation is observable.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import numpy as np
import openai
import pytest
import torch

from llmlab.infer.continuous import ContinuousEngine
from llmlab.infer.scheduler import SchedulerConfig
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.serve.config import ServeConfig
from llmlab.serve.server import build, serve_in_thread
from llmlab.tokenizer.char import CharTokenizer

ALPHABET = [chr(c) for c in range(32, 127)] + ["\n"]
CONFIG = ModelConfig(vocab_size=len(ALPHABET), block_size=512, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
KEYS = ["first-key", "second-key"]
LONG = 400     # tokens a request generates when it must still be running while the test acts
STEP_S = 0.002


class ChatCharTokenizer(CharTokenizer):
    """A character tokenizer with a chat template: "u:hi\\na:" for one user turn."""

    chat_template = "role-letter:content"

    def apply_chat_template(self, messages, add_generation_prompt=True):
        return "".join(f"{m['role'][0]}:{m['content']}\n" for m in messages) + ("a:" if add_generation_prompt else "")


def tiny_model() -> Transformer:
    torch.manual_seed(0)
    model = Transformer(CONFIG)
    with torch.no_grad():   # weights large enough that greedy text is not one repeated character
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model.eval()


def shout_adapter(model: Transformer) -> dict:
    """A random rank-4 LoRA on the first attention query projection: changes the output."""
    name, layer = next((n, m) for n, m in model.named_modules() if hasattr(m, "in_features"))
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, layer.in_features, generator=g), torch.randn(layer.out_features, 4, generator=g)
    return {name: (a, b, 2.0)}


class PacedEngine(ContinuousEngine):
    """At least STEP_S per step, as a real model on real hardware takes: a long request then
    surely outlives the client that walks away, the timeout, or the shutdown a test sends."""

    def step(self):
        start = time.perf_counter()
        events = super().step()
        time.sleep(max(0.0, STEP_S - (time.perf_counter() - start)))
        return events


def tiny_engine(**scheduler) -> ContinuousEngine:
    model = tiny_model()
    return PacedEngine(model, ChatCharTokenizer(ALPHABET), SchedulerConfig(**scheduler),
                            adapters={"shout": shout_adapter(model)}, name="tiny")


class Live:
    def __init__(self, url, server, worker, app):
        self.url, self.server, self.worker, self.app = url, server, worker, app

    def client(self, key: str | None = KEYS[1], **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or "none", max_retries=0, timeout=30, **kw)


@contextmanager
def serving(engine: ContinuousEngine, config: ServeConfig):
    app, worker = build(engine, config)
    with serve_in_thread(app, worker, config) as (url, server):
        yield Live(url, server, worker, app)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# two clients\n{KEYS[0]}\n\n{KEYS[1]}\n")
    with serving(tiny_engine(max_batch=16), ServeConfig(api_key_file=str(keys), max_body_bytes=4096)) as s:
        yield s


def wait_until(condition, timeout=5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_chat_streamed_equals_whole_and_usage_is_reported(live):
    client = live.client()
    messages = [{"role": "user", "content": "Hello there, how are you today?"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=24, temperature=0)
    assert whole.object == "chat.completion" and whole.choices[0].finish_reason == "length"
    text = whole.choices[0].message.content
    assert len(text) == 24 and len(set(text)) > 3         # one char per token, and not one repeated char
    prompt = len("u:Hello there, how are you today?\na:")
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (prompt, 24)
    assert whole.usage.prompt_tokens_details.cached_tokens >= 0
    assert whole.model_extra["llmlab"] == {"preemptions": 0}

    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert deltas == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    # the second identical prompt found its full KV blocks (16 tokens each) in the prefix cache
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 16 * ((prompt - 1) // 16) > 0


def test_chat_stop_logprobs_seeded_choices_and_adapter(live):
    client = live.client()
    messages = [{"role": "user", "content": "Tell me"}]
    base = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0,
                                          logprobs=True, top_logprobs=3)
    text, content = base.choices[0].message.content, base.choices[0].logprobs.content
    assert "".join(e.token for e in content) == text and len(content) == 20
    for e in content:   # greedy: the chosen token is the most likely alternative
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob) and e.bytes == list(e.token.encode())
    stop = text[8:10]
    cut = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[:text.index(stop)] and cut.choices[0].finish_reason == "stop"

    sampled = dict(model="tiny", messages=messages, max_tokens=12, temperature=1.0, seed=5, n=3)
    first, again = client.chat.completions.create(**sampled), client.chat.completions.create(**sampled)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2] and texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1                                        # each choice has its own seed
    assert first.usage.prompt_tokens == len("u:Tell me\na:") and first.usage.completion_tokens == 36

    adapted = client.chat.completions.create(model="tiny:shout", messages=messages, max_tokens=20, temperature=0)
    assert adapted.choices[0].message.content != text


def test_completions_with_logprobs_and_token_id_prompts(live):
    client = live.client()
    out = client.completions.create(model="tiny", prompt="Once upon", max_tokens=10, temperature=0, logprobs=2)
    choice = out.choices[0]
    assert out.object == "text_completion" and len(choice.text) == 10 and choice.finish_reason == "length"
    assert "".join(choice.logprobs.tokens) == choice.text and choice.logprobs.text_offset == list(range(10))
    assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs)
    ids = [ALPHABET.index(c) for c in "Once upon"]
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=10, temperature=0)
    assert by_ids.choices[0].text == choice.text
    two = client.completions.create(model="tiny", prompt=["Once upon", "abc"], max_tokens=4, temperature=0)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].text == choice.text[:4]
    streamed = client.completions.create(model="tiny", prompt="Once upon", max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == choice.text
    assert client.completions.create(model="tiny", prompt="Once upon", temperature=0).usage.completion_tokens == 16


def test_models_and_embeddings(live):
    client = live.client()
    assert [m.id for m in client.models.list().data] == ["tiny", "tiny:shout", "minilm"]
    texts = ["the cat sat on the mat", "stock markets fell sharply"]
    out = client.embeddings.create(model="minilm", input=texts)     # the SDK asks for base64 and decodes it
    vectors = np.array([d.embedding for d in out.data])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    from llmlab.rag.embed import Embedder
    assert np.allclose(vectors, live.app.state.embedder.embed(texts), atol=1e-6)
    assert isinstance(live.app.state.embedder, Embedder) and out.usage.prompt_tokens > 0
    plain = httpx.post(f"{live.url}/v1/embeddings", json={"model": "minilm", "input": texts[0]},
                       headers={"Authorization": f"Bearer {KEYS[0]}"}).json()
    assert np.allclose(plain["data"][0]["embedding"], vectors[0], atol=1e-6)


def test_errors_come_in_openai_shape_with_the_right_status(live):
    client = live.client()
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=messages)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=messages, temperature="hot")
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x" * 600}])
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="hello", max_tokens=510)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="not in this character tokenizer"):
        client.completions.create(model="tiny", prompt="snow \u2603")
    for key in ("wrong-key", None):
        with pytest.raises(openai.AuthenticationError):
            live.client(key).models.list()

    auth = {"Authorization": f"Bearer {KEYS[0]}", "Content-Type": "application/json"}
    cases = [(b"{not json", 400, "invalid_request_error"), (b"[]", 400, "invalid_request_error"),
             (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * 5000}]}).encode(), 413,
              "invalid_request_error")]
    for body, status, kind in cases:
        r = httpx.post(f"{live.url}/v1/chat/completions", content=body, headers=auth)
        assert r.status_code == status and r.json()["error"]["type"] == kind, r.text
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(f"{live.url}/v1/nothing-here", headers=auth)
    assert r.status_code == 404 and "error" in r.json()
    from llmlab.serve.app import CHAT_PAGE
    page = httpx.get(f"{live.url}/")          # no key needed: the page asks for one
    if CHAT_PAGE.is_file():
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    else:
        assert page.status_code == 404 and page.json()["error"]["type"] == "not_found_error"

    live.app.state.accepting = False       # what SIGTERM does first: new work is refused
    try:
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="tiny", messages=messages)
        assert e.value.status_code == 503
        assert httpx.get(f"{live.url}/health").status_code == 503
    finally:
        live.app.state.accepting = True
    health = httpx.get(f"{live.url}/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny"


def test_client_abort_mid_stream_frees_the_sequence(live):
    client = live.client()
    generated = live.worker.stats["generated_tokens"]
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "go on"}],
                                            max_tokens=LONG, temperature=0, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    assert wait_until(lambda: live.worker.active_count == 0 and live.worker.stats["running"] == 0)
    assert wait_until(lambda: live.worker.stats["kv_blocks_used"] == 0)
    assert live.worker.stats["generated_tokens"] - generated < LONG        # it was cut, not run to the end
    again = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert again.usage.completion_tokens == 3


def test_client_gone_before_a_whole_response_frees_the_sequence(live):
    generated = live.worker.stats["generated_tokens"]
    body = {"model": "tiny", "prompt": "wait for it", "max_tokens": LONG}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{live.url}/v1/completions", json=body, timeout=0.1,
                   headers={"Authorization": f"Bearer {KEYS[0]}"})
    assert wait_until(lambda: live.worker.active_count == 0 and live.worker.stats["kv_blocks_used"] == 0)
    assert live.worker.stats["generated_tokens"] - generated < LONG


def test_64_concurrent_streams_all_complete(live):
    async def one(client, i):
        stream = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"request {i}"}], max_tokens=8, temperature=0,
            stream=True)
        text, finish = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    async def all_of_them():
        async with openai.AsyncOpenAI(base_url=f"{live.url}/v1", api_key=KEYS[0], max_retries=0, timeout=60) as c:
            return await asyncio.gather(*(one(c, i) for i in range(64)))

    results = asyncio.run(all_of_them())
    assert [finish for _, finish in results] == ["length"] * 64 and all(len(t) == 8 for t, _ in results)
    metrics = httpx.get(f"{live.url}/metrics").text
    assert 'llmlab_requests_total{endpoint="/v1/chat/completions",status="200"}' in metrics
    assert "llmlab_time_to_first_token_seconds_count" in metrics
    assert f"llmlab_kv_blocks_total {live.worker.stats['kv_blocks_total']}.0" in metrics


def test_queue_overflow_is_429_with_retry_after():
    origin = "http://page.example"
    with serving(tiny_engine(max_batch=1, max_queue=2), ServeConfig(cors_origins=[origin])) as s:
        asks = {"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        preflight = httpx.options(f"{s.url}/v1/chat/completions", headers=asks)
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == origin
        client = s.client()
        streams = [client.completions.create(model="tiny", prompt=f"p{i}", max_tokens=LONG, stream=True)
                   for i in range(3)]      # one running, two waiting: the queue is full
        with pytest.raises(openai.RateLimitError) as e:
            client.completions.create(model="tiny", prompt="one too many", max_tokens=2)
        assert e.value.response.headers["retry-after"] == "1" and e.value.code == "queue_full"
        for stream in streams:
            stream.close()
        assert wait_until(lambda: s.worker.active_count == 0)
        assert client.completions.create(model="tiny", prompt="room again", max_tokens=2).choices[0].text


def test_request_timeout_ends_the_request_with_504():
    with serving(tiny_engine(), ServeConfig(request_timeout_s=0.3)) as s:
        with pytest.raises(openai.InternalServerError) as e:
            s.client().completions.create(model="tiny", prompt="slow", max_tokens=LONG)
        assert e.value.status_code == 504 and e.value.code == "request_timeout"
        assert wait_until(lambda: s.worker.active_count == 0 and s.worker.stats["kv_blocks_used"] == 0)


def test_shutdown_cuts_running_streams_cleanly():
    with serving(tiny_engine(), ServeConfig(shutdown_grace_s=0)) as s:
        body = {"model": "tiny", "prompt": "keep going", "max_tokens": LONG, "stream": True}
        with httpx.stream("POST", f"{s.url}/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["object"] == "text_completion"
            s.server.begin_shutdown()
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][6:])["error"]["code"] == "server_shutting_down"
        assert wait_until(lambda: not s.worker.alive)


def serve_command(args: list[str]) -> list[str]:
    """`llmlab serve ARGS` as a subprocess command: through the real entry point once the verb is
    registered, else straight through the verb module's add_arguments/run."""
    from llmlab.cli import VERBS

    if "serve" in VERBS:
        return [sys.executable, "-m", "llmlab", "serve", *args]
    code = ("import argparse, sys; from llmlab.cli import serve; p = argparse.ArgumentParser(); "
            "serve.add_arguments(p); sys.exit(serve.run(p.parse_args(sys.argv[1:])))")
    return [sys.executable, "-c", code, *args]


@pytest.mark.slow
def test_sigterm_mid_stream_lets_it_finish_and_exits_0(tmp_path):
    from llmlab.model.hf import save_hf_dir

    save_hf_dir(tiny_model().state_dict(), CONFIG, CharTokenizer(ALPHABET), tmp_path / "model")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(serve_command(["--model", str(tmp_path / "model"), "--device", "cpu", "--port", "0",
                                           "--log-level", "warning", "--shutdown-grace-s", "30"]),
                            stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    try:
        assert wait_until(lambda: any(" on http://" in line for line in lines) or proc.poll() is not None, 60), lines
        announced = next((line for line in lines if " on http://" in line), None)
        assert announced is not None, "".join(lines)
        url = announced.split(" on ")[1].split()[0]
        body = {"model": "model", "prompt": "Once upon a time", "max_tokens": 300, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
            assert r.status_code == 200
            events = r.iter_lines()
            next(line for line in events if line.startswith("data: "))
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in events if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        # the grace period was long enough: the running stream finished, it was not cut
        assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "length"
        assert proc.wait(timeout=20) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
