"""`policy:PATH,labels=DIR`: a policy player whose positions a search bot labels as it plays.

Its labels are recorded with the battle, keyed by room, player, side and decision number
(agents/search_labels.py's writer, a leaf module that the search bot writes through too); the
label set's format and its join into trajectories at build time are battles/labels.py's.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np

from agents.policy import PolicyPlayer
from agents.search import SearchPlayer
from agents.search_labels import MIN_VISITS, LabelWriter
from battles.live import order_to_index, view_from_battle


def _chosen_index(order, battle) -> int:
    try:
        return order_to_index(order, battle, view_from_battle(battle))
    except ValueError:
        return -1


class SearchLabelledPolicy(PolicyPlayer):
    """A policy player whose decisions are also searched (all, or those it is unsure of: `label_below`);
    the search's shares are written as labels."""

    def __init__(self, checkpoint: str, *, labels: str, label_ms: int = 100, label_samples: int = 2,
                 label_seed: int | None = None, label_min_visits: float = MIN_VISITS, label_below: float = 1.0,
                 **kwargs):
        if isinstance(label_below, bool) or not isinstance(label_below, int | float) or not 0 < label_below <= 1:
            raise ValueError(f"label_below={label_below!r} must be in (0, 1]: search positions where the student's "
                             "top action is less likely than this (1 searches every position)")
        self.label_below = float(label_below)
        self._confidence: dict[str, float] = {}  # battle -> top action probability of its last decision

        fmt = kwargs.get("battle_format")
        # Not connected to any server: it only searches positions this player hands it.
        self.labeller = SearchPlayer(ms=label_ms, samples=label_samples, seed=label_seed, battle_format=fmt,
                                     start_listening=False, log_level=40)
        self.label_writer = LabelWriter(labels, f"search:ms={label_ms},samples={label_samples}", label_min_visits)
        super().__init__(checkpoint, **kwargs)

    async def choose_move(self, battle):
        rqid = battle.last_request.get("rqid")
        seen = self._last.get(battle.battle_tag)
        if not battle.last_request.get("side") or (seen is not None and rqid is not None and seen[0] == rqid):
            return await super().choose_move(battle)  # a resent request: labelled already
        order = await super().choose_move(battle)
        probs, visits = None, math.inf
        sure = self._confidence.pop(battle.battle_tag, 0.0)
        if self.label_below >= 1 or sure < self.label_below:  # 1: every position, forced ones included
            probs, visits = await asyncio.to_thread(self.labeller.search_policy, battle)
        self.label_writer.record(battle, probs, _chosen_index(order, battle), visits)
        return order

    def _pick(self, logits: np.ndarray, legal: np.ndarray) -> np.ndarray:
        """The policy's choice, noting how sure it was (its top probability over legal actions) when
        only the positions it is unsure of are searched."""
        if self.label_below < 1:
            z = np.where(legal, logits, -np.inf)
            z = np.exp(z - z.max(axis=1, keepdims=True))
            top = z.max(axis=1) / z.sum(axis=1)
            self._confidence.update(zip((q[0] for q in self._batch), top.tolist()))  # the pass's battles
        return super()._pick(logits, legal)

    def _battle_finished_callback(self, battle) -> None:
        self.label_writer.finish(battle, self.username)
        super()._battle_finished_callback(battle)

    def close(self) -> None:
        self.labeller.close()
