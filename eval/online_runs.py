"""The run folder of an online session: battle shards, results, rating over time, a plot.

    RUN/config.json           the command's settings (never a password)
    RUN/battles/*.parquet     every finished battle, recorded like a local one (battles/logs.py):
                              `python -m battles.build --logs RUN/battles --out DIR`
    RUN/results.csv           one row per battle: when, opponent, result, turns, rating before/after
    RUN/summary.json          wins, losses, ties, rating first/last/best and its history
    RUN/rating.png            the ladder rating after each battle (the win rate where unrated)

Running the same command into the same folder adds to it: results and the plot cover
every session played there.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

from battles.files import atomic_path, write_atomic
from battles.logs import BattleLogWriter
from eval.online_record import OnlineBattle

COLUMNS = ["n", "time", "battle_id", "room", "agent", "format", "side", "opponent", "result", "turns",
           "end_type", "rating_before", "rating_after"]


class RunFolder:
    """Writes one online session's records and results as battles finish."""

    def __init__(self, out: str | Path, *, token: str, shard_size: int = 10):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.writer = BattleLogWriter(self.out / "battles", prefix=f"battles-{token}", battles_per_shard=shard_size)
        self.results = self.out / "results.csv"
        self.rows = read_results(self.out)

    def save_config(self, config: dict) -> None:
        _write_json(self.out / "config.json", config)

    def add(self, battle: OnlineBattle, *, spec: str, battle_format: str, team_set: str | None,
            id_prefix: str) -> dict:
        """Record one finished battle and append its results row; returns the row."""
        record = battle.record(spec, team_set=team_set, id_prefix=id_prefix, battle_format=battle_format)
        self.writer.add(record)
        row = {
            "n": len(self.rows) + 1,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(battle.ended or time.time())),
            "battle_id": record.id, "room": battle.tag, "agent": spec, "format": battle_format,
            "side": battle.side or "", "opponent": battle.opponent, "result": battle.result,
            "turns": record.turns, "end_type": battle.end_type,
            "rating_before": battle.rating_before, "rating_after": battle.rating_after,
        }
        new = not self.results.exists()
        with self.results.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                w.writeheader()
            w.writerow(row)
            f.flush()
            os.fsync(f.fileno())
        self.rows.append({k: ("" if v is None else str(v)) for k, v in row.items()})
        return row

    def close(self, extra: dict) -> dict:
        """Write the pending records, the summary and the plot; returns the summary."""
        self.writer.close()
        summary = {**summarize(self.rows), **extra}
        _write_json(self.out / "summary.json", summary)
        plot(self.rows, self.out / "rating.png")
        return summary


def read_results(out: Path) -> list[dict]:
    path = Path(out) / "results.csv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def summarize(rows: list[dict]) -> dict:
    """Counts and the rating history over every battle in the folder."""
    results = [r["result"] for r in rows]
    history = [[int(r["n"]), int(r["rating_after"])] for r in rows if r.get("rating_after")]
    ratings = [h[1] for h in history]
    wins, losses, ties = results.count("win"), results.count("loss"), results.count("tie")
    return {
        "battles": len(rows), "wins": wins, "losses": losses, "ties": ties,
        "winrate": round((wins + 0.5 * ties) / len(rows), 4) if rows else None,
        "rating_first": int(rows[0]["rating_before"]) if rows and rows[0].get("rating_before") else None,
        "rating_last": ratings[-1] if ratings else None,
        "rating_best": max(ratings) if ratings else None,
        "rating_history": history,
    }


def plot(rows: list[dict], path: Path) -> None:
    """Rating after each battle; the running win rate when no battle was rated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 3.5))
    rated = [(int(r["n"]), int(r["rating_after"])) for r in rows if r.get("rating_after")]
    if rated and rows[0].get("rating_before"):
        rated.insert(0, (0, int(rows[0]["rating_before"])))  # where the session started
    if rated:
        ax.plot([n for n, _ in rated], [x for _, x in rated], marker="o", ms=3)
        ax.set_ylabel("ladder rating")
        ax.set_title("ladder rating after each battle")
    else:
        score, curve = 0.0, []
        for r in rows:
            score += {"win": 1.0, "tie": 0.5}.get(r["result"], 0.0)
            curve.append(score / int(r["n"]))
        ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3)
        ax.set_ylim(0, 1)
        ax.set_ylabel("win rate so far")
        ax.set_title("win rate (no rated battles)")
    ax.set_xlabel("battle")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")
