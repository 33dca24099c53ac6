"""A teacher's games: the teacher against itself and sparring heuristics on every team set, in
rounds, until enough of its decisions exist, built into trajectories (the imitation study and
scripts/best_model.py learn from them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from battles.build import build
from battles.logs import count_battles
from battles.shards import list_shards
from eval.match import Match, folder_name


@dataclass
class TeacherGames:
    """How a teacher's games are played."""

    format: str = "gen1ou"
    team_sets: list[str] = field(default_factory=lambda: ["competitive", "replay", "variety"])
    sparring: list[str] = field(default_factory=lambda: ["maxbp", "bestdamage", "heuristic"])
    mirror_share: float = 0.75  # of each round's battles, the teacher against itself
    round_battles: int = 600  # battles per round of play, over pairings and team sets
    concurrency: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.mirror_share <= 1.0:
            raise ValueError(f"mirror_share={self.mirror_share}: must be in [0, 1]")


def teacher_decisions(traj_dir: Path, teacher: str) -> int:
    """Decisions the teacher made in the built trajectories (training and held-out)."""
    total = 0
    for shard in list_shards(traj_dir) if traj_dir.exists() else []:
        table = pq.read_table(shard, columns=["agent", "n_decisions"])
        agent = np.array(table["agent"].to_pylist(), dtype=object)
        total += int(np.asarray(table["n_decisions"])[agent == teacher].sum())
    return total


def play_teacher_games(cfg: TeacherGames, run: Path, teacher: str, want: float, servers) -> dict:
    """Rounds of the teacher's games (RUN/games/TEACHER/round-k/) until its decisions in the built
    trajectories (RUN/trajectories/TEACHER/) reach `want`; rounds already played are kept."""
    games, traj = run / "games" / folder_name(teacher), run / "trajectories" / folder_name(teacher)
    pairings = [(teacher, cfg.mirror_share)] + [
        (s, (1.0 - cfg.mirror_share) / max(len(cfg.sparring), 1)) for s in cfg.sparring]
    k = 0
    while True:
        have = teacher_decisions(traj, teacher)
        if have >= want:
            break
        round_dir = games / f"round-{k:03d}"
        for i, (opponent, share) in enumerate(pairings):
            per_set = max(1, round(cfg.round_battles * share / len(cfg.team_sets)))
            for j, team_set in enumerate(cfg.team_sets):
                out = round_dir / f"{folder_name(opponent)}-{team_set}"
                done = count_battles(out) if out.exists() else 0
                if done < per_set and share > 0:
                    Match(teacher, opponent, battle_format=cfg.format, team_set=team_set, n=per_set - done,
                          out_dir=out, concurrency=cfg.concurrency, seed=cfg.seed + 1000 * k + 10 * i + j + done,
                          server=servers(), progress=False).run()
        build([round_dir], traj, progress=False)
        print(f"play: {teacher} round {k} ({count_battles(round_dir)} battles): "
              f"{teacher_decisions(traj, teacher):,} teacher decisions "
              f"(want {want:,.0f})", flush=True)
        k += 1
    return {"teacher": teacher, "decisions": teacher_decisions(traj, teacher), "rounds": k,
            "battles": count_battles(games) if games.exists() else 0}
