"""The curation test corpus, built from the built-in clean prose plus planted problems.

Clean prose: Shakespeare speeches grouped into ~200-word documents, and Python's documentation
topics. Planted: exact duplicates (re-cased and re-spaced), near duplicates with known word-edit
rates, spam/boilerplate, PII, a French document, and broken input (malformed JSON line, invalid
UTF-8, a truncated gzip). Each planted document's id says what it is, so tests assert by id.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from llmlab.core.assets import pydocs_topics
from llmlab.data.shakespeare import shakespeare_text


def shakespeare_docs(n: int, words_per_doc: int = 200) -> list[str]:
    speeches = [s for s in shakespeare_text(tiny=True).split("\n\n") if s.strip()]
    docs, current, count = [], [], 0
    for s in speeches:
        # "SPEAKER:\nverse\nverse" -> one paragraph "SPEAKER: verse verse" (prose layout; as
        # verse lines, alternating short speeches trip Gopher's duplicate-line rule on "ROMEO:")
        s = " ".join(s.strip().split("\n"))
        current.append(s)
        count += len(s.split())
        if count >= words_per_doc:
            docs.append("\n\n".join(current))
            current, count = [], 0
            if len(docs) == n:
                break
    return docs


def edit_words(text: str, rate: float, seed: int) -> str:
    """Replace a `rate` fraction of the words (at random positions) with fresh words."""
    rng = random.Random(seed)
    lines = [line.split(" ") for line in text.split("\n")]
    positions = [(i, j) for i, line in enumerate(lines) for j in range(len(line)) if line[j]]
    for k, (i, j) in enumerate(rng.sample(positions, int(rate * len(positions)))):
        lines[i][j] = f"zq{seed}x{k}"
    return "\n".join(" ".join(line) for line in lines)


SPAM = {
    "spam-lorem": "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 3 + "This is the page that we have to fill with the text of the template and the words. " * 5,
    "spam-bullets": "\n".join(f"• Item number {i} of the catalogue, with a price and a colour" for i in range(60)),
    "spam-repeat": "Buy cheap watches now and save the money. " * 40,
    "spam-short": "Click here to read more.",
    "spam-symbols": " ".join(f"#tag{i} #deal #sale" for i in range(40)) + " the and of to with",
    "spam-ellipsis": "\n".join(f"Read the full story of the day number {i} and more..." for i in range(30)),
}
FRENCH = ("Le chat noir dormait tranquillement sur le rebord de la fenêtre pendant que la pluie tombait "
          "doucement sur les toits de la ville. Les enfants rentraient de l'école en courant, leurs cartables "
          "sur le dos, et les commerçants fermaient leurs boutiques les uns après les autres. ") * 3
PII_TEXT = ("Dear customer, thank you for writing to the support team of the company. You can reach the "
            "engineer who handled your case at jane.doe@example.org or by phone on +1 (555) 123-4567 during "
            "the working hours of the week. The server that failed had the address 192.168.10.42 and it was "
            "restarted by the team on the same day. We are sorry for the trouble and we hope that the service "
            "will work well for you from now on. Please keep this message for your records.")
BOILERPLATE = ("This site requires JavaScript to be enabled in your browser.\nWe use cookies; see our cookie policy.\n")


def build_corpus(root: Path) -> dict[str, list[str]]:
    """Write the corpus under root/raw; return {"clean": ids, "exact": ids, "near_caught": ids, ...}."""
    raw = root / "raw"
    raw.mkdir(parents=True)
    plays = shakespeare_docs(40)
    topics = pydocs_topics()
    docs_a = [{"id": f"play-{i:03d}", "text": t, "source": "shakespeare"} for i, t in enumerate(plays)]
    docs_b = [{"id": f"pydoc-{k}", "text": topics[k], "source": "pydocs"} for k in sorted(topics)]
    groups = {"exact": [], "near_caught": [], "near_kept": [], "spam": list(SPAM), "french": ["french"], "pii": ["pii"]}
    planted = []
    for i in range(4):  # exact duplicates: different case and spacing only
        planted.append({"id": f"exact-of-play-{i:03d}", "text": "  " + plays[i].upper().replace(" ", "  "),
                        "source": "planted"})
        groups["exact"].append(f"exact-of-play-{i:03d}")
    for i, rate in enumerate((0.005, 0.01)):  # 1 or 2 edits per 200 words: 5-gram Jaccard >= 0.9
        pid = f"near{rate * 1000:03.0f}pm-of-play-{10 + i:03d}"
        planted.append({"id": pid, "text": edit_words(plays[10 + i], rate, i), "source": "planted"})
        groups["near_caught"].append(pid)
    for i, rate in enumerate((0.15, 0.3)):  # J ~ 0.3, 0.1: different documents, kept
        pid = f"near{rate * 1000:03.0f}pm-of-play-{20 + i:03d}"
        planted.append({"id": pid, "text": edit_words(plays[20 + i], rate, 10 + i), "source": "planted"})
        groups["near_kept"].append(pid)
    planted += [{"id": k, "text": v, "source": "planted"} for k, v in SPAM.items()]
    planted.append({"id": "french", "text": FRENCH, "source": "planted"})
    planted.append({"id": "pii", "text": PII_TEXT, "source": "planted"})
    planted.append({"id": "boilerplate-play-030", "text": BOILERPLATE + plays[30], "source": "planted"})
    with open(raw / "a-plays.jsonl", "w", encoding="utf-8") as f:
        for d in docs_a:
            f.write(json.dumps(d) + "\n")
        f.write("{this is not json\n")  # malformed line: counted, not fatal
    with gzip.open(raw / "b-pydocs.jsonl.gz", "wt", encoding="utf-8") as f:
        for d in docs_b:
            f.write(json.dumps(d) + "\n")
    with open(raw / "c-planted.jsonl", "w", encoding="utf-8") as f:
        for d in planted:
            f.write(json.dumps(d) + "\n")
    (raw / "d-latin1.txt").write_bytes(("Caf\xe9 " + plays[35]).encode("latin-1", errors="replace"))
    copies = [dict(d, id="truncated-copy-of-" + d["id"]) for d in docs_a[36:40]]
    full = gzip.compress(b"".join(json.dumps(d).encode() + b"\n" for d in copies))
    (raw / "e-truncated.jsonl.gz").write_bytes(full[: len(full) // 2])
    groups["clean_plays"] = [d["id"] for d in docs_a]
    groups["pydocs"] = [d["id"] for d in docs_b]
    return groups


@pytest.fixture(scope="session")
def curation_corpus(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    root = tmp_path_factory.mktemp("curation")
    return root, build_corpus(root)
