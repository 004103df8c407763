"""The assistant end to end on a small fixture corpus (examples/assistant/notes: an invented note-taking
tool, so the model cannot answer from memory): index -> ask -> an answer whose citations resolve to
file and section; re-indexing after an edit touches only that file; the relevance gate abstains."""

import json
import shutil
from pathlib import Path

import pytest

from llmlab.assistant.config import AssistantConfig
from llmlab.assistant.pipeline import Assistant, read_store_config, write_store_config
from llmlab.assistant.prompt import ABSTAIN, cited_numbers, is_abstention
from llmlab.cli import main

CORPUS = Path(__file__).resolve().parents[2] / "examples" / "assistant" / "notes"


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    root = tmp_path_factory.mktemp("assistant")
    docs = root / "docs"
    shutil.copytree(CORPUS, docs)
    store = root / "kb"
    assert main(["assistant", "index", str(docs), "--store", str(store), "--json"]) == 0
    return docs, store


@pytest.fixture(scope="module")
def assistant(kb):
    # rerank off and k=3 keep the test quick; the reranker has its own tests (tests/rag)
    a = Assistant(kb[1], AssistantConfig(rerank=False, k=3, max_new_tokens=48))
    yield a
    a.close()


def test_index_uses_structure_chunks_with_sections(kb):
    from llmlab.rag.store import Store

    store = Store(kb[1])
    rows = store.db.execute("SELECT d.path, c.section FROM chunks c JOIN documents d ON d.id = c.doc_id").fetchall()
    store.close()
    sections = {(Path(p).name, s) for p, s in rows}
    assert ("sync.md", "Syncing notes between machines > Conflicts") in sections
    assert ("install.md", "Installing Quillmate > First start") in sections


def test_ask_answers_with_sources_resolved_to_file_and_section(assistant):
    events = list(assistant.answer_stream("What happens to my edits when two computers change the same note?"))
    assert [e["type"] for e in events][0] == "sources" and events[-1]["type"] == "done"
    sources = events[0]["sources"]
    assert sources and sources[0]["source"].endswith("sync.md") and sources[0]["section"].endswith("Conflicts")
    assert ".conflict" in sources[0]["text"]
    done = events[-1]
    streamed = "".join(e["text"] for e in events if e["type"] == "delta")
    assert done["answer"] == streamed.strip() and done["answer"]
    for c in done["citations"]:   # whatever the base model cites resolves to a real passage
        assert c["label"] == f"{c['source']} § {c['section']}"
        assert c["text"] == sources[c["number"] - 1]["text"]


def test_citations_are_resolved_and_hallucinated_numbers_dropped(assistant):
    prepared = assistant.prepare("How do I pause syncing?")
    assert len(prepared.sources) >= 2
    done = assistant.finish("Run quill sync --pause 2h [1]. See also [2] and [9].", prepared)
    assert [c["number"] for c in done["citations"]] == [1, 2]     # [9]: no such passage
    assert done["citations"][0]["source"] == prepared.sources[0].source
    assert cited_numbers("[2][1] [2]") == [2, 1] and not done["abstained"]


def test_unsupported_question_gets_an_abstention_without_a_model_call(kb):
    a = Assistant(kb[1], AssistantConfig(rerank=False, k=3), engine=object())  # any model call would fail
    done = a.answer("What is the best recipe for banana bread?")
    assert done["abstained"] and done["answer"] == ABSTAIN and done["sources"] == []
    assert is_abstention("Sorry. The answer is NOT in the  documents.")
    a.close()


def test_cli_ask_abstains_on_a_gated_question_without_loading_the_model(kb, capsys, monkeypatch):
    from llmlab.infer import Engine

    def no_model(*args, **kwargs):
        raise AssertionError("a gated question loaded the model")

    monkeypatch.setattr(Engine, "load", no_model)
    assert main(["assistant", "ask", "--store", str(kb[1]), "--preset", "fast",
                 "What is the best recipe for banana bread?"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == ABSTAIN and "loading" not in err


def test_reindex_after_editing_one_file_touches_only_that_file(kb, tmp_path, capsys):
    docs, store = kb
    copy = tmp_path / "kb"
    shutil.copytree(store, copy)
    (docs / "shortcuts.md").write_text((docs / "shortcuts.md").read_text() + "\n## Search\n\nPress Ctrl+F to search.\n")
    capsys.readouterr()
    assert main(["assistant", "index", str(docs), "--store", str(copy), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["updated"], stats["unchanged"], stats["added"]) == (1, 2, 0)
    assert 1 <= stats["embedded"] <= 2     # only the edited file's new or changed chunks


def test_store_config_round_trips_and_version_is_checked(tmp_path):
    write_store_config(tmp_path, AssistantConfig(k=2, adapter="runs/x"))
    assert read_store_config(tmp_path).k == 2
    data = json.loads((tmp_path / "assistant.json").read_text())
    data["format_version"] = 99
    (tmp_path / "assistant.json").write_text(json.dumps(data))
    with pytest.raises(Exception, match="format 99"):
        read_store_config(tmp_path)
