"""`llmlab finetune` end to end on a tiny random Llama: train, resume exactly, load, export, evaluate.

Every run here starts from the session's tiny base (tests/finetune/conftest.py): two layers of
width 32 with SmolLM2's real tokenizer and chat template, on a few examples of the built-in
extract-json task. The numbers mean nothing; what is checked is what each feature promises: the
checkpoint holds only the adapter, a resumed run is bit-identical to an uninterrupted one, every
way of loading a fine-tune computes the same logits, and bad input is one clear message.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmlab.cli import main
from llmlab.core.errors import LLMLabError

DATA = ["--task", "extract-json", "--task-size", "24"]
LOOP = ["--batch-size", "2", "--seq-len", "256", "--eval-iters", "1", "--threads", "1", "--tensorboard", "false",
        "--log-every", "1", "--ckpt-every", "1000"]
# A high learning rate, so 8 steps visibly move a random model; adapter dropout on, so a resume must
# restore the global RNG too. The resume test's interrupted run is told the schedule's horizon
# (--lr-decay-iters) the straight one has.
STEPS = 8
TRAIN = ["--lr", "1e-2", "--min-lr", "1e-3", "--eval-every", "4", "--lora-dropout", "0.1", "--lora-nf4-block", "32"]
PROBE_TEXT = "Extract the order as one line of JSON: Dana wants two small lemonades by 6pm."


def finetune(base: Path, out: Path, method: str = "lora", *extra: str) -> None:
    argv = ["finetune", "--model", str(base), "--method", method, *DATA, *LOOP, "--out", str(out), *extra]
    assert main(argv) == 0, argv


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_losses(run: Path) -> dict[int, float]:
    return {row["step"]: row["train_loss"] for row in metrics(run)}


def checkpoint(run: Path, name: str = "ckpt.pt") -> dict:
    return torch.load(run / name, map_location="cpu", weights_only=True)


def logits(model, tokenizer) -> torch.Tensor:
    model.eval()   # LoRA's dropout is on in training mode
    ids = torch.tensor([tokenizer.encode(PROBE_TEXT)])
    with torch.no_grad():
        return model(ids)["logits"].float()


def load_logits(spec, **kwargs) -> torch.Tensor:
    from llmlab.model.source import load_model

    model, tokenizer, _ = load_model(spec, **kwargs)
    return logits(model, tokenizer)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_base) -> Path:
    """8 LoRA steps: the run most tests below read (and the uninterrupted one of the LoRA resume test)."""
    run = tmp_path_factory.mktemp("lora") / "run"
    finetune(tiny_base, run, "lora", "--max-iters", str(STEPS), *TRAIN)
    return run


@pytest.fixture(scope="module")
def lora_logits(lora_run) -> torch.Tensor:
    """The fine-tune's logits on PROBE_TEXT, loaded as a model (each load reads the checkpoint: ~2 s)."""
    return load_logits(lora_run)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_base) -> Path:
    run = tmp_path_factory.mktemp("full") / "run"
    finetune(tiny_base, run, "full", "--max-iters", "2", "--lr", "1e-3", "--min-lr", "1e-4", "--eval-every", "2",
             "--warmup-iters", "0")
    return run


# ---------------------------------------------------------------------- training


@pytest.mark.slow
def test_lora_run_saves_only_the_adapter_and_learns(lora_run, tiny_base):
    for name in ("config.json", "metrics.jsonl", "loss.png", "ckpt.pt"):
        assert (lora_run / name).is_file(), name
    config = json.loads((lora_run / "config.json").read_text())
    assert config["kind"] == "finetune" and config["finetune"]["method"] == "lora"
    assert config["base"]["sha256"] and 0 < config["trainable_params"] < config["total_params"] / 10

    state = checkpoint(lora_run)
    assert state["model"] and all(k.endswith((".lora_A", ".lora_B")) for k in state["model"]), list(state["model"])
    assert state["adapter"]["method"] == "lora" and "blocks.0.attn.wq" in state["adapter"]["layers"]
    assert state["base"]["spec"] == str(tiny_base) and len(state["base"]["sha256"]) == 64
    adapter_bytes = sum(t.numel() * t.element_size() for t in state["model"].values())
    base_bytes = (tiny_base / "model.safetensors").stat().st_size
    assert adapter_bytes < base_bytes / 20
    # The file also holds the tokenizer (49k tokens), the optimizer moments and the config.
    assert (lora_run / "ckpt.pt").stat().st_size < base_bytes / 2

    losses = train_losses(lora_run)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert sum(losses[s] for s in (7, 8)) / 2 < sum(losses[s] for s in (1, 2)) / 2 - 0.05, losses


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_resume_continues_exactly(method, tmp_path, tiny_base, request):
    """8 steps straight == 4 steps, then `--resume --max-iters 8`: the same adapter bits, the same losses."""
    half = STEPS // 2
    if method == "lora":
        straight = request.getfixturevalue("lora_run")
    else:
        straight = tmp_path / "straight"
        finetune(tiny_base, straight, method, "--max-iters", str(STEPS), *TRAIN)
    resumed = tmp_path / "resumed"
    finetune(tiny_base, resumed, method, "--max-iters", str(half), "--lr-decay-iters", str(STEPS), *TRAIN)
    assert checkpoint(resumed)["loop"]["step"] == half
    assert main(["finetune", "--resume", str(resumed), "--max-iters", str(STEPS)]) == 0

    a, b = checkpoint(straight), checkpoint(resumed)
    assert a["loop"]["step"] == b["loop"]["step"] == STEPS
    assert a["model"].keys() == b["model"].keys() and a["model"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    if method == "qlora":
        assert b["adapter"]["lora"]["nf4_block"] == 32
        assert any(m.__class__.__name__ == "NF4Linear" for m in _loaded(resumed).modules())
    want, got = train_losses(straight), train_losses(resumed)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert [got[s] for s in range(half + 1, STEPS + 1)] == [want[s] for s in range(half + 1, STEPS + 1)]


def _loaded(run: Path):
    from llmlab.model.source import load_model
    return load_model(run)[0]


@pytest.mark.slow
def test_full_finetune_saves_every_weight_and_loads_as_a_model(full_run, tiny_base):
    from llmlab.model.source import load_model

    state = checkpoint(full_run)
    base_model = load_model(tiny_base)[0]
    assert set(state["model"]) == set(base_model.state_dict())
    assert "adapter" not in state and "base" not in state
    assert (load_logits(full_run) - load_logits(tiny_base)).abs().max() > 1e-4


# ---------------------------------------------------------------------- loading and export


@pytest.mark.slow
def test_every_way_of_loading_an_adapter_gives_the_same_logits(lora_run, lora_logits, tiny_base, other_base):
    as_model = lora_logits
    on_base = load_logits(tiny_base, adapter=lora_run)
    assert torch.allclose(as_model, on_base, atol=1e-6)
    assert (as_model - load_logits(tiny_base)).abs().max() > 1e-3   # the adapter changed something
    assert torch.allclose(load_logits(lora_run, merge_adapters=True), as_model, atol=1e-5)
    assert torch.allclose(load_logits(tiny_base, adapter=lora_run, merge_adapters=True), as_model, atol=1e-5)

    from llmlab.model.source import load_model
    with pytest.raises(LLMLabError, match="trained on") as e:
        load_model(other_base, adapter=lora_run)
    assert "sha256" in str(e.value) and str(tiny_base) in str(e.value)


@pytest.mark.slow
def test_export_peft_and_merged_hf(lora_run, lora_logits, tiny_base, tmp_path, capsys):
    as_model = lora_logits
    peft_dir, merged, unmerged = tmp_path / "peft", tmp_path / "merged", tmp_path / "unmerged"
    assert main(["export", str(lora_run), "--to", "peft", str(peft_dir)]) == 0
    assert (peft_dir / "adapter_config.json").is_file()
    assert torch.allclose(load_logits(tiny_base, adapter=peft_dir), as_model, atol=1e-5)

    assert main(["export", str(lora_run), "--merge", "--to", "hf", str(merged)]) == 0
    assert torch.allclose(load_logits(merged), as_model, atol=1e-4)

    capsys.readouterr()
    assert main(["export", str(lora_run), "--to", "hf", str(unmerged)]) == 2
    err = capsys.readouterr().err
    assert "--merge" in err and "--to peft" in err, err


# ---------------------------------------------------------------------- evaluation and generation


TEST_EXAMPLES = [
    [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "yes"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "What is the capital of France, in one word, please?"},
     {"role": "assistant", "content": "Paris"}],
    [{"role": "user", "content": "Count: one, two"}, {"role": "assistant", "content": "three"}],
]


@pytest.fixture
def test_jsonl(tmp_path) -> Path:
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in TEST_EXAMPLES), encoding="utf-8")
    return path


def _eval(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["finetune", "eval", *argv, "--json", "--max-new-tokens", "4", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_eval_on_a_jsonl_writes_predictions_in_order(lora_run, tiny_base, test_jsonl, tmp_path, capsys):
    preds = tmp_path / "preds.jsonl"
    report = _eval(capsys, str(lora_run), "--data", str(test_jsonl), "--predictions", str(preds),
                   "--forgetting", "false")
    assert report["base"] == str(tiny_base) and report["examples"] == 3
    assert set(report["tuned_scores"]) == {"exact_match"} and "exact_match" in report["base_scores"]
    assert report["compare"]["exact_match"]["base"] == report["base_scores"]["exact_match"]
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 3 and all(set(r) == {"prediction"} and isinstance(r["prediction"], str) for r in rows)

    # In input order: each is the reply the tuned model gives that prompt alone.
    from llmlab.infer import Engine
    from llmlab.infer.sampling import SamplingConfig
    engine = Engine.load(str(lora_run), "cpu")
    alone = [engine.generate_batch([m[:-1]], SamplingConfig(max_new_tokens=4, temperature=0.0))[0].text
             for m in TEST_EXAMPLES]
    assert len(set(alone)) == 3   # else an order mix-up would go unseen
    assert [r["prediction"] for r in rows] == alone


@pytest.mark.slow
def test_eval_on_the_task_test_split_and_forgetting(lora_run, test_jsonl, tmp_path, capsys):
    report = _eval(capsys, str(lora_run), "--task", "extract-json", "--limit", "4", "--forgetting", "false")
    assert report["task"] == "extract-json" and report["examples"] == 4
    assert {"json_valid", "exact_match", "field_accuracy"} <= set(report["tuned_scores"])
    assert "exact_match" in report["base_scores"]

    general = tmp_path / "general.txt"
    general.write_text("The quick brown fox jumps over the lazy dog. " * 60, encoding="utf-8")
    report = _eval(capsys, str(lora_run), "--data", str(test_jsonl), "--general-file", str(general),
                   "--ppl-tokens", "200")
    tuned, base = report["tuned_scores"]["general_ppl"], report["base_scores"]["general_ppl"]
    assert tuned > 1 and base > 1 and report["general_text"] == str(general)
    assert report["compare"]["general_ppl"]["delta_pct"] == pytest.approx((tuned / base - 1) * 100)


@pytest.mark.slow
def test_generate_with_an_adapter(lora_run, tiny_base, capsys):
    argv = ["generate", "--prompt", "hi", "--max-new-tokens", "4", "--temperature", "0", "--json", "--device", "cpu"]
    capsys.readouterr()
    assert main([*argv, "--model", str(tiny_base), "--adapter", str(lora_run)]) == 0
    with_adapter = json.loads(capsys.readouterr().out)
    assert isinstance(with_adapter["text"], str) and 1 <= len(with_adapter["token_ids"]) <= 4
    assert main([*argv, "--model", str(lora_run)]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == with_adapter["token_ids"]


# ---------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ft_bad")
    good = json.dumps({"messages": TEST_EXAMPLES[0]})
    (root / "malformed.jsonl").write_text(f"{good}\n{{\"messages\": [oops\n{good}\n", encoding="utf-8")
    (root / "text.jsonl").write_text('{"text": "no reply to score here"}\n', encoding="utf-8")
    (root / "notadapter").mkdir()
    (root / "notadapter" / "notes.txt").write_text("nothing here", encoding="utf-8")
    # What `finetune --resume` reads of a pretraining run: a ckpt.pt whose config has no "kind".
    from llmlab.model.checkpoint import save_checkpoint
    (root / "pretrain").mkdir()
    (root / "pretrain" / "config.json").write_text('{"format": "llmlab-run", "version": 1}', encoding="utf-8")
    save_checkpoint(root / "pretrain" / "ckpt.pt", {"config": {"model": {}, "train": {}, "data": {}}, "model": {}})
    return root


BAD = [  # (id, argv with {base} {root} {full} {lora} placeholders, strings one of which the message must hold)
    ("no-task-or-data", ["finetune", "--model", "{base}"], ["--task", "--data"]),
    ("data-missing", ["finetune", "--model", "{base}", "--data", "{root}/missing.jsonl"], ["missing.jsonl"]),
    ("data-malformed", ["finetune", "--model", "{base}", "--data", "{root}/malformed.jsonl"],
     ["malformed.jsonl:2:"]),
    ("task-unknown", ["finetune", "--model", "{base}", "--task", "nosuch"], ["nosuch"]),
    ("method-unknown", ["finetune", "--model", "{base}", "--task", "facts", "--method", "nosuch"], ["--method"]),
    ("targets-unknown", ["finetune", "--model", "{base}", "--task", "facts", "--lora-targets", "attn.nosuch"],
     ["attn.nosuch"]),
    ("resume-pretraining", ["finetune", "--resume", "{root}/pretrain"], ["llmlab train --resume"]),
    ("resume-changes-method", ["finetune", "--resume", "{lora}", "--method", "full"], ["--resume"]),
    ("eval-plain-text", ["finetune", "eval", "{lora}", "--data", "{root}/text.jsonl"], ["text.jsonl"]),
    ("export-peft-of-full", ["export", "{full}", "--to", "peft", "{root}/peft_out"], ["--to hf"]),
    ("adapter-not-adapter", ["generate", "--model", "{base}", "--adapter", "{root}/notadapter", "--prompt", "hi"],
     ["notadapter"]),
    ("adapter-is-full", ["generate", "--model", "{base}", "--adapter", "{full}", "--prompt", "hi"],
     ["whole model weights"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, argv, needles", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_clear_paragraph(name, argv, needles, bad_inputs, tiny_base, full_run, lora_run, capsys):
    where = {"base": str(tiny_base), "root": str(bad_inputs), "full": str(full_run), "lora": str(lora_run)}
    argv = [a.format(**where) for a in argv]
    if argv[:2] != ["finetune", "eval"] and argv[0] == "finetune" and "--resume" not in argv:
        argv += [*LOOP, "--max-iters", "1", "--out", str(bad_inputs / f"run-{name}")]
    capsys.readouterr()
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert err and "Traceback" not in err and len(err.splitlines()) <= 6, err
    assert any(n in err for n in needles), f"{needles} not in: {err}"
    if name == "targets-unknown":
        assert "attn.wq" in err and "mlp.w_up" in err, err   # it lists the layers there are
    if argv[:2] != ["finetune", "eval"] and argv[0] == "finetune" and "--resume" not in argv:
        assert not (bad_inputs / f"run-{name}" / "ckpt.pt").exists()
