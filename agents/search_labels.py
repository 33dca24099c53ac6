"""Search labels: the search bot's visit distribution at each decision, recorded with the battle.

Two players record labels while they play, into a label set (battles/labels.py): one labels
file per battle and side, written atomically when the battle ends (a killed run keeps every
finished battle's labels), and the set's manifest when the writer starts:

- `policy:PATH,labels=DIR,label_ms=100` (`agents.labelled_policy.SearchLabelledPolicy`): the student plays as
  usual, and a search bot searches every position the student faces; its visit shares
  are the label (the position the student really faced, not a replay of it). With
  `label_below=P` only positions where the student's top action has probability below P
  are searched: a search costs a second or more, and a student that already agrees with
  its teacher on most positions learns from the ones it is unsure of. The others are
  recorded without a label and counted (`confident` in the file).
- `search:ms=1000,labels=DIR`: the search bot records its own visit shares: expert
  demonstrations with a full distribution, not just the chosen action.

A label needs a search deep enough to mean something: `label_min_visits` simulations per
root choice (default 10). A shorter search's shares are its first tries, every choice a few
times, close to uniform, and a student trained on them learns to play at random: in a stage 3
run with 50 ms labels (a median 41 simulations over up to 9 choices) the child won 4% of 80 battles against
bestdamage, where its parent won 30% and the same run trained without the labels 33%. Such a
decision gets no label and is counted (`shallow` in the file).

Each label is keyed exactly: the battle's room and the player's name (both in the battle's
record, battles/logs.py), the side, and the decision's number k in that side's sequence of
requests, which is the k-th choice the battle's input log records for the side. A request sent
again for the same decision (the same request id, or a new request with no battle message in
between, after an unavailable choice) replaces that decision's label instead of adding one.
The builder joins them (`battles.build.build(..., labels=[DIR])`).
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np

from battles.actions import N_ACTIONS
from battles.labels import MANIFEST, SUFFIX, write_entries, write_manifest

# A label needs at least this many simulations per root choice: below it the visit shares are
# the search's first tries (every choice a few times), close to uniform.
MIN_VISITS = 10.0


def _moment(battle) -> tuple:
    """What identifies one decision of a battle: its request id and how many protocol messages came
    before it (poke-env keeps them all; a request sent again follows no new message)."""
    return battle.last_request.get("rqid"), len(getattr(battle, "_replay_data", ()))


class LabelWriter:
    """Collects one label per decision for each battle; writes the battle's labels file at its end.
    A decision searched with fewer than `min_visits` simulations per root choice is recorded
    without a label (all zeros) and counted as shallow."""

    def __init__(self, folder: str | Path, source: str, min_visits: float = MIN_VISITS):
        if isinstance(min_visits, bool) or not isinstance(min_visits, int | float) or not min_visits >= 0:
            raise ValueError(f"label_min_visits={min_visits!r} must be a number >= 0 (0 keeps every label)")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.source = source
        self.min_visits = min_visits
        if not (self.folder / MANIFEST).is_file():  # the first writer of the set names it
            write_manifest(self.folder, "search", source, min_visits=min_visits)
        self._open: dict[str, dict] = {}
        self._moments: dict[str, tuple] = {}  # battle -> the moment of its last recorded decision
        # Room names restart with every server (a resumed stage plays its gen1ou-1 again): each
        # writer's files carry a token of their own, so no battle's labels replace another's.
        self.token = uuid.uuid4().hex[:8]

    def record(self, battle, probs: np.ndarray | None, action: int, visits: float = math.inf) -> None:
        """Record the label of the battle's current decision (None: not searched, the player was sure)."""
        entry = self._open.setdefault(battle.battle_tag, {"labels": [], "actions": [], "shallow": [],
                                                          "confident": []})
        rqid, seen = _moment(battle)
        last = self._moments.get(battle.battle_tag)
        if last is not None and ((rqid is not None and rqid == last[0]) or seen == last[1]):
            for values in entry.values():  # the same decision, asked again: its label is replaced
                values.pop()
        self._moments[battle.battle_tag] = (rqid, seen)
        confident = probs is None
        shallow = not confident and visits < self.min_visits
        label = np.zeros(N_ACTIONS) if confident or shallow else probs
        entry["labels"].append([round(float(p), 5) for p in label])
        entry["actions"].append(int(action))
        entry["shallow"].append(shallow)
        entry["confident"].append(confident)

    def finish(self, battle, username: str) -> Path | None:
        """Write the battle's labels file (complete or absent); its path."""
        entry = self._open.pop(battle.battle_tag, None)
        self._moments.pop(battle.battle_tag, None)
        if entry is None or not battle.player_role:
            return None
        room = battle.battle_tag.removeprefix("battle-")
        data = {"room": room, "player": username, "side": battle.player_role, "source": self.source,
                "labels": entry["labels"], "actions": entry["actions"], "shallow": sum(entry["shallow"]),
                "confident": sum(entry["confident"])}
        return write_entries(self.folder / f"{room}-{battle.player_role}-{self.token}{SUFFIX}", [data])

