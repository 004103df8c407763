"""`llmlab assistant tune` end to end on the three Quillmate notes, at toy sizes: every stage runs and
leaves its artifact, the store switches to the adapted encoder, the answerer's adapter is recorded and
loads, and a second run finds everything done and changes nothing."""

import json
import shutil
from pathlib import Path

import pytest

from llmlab.cli import main

NOTES = Path(__file__).resolve().parents[2] / "examples" / "assistant" / "notes"


@pytest.mark.slow
def test_tune_adapts_encoder_and_answerer_and_resumes(tmp_path, capsys):
    from llmlab.assistant.pipeline import Assistant, read_store_config
    from llmlab.rag.store import Store

    docs, store, out = tmp_path / "notes", tmp_path / "kb", tmp_path / "tuned"
    shutil.copytree(NOTES, docs)
    assert main(["assistant", "index", str(docs), "--store", str(store), "--json"]) == 0
    base_model = Store(store).meta["embed_model"]
    flags = ["assistant", "tune", "--store", str(store), "--out", str(out), "--keep-rank", "8",
             "--encoder-batch", "4", "--answerer-examples", "6", "--answerer-steps", "2", "--answerer-batch", "2",
             "--lora-r", "4", "--json"]
    capsys.readouterr()
    assert main(flags) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["questions"] >= 4 and report["kept_after_round_trip"] >= 2
    assert (store / "encoder" / "adapt.json").is_file() and (out / "answerer" / "ckpt.pt").is_file()
    s = Store(store)
    assert s.meta["encoder"] == "encoder" and s.meta["embed_model"] != base_model   # re-embedded, recorded
    s.close()
    config = read_store_config(store)
    assert Path(config.adapter) == (out / "answerer").resolve()
    # the store now embeds queries with its own encoder, and the answerer loads with its adapter
    a = Assistant(store)
    assert a.embedder.model_id == Store(store).meta["embed_model"]
    assert "+answerer" in a.engine.name
    a.close()
    # a second run: every stage is found done (same questions file, same encoder, same run)
    questions = (out / "questions.jsonl").read_text()
    weights = (store / "encoder" / "model.safetensors").stat().st_mtime_ns
    assert main(flags) == 0
    assert (out / "questions.jsonl").read_text() == questions
    assert (store / "encoder" / "model.safetensors").stat().st_mtime_ns == weights
