"""Each per-document stage on its own: what it removes or rewrites, and why."""

from __future__ import annotations

from llmlab.data.curation.decontam import Decontaminator
from llmlab.data.curation.dedup_exact import dedup_key, exact_duplicates
from llmlab.data.curation.langid import identify, langid_reason
from llmlab.data.curation.normalize import normalize_text
from llmlab.data.curation.pii import scrub_pii
from llmlab.data.curation.quality import QualityConfig, c4_line_filter, quality_reason
from llmlab.data.curation.repetition import RepetitionConfig, dup_ngram_fraction, repetition_reason, top_ngram_fraction

PROSE = ("The interpreter reads the source file and compiles it to bytecode before it runs. "
         "Each function keeps its own table of names, and the values that a name refers to live "
         "on the heap until nothing refers to them any more. When an exception is raised, the "
         "interpreter unwinds the stack and looks for a handler that matches the type of the error. ") * 2


def test_normalize_nfc_controls_and_whitespace():
    text = "Cafe\u0301\x00 \t  bar\r\n\r\n\r\n\r\nzero\u200bwidth  "
    assert normalize_text(text) == "Caf\u00e9 bar\n\nzerowidth"


def test_normalize_fixes_mojibake_with_ftfy():
    assert normalize_text("CafÃ© au lait", fix_encoding=True) == "Café au lait"


def test_pii_placeholders_and_no_false_positives():
    text = ("write to ada@example.com, call (555) 123-4567 or +44 20 7946 0958, host 10.0.0.255 "
            "and 2001:db8:85a3::8a2e:370:7334; Python 3.12.1 came out on 2023-10-02, pi is 3.14159, year 1999")
    out, counts = scrub_pii(text)
    assert counts == {"email": 1, "ip": 2, "phone": 2}
    assert "ada@" not in out and "10.0.0.255" not in out and "123-4567" not in out
    for kept in ("3.12.1", "2023-10-02", "3.14159", "1999"):
        assert kept in out


def test_langid_keeps_english_rejects_french_and_noise():
    assert identify(PROSE)[0] == "en"
    reason, lang, _ = langid_reason("Le chat noir dormait sur le rebord de la fenêtre pendant la pluie.", ["en"], 0.5)
    assert reason == "langid:not_en" and lang == "fr"
    assert langid_reason("", ["en"], 0.5)[0] == "langid:empty"


def test_gopher_quality_rules_each_fire():
    cfg = QualityConfig()
    assert quality_reason(PROSE, cfg) is None
    assert quality_reason("Too short to be a document.", cfg) == "gopher:too_few_words"
    assert quality_reason(" ".join(["extraordinarily"] * 60), cfg) == "gopher:mean_word_length"
    assert quality_reason(PROSE + " #x" * 40, cfg) == "gopher:symbol_word_ratio"
    bullets = "\n".join(f"- the item {i} of the list and more words" for i in range(20))
    assert quality_reason(bullets, cfg) == "gopher:bullet_lines"
    ellipses = "\n".join(f"the story of the day {i} and what came next..." for i in range(20))
    assert quality_reason(ellipses, cfg) == "gopher:ellipsis_lines"
    assert quality_reason(" ".join(["1234 5678 9012 the and"] * 20), cfg) == "gopher:non_alpha_words"
    assert quality_reason(" ".join(["lovely green garden"] * 30), cfg) == "gopher:stop_words"
    assert quality_reason(PROSE + " lorem ipsum dolor.", cfg) == "c4:lorem_ipsum"
    code = PROSE + "\n" + "\n".join("d = {'a': 1}" for _ in range(5))
    assert quality_reason(code, cfg) == "c4:curly_bracket"
    no_punct = "\n".join(f"the value of the name number {i} and the rest of it" for i in range(20))
    assert quality_reason(no_punct, cfg) == "c4:terminal_punctuation"
    # a threshold is a config field: relaxing it lets the document through
    assert quality_reason(no_punct, QualityConfig(min_terminal_punct_line_fraction=0.0)) is None


def test_c4_line_filter_drops_javascript_and_policy_lines():
    text = "Please enable JavaScript to view this page.\nA real sentence.\nThis site uses cookies.\nAnother one."
    out, removed = c4_line_filter(text, QualityConfig())
    assert out == "A real sentence.\nAnother one." and removed == 2


def test_gopher_repetition():
    cfg = RepetitionConfig()
    assert repetition_reason(PROSE[: len(PROSE) // 2], cfg) is None
    assert repetition_reason("\n".join(["Buy now!"] * 5 + [f"line {i} is new" for i in range(5)]), cfg) \
        == "gopher:dup_line_fraction"
    words = "a b c d e".split()
    assert top_ngram_fraction(["x", "y"] * 10, 2) == 1.0
    assert dup_ngram_fraction(words, 5) == 0.0
    assert repetition_reason("spam eggs " * 50, cfg) == "gopher:top_2gram"


def test_exact_dedup_ignores_case_space_punctuation():
    keys = [dedup_key("Hello,  World!"), dedup_key("hello world"), dedup_key("hello there")]
    assert exact_duplicates(keys) == [0, 0, 2]


def test_decontamination_13gram(tmp_path):
    question = "what is the name of the river that flows through the old town of the valley"
    (tmp_path / "eval.jsonl").write_text('{"question": "%s", "answer": "Avon"}\n' % question)
    deco = Decontaminator([tmp_path / "eval.jsonl"], n=13)
    assert deco.contaminated("Quiz: What is the name of the river that flows through the old town of the Valley? Avon.")
    assert not deco.contaminated("what is the name of the river that flows through the new town")
