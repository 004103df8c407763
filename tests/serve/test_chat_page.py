"""The chat page (src/llmlab/serve/static/chat.html) driven in headless Chromium.

The page is served by a small fake OpenAI-style server written here (FastAPI + uvicorn in a thread),
so these tests pin the page's protocol, not llmlab's model server: GET /v1/models fills the picker,
POST /v1/chat/completions streams `data: {chat.completion.chunk}` lines, a usage chunk and
`data: [DONE]`. The fake records every request body so the tests can check what the page sent.
Debian's chromium + chromedriver are used directly; Selenium Manager never runs (no download).
"""

import asyncio
import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest

CHAT_HTML = Path(__file__).resolve().parents[2] / "src" / "llmlab" / "serve" / "static" / "chat.html"

# The fixed reply, in the pieces the fake streams it in (one piece = one "token").
REPLY_PIECES = ["Hello", " from", " the", " fake", " server."]
REPLY = "".join(REPLY_PIECES)
SLOW_PIECES = [f" slow{i}" for i in range(300)]  # 300 x 50 ms = 15 s unless the page stops it
SERVER_ERROR = "max_tokens must be at most 512 (got 9999); lower it"
MODEL_IDS = ["tiny-gpt", "tiny-gpt+chat-lora", "minilm"]  # minilm is the embedding model


# ------------------------------------------------------------------------------------------------
# The fake OpenAI-compatible server
# ------------------------------------------------------------------------------------------------


class FakeServer:
    """Records requests; the slow stream notes how far it got before the client went away."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.auth_headers: list[str | None] = []
        self.slow_pieces_sent = 0
        self.slow_stream_closed = threading.Event()
        self.url = ""
        self._server = None
        self._thread: threading.Thread | None = None

    def app(self):
        from fastapi import FastAPI, Request
        from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

        app = FastAPI()

        @app.get("/")
        def page() -> HTMLResponse:
            return HTMLResponse(CHAT_HTML.read_text(encoding="utf-8"))

        @app.get("/v1/models")
        def models() -> dict:
            return {"object": "list",
                    "data": [{"id": i, "object": "model", "created": 0, "owned_by": "llmlab"} for i in MODEL_IDS]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.requests.append(body)
            self.auth_headers.append(request.headers.get("authorization"))
            last = body["messages"][-1]["content"]
            if "please fail" in last:
                return JSONResponse(status_code=400, content={"error": {
                    "message": SERVER_ERROR, "type": "invalid_request_error", "param": "max_tokens", "code": None}})
            if "break midway" in last:  # the status line is already sent: the error comes in the stream
                error = {"error": {"message": "the worker crashed", "type": "server_error"}}
                events = [f"data: {json.dumps(error)}\n\n", "data: [DONE]\n\n"]
                return StreamingResponse(iter(events), media_type="text/event-stream")
            slow = "slowly" in last
            return StreamingResponse(self._events(body["model"], slow), media_type="text/event-stream")

        return app

    async def _events(self, model: str, slow: bool):
        pieces = SLOW_PIECES if slow else REPLY_PIECES

        def sse(delta: dict | None, finish: str | None = None, usage: dict | None = None) -> str:
            chunk = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": model,
                     "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage is not None:
                chunk["usage"] = usage
            return f"data: {json.dumps(chunk)}\n\n"

        try:
            yield sse({"role": "assistant", "content": ""})  # OpenAI's first chunk carries no text
            for piece in pieces:
                await asyncio.sleep(0.05)
                yield sse({"content": piece})
                if slow:
                    self.slow_pieces_sent += 1
            yield sse({}, finish="stop")
            yield sse(None, usage={"prompt_tokens": 7, "completion_tokens": len(pieces),
                                   "total_tokens": 7 + len(pieces)})
            yield "data: [DONE]\n\n"
        finally:  # runs on the normal end and when the client disconnects (task cancelled)
            if slow:
                self.slow_stream_closed.set()

    def start(self) -> None:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))  # a free port, held from here on so nothing can take it
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app(), log_level="warning", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake chat server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


# ------------------------------------------------------------------------------------------------
# Fixtures and page helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    fake = FakeServer()
    fake.start()
    yield fake
    fake.stop()


def wait_for(driver, condition, timeout: float = 10.0, what: str = "condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(), message=what)


def el(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def open_page(driver, server) -> None:
    """Loads the page fresh (empty conversation) and waits for the model picker to fill."""
    driver.get(server.url + "/")
    wait_for(driver, lambda: model_options(driver) and model_options(driver)[0] in MODEL_IDS, what="models listed")


def model_options(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#model option')].map(o => o.value)")


def assistant_texts(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#messages .message.assistant .content')].map(e => e.textContent)")


def idle(driver) -> bool:
    return driver.execute_script("return document.body.dataset.state") == "idle"


def send_message(driver, text: str) -> None:
    el(driver, "input").send_keys(text)
    el(driver, "send").click()


def set_field(driver, element_id: str, value: str) -> None:
    field = el(driver, element_id)
    field.clear()
    field.send_keys(value)


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------


def test_page_references_no_external_host():
    html = CHAT_HTML.read_text(encoding="utf-8")
    assert not re.findall(r"https?://", html, flags=re.IGNORECASE), "the page must work offline"
    # No external scripts, stylesheets, fonts or images: everything is inline.
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, flags=re.IGNORECASE)
    assert not re.search(r"<link\b|@import|url\(|@font-face|<img\b", html, flags=re.IGNORECASE)
    assert not re.search(r"""(src|href)\s*=\s*["']//""", html, flags=re.IGNORECASE)  # protocol-relative


def test_picker_lists_chat_models_and_skips_the_embedding_model(driver, server):
    open_page(driver, server)
    assert model_options(driver) == ["tiny-gpt", "tiny-gpt+chat-lora"]
    for element_id in ("messages", "input", "send", "stop", "system", "model", "temperature", "top-p",
                       "max-tokens", "seed", "api-key", "stats"):
        el(driver, element_id)  # raises NoSuchElementException when an id the tests rely on is gone
    assert el(driver, "stop").get_attribute("disabled") is not None  # nothing to stop yet


def test_send_streams_reply_and_sends_settings_and_history(driver, server):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    open_page(driver, server)
    Select(el(driver, "model")).select_by_value("tiny-gpt+chat-lora")
    set_field(driver, "system", "You are terse.")
    set_field(driver, "temperature", "0.3")
    set_field(driver, "top-p", "0.9")
    set_field(driver, "max-tokens", "64")
    set_field(driver, "seed", "7")
    n_before = len(server.requests)

    send_message(driver, "Hi there")
    # Mid-stream the page shows a partial reply and is busy (Send off, Stop on).
    wait_for(driver, lambda: assistant_texts(driver) and assistant_texts(driver)[-1].startswith("Hello"),
             what="first streamed token shown")
    wait_for(driver, lambda: idle(driver), what="reply finished")
    assert assistant_texts(driver) == [REPLY]
    assert "Hi there" in el(driver, "messages").text
    assert el(driver, "input").get_attribute("value") == ""

    body = server.requests[n_before]
    assert body["model"] == "tiny-gpt+chat-lora"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "system", "content": "You are terse."},
                                {"role": "user", "content": "Hi there"}]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.3, 0.9, 64, 7)

    # Stats: the usage chunk's 5 completion tokens over ~5 x 50 ms of decoding, and the TTFT.
    stats = el(driver, "stats").text
    match = re.fullmatch(r"5 tokens · ([\d.]+) tokens/s · first token after ([\d.]+) s", stats)
    assert match, stats
    assert 2.0 < float(match.group(1)) < 100.0 and float(match.group(2)) < 5.0

    # The second turn (sent with Enter) carries the whole history: system, user, assistant, user.
    el(driver, "input").send_keys("And again", Keys.ENTER)
    wait_for(driver, lambda: len(server.requests) == n_before + 2 and idle(driver), what="second reply")
    assert assistant_texts(driver) == [REPLY, REPLY]
    assert server.requests[-1]["messages"] == [
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": REPLY}, {"role": "user", "content": "And again"}]

    # New chat forgets the history; an empty seed field is left out of the request.
    el(driver, "new-chat").click()
    el(driver, "seed").clear()
    send_message(driver, "Fresh start")
    wait_for(driver, lambda: len(server.requests) == n_before + 3 and idle(driver), what="third reply")
    assert server.requests[-1]["messages"][1:] == [{"role": "user", "content": "Fresh start"}]
    assert "seed" not in server.requests[-1]


def test_stop_aborts_a_long_stream_and_the_page_stays_usable(driver, server):
    open_page(driver, server)
    server.slow_stream_closed.clear()
    send_message(driver, "answer slowly please")
    wait_for(driver, lambda: assistant_texts(driver) and "slow2" in assistant_texts(driver)[-1],
             what="slow stream started")
    assert not idle(driver)
    el(driver, "stop").click()
    wait_for(driver, lambda: idle(driver), timeout=3, what="page idle after Stop")

    # The fetch really was cancelled: the server saw the client leave long before the end.
    assert server.slow_stream_closed.wait(timeout=3), "the server kept streaming after Stop"
    assert server.slow_pieces_sent < len(SLOW_PIECES) // 2
    partial = assistant_texts(driver)[-1]
    time.sleep(0.3)
    assert assistant_texts(driver)[-1] == partial  # nothing more arrives after Stop
    assert "[stopped]" in el(driver, "messages").text
    assert "stopped" in el(driver, "stats").text
    assert el(driver, "send").get_attribute("disabled") is None

    # Still usable: the next turn streams normally and the history holds what was shown.
    n_before = len(server.requests)
    send_message(driver, "Now quickly")
    wait_for(driver, lambda: len(server.requests) == n_before + 1 and idle(driver), what="reply after Stop")
    assert assistant_texts(driver)[-1] == REPLY
    assert server.requests[-1]["messages"][-3:] == [
        {"role": "user", "content": "answer slowly please"},
        {"role": "assistant", "content": partial},
        {"role": "user", "content": "Now quickly"}]


def test_server_error_is_shown_and_the_turn_can_be_retried(driver, server):
    open_page(driver, server)
    send_message(driver, "please fail")
    wait_for(driver, lambda: el(driver, "error").text != "", timeout=5, what="error shown")
    assert el(driver, "error").text == SERVER_ERROR
    assert SERVER_ERROR in el(driver, "messages").text
    assert idle(driver)
    assert el(driver, "input").get_attribute("value") == "please fail"  # given back for a retry

    # The failed turn is not part of the history.
    el(driver, "input").clear()
    n_before = len(server.requests)
    send_message(driver, "Hello?")
    wait_for(driver, lambda: len(server.requests) == n_before + 1 and idle(driver), what="reply after error")
    assert [m["role"] for m in server.requests[-1]["messages"]] == ["user"]
    assert el(driver, "error").text == ""

    # An error chunk inside a 200 stream is shown the same way.
    send_message(driver, "break midway")
    wait_for(driver, lambda: el(driver, "error").text != "", timeout=5, what="stream error shown")
    assert el(driver, "error").text == "the worker crashed"
    assert idle(driver)


def test_api_key_is_sent_as_bearer_and_remembered(driver, server):
    open_page(driver, server)
    try:
        set_field(driver, "api-key", "sk-local-test")
        n_before = len(server.requests)
        send_message(driver, "Hi")
        wait_for(driver, lambda: len(server.requests) == n_before + 1 and idle(driver), what="reply")
        assert server.auth_headers[-1] == "Bearer sk-local-test"

        open_page(driver, server)  # a reload keeps the key (localStorage)
        assert el(driver, "api-key").get_attribute("value") == "sk-local-test"
    finally:
        driver.execute_script("localStorage.clear()")
    open_page(driver, server)
    send_message(driver, "Hi")
    wait_for(driver, lambda: len(server.auth_headers) == n_before + 2 and idle(driver), what="reply")
    assert server.auth_headers[-1] is None


def test_page_against_the_real_server_streams_the_engines_reply(driver):
    """End to end: the page, llmlab's own server and ContinuousEngine (a tiny model); the reply the
    page shows is the engine's greedy text for the same chat."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_fixtures", Path(__file__).with_name("test_server.py"))
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    from llmlab.infer import SamplingConfig
    from llmlab.serve.config import ServeConfig

    engine = fixtures.tiny_engine()
    messages = [{"role": "user", "content": "Hello"}]
    reference = fixtures.tiny_engine()
    prompt = reference.tokenizer.encode(reference.tokenizer.apply_chat_template(messages))
    expected = reference.run([prompt], [SamplingConfig(max_new_tokens=24, temperature=0)])[0].text
    with fixtures.serving(engine, ServeConfig()) as live:
        driver.get(live.url + "/")
        wait_for(driver, lambda: "tiny" in model_options(driver), what="models listed")
        assert model_options(driver) == ["tiny", "tiny:shout"]
        set_field(driver, "temperature", "0")
        set_field(driver, "max-tokens", "24")
        send_message(driver, "Hello")
        wait_for(driver, lambda: idle(driver) and assistant_texts(driver), timeout=30, what="reply finished")
        assert assistant_texts(driver) == [expected]
        assert re.match(r"24 tokens · [\d.]+ tokens/s", el(driver, "stats").text), el(driver, "stats").text
