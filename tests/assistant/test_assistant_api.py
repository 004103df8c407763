"""The assistant's HTTP API end to end: a real store of invented facts, the real Assistant and
SmolLM2 behind the serve stack's EngineWorker, driven through FastAPI's TestClient.

The facts are invented so that neither the model nor the embedder can know them: a source that
carries one came out of the store. Generation is greedy and short (16 tokens), so the same
question asked through /v1/assistant/ask and /v1/chat/completions must give the same answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytestmark = pytest.mark.slow   # one load of SmolLM2 (~10-20 s) for the module

QUESTION = "How often does the quillon daemon flush the zorblat cache?"
DOCS = {
    "docs/zorblat.md": "# Zorblat\n\nZorblat is a message relay for the Vantor grid.\n\n## Cache\n\n"
                       "The zorblat cache lives in /var/zorblat/cache. The quillon daemon flushes the zorblat "
                       "cache every 17 minutes.\n\n## Ports\n\nZorblat listens on port 4711 for relay traffic.\n",
    "docs/frobnicator.md": "# Frobnicator\n\nThe frobnicator was invented by Mirela Vasquez in 1931. It turns "
                           "brass dials into copper gears.\n\n## Care\n\nOil the frobnicator with plum oil once "
                           "a year.\n",
    "docs/glimmer.md": "# Glimmer tea\n\nGlimmer tea is brewed at 63 degrees for nine minutes. It tastes of "
                       "pepper and pine.\n",
}


def build_store(directory: Path) -> None:
    """Index DOCS with the structure chunker where it exists (section labels), else recursive."""
    from llmlab.rag.chunking import chunk_document
    from llmlab.rag.embed import Embedder
    from llmlab.rag.ingest import Document
    from llmlab.rag.store import Store

    try:
        chunk_document("# A\n\nb", len, "structure")
        method = "structure"
    except Exception:
        method = "recursive"
    store = Store(directory, create=True)
    store.index([Document(path, text.splitlines()[0].lstrip("# "), text) for path, text in DOCS.items()],
                Embedder(), [], method, 200, 40)
    store.close()


def make_assistant(directory: Path, engine):
    from llmlab.assistant.config import AssistantConfig
    from llmlab.assistant.pipeline import Assistant

    config = AssistantConfig(rerank=False, k=3, candidates=6, max_new_tokens=16, context_tokens=400)
    return Assistant(directory, config, device="cpu", engine=engine)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from llmlab.assistant.app import create_assistant_app
    from llmlab.infer import Engine
    from llmlab.infer.continuous import ContinuousEngine
    from llmlab.serve.config import ServeConfig
    from llmlab.serve.server import build

    directory = tmp_path_factory.mktemp("store")
    build_store(directory)
    engine = Engine.load("smollm2", device="cpu")
    assistant = make_assistant(directory, engine)
    config = ServeConfig(model_name="smollm2")
    app, worker = build(ContinuousEngine.from_engine(engine), config,
                        make_app=lambda w, c, m: create_assistant_app(assistant, w, c, m))
    try:
        with TestClient(app) as test_client:
            test_client.store_dir = directory
            yield test_client
    finally:
        worker.stop(cancel_running=True)
        assistant.close()


def sse_events(response) -> list:
    """The JSON payloads of an SSE body, and "[DONE]" as a string."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def stored_passages(directory: Path) -> set[str]:
    import sqlite3

    db = sqlite3.connect(str(directory / "store.sqlite"))
    rows = db.execute("SELECT text, window FROM chunks").fetchall()
    db.close()
    return {t for row in rows for t in row if t}


@pytest.fixture(scope="module")
def streamed(client):
    with client.stream("POST", "/v1/assistant/ask", json={"question": QUESTION}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_events(response)


def test_ask_streams_sources_then_deltas_then_done(client, streamed):
    kinds = [e if isinstance(e, str) else e["type"] for e in streamed]
    assert kinds[0] == "sources" and kinds[-2:] == ["done", "[DONE]"]
    assert set(kinds[1:-2]) == {"delta"}, kinds

    sources = streamed[0]["sources"]
    assert [s["number"] for s in sources] == list(range(1, len(sources) + 1))
    assert 1 <= len(sources) <= 3
    passages = stored_passages(client.store_dir)
    for s in sources:
        assert s["text"] in passages                      # the passage is the store's own text
        assert s["source"] in DOCS and s["label"].startswith(s["source"])
        assert set(s) >= {"section", "title", "start", "end", "score"}
    assert sources[0]["source"] == "docs/zorblat.md" and "17 minutes" in sources[0]["text"]

    done = streamed[-2]
    answer = "".join(e["text"] for e in streamed[1:-2])
    assert answer.strip() == done["answer"] and done["answer"]
    assert isinstance(done["abstained"], bool) and done["finish_reason"] in ("stop", "length")
    assert {"retrieve_ms", "search_ms", "answer_ms"} <= set(done["timings_ms"])
    for citation in done["citations"]:               # whatever it cites resolves to a listed passage
        assert citation == sources[citation["number"] - 1]


def test_ask_whole_is_the_done_event_plus_sources(client, streamed):
    response = client.post("/v1/assistant/ask", json={"question": QUESTION, "stream": False})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "done" and body["answer"] == streamed[-2]["answer"]   # greedy: the same answer
    assert body["sources"] == streamed[0]["sources"]


def test_chat_completions_with_the_assistant_model_is_grounded(client, streamed):
    models = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert models == ["smollm2", "assistant", "minilm"]

    messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."},
                {"role": "user", "content": QUESTION}]
    response = client.post("/v1/chat/completions", json={"model": "assistant", "messages": messages})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "assistant"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    assert choice["message"]["content"].strip() == streamed[-2]["answer"]
    assert body["usage"]["completion_tokens"] <= 16 and body["usage"]["prompt_tokens"] > 50   # the passages
    assert body["sources"] == streamed[0]["sources"]

    with client.stream("POST", "/v1/chat/completions",
                       json={"model": "assistant", "messages": messages, "stream": True}) as stream:
        events = sse_events(stream)
    assert events[0] == {"object": "assistant.sources", "sources": streamed[0]["sources"]}
    assert events[-1] == "[DONE]" and {e["object"] for e in events[1:-1]} == {"chat.completion.chunk"}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-1] if e["choices"])
    assert text == choice["message"]["content"]


def test_other_models_behave_as_before(client):
    response = client.post("/v1/chat/completions", json={
        "model": "smollm2", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "sources" not in body and body["model"] == "smollm2"
    assert body["usage"]["prompt_tokens"] < 50            # the question alone: no passages added
    response = client.post("/v1/completions", json={"model": "assistant", "prompt": "Hi", "max_tokens": 2})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    assert "llmlab assistant" in client.get("/").text
    assert "llmlab chat" in client.get("/chat").text


@pytest.mark.parametrize("body, param", [
    (b"{}", "question"),
    (b"not json", None),
    (json.dumps({"question": "   "}).encode(), "question"),
    (json.dumps({"question": "why? " * 500}).encode(), "question"),
    (json.dumps({"question": QUESTION, "stream": "yes"}).encode(), "stream"),
])
def test_bad_ask_is_a_400_that_says_why(client, body, param):
    response = client.post("/v1/assistant/ask", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and len(error["message"]) > 15


def test_bad_assistant_chat_is_a_400(client):
    response = client.post("/v1/chat/completions", json={
        "model": "assistant", "messages": [{"role": "system", "content": "Be brief."}]})
    assert response.status_code == 400
    assert "last user message" in response.json()["error"]["message"]


def test_gated_question_abstains_on_both_endpoints_without_the_model(client):
    """Nothing in the store is close to this question: the relevance gate answers it, with the
    abstention sentence and no passages, on the assistant's endpoint and on chat completions."""
    from llmlab.assistant.prompt import ABSTAIN

    off_topic = "Which football club won the 1998 league title in Portugal?"
    body = client.post("/v1/assistant/ask", json={"question": off_topic, "stream": False}).json()
    assert body["abstained"] and body["answer"] == ABSTAIN and body["sources"] == []
    response = client.post("/v1/chat/completions", json={
        "model": "assistant", "messages": [{"role": "user", "content": off_topic}]})
    assert response.status_code == 200, response.text
    chat = response.json()
    assert chat["choices"][0]["message"]["content"] == ABSTAIN and chat["choices"][0]["finish_reason"] == "stop"
    assert chat["usage"]["completion_tokens"] == 0 and chat["sources"] == []   # no token was generated
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "assistant", "messages": [{"role": "user", "content": off_topic}], "stream": True}) as stream:
        events = sse_events(stream)
    assert events[0] == {"object": "assistant.sources", "sources": []} and events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-1] if e["choices"])
    assert text == ABSTAIN
