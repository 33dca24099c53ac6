"""Label sets: teacher distributions kept as data, beside the battles they label.

A label set is a folder (one per labeller and version, never rewritten by another):

    manifest.json        what made the labels: kind (search | coach), source, created, ...
    *.labels.json        {"entries": [entry, ...]}, each file written atomically

An entry labels one side of one battle, decision by decision:

    {"side": "p1", "source": "search:ms=100,samples=1",
     "battle_id": "q1a2b-gen1ou-..."          # labels made over built trajectories (the coach)
     or "room": "gen1ou-...", "player": NAME,  # labels recorded live, before the record had its id
     "labels": [[13 shares], ...],             # labels[k]: the side's decision k (all zero: none)
     "actions": [...]}                         # optional: the action taken live at decision k

Decision k is the side's k-th decision: the k-th request it answered live, the k-th choice the
battle's input log records for it, the k-th row of its trajectory. The builder (battles/build.py)
puts label k in row k when that row's decision was paired with the side's k-th recorded choice
(or the battle recorded no choices: a replay's rows are its only order). A label that finds no
row is counted by reason, never dropped silently.
"""

from __future__ import annotations

import datetime
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from battles.actions import N_ACTIONS
from battles.files import write_json
from battles.protocol import to_id

FORMAT = "qabra-labels/1"
MANIFEST = "manifest.json"
SUFFIX = ".labels.json"


def write_manifest(folder: str | Path, kind: str, source: str, **info) -> dict:
    """Write (or replace) a label set's manifest: its format, kind, source, creation time and `info`."""
    data = {"format": FORMAT, "kind": kind, "source": source,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **info}
    write_json(Path(folder) / MANIFEST, data)
    return data


def read_manifest(folder: str | Path) -> dict:
    """A label set's manifest; a clear error when the folder is not a label set."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a label set (no {MANIFEST}); give a folder a labeller wrote")
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: label set format {data.get('format')!r}, this Qabra reads {FORMAT!r}")
    return data


def write_entries(path: str | Path, entries: list[dict]) -> Path:
    """One labels file (complete or absent)."""
    assert str(path).endswith(SUFFIX), path
    return write_json(path, {"entries": entries}, indent=None)


def _key(entry: dict) -> tuple:
    if entry.get("battle_id"):
        return ("id", entry["battle_id"], entry["side"])
    return ("room", entry["room"], to_id(entry["player"]), entry["side"])


def labelled_sides(folder: str | Path) -> set[tuple[str, str]]:
    """(battle id, side) of every entry in `folder` that names its battle by id."""
    return {(e["battle_id"], e["side"]) for path in Path(folder).glob(f"*{SUFFIX}")
            for e in json.loads(path.read_text())["entries"] if e.get("battle_id")}


class LabelSet:
    """The entries of one or more label set folders, found by the battle and side they label.

    Two entries with one key (the same battle side labelled twice) label nothing: both are
    counted as ambiguous, neither is guessed between.
    """

    def __init__(self, folders: str | Path | Iterable[str | Path]):
        folders = [folders] if isinstance(folders, str | Path) else list(folders)
        self.manifests = [read_manifest(f) for f in folders]
        self.entries: dict[tuple, dict] = {}
        self.ambiguous: set[tuple] = set()
        for folder in folders:
            for path in sorted(Path(folder).glob(f"*{SUFFIX}")):
                for entry in json.loads(path.read_text())["entries"]:
                    key = _key(entry)
                    if key in self.entries or key in self.ambiguous:
                        self.entries.pop(key, None)
                        self.ambiguous.add(key)
                        continue
                    entry["labels"] = np.asarray(entry["labels"], np.float32).reshape(-1, N_ACTIONS)
                    self.entries[key] = entry

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, battle_id: str, side: str, room: str | None = None, player: str | None = None) -> dict | None:
        """The entry of this battle side (by its id, or by the room and player it was played in)."""
        for key in (("id", battle_id, side), ("room", room, to_id(player or ""), side) if room else None):
            if key is not None and key in self.entries:
                return self.entries[key]
        return None


def join(entry: dict, legal: np.ndarray, action: np.ndarray, paired: np.ndarray, temperature: float,
         counts: Counter) -> np.ndarray:
    """Teacher probabilities (T, 13) for one trajectory from its entry; reasons counted in `counts`.

    Label k goes to row k when `paired[k]` (row k is the side's decision k); shares are
    sharpened by `temperature` (shares ** (1/T)) and renormalised over the row's legal actions.
    A label whose live action differs from the row's (gen 1's partial trapping indexes one
    choice differently live and in the log) is left out: its mass may sit on another slot.
    """
    labels = entry["labels"]
    n = len(legal)
    teacher = np.zeros((n, N_ACTIONS), np.float32)
    live = entry.get("actions")
    for k, shares in enumerate(labels):
        if not shares.any():
            counts["decisions_without_label"] += 1  # nothing was searched, or too shallowly
        elif k >= n:
            counts["unmatched:no_such_decision"] += 1
        elif not paired[k]:
            counts["unmatched:decision_not_paired_with_choice"] += 1
        elif live is not None and live[k] >= 0 and action[k] >= 0 and live[k] != action[k]:
            counts["unmatched:live_action_differs"] += 1
        else:
            p = np.where(legal[k], shares.astype(np.float64) ** (1.0 / temperature), 0.0)
            if p.sum() <= 0:
                counts["unmatched:mass_on_illegal_actions"] += 1
                continue
            teacher[k] = p / p.sum()
            counts["decisions_labelled"] += 1
    return teacher
