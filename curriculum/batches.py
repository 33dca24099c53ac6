"""Training batches counted in decisions rather than windows.

Battles differ in length, so a batch of B windows holds a varying number of decisions to
learn from. `DecisionBatches` gives every step exactly N learnable decisions (`learnable`:
the decisions the losses learn from), which makes a budget of steps a budget of decisions:
the data-mix ablation (curriculum/ablate_data_mix.py) and training on labels (curriculum/distill.py)
count their budgets in it. `counted` wraps a loss to check that it trained on what was drawn.
"""

from __future__ import annotations

import json

import torch

from battles.dataset import DataMix, collate


def learnable(sample: dict) -> torch.Tensor:
    """The decisions of a window the imitation loss learns from (its `bc` mask)."""
    action = sample["action"]
    legal_target = sample["legal"].gather(-1, action.clamp(min=0)[..., None]).squeeze(-1)
    return sample["loss_mask"] & sample["mask"] & (action >= 0) & legal_target


class DecisionBatches:
    """Batches of exactly `decisions` learnable decisions from a DataMix (trainer ResumableData).

    Windows are drawn in the mix's order until the batch holds `decisions`; the window that
    overshoots has its loss mask cut after the last decision needed (its rest is dropped, not
    carried over), so every batch holds the same count whatever the battles' lengths. The
    state holds the mix position and what was drawn: batches, decisions, and per source the
    windows and decisions.
    """

    max_windows = 4096  # a batch that needs more has (nearly) nothing to learn from

    def __init__(self, mix: DataMix, decisions: int):
        if decisions < 1:
            raise ValueError(f"decisions per batch must be >= 1, got {decisions}")
        self.mix, self.decisions = mix, decisions
        self.drawn = {"batches": 0, "decisions": 0, "windows": {n: 0 for n in mix.names},
                      "source_decisions": {n: 0 for n in mix.names}}
        self.batches_at_start = 0

    def __iter__(self):
        samples_of = iter(self.mix)
        self.batches_at_start = self.drawn["batches"]
        while True:
            samples, need, counts = [], self.decisions, []
            while need > 0:
                if len(samples) >= self.max_windows:
                    raise ValueError(f"{self.max_windows} windows of mix {self.mix.weights} hold fewer than "
                                     f"{self.decisions} learnable decisions; its data hides its actions")
                sample = next(samples_of)
                where = torch.nonzero(learnable(sample)).flatten()
                if len(where) > need:
                    sample["loss_mask"] = sample["loss_mask"].clone()
                    sample["loss_mask"][int(where[need]):] = False
                    where = where[:need]
                need -= len(where)
                samples.append(sample)
                counts.append((sample["source"], len(where)))
            for source, n in counts:
                self.drawn["windows"][source] = self.drawn["windows"].get(source, 0) + 1
                self.drawn["source_decisions"][source] = self.drawn["source_decisions"].get(source, 0) + n
            self.drawn["batches"] += 1
            self.drawn["decisions"] += sum(n for _, n in counts)  # counted, not assumed
            yield collate(samples)

    def state_dict(self) -> dict:
        """The mix position and what was drawn so far."""
        return {"mix": self.mix.state_dict(), "decisions_per_batch": self.decisions,
                **json.loads(json.dumps(self.drawn))}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position (same mix and decisions per batch)."""
        if state["decisions_per_batch"] != self.decisions:
            raise ValueError(f"training state has {state['decisions_per_batch']} decisions per batch, this "
                             f"member {self.decisions}; resume with the same budget")
        self.mix.load_state_dict(state["mix"])
        self.drawn = {k: state[k] for k in self.drawn}


def counted(loss_fn):
    """The loss, counting in `.decisions` those it trained on (a check on DecisionBatches)."""

    def loss(model, batch):
        value, metrics = loss_fn(model, batch)
        loss.decisions += float(metrics["decisions"]) if model.training else 0.0
        return value, metrics

    loss.decisions = 0.0
    return loss
