"""The assistant page (src/llmlab/assistant/static/assistant.html) in headless Chromium, served by
the real assistant app (uvicorn on 127.0.0.1) over a store of invented facts and SmolLM2.

The base model may or may not cite, so what depends on the answer's wording (citation links, the
"not in the documents" state, Stop) is checked against a scripted event stream: the page's
`fetch` is replaced by one that plays back events in the server's format.
Debian's chromium + chromedriver are used directly; Selenium Manager never runs (no download).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytestmark = pytest.mark.slow   # one load of SmolLM2 for the module

PAGE = Path(__file__).resolve().parents[2] / "src" / "llmlab" / "assistant" / "static" / "assistant.html"
SOURCES = [  # what a sources event carries (the page needs number, label, score, text)
    {"number": 1, "source": "docs/zorblat.md", "section": "Zorblat > Cache", "title": "Zorblat",
     "text": "The quillon daemon flushes the zorblat cache every 17 minutes.", "start": 0, "end": 60,
     "score": 0.91, "label": "docs/zorblat.md § Zorblat > Cache"},
    {"number": 2, "source": "docs/glimmer.md", "section": "", "title": "Glimmer tea",
     "text": "Glimmer tea is brewed at 63 degrees.", "start": 0, "end": 36, "score": 0.42,
     "label": "docs/glimmer.md"},
]


def _api_fixtures():
    spec = importlib.util.spec_from_file_location("assistant_api_fixtures", Path(__file__).with_name(
        "test_assistant_api.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


api = _api_fixtures()


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    from llmlab.assistant.app import create_assistant_app
    from llmlab.infer import Engine
    from llmlab.infer.continuous import ContinuousEngine
    from llmlab.serve.config import ServeConfig
    from llmlab.serve.server import build, serve_in_thread

    directory = tmp_path_factory.mktemp("store")
    api.build_store(directory)
    engine = Engine.load("smollm2", device="cpu")
    assistant = api.make_assistant(directory, engine)
    config = ServeConfig(model_name="smollm2")
    app, worker = build(ContinuousEngine.from_engine(engine), config,
                        make_app=lambda w, c, m: create_assistant_app(assistant, w, c, m))
    try:
        with serve_in_thread(app, worker, config) as (base, _):
            yield base
    finally:
        assistant.close()


def wait_for(driver, condition, timeout: float = 10.0, what: str = "condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(), message=what)


def el(driver, css: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def idle(driver) -> bool:
    return driver.execute_script("return document.body.dataset.state") == "idle"


def last_answer(driver) -> str:
    return driver.execute_script("const a = [...document.querySelectorAll('.message.assistant .content')];"
                                 "return a.length ? a[a.length - 1].textContent : null")


def ask(driver, question: str) -> None:
    from selenium.webdriver.common.keys import Keys

    el(driver, "#input").send_keys(question, Keys.ENTER)


# Replaces window.fetch with one that streams `events` as the server would; with hang, the stream
# stays open after them until the page aborts the request (Stop).
FAKE_FETCH = """
const [events, hang] = arguments;
window.fetch = (url, init) => {
  const encoder = new TextEncoder();
  const body = new ReadableStream({ start(stream) {
    for (const e of events) stream.enqueue(encoder.encode("data: " + JSON.stringify(e) + "\\n\\n"));
    if (!hang) { stream.enqueue(encoder.encode("data: [DONE]\\n\\n")); stream.close(); return; }
    init.signal.addEventListener("abort", () => stream.error(new DOMException("aborted", "AbortError")));
  }});
  return Promise.resolve(new Response(body, { status: 200, headers: { "Content-Type": "text/event-stream" } }));
};
"""


def test_page_references_no_external_host():
    html = PAGE.read_text(encoding="utf-8")
    assert not re.findall(r"https?://", html, flags=re.IGNORECASE), "the page must work offline"
    assert not re.search(r"<script[^>]*\bsrc\s*=|<link\b|@import|url\(|@font-face|<img\b", html, flags=re.IGNORECASE)


def test_question_streams_an_answer_with_its_sources(driver, url):
    driver.get(url + "/")
    ask(driver, api.QUESTION)
    wait_for(driver, lambda: not idle(driver) or last_answer(driver), what="request started")
    wait_for(driver, lambda: idle(driver), timeout=60, what="answer finished")
    assert el(driver, "#error").text == ""
    assert last_answer(driver).strip(), "no answer text was shown"
    assert api.QUESTION in el(driver, "#messages").text
    assert "passage" in el(driver, "#stats").text

    items = driver.find_elements("css selector", "#sources .source")
    labels = [i.find_element("css selector", "summary .label").text for i in items]
    assert labels and labels[0].startswith("[1] docs/zorblat.md"), labels
    passage = items[0].find_element("css selector", ".passage-text")
    assert not passage.is_displayed()                 # collapsed until clicked
    items[0].find_element("css selector", "summary").click()
    assert passage.is_displayed() and "17 minutes" in passage.text

    # A question the server refuses: its error message is shown, the question given back.
    driver.execute_script("document.getElementById('input').value = arguments[0]", "why? " * 500)
    ask(driver, "")
    wait_for(driver, lambda: el(driver, "#error").text, what="error shown")
    assert "over the limit of 2000" in el(driver, "#error").text and idle(driver)
    assert el(driver, "#input").get_attribute("value").startswith("why?")


def test_citations_link_to_their_passage(driver, url):
    driver.get(url + "/")
    target = driver.execute_script("return renderAnswer(arguments[0], arguments[1]).textContent",
                                   "Every 17 minutes [1], not [7].", SOURCES)
    assert target == "Every 17 minutes [1], not [7]."
    links = driver.find_elements("css selector", "a.cite")
    assert [a.text for a in links] == ["[1]"]          # [7] names no passage: plain text
    assert el(driver, "#passage").text == ""
    links[0].click()
    panel = el(driver, "#passage").text
    assert "docs/zorblat.md § Zorblat > Cache" in panel and "every 17 minutes" in panel


def test_streamed_citations_abstention_and_stop(driver, url):
    driver.get(url + "/")
    done = {"type": "done", "answer": "Every 17 minutes [1].", "abstained": False, "finish_reason": "stop",
            "citations": [SOURCES[0]], "timings_ms": {"retrieve_ms": 12.0, "answer_ms": 800.0}}
    events = [{"type": "sources", "sources": SOURCES, "note": None}, {"type": "delta", "text": "Every 17 minutes ["},
              {"type": "delta", "text": "1]."}, done]
    driver.execute_script(FAKE_FETCH, events, False)
    ask(driver, "How often?")
    wait_for(driver, lambda: idle(driver) and driver.find_elements("css selector", "a.cite"), what="answer")
    el(driver, ".message.assistant a.cite").click()
    assert "docs/zorblat.md § Zorblat > Cache" in el(driver, "#passage").text
    assert "cited" in el(driver, '#sources .source[data-number="1"]').get_attribute("class")
    assert "cited" not in el(driver, '#sources .source[data-number="2"]').get_attribute("class")
    assert not driver.find_elements("css selector", ".abstained")

    abstain = dict(done, answer="The answer is not in the documents.", abstained=True, citations=[])
    driver.execute_script(FAKE_FETCH, [events[0], {"type": "delta", "text": abstain["answer"]}, abstain], False)
    ask(driver, "Who won the 1931 regatta?")
    wait_for(driver, lambda: idle(driver) and driver.find_elements("css selector", ".abstained"), what="abstained")
    assert "Not in the documents" in el(driver, ".message.abstained").text

    driver.execute_script(FAKE_FETCH, [events[0], {"type": "delta", "text": "Partial"}], True)
    ask(driver, "Slow one")
    wait_for(driver, lambda: last_answer(driver) == "Partial", what="partial answer")
    assert not idle(driver)
    el(driver, "#stop").click()
    wait_for(driver, lambda: idle(driver), timeout=3, what="idle after Stop")
    assert "[stopped]" in el(driver, "#messages").text and el(driver, "#error").text == ""
