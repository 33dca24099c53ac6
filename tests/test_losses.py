"""The shared losses on hand-made batches: finite and differentiable when a term has nothing to learn from."""

import pytest
import torch

from curriculum.losses import behaviour_cloning, teacher_loss


class Masked(torch.nn.Module):
    """Logits as the policy gives them: illegal actions at the dtype's minimum."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(13))

    def forward(self, tokens, numbers, legal):
        logits = self.w.expand(*legal.shape).clone()
        return logits.masked_fill(~legal, torch.finfo(logits.dtype).min), self.w[:1].expand(legal.shape[:2]) * 0.1


def batch(outcome: float) -> dict:
    legal = torch.zeros(2, 3, 13, dtype=torch.bool)
    legal[..., :4] = True
    teacher = torch.zeros(2, 3, 13)
    teacher[..., 0] = 1.0
    return {"tokens": torch.zeros(2, 3, 1), "numbers": torch.zeros(2, 3, 1), "legal": legal,
            "action": torch.ones(2, 3, dtype=torch.long), "outcome": torch.full((2,), outcome),
            "mask": torch.ones(2, 3, dtype=torch.bool), "loss_mask": torch.ones(2, 3, dtype=torch.bool),
            "teacher": teacher, "has_teacher": torch.tensor([False, False])}


@pytest.mark.parametrize("loss_fn", [teacher_loss(1.0, 1.0, 0.5), behaviour_cloning(0.5, wins_only=True)])
def test_a_batch_without_wins_or_labels_gives_a_finite_loss(loss_fn):
    model = Masked()
    loss, metrics = loss_fn(model, batch(outcome=-1.0))  # lost battles, no teacher labels
    assert torch.isfinite(loss) and torch.isfinite(metrics["loss"])
    loss.backward()
    assert torch.isfinite(model.w.grad).all()


def test_teacher_loss_learns_towards_the_teacher():
    model = Masked()
    b = batch(outcome=1.0)
    b["has_teacher"][:] = True
    loss, metrics = teacher_loss(1.0, 0.0, 0.0)(model, b)
    loss.backward()
    assert metrics["labelled"] == 6 and metrics["kl"] > 0
    assert model.w.grad[0] < 0 and (model.w.grad[1:4] > 0).all()  # a step raises the teacher's action
