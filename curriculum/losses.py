"""The losses every recipe trains with, written once.

A batch holds windows of decisions (battles.dataset.collate); a decision is learned from when
its loss mask is on, its action is known (a log may hide it: -1) and legal (`learnable`).

    behaviour_cloning   cross-entropy on the action taken, optionally only in won battles
                        (`wins_only`) or advantage-weighted (`awr_beta` > 0: each decision's
                        weight is exp((outcome - V(s)) / beta), clipped at `awr_max_weight`,
                        V the model's own detached value head), + value_weight * value loss
    teacher_loss        kl_weight * KL(teacher || model) over the legal actions (decisions with
                        a label) + win_weight * cross-entropy on the own actions of won battles
                        + value_weight * value loss
    value loss          (V(s) - outcome)^2 over every scored decision, won or lost

Each returns `loss_fn(model, batch) -> (loss, metrics)`, the shape curriculum/trainer.py takes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from curriculum.batches import learnable


def _zero(value: torch.Tensor) -> torch.Tensor:
    """A zero loss still tied to the model's graph. From the value head: the logits hold the dtype's
    minimum on illegal actions, and their sum times zero would be NaN."""
    return value.sum() * 0.0


def _value_loss(value: torch.Tensor, outcome: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(value[scored].float(), outcome[scored].float()) if scored.any() else _zero(value)


def _imitation(logits, value, outcome, action, chosen, awr_beta: float, awr_max_weight: float):
    """(policy loss, per-decision weights) of imitating `action` where `chosen`."""
    ce = F.cross_entropy(logits[chosen].float(), action[chosen], reduction="none")
    if awr_beta > 0 and ce.numel():
        # The critic is the model's own value head, detached: decisions that went better
        # than expected are imitated more, worse ones less (advantage-weighted regression).
        weight = torch.exp((outcome - value.detach())[chosen].float() / awr_beta).clamp(max=awr_max_weight)
        return (weight * ce).sum() / weight.sum().clamp(min=1e-8), weight
    return (ce.mean() if ce.numel() else _zero(value)), torch.ones_like(ce)


def _accuracy(logits, target, where) -> torch.Tensor:
    return (logits[where].argmax(-1) == target[where]).float().mean() if where.any() else torch.tensor(0.0)


def behaviour_cloning(value_weight: float, awr_beta: float = 0.0, awr_max_weight: float = 20.0,
                      wins_only: bool = False):
    """Masked behaviour cloning (all decisions, or won battles' only; optionally advantage-weighted)
    + value regression. The value head learns from every decision, so that wins-only imitation
    does not teach it that every position is won."""

    def loss_fn(model, batch):
        logits, value = model(batch["tokens"], batch["numbers"], batch["legal"])  # (B,T,13), (B,T)
        action = batch["action"]  # (B, T), -1 where the log hides the choice or padding
        outcome = batch["outcome"][:, None].expand_as(value)  # (B, T)
        scored = batch["loss_mask"] & batch["mask"]
        learn = learnable(batch)  # a recorded action the mask calls illegal would be an encoder bug
        bc = learn & (batch["outcome"] > 0)[:, None] if wins_only else learn
        policy_loss, weight = _imitation(logits, value, outcome, action, bc, awr_beta, awr_max_weight)
        value_loss = _value_loss(value, outcome, scored)
        loss = policy_loss + value_weight * value_loss
        with torch.no_grad():
            n = weight.numel()
            ess = (weight.sum() ** 2 / (weight ** 2).sum().clamp(min=1e-8) / n) if n else 0.0
            illegal = scored & (action >= 0) & ~learn
        return loss, {"loss": loss.detach(), "policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(),
                      "acc": _accuracy(logits, action, bc), "awr_ess": float(ess), "decisions": float(bc.sum()),
                      "illegal_targets": float(illegal.sum())}

    return loss_fn


def teacher_loss(kl_weight: float, win_weight: float, value_weight: float):
    """KL(teacher || model) over the legal actions + imitation of won battles' own actions + value."""

    def loss_fn(model, batch):
        logits, value = model(batch["tokens"], batch["numbers"], batch["legal"])  # (B,T,13), (B,T)
        action = batch["action"]  # (B, T); -1 where hidden or padding
        outcome = batch["outcome"][:, None].expand_as(value)  # (B, T)
        scored = batch["loss_mask"] & batch["mask"]
        # The decisions DecisionBatches counts, so that a budget of decisions is a budget of what
        # the loss learns from.
        learn = learnable(batch)
        teacher = batch["teacher"].float()  # (B, T, 13), zero on illegal actions
        labelled = learn & batch["has_teacher"][:, None] & (teacher.sum(-1) > 0)
        won = learn & (batch["outcome"] > 0)[:, None]
        if labelled.any():
            p = teacher[labelled]  # (N, 13)
            logq = torch.log_softmax(logits[labelled].float(), dim=-1)  # illegal logits sit at the dtype's minimum
            # KL(p || q) = sum_a p (log p - log q), over actions the teacher gives mass only.
            terms = torch.where(p > 0, p * (torch.log(p.clamp(min=1e-12)) - logq), torch.zeros_like(p))
            kl = terms.sum(-1).mean()
        else:
            kl = _zero(value)
        win_ce, _ = _imitation(logits, value, outcome, action, won, 0.0, 0.0)
        value_loss = _value_loss(value, outcome, scored)
        loss = kl_weight * kl + win_weight * win_ce + value_weight * value_loss
        with torch.no_grad():
            agree = _accuracy(logits, teacher.argmax(-1), labelled)
        return loss, {"loss": loss.detach(), "kl": kl.detach(), "win_ce": win_ce.detach(),
                      "value_loss": value_loss.detach(), "coach_agree": agree,
                      "labelled": float(labelled.sum()), "won": float(won.sum()), "decisions": float(learn.sum())}

    return loss_fn
