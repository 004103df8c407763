"""`llmlab e2e`: the tiny recipe end to end, its cache, its resumes, the sweep, and bad input.

One tiny run (module fixture, ~35 s) goes from raw built-in text to report.md through the real
curation pipeline, BPE trainer, pretraining and SFT loops and evaluation harness. The other slow
tests work on copies of it (a copied OUT is still all cached: keys hold settings, not paths).
The pipeline's cache rules are also checked on stand-in stages that take milliseconds, for every
stage position.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmlab.core.errors import LLMLabError
from llmlab.e2e.pipeline import STAGE_FILE, Pipeline, Stage, read_stage
from llmlab.e2e.recipe import FORMAT_VERSION, RECIPE_FILE, Recipe, load_recipe, preset, read_recipe, save_recipe

MAIN = ["curate", "tokenizer", "pretrain", "sft", "eval", "report"]
SECTIONS = ["## Data", "### Funnel: prose", "### Funnel: code", "## Tokenizer", "## Model and pretraining",
            "## Instruction tuning (SFT)", "## Held-out bits per byte", "## Evaluation", "## Samples",
            "## Wall time and cost per stage"]


def e2e(*argv: str) -> int:
    """`llmlab e2e ...` through the real CLI entry point (the verb registered for the call)."""
    from llmlab import cli

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(cli.VERBS, "e2e", ("llmlab.cli.e2e", "raw text to report card"))
        return cli.main(["e2e", *map(str, argv)])


def summary(capsys, *argv: str) -> dict[str, str]:
    """{stage: status} of one `--json` run."""
    capsys.readouterr()
    assert e2e(*argv, "--json") == 0
    return {s["stage"]: s["status"] for s in json.loads(capsys.readouterr().out)["stages"]}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "tiny"
    assert e2e("--recipe", "tiny", "--out", out) == 0
    return out


def copy_of(tiny_run: Path, tmp_path: Path, stages: list[str] | None = None) -> Path:
    """A copy of the tiny run (only `stages` of it, and its recipe.json, when given)."""
    out = tmp_path / "copy"
    if stages is None:
        shutil.copytree(tiny_run, out)
    else:
        out.mkdir()
        shutil.copy2(tiny_run / RECIPE_FILE, out / RECIPE_FILE)
        for name in stages:
            shutil.copytree(tiny_run / name, out / name)
    return out


# ---------------------------------------------------------------------- the tiny recipe, for real


@pytest.mark.slow
def test_tiny_recipe_runs_end_to_end_and_writes_every_section(tiny_run):
    report = (tiny_run / "report.md").read_text(encoding="utf-8")
    for section in SECTIONS:
        assert section in report, section
    records = {name: read_stage(tiny_run / name) for name in MAIN}
    assert all(r["done"] for r in records.values())
    assert sum(r["seconds"] for r in records.values()) < 180       # bounded: well under it on 2 cores
    assert (tiny_run / "report" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    base = json.loads((tiny_run / "eval" / "base.json").read_text())
    # the recipe's benchmarks (eval.limit 10) and the in-domain tasks (20 items), on the real harness
    assert {"arc_easy", "hellaswag", "shakespeare_next_line", "python_next_line"} <= set(base["tasks"])
    assert base["tasks"]["shakespeare_next_line"]["n"] == 20 and base["tasks"]["arc_easy"]["n"] == 10
    assert base["tasks"]["python_next_line"]["chance"] == pytest.approx(0.25)
    assert set(base["bits_per_byte"]) == {"shakespeare", "pydocs", "python"}
    assert "contamination" in base
    facts = records["pretrain"]["facts"]
    assert facts["steps"] == 30 and facts["tokens_seen"] == 30 * 8 * 256
    assert f"{facts['parameters']:,} parameters" in report
    # held out before anything was learned: no held-out document reaches the training corpus
    heldout = {json.loads(line)["id"] for line in (tiny_run / "curate" / "heldout.jsonl").read_text().splitlines()}
    from llmlab.e2e.stages import corpus_documents
    assert heldout and not heldout & {d["id"] for d in corpus_documents(tiny_run)}
    items = [json.loads(line) for line in (tiny_run / "eval" / "indomain" / "shakespeare_next_line.jsonl")
             .read_text().splitlines()]
    assert {i["id"].rsplit(":", 1)[0] for i in items} <= heldout
    # the tokenizer carries its chat template, the tuned model's samples went through it
    tokenizer = json.loads((tiny_run / "tokenizer" / "tokenizer" / "llmlab-tokenizer.json").read_text())
    assert "<|assistant|>" in tokenizer["special_tokens"] and tokenizer["chat_template"]
    tuned = json.loads((tiny_run / "eval" / "tuned.json").read_text())
    assert any(s.get("chat") for s in tuned["samples"])
    assert read_recipe(tiny_run).name == "tiny"


@pytest.mark.slow
def test_a_second_run_does_nothing(tiny_run, tmp_path, capsys):
    out = copy_of(tiny_run, tmp_path)
    before = (out / "report.md").stat().st_mtime_ns
    assert summary(capsys, "--resume", out) == {name: "cached" for name in MAIN}
    assert (out / "report.md").stat().st_mtime_ns == before
    assert e2e("--resume", out, "--dry-run", "--json") == 0
    assert {row["state"] for row in json.loads(capsys.readouterr().out)["stages"]} == {"done"}
    assert e2e("--resume", out, "--dry-run", "--json", "--set", "eval.limit=5") == 0
    states = {row["stage"]: row["state"] for row in json.loads(capsys.readouterr().out)["stages"]}
    assert states == {"curate": "done", "tokenizer": "done", "pretrain": "done", "sft": "done", "eval": "to run",
                      "report": "to run"}


@pytest.mark.slow
def test_input_files_join_the_corpus(tiny_run, tmp_path):
    out = copy_of(tiny_run, tmp_path, [])
    extra = tmp_path / "notes"
    extra.mkdir()
    import codecs
    import this   # noqa: F401 -- the Zen of Python: varied prose the curation filters keep

    (extra / "zen.txt").write_text(codecs.decode(this.s, "rot13"))
    (extra / "tool.py").write_text('def greet(name):\n    """Say hello to someone by name."""\n    return name\n')
    assert e2e("--resume", out, "--input", extra, "--stages", "curate") == 0
    recipe = read_recipe(out)
    assert recipe.data.inputs == [str(extra.resolve())]
    split = read_stage(out / "curate")["facts"]["split"]
    assert split["input"]["train_docs"] + split["input"]["heldout_docs"] == 2
    from llmlab.e2e.corpus import input_docs, is_heldout
    from llmlab.e2e.stages import corpus_documents, heldout_documents
    trained = {d["id"]: d["text"] for d in corpus_documents(out)}
    held = {d.id: d.text for d in heldout_documents(out)}
    for doc in input_docs(recipe.data.inputs):   # each where its hash sends it, curated as its kind
        texts = held if is_heldout(doc.id, recipe.data.heldout_fraction, recipe.data.seed) else trained
        assert doc.id in texts
        if doc.id.endswith(".py"):
            assert doc.kind == "code" and "\n    return name" in texts[doc.id]   # code keeps its indentation


@pytest.mark.slow
def test_a_changed_setting_reruns_that_stage_and_the_later_ones_only(tiny_run, tmp_path, capsys):
    out = copy_of(tiny_run, tmp_path)
    statuses = summary(capsys, "--resume", out, "--set", "sft.max_steps=8")
    assert statuses == {"curate": "cached", "tokenizer": "cached", "pretrain": "cached", "sft": "ran", "eval": "ran",
                        "report": "ran"}
    assert read_stage(out / "sft")["facts"]["steps"] == 8
    assert read_recipe(out).sft.max_iters == 8          # the resolved recipe is saved again


@pytest.mark.slow
@pytest.mark.parametrize("deleted", ["tokenizer", "eval", "report"])
def test_resume_from_a_stage_whose_record_is_gone(tiny_run, tmp_path, capsys, deleted):
    out = copy_of(tiny_run, tmp_path)
    (out / deleted / STAGE_FILE).unlink()
    statuses = summary(capsys, "--resume", out)
    first = MAIN.index(deleted)
    assert statuses == {name: "cached" if i < first else "ran" for i, name in enumerate(MAIN)}


@pytest.mark.slow
def test_an_interrupted_pretrain_resumes_at_its_step(tiny_run, tmp_path, capsys, monkeypatch):
    from llmlab.train.trainer import Trainer

    out = copy_of(tiny_run, tmp_path, ["curate", "tokenizer"])
    step = Trainer.train_step

    def stop_after_ten(self, lr, diagnose):   # what Ctrl-C / SIGTERM do: ask the loop to stop
        row = step(self, lr, diagnose)
        if self.state.step + 1 >= 10:
            self.stop_requested = True
        return row

    with monkeypatch.context() as mp:
        mp.setattr(Trainer, "train_step", stop_after_ten)
        assert e2e("--resume", out, "--stages", "pretrain") == 130
    record = read_stage(out / "pretrain")
    assert record["done"] is False and record["seconds"] > 0
    from llmlab.model.checkpoint import load_checkpoint
    assert load_checkpoint(out / "pretrain" / "run")["loop"]["step"] == 10
    capsys.readouterr()
    assert e2e("--resume", out, "--stages", "pretrain", "--json") == 0
    captured = capsys.readouterr()
    assert "resuming at step 10" in captured.err
    assert {s["stage"]: s["status"] for s in json.loads(captured.out)["stages"]}["pretrain"] == "resumed"
    resumed, straight = read_stage(out / "pretrain")["facts"], read_stage(tiny_run / "pretrain")["facts"]
    assert resumed["steps"] == 30
    # the trainers resume exactly: the same final validation loss as the uninterrupted run
    assert resumed["last_val_loss"] == pytest.approx(straight["last_val_loss"], rel=1e-5)


@pytest.mark.slow
def test_sweep_fits_a_power_law_and_checks_its_prediction(tiny_run, tmp_path):
    out = copy_of(tiny_run, tmp_path, ["curate", "tokenizer"])
    assert e2e("--resume", out, "--sweep", "model.n_layer=1,2", "--stages", "sweep") == 0
    result = json.loads((out / "sweep" / "scaling.json").read_text())
    assert [p["label"] for p in result["points"]] == ["n_layer=1", "n_layer=2"]
    assert result["predicted_point"]["label"] == "n_layer=3"          # scaling.next_size(1, 2)
    for point in result["points"] + [result["predicted_point"]]:
        assert point["flops"] == pytest.approx(6 * point["parameters"] * point["tokens"])
        assert 4 <= point["steps"] <= 12                                # tiny's sweep.min_steps / max_steps
    s = result["summary"]
    assert s["alpha_params"] is not None and s["measured_loss"] == pytest.approx(result["predicted_point"]["loss"])
    assert (out / "sweep" / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    from llmlab.e2e.report import _sweep_section
    text = "\n".join(_sweep_section({"sweep": read_stage(out / "sweep")["facts"]}))
    assert "Prediction for n_layer=3" in text and "error" in text
    assert read_recipe(out).sweep.spec == "model.n_layer=1,2"          # --resume continues the same sweep


@pytest.mark.slow
def test_reference_model_is_evaluated_once_under_its_own_key(tiny_run, tmp_path, capsys):
    out = copy_of(tiny_run, tmp_path)
    small = ["--set", "eval.reference=smollm2", "eval.tasks=arc_easy", "eval.limit=4", "eval.indomain_items=4",
             "eval.bpb_bytes=1500", "eval.samples=0"]
    assert e2e("--resume", out, *small) == 0
    cached = list((out / "cache").glob("reference-*.json"))
    assert len(cached) == 1
    reference = json.loads(cached[0].read_text())
    assert reference["tasks"]["arc_easy"]["n"] == 4 and "shakespeare_next_line" in reference["tasks"]
    assert "smollm2" in (out / "report.md").read_text()
    (out / "eval" / STAGE_FILE).unlink()      # base and tuned are evaluated again, SmolLM2 is not
    capsys.readouterr()
    assert e2e("--resume", out) == 0
    assert "reference smollm2 cached" in capsys.readouterr().err


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "tinny"], "unknown recipe 'tinny' (did you mean tiny?)"),
    (["--recipe", "tiny", "--set", "pretrain.max_stepz=3"], "did you mean pretrain.max_steps"),
    (["--recipe", "tiny", "--set", "pretrian.max_steps=3"], "unknown recipe section 'pretrian' (did you mean pretrain?)"),
    (["--recipe", "tiny", "--set", "model.n_layer=two"], "'two' is not a whole number"),
    (["--recipe", "tiny", "--set", "model.n_embd=66"], "n_embd (66) must be divisible by n_head (4)"),
    (["--recipe", "tiny", "--set", "sft.kinds=poems"], "must be a comma-separated subset of"),
    (["--recipe", "tiny", "--set", "max_steps"], "write section.setting=value"),
    (["--recipe", "tiny", "--sweep", "model.n_layer=4,2"], "increasing values"),
    (["--recipe", "tiny", "--sweep", "pretrain.lr=1,2"], "whole-number model setting"),
    (["--recipe", "tiny", "--stages", "sweep"], "has no sweep"),
    (["--recipe", "tiny", "--input", "/no/such/corpus"], "--input /no/such/corpus: no such file or directory"),
    (["--resume", "/no/such/run"], "no such directory"),
])
def test_bad_input_is_one_clear_message(argv, message, capsys, tmp_path):
    assert e2e(*argv, *([] if "--resume" in argv else ["--out", tmp_path / "out"])) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()     # nothing was started


def test_recipe_files_round_trip_and_refuse_other_versions(tmp_path):
    recipe = preset("cpu-small").with_overrides(["model.n_layer=3", "pretrain.max_steps=50", "eval.reference="])
    save_recipe(recipe, tmp_path)
    again = read_recipe(tmp_path)
    assert again == recipe and again.pretrain.max_iters == 50 and again.eval.reference == ""
    # derived model fields are not frozen by the file: a new width re-derives the head size
    assert again.with_overrides(["model.n_embd=384"]).model.head_dim == 96
    data = json.loads((tmp_path / RECIPE_FILE).read_text())
    (tmp_path / RECIPE_FILE).write_text(json.dumps({**data, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(LLMLabError, match="recipe format version 2; this llmlab reads version 1"):
        read_recipe(tmp_path)
    with pytest.raises(LLMLabError, match="not an `llmlab e2e` output directory"):
        read_recipe(tmp_path / "elsewhere")


def test_toml_recipe_starts_from_a_preset(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('base = "tiny"\n[model]\nn_layer = 3\n[pretrain]\nmax_steps = 7\n[data]\ninputs = ["extra"]\n')
    recipe = load_recipe(str(path))
    assert (recipe.name, recipe.model.n_layer, recipe.pretrain.max_iters) == ("mine", 3, 7)
    assert recipe.model.n_embd == preset("tiny").model.n_embd
    assert recipe.data.inputs == [str(tmp_path / "extra")]          # relative to the file
    path.write_text('base = "tiny"\n[modle]\nn_layer = 3\n')
    with pytest.raises(LLMLabError, match="unknown recipe section 'modle'"):
        load_recipe(str(path))
    path.write_text('base = "tiny"\n[model]\nn_layer = "three"\n')
    with pytest.raises(LLMLabError, match="n_layer"):
        load_recipe(str(path))


def test_presets_are_valid_and_sized_as_documented():
    import torch

    from llmlab.model.transformer import Transformer

    sizes = {}
    for name in ("tiny", "cpu-small", "gpu-1b"):
        recipe = preset(name)
        with torch.device("meta"):
            sizes[name] = Transformer(recipe.model.replace(vocab_size=recipe.tokenizer.vocab_size)).num_params()
    assert sizes["tiny"] < 200_000
    assert 3_500_000 < sizes["cpu-small"] < 8_000_000
    assert 1.0e9 < sizes["gpu-1b"] < 1.5e9
    assert preset("gpu-1b").pretrain.device == "cuda"


# ---------------------------------------------------------------------- the cache rules, on stand-in stages


def stand_in_pipeline(out: Path, calls: list[str], fail: dict[str, int] | None = None) -> Pipeline:
    """Four stages that each write a file and record that they ran; `fail[name] = n` makes a stage
    raise KeyboardInterrupt on its next n runs, after writing a partial file."""
    fail = fail if fail is not None else {}

    def make(name: str):
        def run(ctx):
            calls.append(f"{name}{'(resumed)' if ctx.resumed else ''}")
            if fail.get(name):
                fail[name] -= 1
                (ctx.dir / "partial").write_text("half")
                raise KeyboardInterrupt
            (ctx.dir / "out.txt").write_text(name)
            return {"name": name, "partial_seen": (ctx.dir / "partial").is_file()}
        return run

    names = ["a", "b", "c", "d"]
    stages = [Stage(n, tuple(names[:i][-1:]), lambda r, n=n: {"n": n, "steps": r.pretrain.max_iters if n == "c" else 0},
                    make(n)) for i, n in enumerate(names)]
    return Pipeline(Recipe("stand-in"), out, stages)


@pytest.mark.parametrize("deleted", ["a", "b", "c", "d"])
def test_deleting_a_stage_record_reruns_it_and_every_later_stage(tmp_path, deleted):
    calls: list[str] = []
    stand_in_pipeline(tmp_path, calls).run()
    assert calls == ["a", "b", "c", "d"]
    calls.clear()
    stand_in_pipeline(tmp_path, calls).run()
    assert calls == []                                   # all cached
    (tmp_path / deleted / STAGE_FILE).unlink()
    stand_in_pipeline(tmp_path, calls).run()
    assert calls == ["a", "b", "c", "d"][["a", "b", "c", "d"].index(deleted):]


def test_a_changed_setting_reruns_from_that_stage_and_empties_its_directory(tmp_path):
    calls: list[str] = []
    stand_in_pipeline(tmp_path, calls).run()
    (tmp_path / "c" / "stale").write_text("old")
    calls.clear()
    pipeline = stand_in_pipeline(tmp_path, calls)
    pipeline.recipe = pipeline.recipe.with_overrides(["pretrain.max_steps=5"])   # only c reads it
    pipeline.run()
    assert calls == ["c", "d"] and not (tmp_path / "c" / "stale").exists()


def test_an_interrupted_stage_resumes_in_place_and_keeps_its_time(tmp_path):
    calls: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        stand_in_pipeline(tmp_path, calls, {"b": 1}).run()
    record = read_stage(tmp_path / "b")
    assert record["done"] is False and record["seconds"] >= 0 and (tmp_path / "b" / "partial").is_file()
    calls.clear()
    stand_in_pipeline(tmp_path, calls).run(upto="c")
    assert calls == ["b(resumed)", "c"]                  # a cached, b continued, d not reached
    assert read_stage(tmp_path / "b")["facts"]["partial_seen"] is True
    assert read_stage(tmp_path / "d") is None
    with pytest.raises(LLMLabError, match="--stages e: not a stage"):
        stand_in_pipeline(tmp_path, calls).run(upto="e")


# ---------------------------------------------------------------------- the chat set and in-domain items


def test_in_domain_items_are_seeded_and_hold_the_true_next_line():
    from llmlab.e2e.corpus import RawDoc
    from llmlab.e2e.indomain import build_items

    text = "\n".join(f"line number {i} of the scene here" for i in range(40))
    docs = [RawDoc(f"shakespeare/x/{k}", text, "shakespeare:X", "shakespeare", "prose") for k in range(3)]
    items = build_items(docs, "shakespeare", 12, 3, seed=0)
    assert len(items) == 12 and items == build_items(docs, "shakespeare", 12, 3, seed=0)
    assert items != build_items(docs, "shakespeare", 12, 3, seed=1)
    for item in items:
        line = int(item["id"].rsplit(":", 1)[1])
        assert item["choices"][item["gold"]] == f"line number {line} of the scene here"
        assert item["context"].endswith(f"line number {line - 1} of the scene here\n")
        assert len(set(item["choices"])) == 4
    assert {item["gold"] for item in items} != {items[0]["gold"]}   # the right answer moves around


def test_chat_set_is_deterministic_unique_and_covers_every_kind():
    from llmlab.e2e.chatset import build_chat_set, split_chat_set

    verse = "\n".join(f"O gentle speaker, line {i} of this scene" for i in range(30))
    code = 'def load(path):\n    """Read the settings from path."""\n    return path\n\n' \
           'class Box:\n    def open(self):\n        """Open the box and return it."""\n        return self\n'
    docs = [{"id": "s", "text": "HAMLET:\n" + verse, "source": "shakespeare:Hamlet"},
            {"id": "p", "text": code, "source": "python:pkg/__init__.py"},
            {"id": "t", "text": 'The "with" statement\n***\n\nThe "with" statement wraps a block in the methods of a '
                                'context manager.', "source": "pydocs:with"}]
    examples = build_chat_set(docs, 40, ["continue", "play", "function", "topic"], seed=3)
    assert examples == build_chat_set(docs, 40, ["continue", "play", "function", "topic"], seed=3)
    prompts = [e["messages"][0]["content"] for e in examples]
    assert len(examples) == 40 and len(set(prompts)) == 40
    answers = {e["messages"][0]["content"]: e["messages"][1]["content"] for e in examples}
    assert answers["What does the Python function `pkg.load` do?"] == "Read the settings from path."
    assert answers["What does the Python function `pkg.Box.open` do?"] == "Open the box and return it."
    assert answers["Explain the Python topic 'with'."].startswith('The "with" statement wraps a block')
    assert {e["kind"] for e in examples} == {"continue", "play", "function", "topic"}
    train, val = split_chat_set(examples, 0.1, seed=3)
    assert len(val) == 4 and not {e["messages"][0]["content"] for e in val} & {e["messages"][0]["content"] for e in train}


def test_sigterm_outside_a_trainer_stops_like_ctrl_c_and_leaves_the_stage_resumable(tmp_path):
    import os
    import signal
    import time

    def terminated(ctx):
        os.kill(os.getpid(), signal.SIGTERM)   # what a scheduler's stop or `kill` sends
        time.sleep(5)                          # interrupted long before this ends
        return {}

    stage = Stage("work", (), lambda r: {}, terminated)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(Recipe("stand-in"), tmp_path, [stage]).run()
    assert read_stage(tmp_path / "work")["done"] is False
    assert signal.getsignal(signal.SIGTERM) is previous          # the handler is put back


def test_sweep_point_keys_ignore_the_pretrain_fields_each_point_sets_itself():
    from llmlab.e2e.sweep import sweep_stages

    base = preset("tiny").with_overrides(["sweep.spec=model.n_layer=1,2"])
    longer = base.with_overrides(["pretrain.max_steps=999"])
    other_lr = base.with_overrides(["pretrain.lr=0.01"])
    points = [s for s in sweep_stages(base) if s.name != "sweep"]
    assert points and all(s.settings(base) == s.settings(longer) for s in points)
    assert all(s.settings(base) != s.settings(other_lr) for s in points)
