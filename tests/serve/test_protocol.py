"""OpenAI request validation and response shapes, without a server."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from llmlab.serve import protocol as P
from llmlab.serve.protocol import APIError, Choice

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def bad(parse, body, param=None, code=None) -> APIError:
    with pytest.raises(APIError) as e:
        parse(body)
    err = e.value
    assert err.status == 400 and err.type == "invalid_request_error", err.body()
    if param is not None:
        assert err.param == param, err.body()
    if code is not None:
        assert err.code == code
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}
    return err


def test_chat_defaults_follow_openai():
    req = P.parse_chat(CHAT)
    assert req.kind == "chat" and req.model == "m" and req.n == 1 and not req.stream
    assert req.max_tokens is None                        # chat: fill the context
    assert req.sampling.temperature == 1.0 and req.sampling.top_p == 1.0 and req.sampling.stop == []
    assert 0 < P.parse_chat({**CHAT, "top_p": 0}).sampling.top_p < 1e-3     # OpenAI's "top token only"
    assert req.prompts == [[{"role": "user", "content": "hi"}]]


def test_chat_fields_reach_the_sampling_config():
    body = {**CHAT, "max_completion_tokens": 7, "max_tokens": 99, "temperature": 0, "top_p": 0.5, "seed": 3,
            "stop": "END", "presence_penalty": 0.5, "frequency_penalty": -1, "logprobs": True, "top_logprobs": 4,
            "n": 3, "stream": True, "stream_options": {"include_usage": True}, "user": "u1"}
    req = P.parse_chat(body)
    s = req.sampling
    assert req.max_tokens == 7                           # max_completion_tokens wins over the deprecated max_tokens
    assert (s.temperature, s.top_p, s.seed, s.stop) == (0.0, 0.5, 3, ["END"])
    assert (s.presence_penalty, s.frequency_penalty, s.logprobs, s.top_logprobs) == (0.5, -1.0, True, 4)
    assert req.n == 3 and req.stream and req.include_usage and req.logprobs and req.top_logprobs == 4
    # each choice gets its own seed and the budget the server computed
    assert [req.sampling_for(i, 5).seed for i in range(3)] == [3, 4, 5]
    assert req.sampling_for(0, 5).max_new_tokens == 5


def test_message_content_parts_and_developer_role():
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    body = {**CHAT, "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": parts}]}
    assert P.parse_chat(body).prompts[0] == [{"role": "system", "content": "be brief"},
                                             {"role": "user", "content": "ab"}]


@pytest.mark.parametrize("change, param", [
    ({"model": None}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"seed": 2 ** 64}, "seed"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"n": 0}, "n"),
    ({"n": 1000}, "n"),
    ({"stop": ["a", 1]}, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),   # without stream: true
    ({"top_logprobs": 3}, "top_logprobs"),                             # without logprobs: true
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"seed": "x"}, "seed"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
])
def test_chat_rejects_with_the_parameter_named(change, param):
    bad(P.parse_chat, {**CHAT, **change}, param)


def test_completion_prompt_forms_and_logprobs():
    assert P.parse_completion({"model": "m", "prompt": "hi"}).prompts == ["hi"]
    assert P.parse_completion({"model": "m", "prompt": ["a", "b"]}).prompts == ["a", "b"]
    assert P.parse_completion({"model": "m", "prompt": [1, 2, 3]}).prompts == [[1, 2, 3]]
    assert P.parse_completion({"model": "m", "prompt": [[1], [2, 3]]}).prompts == [[1], [2, 3]]
    req = P.parse_completion({"model": "m", "prompt": "hi", "logprobs": 2})
    assert req.logprobs and req.top_logprobs == 2 and req.sampling.logprobs and req.max_tokens is None
    assert not P.parse_completion({"model": "m", "prompt": "hi"}).logprobs
    zero = P.parse_completion({"model": "m", "prompt": "hi", "logprobs": 0})
    assert zero.logprobs and zero.top_logprobs == 0      # 0 still asks for the chosen tokens' logprobs
    for prompt in (None, [], [1, "a"], [[-1]], [[]], 5):
        bad(P.parse_completion, {"model": "m", "prompt": prompt}, "prompt")
    bad(P.parse_completion, {"model": "m", "prompt": "x", "echo": True}, "echo")
    bad(P.parse_completion, {"model": "m", "prompt": "x", "logprobs": True}, "logprobs")


def test_parse_json_refuses_what_is_not_an_object():
    bad(P.parse_json, b"{not json")
    bad(P.parse_json, b"[1, 2]")
    bad(P.parse_json, b"\xff\xfe")
    assert P.parse_json(b'{"a": 1}') == {"a": 1}


class Event:
    def __init__(self, token, text, logprob=-0.5, top=(), finish=None, completion=1, prompt=4, cached=0):
        self.request_id, self.token_id, self.text, self.logprob = "r", token, text, logprob
        self.top_logprobs, self.finish_reason = list(top), finish
        self.prompt_tokens, self.completion_tokens, self.cached_tokens, self.preemptions = prompt, completion, cached, 1


def token_bytes(t: int) -> bytes:
    return {1: b"he", 2: b"llo", 3: "é".encode()[:1]}[t]


def test_chat_completion_shape_with_logprobs_and_usage():
    c = Choice(0)
    c.add(Event(1, "he", top=[(1, -0.5), (2, -1.0)]))
    c.add(Event(3, "", top=[(3, -0.1)], completion=2))                     # half a UTF-8 character
    c.add(Event(None, "", logprob=None, finish="stop", completion=2))      # stop token: no entry
    out = P.chat_completion("chatcmpl-1", 5, "m", [c], token_bytes, logprobs=True)
    assert out["object"] == "chat.completion" and out["choices"][0]["message"] == \
        {"role": "assistant", "content": "he", "refusal": None}
    assert out["choices"][0]["finish_reason"] == "stop"
    content = out["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in content] == ["he", "\ufffd"] and content[1]["bytes"] == [0xC3]
    assert content[0]["top_logprobs"] == [{"token": "he", "logprob": -0.5, "bytes": [104, 101]},
                                          {"token": "llo", "logprob": -1.0, "bytes": [108, 108, 111]}]
    assert out["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6,
                            "prompt_tokens_details": {"cached_tokens": 0}}
    assert out["llmlab"] == {"preemptions": 1}
    json.dumps(out)   # plain JSON types only


def test_usage_bills_each_prompt_once_and_counts_cache_hits_all_choices_had():
    choices = [Choice(0, 0), Choice(1, 0), Choice(2, 1)]
    choices[0].add(Event(1, "he", completion=3, prompt=10, cached=0))
    choices[1].add(Event(1, "he", completion=2, prompt=10, cached=8))
    choices[2].add(Event(1, "he", completion=1, prompt=6, cached=6))
    assert P.usage(choices) == {"prompt_tokens": 16, "completion_tokens": 6, "total_tokens": 22,
                                "prompt_tokens_details": {"cached_tokens": 6}}


def test_completion_logprobs_offsets_continue_across_chunks():
    tokens = [(1, -0.5, [(1, -0.5), (2, -2.0)]), (2, -0.25, [(2, -0.25)])]
    out = P.completion_logprobs(tokens, token_bytes)
    assert out == {"tokens": ["he", "llo"], "token_logprobs": [-0.5, -0.25],
                   "top_logprobs": [{"he": -0.5, "llo": -2.0}, {"llo": -0.25}], "text_offset": [0, 2]}
    assert P.completion_logprobs(tokens[1:], token_bytes, offset=2)["text_offset"] == [2]


def test_chunks_and_sse_framing():
    chunk = P.chat_chunk("id", 1, "m", 0, {"content": "x"}, include_usage=True, extra={"preemptions": 0})
    assert chunk["object"] == "chat.completion.chunk" and chunk["usage"] is None
    assert chunk["choices"] == [{"index": 0, "delta": {"content": "x"}, "logprobs": None, "finish_reason": None}]
    assert "usage" not in P.chat_chunk("id", 1, "m", 0, {})
    last = P.usage_chunk("id", 1, "m", "completion", [Choice(0)])
    assert last["object"] == "text_completion" and last["choices"] == [] and last["usage"]["total_tokens"] == 0
    assert P.sse({"a": "é"}) == 'data: {"a": "é"}\n\n' and P.sse("[DONE]") == "data: [DONE]\n\n"


def test_embeddings_request_and_base64_response():
    assert P.parse_embeddings({"model": "minilm", "input": "a"}) == ("minilm", ["a"], "float")
    bad(lambda b: P.parse_embeddings(b), {"model": "minilm", "input": [1, 2]}, "input")
    bad(lambda b: P.parse_embeddings(b), {"model": "minilm", "input": "a", "encoding_format": "hex"}, "encoding_format")
    vectors = np.array([[0.5, -1.25]], dtype=np.float32)
    out = P.embeddings_response("minilm", vectors, 3, "base64")
    decoded = np.frombuffer(base64.b64decode(out["data"][0]["embedding"]), dtype="<f4")
    assert decoded.tolist() == [0.5, -1.25] and out["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert P.embeddings_response("minilm", vectors, 3, "float")["data"][0] == \
        {"object": "embedding", "index": 0, "embedding": [0.5, -1.25]}


def test_api_error_shape():
    e = APIError(429, "busy", "rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
    assert e.body() == {"error": {"message": "busy", "type": "rate_limit_error", "param": None, "code": "queue_full"}}


def test_serve_config_and_flags_refuse_bad_values(tmp_path):
    from llmlab.cli.serve import parse_adapters
    from llmlab.core.errors import LLMLabError
    from llmlab.serve.config import ServeConfig, read_api_keys

    with pytest.raises(LLMLabError, match="--port"):
        ServeConfig(port=70000)
    with pytest.raises(LLMLabError, match="--api-key-file"):
        read_api_keys(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# no keys yet\n\n")
    with pytest.raises(LLMLabError, match="holds no key"):
        read_api_keys(tmp_path / "empty.txt")
    (tmp_path / "a").mkdir()
    assert parse_adapters([f"math={tmp_path / 'a'}"]) == {"math": tmp_path / "a"}
    for value in ("math", "=x", f"a:b={tmp_path / 'a'}", f"math={tmp_path / 'nope'}"):
        with pytest.raises(LLMLabError, match="--adapter"):
            parse_adapters([value])
    with pytest.raises(LLMLabError, match="twice"):
        parse_adapters([f"m={tmp_path / 'a'}", f"m={tmp_path / 'a'}"])
