"""Language identification with py3langid (Lui & Baldwin, langid.py, ACL 2012).

py3langid ships its naive-Bayes model over byte n-grams inside the wheel, so it works offline
and installs from PyPI with only NumPy. `normalized probabilities` turn its log-scores into a
probability we can threshold, as fastText-based filters do (e.g. CCNet keeps p >= 0.5;
Wenzek et al. 2020). The classifier is built once per process (loading takes ~0.3 s).
"""

from __future__ import annotations

from functools import lru_cache

from llmlab.core.errors import LLMLabError


@lru_cache(maxsize=1)
def _identifier():
    try:
        from py3langid.langid import _load_identifier
    except ImportError:
        raise LLMLabError("language identification needs py3langid: pip install py3langid "
                          "(or set langid.enabled = false)") from None
    return _load_identifier(norm_probs=True)


def identify(text: str, max_chars: int = 2000) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of the first `max_chars` characters (enough for a confident
    guess; classifying megabytes would dominate the run time)."""
    lang, prob = _identifier().classify(text[:max_chars])
    return str(lang), float(prob)


def langid_reason(text: str, languages: tuple[str, ...] | list[str], threshold: float) -> tuple[str | None, str, float]:
    """(removal reason or None, language, probability)."""
    if not text.strip():
        return "langid:empty", "", 0.0
    lang, prob = identify(text)
    if languages and lang not in languages:
        return f"langid:not_{'_'.join(languages)}", lang, prob
    if prob < threshold:
        return "langid:low_confidence", lang, prob
    return None, lang, prob
