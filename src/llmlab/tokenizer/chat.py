"""Chat templates: turning a list of messages into the exact prompt text a chat model was trained on.

Models ship their template as Jinja source (GGUF `tokenizer.chat_template`, HF
`tokenizer_config.json`). We render it the way Hugging Face transformers does -- a sandboxed
environment with trim_blocks and lstrip_blocks, a `raise_exception` helper, and the bos/eos token
strings as variables -- so the prompt matches what the model saw in training byte for byte.
A model without a template gets ChatML, the format SmolLM2 and Qwen use.
"""

from __future__ import annotations

import json
from functools import lru_cache

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmlab.core.errors import LLMLabError

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _raise(message: str):
    raise TemplateError(message)


@lru_cache(maxsize=8)
def _compile(source: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    return env.from_string(source)


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise LLMLabError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
    source = getattr(tokenizer, "chat_template", None) or CHATML
    try:
        return _compile(source).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                       bos_token=getattr(tokenizer, "bos_token", None) or "",
                                       eos_token=getattr(tokenizer, "eos_token", None) or "", **kwargs)
    except TemplateError as e:
        raise LLMLabError(f"the chat template refused these messages: {e}") from None
