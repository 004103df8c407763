"""The fast path: the same vocabulary encoded by Hugging Face `tokenizers` (Rust) for bulk data.

Our pure-Python encoder stays the reference and the default; `fast_encoder(tok)` builds a
`tokenizers.Tokenizer` from `hf_tokenizer_json(tok)`, and a test checks both give identical ids.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from llmlab.core.errors import LLMLabError
from llmlab.tokenizer.base import Tokenizer
from llmlab.tokenizer.formats import hf_tokenizer_json


def fast_encoder(tokenizer: Tokenizer) -> Callable[[str], list[int]]:
    """`encode` through HF `tokenizers` for any tokenizer with a tokenizer.json form (bpe, spm, char)."""
    try:
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError:
        raise LLMLabError("the fast path needs the `tokenizers` package: pip install tokenizers") from None
    hf = HFTokenizer.from_str(json.dumps(hf_tokenizer_json(tokenizer)))
    return lambda text: hf.encode(text, add_special_tokens=False).ids
