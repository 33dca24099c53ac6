"""Search labels: the search bot's visit distribution at each decision, written per battle.

Two players record labels while they play, one JSON file per battle and side, written
atomically when the battle ends (a killed run keeps every finished battle's labels):

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

`attach_labels` then writes the labels into built trajectories as teacher probabilities
(`battles.trajectories.update_teacher`). A label file belongs to a trajectory when the room,
the side and the number of decisions agree, and so do at least 90% of the actions the log
shows (gen 1's partial trapping indexes one choice differently live and in the log); a
decision whose actions differ gets no label. Labels are renormalised over the trajectory's
legal mask. Battles that do not match are counted, never guessed.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from battles.actions import N_ACTIONS
from battles.trajectories import list_shards, read_trajectories, update_teacher

LABEL_SUFFIX = ".labels.json"
# A label needs at least this many simulations per root choice: below it the visit shares are
# the search's first tries (every choice a few times), close to uniform.
MIN_VISITS = 10.0


class LabelWriter:
    """Collects one label per decision for each battle; writes the battle's file at its end.
    A decision searched with fewer than `min_visits` simulations per root choice is recorded
    without a label (all zeros) and counted as shallow."""

    def __init__(self, folder: str | Path, source: str, min_visits: float = MIN_VISITS):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.source = source
        if isinstance(min_visits, bool) or not isinstance(min_visits, int | float) or not min_visits >= 0:
            raise ValueError(f"label_min_visits={min_visits!r} must be a number >= 0 (0 keeps every label)")
        self.min_visits = min_visits
        self._open: dict[str, dict] = {}
        # Room names restart with every server (a resumed stage plays its gen1ou-1 again): each
        # writer's files carry a token of their own, so no battle's labels replace another's.
        self.token = uuid.uuid4().hex[:8]

    def record(self, battle, probs: np.ndarray, action: int, visits: float = math.inf) -> None:
        entry = self._open.setdefault(battle.battle_tag, {"labels": [], "actions": [], "shallow": 0,
                                                          "confident": 0})
        if probs is None:  # not searched: the student was sure enough (label_below)
            probs = np.zeros(N_ACTIONS)
            entry["confident"] += 1
        elif visits < self.min_visits:
            probs = np.zeros_like(probs)
            entry["shallow"] += 1
        entry["labels"].append([round(float(p), 5) for p in probs])
        entry["actions"].append(int(action))

    def finish(self, battle, username: str) -> Path | None:
        entry = self._open.pop(battle.battle_tag, None)
        if entry is None or not battle.player_role:
            return None
        room = battle.battle_tag.removeprefix("battle-")
        path = self.folder / f"{room}-{battle.player_role}-{self.token}{LABEL_SUFFIX}"
        data = {"room": room, "side": battle.player_role, "player": username, "source": self.source, **entry}
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)  # complete or absent
        return path


def read_labels(folder: str | Path) -> dict[tuple[str, str, str], dict]:
    """Label files under `folder`, keyed (room, side, file name): one room and side may have
    several files, from battles of different servers that reused the room's name."""
    out = {}
    for path in sorted(Path(folder).glob(f"*{LABEL_SUFFIX}")):
        data = json.loads(path.read_text())
        out[(data["room"], data["side"], path.name)] = data
    return out


def _room_of(battle_id: str, rooms: set[str]) -> str | None:
    """The room a trajectory's battle id ends with (ids are '<prefix>-<room>' or the room)."""
    for k in range(len(battle_id)):
        if (k == 0 or battle_id[k - 1] == "-") and battle_id[k:] in rooms:
            return battle_id[k:]
    return None


def match_labels(traj, entry: dict, temperature: float = 1.0) -> tuple[np.ndarray | None, str]:
    """The label rows for this trajectory, sharpened by `temperature` (shares ** (1/T)) and
    renormalised over its legal actions, or why not."""
    labels = np.asarray(entry["labels"], np.float64).reshape(-1, N_ACTIONS)
    if len(labels) != len(traj.action):
        return None, "decision_count_mismatch"
    actions = np.asarray(entry["actions"])
    shown = traj.action >= 0
    differ = shown & (actions != traj.action)
    # A few decisions may differ where live play and the log index one choice differently
    # (gen 1's partial trapping: the request's lone 'Fight' against the log's move slots);
    # more than that means this is not the battle the labels were made in.
    if differ.sum() > 0.1 * shown.sum():
        return None, "action_mismatch"
    if temperature != 1.0:
        labels = labels ** (1.0 / temperature)  # zero stays zero
    probs = np.where(traj.legal & ~differ[:, None], labels, 0.0)
    mass = probs.sum(axis=1, keepdims=True)
    # A row left without mass (a forced position, a differing decision) is no label: the
    # loss skips it.
    probs = np.where(mass > 0, probs / np.maximum(mass, 1e-12), 0.0)
    return probs.astype(np.float32), ""


def attach_labels(trajectories: str | Path, labels: str | Path, temperature: float = 1.0) -> dict:
    """Write every matching label file under `labels` into the shards under `trajectories`.

    Visit shares from a short search spread over many choices; `temperature` < 1 sharpens
    them towards the most visited (0.25: shares ** 4, renormalised). Returns counts:
    trajectories labelled, label files used, and why others were not.
    """
    if not temperature > 0:
        raise ValueError(f"label temperature must be > 0, got {temperature}")
    entries = read_labels(labels)
    candidates = defaultdict(list)  # (room, side) -> the files of battles played in such a room
    for key in entries:
        candidates[key[:2]].append(key)
    rooms = {room for room, _ in candidates}
    counts: Counter = Counter()
    used = set()
    for shard in list_shards(trajectories):
        found = {}
        for traj in read_trajectories(shard):
            room = _room_of(traj.battle_id, rooms)
            keys = candidates.get((room, traj.player), []) if room else []
            if not keys:
                counts["unlabelled_trajectories"] += 1
                continue
            # The battle's own file is the one whose decisions match it (count and actions).
            tried = [(key, *match_labels(traj, entries[key], temperature)) for key in keys if key not in used]
            hit = next(((key, probs) for key, probs, _ in tried if probs is not None), None)
            if hit is None:
                counts[tried[0][2] if tried else "label_file_taken"] += 1
                continue
            key, probs = hit
            entry = entries[key]
            source = entry["source"] + (f",T={temperature:g}" if temperature != 1.0 else "")
            found[(traj.battle_id, traj.player)] = (probs, source)
            used.add(key)
        if found:
            counts["labelled"] += update_teacher(shard, found)
    counts["shallow_decisions"] = sum(entries[key].get("shallow", 0) for key in used)
    counts["label_files"] = len(entries)
    counts["label_files_unused"] = len(entries) - len(used)
    return dict(counts)
