"""Comparing trained models in one tournament: its settings, ratings per team set, tables, a plot.

An ablation ends this way: its models (policy checkpoints) and `references` play one
round-robin (`play`, through curriculum/promotion.py's play_tournament: resumable, with
eval/report.py's report in OUT/report), then Bradley–Terry ratings with 95% bootstrap
intervals (eval/report.py's rate_rows) per team set and on all of them say which model is
better and whether the intervals can tell.

    e = EvalConfig(references={"maxbp": "maxbp"}, team_sets=["competitive"])
    result = play(e, e.agents({"a": "runs/a/final", "b": "runs/b/final"}), battle_format="gen1ou", out=OUT)
    ratings = rate_by_team_set(result.rows, {}, ["a", "b", "maxbp"], e.team_sets, n_boot=e.bootstrap)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agents.registry import parse_spec
from curriculum.promotion import TournamentResult, play_tournament, write_tournament_report
from eval.ratings import Ratings
from eval.report import rate_rows

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*")


@dataclass
class EvalConfig:
    """The tournament of every compared model and the references."""

    references: dict[str, str] = field(default_factory=lambda: {
        "tactician": "tactician", "bestdamage": "bestdamage", "maxbp": "maxbp"})
    team_sets: list[str] = field(default_factory=list)  # empty: the recipe's own team set
    battles_per_pair: int = 40  # per team set; a multiple of 4
    anchor: str = ""  # a reference pinned at 1500 in every column ("": the mean is 1500)
    policy_params: str = ""  # appended to every policy:PATH, e.g. temperature=0.5
    concurrency: int = 16
    bootstrap: int = 1000
    seed: int = 0
    max_battles: int = 0  # >0: play at most this many battles per invocation

    def __post_init__(self) -> None:
        bad = [r for r in self.references if not _NAME.fullmatch(r)]
        if bad:
            raise ValueError(f"eval.references {bad}: names of letters, digits and _+- only")
        for spec in self.references.values():
            parse_spec(spec)  # ValueError naming the spec and the known kinds
        if self.anchor and self.anchor not in self.references:
            raise ValueError(f"eval.anchor={self.anchor!r} is not one of eval.references "
                             f"{sorted(self.references)}; name one or set eval.anchor=''")
        if self.battles_per_pair < 4 or self.battles_per_pair % 4:
            raise ValueError(f"eval.battles_per_pair={self.battles_per_pair}: must be a positive multiple of 4")
        if self.concurrency < 1 or min(self.bootstrap, self.max_battles) < 0:
            raise ValueError(f"eval.concurrency={self.concurrency} must be >= 1, eval.bootstrap={self.bootstrap} "
                             f"and eval.max_battles={self.max_battles} >= 0")

    def agents(self, checkpoints: dict[str, str]) -> dict[str, str]:
        """Tournament name -> spec: each checkpoint as a policy (with `policy_params`), then the references."""
        extra = f",{self.policy_params}" if self.policy_params else ""
        return {**{name: f"policy:{path}{extra}" for name, path in checkpoints.items()}, **self.references}


def play(e: EvalConfig, agents: dict[str, str], *, battle_format: str, out: Path, title: str,
         team_sets: list[str] | None = None, server=None) -> TournamentResult:
    """Play (or resume) the round-robin of `agents` on `team_sets` (default `e.team_sets`); with a
    battle finished, eval's report of it in OUT/report."""
    team_sets = team_sets or e.team_sets
    print(f"tournament: {', '.join(agents)}; {e.battles_per_pair} battles per pair on {', '.join(team_sets)}",
          flush=True)
    result = play_tournament(agents, battle_format=battle_format, team_set=team_sets,
                             battles_per_pair=e.battles_per_pair, out=out, seed=e.seed, concurrency=e.concurrency,
                             bootstrap=e.bootstrap, anchor=e.anchor, max_battles=e.max_battles, server=server)
    print(f"tournament: {result.played_now} battles played now, {result.finished}/{result.planned} finished, "
          f"{result.errors} errors", flush=True)
    if result.finished:
        write_tournament_report(result, list(agents), n_boot=e.bootstrap, seed=e.seed, anchor=e.anchor, title=title)
    return result


def rate_by_team_set(rows: list[dict], label: dict[str, str], names: list[str], team_sets: list[str], *,
                     n_boot: int = 1000, seed: int = 0, anchor: str = "") -> dict[str, Ratings]:
    """Ratings of `names` on each team set and on all ('all'), agents renamed by `label`.

    Games inside one label (two seeds of one mix) say nothing about it and are left out; the
    bootstrap resamples battles, so pooled seeds show battle noise, not seed-to-seed spread.
    """
    kept = [{**r, "agent_a": a, "agent_b": b} for r in rows if not r["error"]
            for a, b in [(label.get(r["agent_a"], r["agent_a"]), label.get(r["agent_b"], r["agent_b"]))] if a != b]
    subsets = {**{t: [r for r in kept if r["team_set"] == t] for t in team_sets}, "all": kept}
    return {cond: rate_rows(sub, names, n_boot=n_boot, seed=seed, anchor=anchor or None)
            for cond, sub in subsets.items() if sub}


def ratings_table(ratings: dict[str, Ratings], names: list[str], what: dict[str, str]) -> str:
    """Markdown: one row per name, one column per condition, rating [95% interval]."""
    lines = ["| agent | what | " + " | ".join(ratings) + " |", "| --- | --- |" + " ---: |" * len(ratings)]
    for name in names:
        cells = []
        for r in ratings.values():
            i = r.names.index(name)
            cells.append("–" if np.isnan(r.rating[i]) else f"{r.rating[i]:.0f} [{r.lo[i]:.0f}, {r.hi[i]:.0f}]")
        lines.append(f"| {name} | {what.get(name, '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def separations(ratings: dict[str, Ratings], models: list[str]) -> list[str]:
    """Per condition: the models in rating order, and which overlap the best one's interval."""
    notes = []
    for cond, r in ratings.items():
        at = {m: r.names.index(m) for m in models}
        order = sorted(models, key=lambda m: -r.rating[at[m]])
        tied = [m for m in order[1:] if r.hi[at[m]] >= r.lo[at[order[0]]]]
        notes.append(f"- **{cond}**: {' > '.join(order)}. " + (
            f"Intervals overlap the best ({order[0]}) for {', '.join(tied)}: not separable at 95%." if tied
            else f"{order[0]}'s interval lies above every other's."))
    return notes


def team_set_shifts(ratings: dict[str, Ratings], names: list[str], team_sets: list[str]) -> list[str]:
    """Agents whose ratings on two team sets have disjoint intervals (one anchor: comparable)."""
    sets = [t for t in team_sets if t in ratings]
    found = []
    for name in names:
        for k, a in enumerate(sets):
            for b in sets[k + 1:]:
                ra, rb = ratings[a], ratings[b]
                i, j = ra.names.index(name), rb.names.index(name)
                if ra.hi[i] < rb.lo[j] or rb.hi[j] < ra.lo[i]:
                    found.append(f"{name}: {a} {ra.rating[i]:.0f} vs {b} {rb.rating[j]:.0f}")
    return found


def compare(ratings: Ratings, a: str, b: str) -> str:
    """One sentence: a against b in rating (intervals) and head to head."""
    i, j = ratings.names.index(a), ratings.names.index(b)
    gap = ratings.rating[i] - ratings.rating[j]
    apart = ratings.lo[i] > ratings.hi[j] or ratings.lo[j] > ratings.hi[i]
    h2h = ratings.matrix
    cell = (f"; head to head {h2h.rate[i, j]:.2f} [{h2h.lo[i, j]:.2f}, {h2h.hi[i, j]:.2f}] over {h2h.games[i, j]} battles"
            if h2h.games[i, j] else "")
    verdict = "intervals apart: a real difference" if apart else "intervals overlap: no clear difference"
    return f"{a} vs {b}: {gap:+.0f} rating points ({verdict}){cell}."


def plot_by_condition(ratings: dict[str, Ratings], names: list[str], path: Path, title: str, anchor: str) -> Path:
    """Rating of each name per condition (team set, and all), with its bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.5))
    width = 0.8 / len(ratings)
    for k, (cond, r) in enumerate(ratings.items()):
        idx = [r.names.index(n) for n in names]
        y = r.rating[idx]
        ax.errorbar(np.arange(len(names)) - 0.4 + width * (k + 0.5), y, fmt="o", capsize=3, label=cond,
                    yerr=np.nan_to_num(np.vstack([y - r.lo[idx], r.hi[idx] - y])),
                    color="black" if cond == "all" else None)
    ax.axhline(1500, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(f"rating ({anchor + ' = 1500' if anchor else 'mean 1500'}), 95% interval")
    ax.set_title(title)
    ax.legend(title="team set", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
