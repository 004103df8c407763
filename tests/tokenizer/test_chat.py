"""Chat templates render exactly as Hugging Face transformers renders them."""

from __future__ import annotations

import pytest

from llmlab.core.errors import LLMLabError
from llmlab.tokenizer import load_tokenizer
from llmlab.tokenizer.chat import render_chat
from llmlab.tokenizer.formats import hf_tokenizer_json

transformers = pytest.importorskip("transformers")

CHATS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a play."},
     {"role": "assistant", "content": "Hamlet."}, {"role": "user", "content": "Another?"}],
]


@pytest.fixture(scope="module")
def pair():
    import json

    from tokenizers import Tokenizer

    ours = load_tokenizer("smollm2")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(hf_tokenizer_json(ours))),
                                              bos_token=ours.bos_token, eos_token=ours.eos_token)
    hf.chat_template = ours.chat_template
    return ours, hf


@pytest.mark.parametrize("messages", CHATS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_template_matches_transformers(pair, messages, add_generation_prompt):
    ours, hf = pair
    expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours.apply_chat_template(messages, add_generation_prompt) == expected
    assert ours.encode(expected, allowed_special=True) == hf.encode(expected, add_special_tokens=False)


def test_chatml_fallback_and_bad_messages():
    class NoTemplate:
        chat_template = None

    text = render_chat(NoTemplate(), [{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(LLMLabError, match="'role' and 'content'"):
        render_chat(NoTemplate(), [{"text": "hi"}])
