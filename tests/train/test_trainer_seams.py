"""The trainer's seams: non-finite gradients never reach the weights, float16 uses loss scaling,
losses are normalised per target token across micro-batches, runs start from a pretrained model,
checkpoints of partly frozen runs hold only what was trained, and resume keeps the schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from llmlab.core.errors import LLMLabError
from llmlab.model.checkpoint import load_run_model
from llmlab.train.checkpoint import load_checkpoint
from llmlab.train.loss import causal_lm_loss
from llmlab.train.metrics import read_metrics
from llmlab.train.run import build, resume, start
from llmlab.train.trainer import Trainer

from tests.train.test_trainer import tiny_run


def poison_gradients(model: torch.nn.Module, at_calls: set[int]) -> None:
    """Make one weight's gradient NaN on the given backward calls (0-based); the loss stays finite."""
    calls = {"n": 0}

    def hook(grad):
        calls["n"] += 1
        return grad * float("nan") if calls["n"] - 1 in at_calls else grad

    next(p for n, p in model.named_parameters() if n.endswith("mlp.w_up.weight")).register_hook(hook)


def trainer_for(run, run_dir: Path, **kwargs) -> Trainer:
    run_dir.mkdir(parents=True, exist_ok=True)
    model, data, device, base, _ = build(run)
    return Trainer(run, model, data, data.tokenizer, run_dir, device, base=base, **kwargs)


def finite(state_dict) -> bool:
    return all(torch.isfinite(t).all() for t in state_dict.values() if t.is_floating_point())


def test_a_non_finite_gradient_is_skipped_not_applied(tmp_path, tiny_data):
    trainer = trainer_for(tiny_run(tiny_data, max_iters=8, ckpt_every=2), tmp_path / "r")
    poison_gradients(trainer.model, {3})
    state = trainer.fit()
    assert state.step == 8 and state.skipped_steps == 1
    assert finite(trainer.model.state_dict()) and finite(load_checkpoint(tmp_path / "r")["model"])
    skipped = [r for r in read_metrics(tmp_path / "r") if r.get("skipped")]
    assert [r["step"] for r in skipped] == [4]
    assert skipped[0]["grad_norm"] is None or not math.isfinite(skipped[0]["grad_norm"])  # JSON has no NaN


def test_repeated_non_finite_gradients_stop_and_keep_the_good_checkpoint(tmp_path, tiny_data):
    trainer = trainer_for(tiny_run(tiny_data, max_iters=20, ckpt_every=2), tmp_path / "r")
    poison_gradients(trainer.model, set(range(5, 20)))   # steps 6, 7, 8: the third stops the run
    with pytest.raises(LLMLabError, match="non-finite gradients"):
        trainer.fit()
    saved = load_checkpoint(tmp_path / "r")
    assert saved["loop"]["step"] == 6 and saved["loop"]["skipped_steps"] == 1 and finite(saved["model"])


def test_float16_trains_with_a_loss_scaler_and_resumes_it(tmp_path, tiny_data):
    run = tiny_run(tiny_data, max_iters=6, dtype="float16")
    trainer = trainer_for(run, tmp_path / "r")
    assert trainer.scaler is not None
    trainer.fit()
    saved = load_checkpoint(tmp_path / "r")
    assert "scaler" in saved and saved["scaler"]["scale"] > 0 and finite(saved["model"])


class Uneven:
    """Two micro-batches with different numbers of target tokens (as SFT batches have)."""

    def __init__(self, data):
        self.data, self.calls = data, 0

    def get_batch(self, split, batch_size, seq_len, generator):
        batch = self.data.get_batch(split, batch_size, seq_len, generator)
        self.calls += 1
        if self.calls % 2:  # keep only the last 3 targets of each row in odd micro-batches
            batch["labels"][:, :-3] = -100
        return batch


def test_the_loss_weighs_every_target_token_equally_across_micro_batches(tmp_path, tiny_data):
    run = tiny_run(tiny_data, max_iters=1, grad_accum=2, batch_size=4, grad_clip=0.0)
    trainer = trainer_for(run, tmp_path / "r")
    trainer.data = Uneven(trainer.data)
    g = trainer.generator.get_state()
    batches = [trainer.batch("train", trainer.generator) for _ in range(2)]
    trainer.generator.set_state(g)
    trainer.data.calls = 0
    # Reference: one big batch of both micro-batches, mean over its target tokens.
    joined = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    loss_sum, n = causal_lm_loss(trainer.model, joined)
    row = trainer.train_step(lr=0.0, diagnose=False)
    assert row["target_tokens"] == int(n) == 4 * 3 + 4 * run.seq_len
    assert row["train_loss"] == pytest.approx(float(loss_sum.detach() / n), rel=1e-5)


def test_a_run_starts_from_a_pretrained_model_and_saves_only_what_it_trains(tmp_path, tiny_data):
    start(tiny_run(tiny_data, max_iters=30, lr=1e-2), tmp_path / "base")
    base_model = load_run_model(tmp_path / "base", prefer_best=False)[0]
    run = tiny_run(tiny_data, max_iters=4, eval_every=4)
    run.init = str(tmp_path / "base")
    trainer = trainer_for(run, tmp_path / "ft")
    assert trainer.base["sha256"] and trainer.run.model.n_embd == base_model.config.n_embd
    # the pretrained weights, not a fresh init: the same loss as the base on the same batch
    batch = trainer.batch("val", torch.Generator().manual_seed(0))
    assert float(causal_lm_loss(trainer.model, batch)[0]) == pytest.approx(float(causal_lm_loss(base_model, batch)[0]),
                                                                            rel=1e-6)
    for name, p in trainer.model.named_parameters():
        p.requires_grad = name.startswith("blocks.1.")
    trainer.optimizer = type(trainer.optimizer)([p for p in trainer.model.parameters() if p.requires_grad], lr=1e-3)
    trainer.fit()
    saved = load_checkpoint(tmp_path / "ft")
    assert set(saved["model"]) == {k for k in trainer.model.state_dict() if k.startswith("blocks.1.")}
    assert saved["base"]["sha256"] == trainer.base["sha256"]
    reloaded = load_run_model(tmp_path / "ft", prefer_best=False)[0]
    ids = batch["input_ids"][:2]
    torch.testing.assert_close(reloaded(ids)["logits"], trainer.model.eval()(ids)["logits"])


def test_resume_with_a_larger_budget_keeps_the_schedule(tmp_path, tiny_data, capsys):
    start(tiny_run(tiny_data, max_iters=10), tmp_path / "r")
    resume(tmp_path / "r", {"max_iters": 14})
    assert "keeping the learning-rate schedule" in capsys.readouterr().err
    rows = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "r")}
    min_lr = tiny_run(tiny_data).train.min_lr
    assert rows[10] > min_lr and rows[11] == pytest.approx(min_lr) and rows[14] == pytest.approx(min_lr)


def test_the_final_checkpoint_is_written_once(tmp_path, tiny_data, monkeypatch):
    from llmlab.train import trainer as trainer_module

    saves = []
    original = trainer_module.Trainer.save
    monkeypatch.setattr(trainer_module.Trainer, "save", lambda self, *a: (saves.append(self.state.step), original(self, *a)))
    start(tiny_run(tiny_data, max_iters=6, ckpt_every=5), tmp_path / "r")
    assert saves == [5, 6]
