"""Pre-tokenization: pattern names resolve, pieces give the text back, bad regexes get a clear error."""

import pytest

from llmlab.core.errors import LLMLabError
from llmlab.tokenizer.patterns import PATTERNS, pretokenize

TEXT = "Hello world's 12345 tokens!!\n\n  it's   done\tnow 3.14 café ✓"


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_a_pattern_name_splits_as_its_regex_and_gives_the_text_back(name: str) -> None:
    pieces = pretokenize(TEXT, name)
    assert "".join(pieces) == TEXT
    assert pieces == pretokenize(TEXT, PATTERNS[name])
    assert len(pieces) > 1 or name == "none"


def test_gpt4_groups_digits_in_threes_and_gpt2_does_not() -> None:
    assert "123" in pretokenize("12345", "gpt4") and "45" in pretokenize("12345", "gpt4")
    assert pretokenize("12345", "gpt2") == ["12345"]
    assert pretokenize("a12", "gpt2", split_digits=True) == ["a", "1", "2"]


def test_a_broken_regex_names_itself_and_the_choices() -> None:
    with pytest.raises(LLMLabError, match=r"not a valid regex.*gpt2, gpt4"):
        pretokenize("x", "(unclosed")
