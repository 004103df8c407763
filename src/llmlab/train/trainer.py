"""The training loop: one visible `while` loop with evaluation, logging and checkpoints.

    setup  -> device, seed, data, model, optimizer (or all of it restored from a checkpoint)
    loop   -> lr schedule -> grad-accumulated forward/backward -> clip -> step
              -> log / diagnose / evaluate / checkpoint / sample
    finish -> final eval, checkpoint, loss.png, samples.txt

The loop needs a model, a batch source with `get_batch(split, batch_size, seq_len, generator)`
returning batch dicts, and a loss function over a batch (llmlab.train.loss: input_ids, labels with
-100 for no target, optional masks); it trains whatever parameters require grad, so fine-tuning
(full or LoRA) reuses it unchanged. The loss of a step is normalised by the target tokens of all
its micro-batches, and tokens/s counts target tokens.
"""

from __future__ import annotations

import copy
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from llmlab.core.device import autocast, pick_dtype
from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_write_json
from llmlab.core.progress import progress
from llmlab.model.checkpoint import load_model_state
from llmlab.tokenizer import Tokenizer
from llmlab.train import diagnostics, sharded
from llmlab.train.checkpoint import BEST, CHECKPOINT, capture_rng, restore_rng, save_checkpoint
from llmlab.train.config import RunConfig, parse_duration
from llmlab.train.distributed import DistContext, all_sum, choose_parallel, gradient_sync, rank_rows, wrap_model
from llmlab.train.loss import Batch, LossFn, causal_lm_loss, target_tokens
from llmlab.train.metrics import LOSS_PLOT, MetricsLog, plot_losses, read_metrics
from llmlab.train.optim import lr_at, make_optimizer


class BatchSource(Protocol):
    def get_batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator) -> Batch: ...


@dataclass
class LoopState:
    """Everything besides weights and optimizer moments that a resume must restore."""

    step: int = 0
    elapsed_s: float = 0.0           # wall time spent training so far (across resumes)
    best_val: float = math.inf
    evals_since_best: int = 0
    last_val: float | None = None
    stop_reason: str = ""
    history: list[float] = field(default_factory=list)  # recent losses, for spike detection
    skipped_steps: int = 0           # steps whose gradients were not finite (not applied)
    skips_in_a_row: int = 0


def peak_flops(device: torch.device, configured_tflops: float) -> tuple[float, str]:
    """The denominator of MFU. GPUs: the datasheet bf16 dense peak. CPUs have no single published
    figure, so we measure a large float32 matmul here and report MFU relative to that."""
    if configured_tflops > 0:
        return configured_tflops * 1e12, "configured"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in (("H200", 989), ("H100", 989), ("A100", 312), ("L4", 121), ("A10", 125),
                            ("4090", 165), ("3090", 71), ("T4", 65)):
            if key in name:
                return tflops * 1e12, f"{name} bf16 datasheet"
    n = 1024
    g = torch.Generator(device=device).manual_seed(0)  # never touch the global RNG (exact resume)
    a, b = torch.randn(n, n, device=device, generator=g), torch.randn(n, n, device=device, generator=g)
    a @ b  # warm up
    t0, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0), "measured fp32 matmul"


def training_flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """The model's 6 FLOPs per weight (Transformer.flops_per_token), less the 2 of the weight
    gradient that a frozen matrix does not get (fine-tuning), plus 4 per weight a quantized frozen
    layer holds outside its parameters (QLoRA's NF4 base: forward and input gradient)."""
    flops = model.flops_per_token(seq_len)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad:
            flops -= 2 * m.weight.numel()
        elif hasattr(m, "dequantize") and hasattr(m, "in_features"):
            flops += 4 * m.in_features * m.out_features
    return flops


def head_flops_per_token(model: torch.nn.Module) -> float:
    """The output head's share of training_flops_per_token: what a position without a target
    saves when the loss runs the head only at target positions (causal_lm_loss's logits_mask)."""
    head = getattr(model, "lm_head", None)
    head = getattr(head, "base", head)   # a LoRA-wrapped head: its frozen base does the big matmul
    if not isinstance(head, torch.nn.Linear):
        return 0.0
    return (6.0 if head.weight.requires_grad else 4.0) * head.weight.numel()


class Trainer:
    def __init__(self, run: RunConfig, model: torch.nn.Module, data: BatchSource, tokenizer: Tokenizer,
                 run_dir: Path, device: torch.device, resume_state: dict | None = None,
                 loss_fn: LossFn = causal_lm_loss, base: dict | None = None, artifact: dict | None = None,
                 dist: DistContext | None = None):
        """base: the `ModelSource.as_dict()` the model started from (`RunConfig.init`). With a base
        and frozen parameters, checkpoints hold only the trainable ones (the base rebuilds the rest).
        artifact: more entries for every model checkpoint, e.g. fine-tuning's {"adapter": record}
        that rebuilds the adapter's structure on the base before its weights are loaded.
        run: a RunConfig, or any config with .train, .seq_len and .to_dict() (fine-tuning's).
        dist: this process's place under torchrun (llmlab.train.distributed); None is one process."""
        self.run, self.cfg = run, run.train
        self.model, self.data, self.tokenizer, self.run_dir, self.device = model, data, tokenizer, run_dir, device
        self.loss_fn, self.base, self.artifact = loss_fn, base, artifact or {}
        self.dist = dist or DistContext()
        self.parallel = choose_parallel(getattr(self.cfg, "parallel", "auto"), self.dist)
        dtype = self.cfg.dtype
        if dtype == "auto":
            dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
        self.amp_dtype = pick_dtype(dtype)
        # float16 has 5 exponent bits: small gradients underflow to 0 unless the loss is scaled up
        # first (and unscaled before the step); the scaler also skips steps whose gradients overflowed
        # and lowers its scale (Micikevicius et al. 2018, "Mixed Precision Training"). bf16 has
        # float32's exponent range and needs none.
        self.scaler = torch.amp.GradScaler(device.type) if self.amp_dtype == torch.float16 else None
        self.max_time = parse_duration(self.cfg.max_time)
        if self.cfg.max_iters is None and self.max_time is None:
            raise LLMLabError("set a budget: --max-iters N and/or --max-time 10m")
        from_shards = resume_state is not None and "sharded_dir" in resume_state
        plain_copy = None
        if resume_state is not None and not from_shards:
            load_model_state(self.model, resume_state)   # whole tensors: before FSDP shards the parameters
            if self.parallel == "fsdp":
                plain_copy = copy.deepcopy(model)          # names the one-process optimizer state below
        # DDP wraps the model; FSDP2 shards it in place, so the optimizer is built after it.
        self.parallel_model = wrap_model(model, self.parallel, self.dist, device, self.amp_dtype)
        self.optimizer = self.make_optimizer(model)
        self.generator = torch.Generator().manual_seed(self.cfg.seed)
        self.state = LoopState()
        if resume_state is not None:
            if from_shards:      # written at any world size: DCP reshards into this one
                sharded.load_sharded(Path(resume_state["sharded_dir"]), self.model, self.optimizer)
            elif plain_copy is not None:
                sharded.shard_full_optimizer_state(self.model, self.optimizer, plain_copy,
                                                   self.make_optimizer(plain_copy), resume_state["optimizer"])
            else:
                self.optimizer.load_state_dict(resume_state["optimizer"])
            if self.scaler is not None and "scaler" in resume_state:
                self.scaler.load_state_dict(resume_state["scaler"])
            self.state = LoopState(**{**resume_state["loop"], "stop_reason": ""})
            restore_rng(resume_state["rng"], self.generator)
        self.forward_model = torch.compile(self.parallel_model) if self.cfg.compile else self.parallel_model
        self.spikes = diagnostics.SpikeDetector(self.cfg.spike_factor)
        self.spikes.recent.extend(self.state.history)
        self.seq_len = run.seq_len
        self.flops_per_token = training_flops_per_token(model, self.seq_len)
        self.head_flops_per_token = head_flops_per_token(model)
        self.peak, self.peak_source = peak_flops(device, self.cfg.peak_tflops)
        self.stop_requested = False

    # ------------------------------------------------------------------ pieces of the loop

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(model, self.cfg.lr, self.cfg.weight_decay, (self.cfg.beta1, self.cfg.beta2),
                              self.device, self.cfg.decay_embeddings)

    def progress_fraction(self) -> float:
        """How far through the schedule we are: by steps, by wall time, whichever is further.
        A --max-time run decays by the clock, so it is not bit-reproducible; an iteration budget is."""
        fractions = []
        horizon = self.cfg.lr_decay_iters or self.cfg.max_iters
        if horizon:
            fractions.append(self.state.step / horizon)
        if self.max_time and not self.cfg.lr_decay_iters:
            fractions.append(self.state.elapsed_s / self.max_time)
        return max(fractions)

    def batch(self, split: str, generator: torch.Generator) -> Batch:
        """This process's rows of the next global micro-batch (all of it without torchrun)."""
        batch = rank_rows(self.data.get_batch(split, self.cfg.batch_size, self.seq_len, generator), self.dist)
        return {k: v.to(self.device) for k, v in batch.items()}

    def say(self, message: str) -> None:
        """Print on rank 0 only: N processes would print every line N times."""
        if self.dist.is_main:
            print(message, file=sys.stderr)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss per target token over `eval_iters` batches per split. The batches come from
        their own generator with a fixed seed: every eval sees the same windows (comparable
        numbers), and evaluating never disturbs the training batch sequence (exact resume)."""
        self.model.eval()
        out = {}
        for split in ("train", "val"):
            g = torch.Generator().manual_seed(self.cfg.seed + 1)
            loss_sum, targets = 0.0, 0
            for _ in range(self.cfg.eval_iters):
                with autocast(self.device, self.amp_dtype):
                    batch_sum, batch_targets = self.loss_fn(self.forward_model, self.batch(split, g))
                loss_sum, targets = loss_sum + float(batch_sum), targets + int(batch_targets)
            loss_sum, targets = all_sum([loss_sum, targets], self.dist, self.device)
            out[f"{split}_eval_loss" if split == "train" else "val_loss"] = loss_sum / max(targets, 1)
        self.model.train()
        return out

    def train_step(self, lr: float, diagnose: bool) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # All micro-batches first: the step's loss is divided by the target tokens of all of them,
        # so each target token weighs the same whichever micro-batch it is in (llmlab.train.loss).
        # Under torchrun each rank holds its rows of every micro-batch; the counts are global, so the
        # step computes the one-process gradient of the global batch (llmlab.train.distributed).
        batches = [self.batch("train", self.generator) for _ in range(self.cfg.grad_accum)]
        targets, inputs = (int(v) for v in all_sum([sum(target_tokens(b) for b in batches),
                                                    sum(b["input_ids"].numel() for b in batches)], self.dist, self.device))
        if targets == 0:
            raise LLMLabError(f"the batches of step {self.state.step} hold no target tokens (every label is -100): "
                              "check the data's masking")
        world, total = self.dist.world_size, 0.0
        for i, batch in enumerate(batches):
            # gradients cross ranks once per step: on the last micro-batch (no_sync before it)
            with gradient_sync(self.parallel_model, self.parallel, sync=i == len(batches) - 1):
                with autocast(self.device, self.amp_dtype):
                    loss = self.loss_fn(self.forward_model, batch)[0] / targets
                # x world: DDP and FSDP average gradients over ranks, and the sum is what is wanted
                scaled = loss * world
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += float(loss.detach())
        # One small all-reduce a step: the global loss and whether any rank wants to stop, so that
        # every rank takes the same decisions (a NaN, a spike, Ctrl-C) at the same step.
        total, stop = all_sum([total, float(self.stop_requested)], self.dist, self.device)
        self.stop_requested = stop > 0
        row: dict[str, float] = {"target_tokens": targets, "input_tokens": inputs}
        if not math.isfinite(total):
            self.optimizer.zero_grad(set_to_none=True)
            return {"train_loss": total, **row}
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)   # true gradients for the diagnostics and the clip
        if diagnose:
            row.update(diagnostics.grad_norms(self.model))
            before = diagnostics.snapshot_weights(self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)   # FSDP2: a DTensor
        # A non-finite gradient norm means some gradient is inf/NaN: stepping would write it into
        # every weight (and the next checkpoint). Skip the update; the loop stops if it keeps happening.
        applied = math.isfinite(norm)
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)      # skips by itself when the gradients overflowed
            self.scaler.update()
            applied = applied and self.scaler.get_scale() >= scale
        elif applied:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if diagnose and applied:
            row.update(diagnostics.update_ratios(self.model, before))
        return {"train_loss": total, "grad_norm": norm, "skipped": not applied, **row}

    def checkpoint_state(self) -> dict:
        self.state.history = list(self.spikes.recent)
        state = {**self.model_payload(), "optimizer": self.optimizer.state_dict(),
                 "loop": vars(self.state).copy(), "rng": capture_rng(self.generator)}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def model_payload(self, with_weights: bool = True) -> dict:
        """What a model checkpoint needs (`llmlab.model.checkpoint.load_run_model` reads it): the
        weights, or, for a run from a base with frozen parameters, only the trainable ones + the base.
        with_weights=False: everything else (a sharded checkpoint stores the tensors itself)."""
        config = self.run.to_dict()
        payload = {"config": config, "model_config": config["model"], "tokenizer": self.tokenizer.to_dict(),
                   **self.artifact}
        if not with_weights:
            return payload
        weights = self.model.state_dict()
        params = list(self.model.named_parameters(remove_duplicate=False))
        if self.base is not None and any(not p.requires_grad for _, p in params):
            # Only what trained: frozen weights, and buffers derived from them (a QLoRA base's
            # NF4 codes), are rebuilt from the base.
            trainable = {n for n, p in params if p.requires_grad}
            weights = {k: v for k, v in weights.items() if k in trainable}
            payload["base"] = self.base
        return {"model": weights, **payload}

    @property
    def sharded_checkpoints(self) -> bool:
        return self.dist.enabled or self.parallel == "fsdp"

    def save(self, name: str = CHECKPOINT) -> None:
        """The latest checkpoint: ckpt.pt from one process; under torchrun a sharded ckpt.dcp/, every
        rank writing its part (llmlab.train.sharded), which any world size can resume."""
        if not self.sharded_checkpoints:
            save_checkpoint(self.run_dir / name, self.checkpoint_state())
            return
        self.state.history = list(self.spikes.recent)
        extra = {k: v for k, v in self.model_payload(with_weights=False).items() if k != "model"}
        extra.update(loop=vars(self.state).copy(), rng=capture_rng(self.generator))
        if self.scaler is not None:
            extra["scaler"] = self.scaler.state_dict()
        sharded.save_sharded(self.run_dir, self.model, self.optimizer, extra, self.dist.is_main)

    def save_best(self) -> None:
        """best.pt holds whole tensors, so `llmlab sample` / `export` read it anywhere; under torchrun
        every rank takes part in gathering them and rank 0 writes."""
        payload = {**self.model_payload(with_weights=not self.sharded_checkpoints), "loop": {"step": self.state.step}}
        if self.sharded_checkpoints:
            payload["model"] = sharded.full_model_state(self.model)
        if self.dist.is_main:
            save_checkpoint(self.run_dir / BEST, payload)

    def write_sample(self) -> str:
        from llmlab.infer.generate import decode_steps  # the same KV-cached loop `llmlab sample` uses
        from llmlab.infer.sampling import SamplingConfig

        if self.cfg.sample_tokens == 0:
            return ""
        model = self.model
        if self.parallel == "fsdp":
            # The sharded model runs forward only with every rank: gather it (a collective) into a
            # plain copy that rank 0 samples from alone.
            state = sharded.full_model_state(self.model)
            if not self.dist.is_main:
                return ""
            model = type(self.model).from_state_dict(self.model.config, state).to(self.device)
        if not self.dist.is_main:
            return ""
        start = self.tokenizer.encode("\n")[:1] if self.tokenizer.kind == "char" else [0]
        config = SamplingConfig(max_new_tokens=self.cfg.sample_tokens, temperature=0.8, top_k=200, seed=self.cfg.seed)
        ids = [int(step.ids[0]) for step in decode_steps(model, [start or [0]], config, overflow="shift")]
        text = self.tokenizer.decode(ids)
        with open(self.run_dir / "samples.txt", "a", encoding="utf-8") as f:
            f.write(f"=== step {self.state.step} (temperature 0.8, top-k 200) ===\n{text}\n\n")
        self.model.train()
        return text

    def _on_sigint(self, signum, frame) -> None:
        if self.stop_requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        if signum == signal.SIGTERM and self.dist.enabled:
            # torchrun sends SIGTERM to every worker when one of them fails: the failed rank cannot
            # take part in a last step or a save, so stop now; the last checkpoint stays as it was.
            raise LLMLabError(f"rank {self.dist.rank}: stopped by SIGTERM (torchrun stops every process when one "
                              f"fails); the last checkpoint in {self.run_dir} is intact: resume from it")
        self.stop_requested = True
        what = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        print(f"\n{what}: finishing this step, saving a checkpoint (Ctrl-C again aborts at once)", file=sys.stderr)

    # ------------------------------------------------------------------ the loop

    def fit(self) -> LoopState:
        cfg, state = self.cfg, self.state
        main = self.dist.is_main
        metrics = MetricsLog(self.run_dir, self.run.to_dict(), resume_step=state.step if state.step else None,
                             tensorboard=cfg.tensorboard, wandb=cfg.wandb) if main else None
        bar = progress(total=cfg.max_iters, initial=state.step, desc="train", unit="step", disable=None if main else True)
        log_plain = bar.disable  # not a terminal: print a line per log step instead of a bar
        # Ctrl-C and SIGTERM (a scheduler's or `kill`'s stop) both finish the step and save.
        previous_int = signal.signal(signal.SIGINT, self._on_sigint)
        previous_term = signal.signal(signal.SIGTERM, self._on_sigint)
        saved_at = state.step
        self.model.train()
        t_start = time.perf_counter() - state.elapsed_s
        try:
            while True:
                # -------- stop conditions, checked at step boundaries
                if cfg.max_iters is not None and state.step >= cfg.max_iters:
                    state.stop_reason = "max_iters"
                elif self.max_time is not None and state.elapsed_s >= self.max_time:
                    state.stop_reason = "max_time"
                elif self.stop_requested:
                    state.stop_reason = "interrupted"
                if state.stop_reason:
                    break
                # -------- one optimizer step
                lr = lr_at(self.progress_fraction(), state.step, cfg.lr, cfg.min_lr, cfg.warmup_iters)
                diagnose = cfg.diag_every > 0 and state.step % cfg.diag_every == 0
                t0 = time.perf_counter()
                row = self.train_step(lr, diagnose)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                if not math.isfinite(row["train_loss"]):
                    state.stop_reason = "nan"
                    raise LLMLabError(
                        f"loss became {row['train_loss']} at step {state.step}: training stopped. The last good "
                        f"checkpoint is kept in {self.run_dir / CHECKPOINT}. Try a lower --lr, --grad-clip 1.0, "
                        "or --dtype float32")
                self._count_skip(row)
                state.step += 1
                state.elapsed_s = time.perf_counter() - t_start
                if self.dist.enabled:   # one clock for all ranks, so --max-time stops them at the same step
                    state.elapsed_s = all_sum([state.elapsed_s], self.dist, self.device)[0] / self.dist.world_size
                # tok/s counts every position the model processed, prompt and padding included
                # (the work done); MFU leaves out the head at positions with no target, which
                # causal_lm_loss skips (in fine-tuning that is most of them)
                inputs, targets = row["input_tokens"], row["target_tokens"]
                tokens_per_s = inputs / dt
                flops = self.flops_per_token * inputs - self.head_flops_per_token * (inputs - targets)
                mfu = flops / dt / (self.peak * self.dist.world_size)
                spike = self.spikes(row["train_loss"])
                row.update(step=state.step, time_s=round(state.elapsed_s, 3), lr=lr,
                           tokens_per_s=round(tokens_per_s, 1), mfu=round(mfu, 5))
                if self.device.type == "cuda":
                    row["max_memory_gb"] = round(torch.cuda.max_memory_allocated(self.device) / 1e9, 3)
                if spike:
                    row["spike"] = True
                    self.say(f"\nwarning: loss spike at step {state.step}: {row['train_loss']:.4f}")
                # -------- evaluate, log, checkpoint, sample
                is_last = (cfg.max_iters is not None and state.step >= cfg.max_iters) or \
                          (self.max_time is not None and state.elapsed_s >= self.max_time) or self.stop_requested
                if state.step % cfg.eval_every == 0 or is_last:
                    row.update(self.evaluate())
                    state.last_val = row["val_loss"]
                    if row["val_loss"] < state.best_val:
                        state.best_val, state.evals_since_best = row["val_loss"], 0
                        self.save_best()
                    else:
                        state.evals_since_best += 1
                    t_eval = time.perf_counter()
                    if main:
                        plot_losses({self.run_dir.name: read_metrics(self.run_dir) + [row]},
                                    self.run_dir / LOSS_PLOT, title=f"{self.run_dir.name}")
                    t_start += time.perf_counter() - t_eval  # plotting is not training time
                    self.say(f"\nstep {state.step}: train {row['train_eval_loss']:.4f}  val {row['val_loss']:.4f}"
                             f"  (best {state.best_val:.4f})  {tokens_per_s:,.0f} tok/s  {state.elapsed_s:.0f}s")
                    if cfg.early_stop_patience and state.evals_since_best >= cfg.early_stop_patience:
                        state.stop_reason = "plateau"
                if main and (state.step % cfg.log_every == 0 or "val_loss" in row or spike):
                    metrics.log(row)
                    if log_plain and "val_loss" not in row:
                        print(f"step {state.step}  loss {row['train_loss']:.4f}  lr {lr:.2e}  "
                              f"{tokens_per_s:,.0f} tok/s  mfu {100 * mfu:.1f}%  {self._eta()}", file=sys.stderr)
                if state.step % cfg.ckpt_every == 0 or is_last or state.stop_reason:
                    self.save()
                    saved_at = state.step
                if cfg.sample_every and state.step % cfg.sample_every == 0:
                    self.write_sample()     # every rank calls it: under FSDP it gathers the weights
                bar.update(1)
                bar.set_postfix_str(f"loss {row['train_loss']:.3f} {tokens_per_s:,.0f} tok/s "
                                    f"mfu {100 * mfu:.1f}% {self._eta()}", refresh=False)
        except RuntimeError as e:
            if not self.dist.enabled:
                raise
            # gloo / NCCL raise when a peer's connection closes: another rank died (its own output
            # says why). Nothing is saved now: the last complete checkpoint is the one to resume.
            raise LLMLabError(f"rank {self.dist.rank}: lost contact with another process at step {state.step} "
                              f"({' '.join(str(e).split())[:160]}); it probably failed: see its output above. "
                              f"The last checkpoint (step {saved_at}) in {self.run_dir} is intact: "
                              f"resume with `llmlab train --resume {self.run_dir}`") from None
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)
            bar.close()
            if metrics is not None:
                metrics.close()
        if saved_at != state.step:
            self.save()
        self.write_sample()
        return state

    def _count_skip(self, row: dict) -> None:
        """Steps whose gradients were not finite were not applied. A float16 run skips a few while
        its loss scale settles; anything else that keeps skipping is diverging: stop before it saves."""
        state = self.state
        if not row.get("skipped"):
            state.skips_in_a_row = 0
            return
        state.skipped_steps += 1
        state.skips_in_a_row += 1
        limit = 20 if self.scaler is not None else 3
        self.say(f"\nwarning: step {state.step + 1}: the gradient norm is {row.get('grad_norm')}; the update was "
                 f"skipped ({state.skips_in_a_row} in a row, stopping at {limit})")
        if state.skips_in_a_row >= limit:
            state.stop_reason = "nan"
            raise LLMLabError(
                f"{limit} steps in a row had non-finite gradients (up to step {state.step + 1}): training stopped, "
                f"nothing was applied or saved from them; the last good checkpoint is {self.run_dir / CHECKPOINT}. "
                "Try a lower --lr, --grad-clip 1.0, or --dtype float32")

    def _eta(self) -> str:
        s, rates = self.state, []
        per_step = s.elapsed_s / max(s.step, 1)
        if self.cfg.max_iters:
            rates.append((self.cfg.max_iters - s.step) * per_step)
        if self.max_time:
            rates.append(self.max_time - s.elapsed_s)
        eta = max(min(rates), 0.0)
        return f"ETA {int(eta // 60)}m{int(eta % 60):02d}s"


def write_run_config(run_dir: Path, run: RunConfig, extra: dict) -> None:
    atomic_write_json(run_dir / "config.json", {"format": "llmlab-run", "version": 1, **run.to_dict(), **extra})
