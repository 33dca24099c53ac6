"""Promotion: a stage's child replaces its parent only when a tournament says it is better.

After a stage trains, the child, the parent and the stage's opponents play a round-robin
tournament on the stage's format and team set (eval/tournament.py). Bradley–Terry ratings
with bootstrap intervals (eval/ratings.py) then decide:

    lower_above_parent  (default) the child's rating beats the parent's, and the lower end of
                        the child's interval lies above the parent's point estimate
    disjoint            stricter: the lower end of the child's interval lies above the upper
                        end of the parent's
    gain                the bootstrap interval of the gain (child minus parent, both rated on
                        the same resampled battles) excludes zero

`play_tournament` is the curriculum's one way into the tournament (promotion and the
ablations' comparisons, curriculum/comparison.py, play through it); `decide` is a pure
function of the ratings, so the rule can be tested on constructed results.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from eval.ratings import Ratings

RULES = ("lower_above_parent", "disjoint", "gain")
CHILD, PARENT = "child", "parent"


@dataclass
class Decision:
    """The promotion verdict, with the numbers behind it."""

    promoted: bool
    reason: str
    rule: str
    level: float
    child: dict  # rating, lo, hi, battles
    parent: dict
    gain: float  # child rating - parent rating (Elo points)
    head_to_head: dict  # the child's score against the parent
    win_rates: dict = field(default_factory=dict)  # opponent -> {child: {...}, parent: {...}}
    gain_ci: list = field(default_factory=list)  # the bootstrap interval of the gain (Elo points)

    def to_dict(self) -> dict:
        return asdict(self)


def _stats(r: Ratings, i: int) -> dict:
    return {"rating": round(float(r.rating[i]), 1), "lo": round(float(r.lo[i]), 1),
            "hi": round(float(r.hi[i]), 1), "battles": int(r.games[i])}


def _cell(r: Ratings, i: int, j: int) -> dict:
    n = int(r.matrix.games[i, j])
    if n == 0:
        return {"rate": None, "lo": None, "hi": None, "battles": 0}
    return {"rate": round(float(r.matrix.rate[i, j]), 4), "lo": round(float(r.matrix.lo[i, j]), 4),
            "hi": round(float(r.matrix.hi[i, j]), 4), "battles": n}


def decide(ratings: Ratings, *, child: str = CHILD, parent: str = PARENT,
           rule: str = "lower_above_parent", level: float = 0.95) -> Decision:
    """Promote `child` over `parent` by `rule` on tournament ratings; the reason says why or why not."""
    if rule not in RULES:
        raise ValueError(f"promotion rule {rule!r} is unknown; choose one of {', '.join(RULES)}")
    for name in (child, parent):
        if name not in ratings.names:
            raise ValueError(f"the tournament has no agent {name!r} (agents: {ratings.names})")
    c, p = ratings.names.index(child), ratings.names.index(parent)
    cs, ps = _stats(ratings, c), _stats(ratings, p)
    h2h = _cell(ratings, c, p)
    win_rates = {ratings.names[j]: {"child": _cell(ratings, c, j), "parent": _cell(ratings, p, j)}
                 for j in range(len(ratings.names)) if j not in (c, p)}
    gain = round(cs["rating"] - ps["rating"], 1)
    gain_lo, gain_hi = ratings.gain_interval(c, p, level)
    pct = f"{100 * level:g}%"
    if cs["battles"] == 0 or ps["battles"] == 0:
        promoted, reason = False, "the child or the parent finished no tournament battle; nothing to compare"
    elif any(math.isnan(x) for x in (cs["lo"], ps["hi"])):
        promoted, reason = False, "the ratings have no bootstrap interval (bootstrap=0); cannot judge"
    elif cs["rating"] <= ps["rating"]:
        promoted = False
        reason = f"the child's rating {cs['rating']:.0f} does not beat the parent's {ps['rating']:.0f}"
    elif rule == "lower_above_parent" and cs["lo"] <= ps["rating"]:
        promoted = False
        reason = (f"the child rates {gain:+.0f} over the parent, but the lower end of its {pct} interval "
                  f"({cs['lo']:.0f}) is not above the parent's rating ({ps['rating']:.0f}): not significant")
    elif rule == "gain" and not gain_lo > 0:
        promoted = False
        reason = (f"the child rates {gain:+.0f} over the parent, but the {pct} interval of the gain "
                  f"[{gain_lo:+.0f}, {gain_hi:+.0f}] does not exclude zero: not significant")
    elif rule == "disjoint" and cs["lo"] <= ps["hi"]:
        promoted = False
        reason = (f"the child rates {gain:+.0f} over the parent, but its {pct} interval "
                  f"[{cs['lo']:.0f}, {cs['hi']:.0f}] overlaps the parent's [{ps['lo']:.0f}, {ps['hi']:.0f}]")
    else:
        promoted = True
        if rule == "gain":
            why = f"the {pct} interval of the gain [{gain_lo:+.0f}, {gain_hi:+.0f}] excludes zero (gain)"
        else:
            bound = ps["rating"] if rule == "lower_above_parent" else ps["hi"]
            why = f"the lower end of its {pct} interval ({cs['lo']:.0f}) is above {bound:.0f} ({rule})"
        reason = f"the child rates {gain:+.0f} over the parent ({cs['rating']:.0f} vs {ps['rating']:.0f}); {why}"
    ci = [round(gain_lo, 1), round(gain_hi, 1)] if not math.isnan(gain_lo) else []
    return Decision(promoted, reason, rule, level, cs, ps, gain, h2h, win_rates, ci)


def agent_names(specs: Sequence[str], reserved: Sequence[str] = (CHILD, PARENT)) -> dict[str, str]:
    """A unique tournament name for each opponent spec (`policy:runs/x` -> `policy_runs_x`)."""
    names: dict[str, str] = {}
    taken = set(reserved)
    for spec in specs:
        base = re.sub(r"[^A-Za-z0-9_.+-]+", "_", spec).strip("_.+-")[:40] or "agent"
        name, k = base, 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        names[spec] = name
    return names


@dataclass
class TournamentResult:
    """Where a tournament stands: its planned rows (finished or error) and whether the plan is done."""

    out: str
    planned: int
    finished: int
    errors: int
    rows: list[dict]
    played_now: int

    @property
    def complete(self) -> bool:
        return self.finished + self.errors >= self.planned

    def counts(self) -> dict:
        """The numbers without the rows, for a summary file."""
        return {"out": self.out, "planned": self.planned, "finished": self.finished, "errors": self.errors,
                "played_now": self.played_now}


def play_tournament(agents: Mapping[str, str], *, battle_format: str, team_set: str | Sequence[str],
                    battles_per_pair: int, out: str | Path, seed: int = 0, concurrency: int = 16,
                    bootstrap: int = 1000, anchor: str = "", max_battles: int = 0, server=None,
                    progress: bool = True) -> TournamentResult:
    """Play (or resume) the round-robin of `agents` (name -> spec) on one team set or several,
    with eval/tournament.py; the outcome of every planned battle played so far."""
    from eval.plan import TournamentConfig, latest_outcomes
    from eval.tournament import Tournament

    team_sets = [team_set] if isinstance(team_set, str) else list(team_set)
    cfg = TournamentConfig(agents=dict(agents), formats=[battle_format], team_sets=team_sets,
                           battles_per_pair=battles_per_pair, seed=seed, out=str(out), concurrency=concurrency,
                           bootstrap=bootstrap, anchor=anchor, max_battles=max_battles)
    tournament = Tournament(cfg, servers=[server] if server is not None else None, progress=progress)
    summary = tournament.run()
    plan, rows, _ = tournament.prepare()
    outcomes = latest_outcomes(rows)
    planned = [outcomes[p.key] for p in plan if p.key in outcomes]
    return TournamentResult(str(out), len(plan), sum(1 for r in planned if not r["error"]),
                            sum(1 for r in planned if r["error"]), planned, summary.played)


def write_tournament_report(result: TournamentResult, names: Sequence[str], *, n_boot: int, seed: int,
                            anchor: str = "", title: str = "") -> Path:
    """The tournament's Markdown report and plots (eval/report.py) under OUT/report."""
    from eval.report import write_report

    report = write_report(result.rows, list(names), Path(result.out) / "report", n_boot=n_boot, seed=seed,
                          anchor=anchor or None, title=title or f"Promotion tournament {result.out}")
    return report.files.get("report", Path(result.out) / "report")


def describe(decision: Decision) -> str:
    """A few readable lines: ratings, head-to-head, win rates before (parent) and after (child)."""
    c, p = decision.child, decision.parent
    lines = [
        f"child  {c['rating']:7.1f}  [{c['lo']:.0f}, {c['hi']:.0f}]  ({c['battles']} battles)",
        f"parent {p['rating']:7.1f}  [{p['lo']:.0f}, {p['hi']:.0f}]  ({p['battles']} battles)",
    ]
    h = decision.head_to_head
    if h["battles"]:
        lines.append(f"child vs parent: {h['rate']:.3f} [{h['lo']:.3f}, {h['hi']:.3f}] over {h['battles']} battles")
    lines.append(f"{'opponent':24} {'parent':>20} {'child':>20}")
    for opp, cells in decision.win_rates.items():
        def fmt(x: dict) -> str:
            return "–" if x["rate"] is None else f"{x['rate']:.3f} [{x['lo']:.2f},{x['hi']:.2f}]"
        lines.append(f"{opp:24} {fmt(cells['parent']):>20} {fmt(cells['child']):>20}")
    lines.append(("PROMOTED: " if decision.promoted else "NOT PROMOTED: ") + decision.reason)
    return "\n".join(lines)


__all__ = ["RULES", "Decision", "TournamentResult", "agent_names", "decide", "describe", "play_tournament",
           "write_tournament_report"]
