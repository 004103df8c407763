"""What the trainer minimises: a loss function over a batch dict.

A batch is a dict of tensors:
    input_ids  (B, T)   token ids fed to the model
    labels     (B, T)   the target at each position; -100 marks a position with no target
                        (a padded slot, or a prompt token in supervised fine-tuning)
    attn_mask  (B, 1, T, T) bool, optional: e.g. llmlab.model.masks.document_mask for packed examples
    positions  (B, T), optional: e.g. positions restarting at each packed example

A loss function returns (sum of the per-token losses, number of target tokens), not a mean: the
trainer divides by the target tokens of the *whole optimizer step*, so micro-batches holding
different numbers of targets weigh per token, as one big batch would. (A mean per micro-batch,
then averaged, over-weights the tokens of short micro-batches; for pretraining windows, where
every position is a target, both are the same.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Batch = dict[str, torch.Tensor]
LossFn = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, torch.Tensor]]


def causal_lm_loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy, summed over the target tokens; and how many there were.

    When some positions have no target (a masked prompt, padding), the output head runs only at the
    target positions (`logits_mask`): in supervised fine-tuning most positions are prompt, and the
    (B, T, vocab) logits are the largest activations of the step. Pretraining windows, where every
    position is a target, take the plain path (static shapes, which torch.compile prefers)."""
    labels = batch["labels"]
    targets = labels != -100
    kwargs = {"positions": batch.get("positions"), "attn_mask": batch.get("attn_mask")}
    if bool(targets.all()):
        logits, labels = model(batch["input_ids"], **kwargs)["logits"].flatten(0, 1), labels.flatten()
    else:
        logits, labels = model(batch["input_ids"], logits_mask=targets, **kwargs)["logits"], labels[targets]
    loss_sum = F.cross_entropy(logits.float(), labels, reduction="sum")
    return loss_sum, targets.sum()


def target_tokens(batch: Batch) -> int:
    return int((batch["labels"] != -100).sum())
