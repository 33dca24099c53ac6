"""Tournament reports: a Markdown page, two PNGs and CSV files from the results rows.

    python -m eval.report runs/tournament/default      # re-draw OUT/report from OUT/results

`write_report(rows, names, out_dir)` takes result rows (eval/tournament.py's RESULTS_SCHEMA:
one per planned battle, `error` empty when it finished) and writes:

    report.md            ranking, win-rate matrix, per-(format, team set) breakdown,
                         cross-team-set comparison, errors
    winrate_matrix.png   heat map of each agent's score against each other agent
    ratings.png          ratings with their bootstrap 95% intervals
    ratings.csv          rating, interval, expected and observed score, per condition
    winrates.csv         every (condition, agent, opponent) cell with its Wilson interval
    errors.csv           battles recorded as errors, with their reasons
"""

from __future__ import annotations

import argparse
import csv
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from eval.ratings import Ratings, index_games, rate, wilson_interval  # noqa: E402

ALL = "all"


@dataclass
class Report:
    """What write_report produced: file paths, the ranking table, the overall ratings."""

    files: dict[str, Path]
    ranking_markdown: str
    ratings: Ratings


def _condition(row: dict) -> str:
    return f"{row['format']}/{row['team_set']}"


def rate_rows(rows: Sequence[dict], names: Sequence[str], *, n_boot: int = 1000, seed: int = 0,
              anchor: str | None = None, level: float = 0.95) -> Ratings:
    """Ratings of `names` from finished result rows (error rows are left out), with `level` intervals."""
    done = [r for r in rows if not r.get("error")]
    a, b = index_games(names, [r["agent_a"] for r in done], [r["agent_b"] for r in done])
    return rate(names, a, b, [r["score_a"] for r in done], n_boot=n_boot, seed=seed, anchor=anchor, level=level)


def _fmt(x: float, digits: int = 0) -> str:
    return "–" if x is None or np.isnan(x) else f"{x:.{digits}f}"


def ranking_table(r: Ratings, specs: dict[str, str] | None = None) -> str:
    """The ranking as a Markdown table, best first."""
    specs = specs or {}
    lines = ["| rank | agent | spec | rating | 95% interval | expected vs field | observed score | battles |",
             "| ---: | --- | --- | ---: | --- | ---: | ---: | ---: |"]
    for rank, i in enumerate(r.order(), 1):
        lines.append(
            f"| {rank} | {r.names[i]} | `{specs.get(r.names[i], '')}` | {_fmt(r.rating[i])} | "
            f"[{_fmt(r.lo[i])}, {_fmt(r.hi[i])}] | {_fmt(r.expected[i], 3)} | {_fmt(r.observed[i], 3)} | "
            f"{int(r.games[i])} |")
    return "\n".join(lines)


def matrix_table(r: Ratings) -> str:
    """The win-rate matrix (row agent's score against the column agent) as Markdown."""
    order = r.order()
    m = r.matrix
    lines = ["| vs | " + " | ".join(r.names[j] for j in order) + " |",
             "| --- |" + " ---: |" * len(order)]
    for i in order:
        cells = []
        for j in order:
            if i == j or m.games[i, j] == 0:
                cells.append("·")
            else:
                cells.append(f"{m.rate[i, j]:.2f} [{m.lo[i, j]:.2f}, {m.hi[i, j]:.2f}] n={m.games[i, j]}")
        lines.append(f"| **{r.names[i]}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cross_condition(rows: Sequence[dict], names: Sequence[str]) -> tuple[list[str], list[dict]]:
    """Each pair's score (first agent's) per condition, flagged where Wilson intervals do not overlap."""
    done = [r for r in rows if not r["error"]]
    conditions = sorted({_condition(r) for r in done})
    out = []
    for a, b in itertools.combinations(sorted(names), 2):
        cells = {}
        for cond in conditions:
            games = [r for r in done if _condition(r) == cond and {r["agent_a"], r["agent_b"]} == {a, b}]
            if games:
                score = sum(r["score_a"] if r["agent_a"] == a else 1 - r["score_a"] for r in games)
                lo, hi = wilson_interval(score, len(games))
                cells[cond] = (score / len(games), lo, hi, len(games))
        if not cells:
            continue
        spans = list(cells.values())
        differs = any(x[2] < y[1] or y[2] < x[1] for x, y in itertools.combinations(spans, 2))
        out.append({"agent": a, "opponent": b, "cells": cells, "differs": differs})
    return conditions, out


def _cross_table(conditions: list[str], pairs: list[dict]) -> str:
    lines = ["| pair | " + " | ".join(conditions) + " | intervals apart |",
             "| --- |" + " ---: |" * len(conditions) + " :---: |"]
    for p in pairs:
        cells = []
        for cond in conditions:
            c = p["cells"].get(cond)
            cells.append(f"{c[0]:.2f} [{c[1]:.2f}, {c[2]:.2f}] n={c[3]}" if c else "·")
        lines.append(f"| {p['agent']} vs {p['opponent']} | " + " | ".join(cells) + f" | {'**yes**' if p['differs'] else ''} |")
    return "\n".join(lines)


def plot_matrix(r: Ratings, path: Path, title: str) -> Path:
    """Heat map of the win-rate matrix, agents in rating order."""
    order = r.order()
    rates = r.matrix.rate[np.ix_(order, order)]
    labels = [r.names[i] for i in order]
    size = 1.2 + 0.9 * len(order)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(np.ma.masked_invalid(rates), cmap="RdBu", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for (i, j), v in np.ndenumerate(rates):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if abs(v - 0.5) > 0.3 else "black")
    ax.set_xlabel("opponent")
    ax.set_ylabel("agent (score of the row)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="score rate (ties half)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_ratings(r: Ratings, path: Path, title: str) -> Path:
    """Ratings with their bootstrap intervals, best at the top."""
    order = r.order()[::-1]
    y = np.arange(len(order))
    rating = r.rating[order]
    err = np.vstack([rating - r.lo[order], r.hi[order] - rating])
    fig, ax = plt.subplots(figsize=(7, 1.0 + 0.5 * len(order)))
    ax.errorbar(rating, y, xerr=np.nan_to_num(err), fmt="o", capsize=4)
    ax.set_yticks(y, [r.names[i] for i in order])
    ax.axvline(1500, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("rating (Elo scale, 95% bootstrap interval)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_report(rows: Sequence[dict], names: Sequence[str], out_dir: str | Path, *, n_boot: int = 1000,
                 seed: int = 0, anchor: str | None = None, title: str = "Tournament") -> Report:
    """Write report.md, the PNGs and the CSVs for these result rows into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(names)
    specs = {}
    for row in rows:
        specs.setdefault(row["agent_a"], row["spec_a"])
        specs.setdefault(row["agent_b"], row["spec_b"])
    done = [r for r in rows if not r["error"]]
    errors = [r for r in rows if r["error"]]
    overall = rate_rows(rows, names, n_boot=n_boot, seed=seed, anchor=anchor)
    conditions = sorted({_condition(r) for r in rows})
    by_cond = {c: rate_rows([r for r in rows if _condition(r) == c], names, n_boot=n_boot, seed=seed,
                            anchor=anchor) for c in conditions}
    ranking = ranking_table(overall, specs)

    files = {
        "report": out_dir / "report.md",
        "matrix_png": plot_matrix(overall, out_dir / "winrate_matrix.png", f"{title}: win rates"),
        "ratings_png": plot_ratings(overall, out_dir / "ratings.png", f"{title}: ratings"),
    }
    rating_rows, cell_rows = [], []
    for cond, r in [(ALL, overall), *by_cond.items()]:
        for i in r.order():
            rating_rows.append([cond, r.names[i], specs.get(r.names[i], ""), round(r.rating[i], 1),
                                round(r.lo[i], 1), round(r.hi[i], 1), round(r.expected[i], 4),
                                round(r.observed[i], 4), int(r.games[i])])
        m = r.matrix
        for i, j in itertools.permutations(range(len(names)), 2):
            if m.games[i, j]:
                cell_rows.append([cond, names[i], names[j], m.score[i, j], int(m.games[i, j]),
                                  round(m.rate[i, j], 4), round(m.lo[i, j], 4), round(m.hi[i, j], 4)])
    files["ratings_csv"] = _write_csv(out_dir / "ratings.csv", ["condition", "agent", "spec", "rating", "lo", "hi",
                                      "expected_vs_field", "observed_score", "battles"], rating_rows)
    files["winrates_csv"] = _write_csv(out_dir / "winrates.csv", ["condition", "agent", "opponent", "score",
                                       "battles", "rate", "lo", "hi"], cell_rows)
    files["errors_csv"] = _write_csv(out_dir / "errors.csv", ["key", "agent_a", "agent_b", "attempts", "error"],
                                     [[r["key"], r["agent_a"], r["agent_b"], r["attempts"], r["error"]] for r in errors])

    cross_conds, cross = cross_condition(rows, names)
    md = [f"# {title}", "",
          f"{len(done)} finished battles, {len(errors)} errors, {len(names)} agents, conditions (format/team set): "
          f"{', '.join(conditions) or 'none'}. Ratings: Bradley–Terry on the Elo scale "
          f"({'mean 1500' if anchor is None else f'{anchor} at 1500'}), 95% intervals from {n_boot} bootstrap "
          "resamples of the battles. Expected vs field: mean expected score against every other agent. "
          "Ties count half.", "", "## Ranking", "", ranking, "",
          "![ratings](ratings.png)", "", "## Win-rate matrix", "",
          "Score of the row agent against the column agent, Wilson 95% interval, battles.", "",
          matrix_table(overall), "", "![win-rate matrix](winrate_matrix.png)", "",
          "## Per format and team set", ""]
    if len(by_cond) > 1:
        for cond, r in by_cond.items():
            md += [f"### {cond}", "", ranking_table(r, specs), "", matrix_table(r), ""]
    else:
        md += [f"One condition ({', '.join(by_cond) or 'none'}): the tables above.", ""]
    md += ["## Across formats and team sets", ""]
    if len(cross_conds) > 1:
        md += ["The first agent's score against the second in each condition; **yes** where two "
               "Wilson intervals do not overlap.", "", _cross_table(cross_conds, cross), ""]
        apart = [f"{p['agent']} vs {p['opponent']}" for p in cross if p["differs"]]
        md += [f"Intervals apart for {len(apart)} of {len(cross)} pairs" + (f": {', '.join(apart)}." if apart else "."), ""]
    else:
        md += ["Only one condition has finished battles: nothing to compare.", ""]
    md += ["## Errors", ""]
    if errors:
        md += [f"{len(errors)} battles could not be finished after every retry; they count for no one.", "",
               "| reason | battles |", "| --- | ---: |"]
        for reason, n in Counter(r["error"][:160] for r in errors).most_common():
            md.append(f"| {reason.replace('|', '/')} | {n} |")
        by_agent = Counter(x for r in errors for x in (r["agent_a"], r["agent_b"]))
        md += ["", "By agent: " + ", ".join(f"{k} {v}" for k, v in by_agent.most_common()), ""]
    else:
        md += ["None: every planned battle in this table finished.", ""]
    files["report"].write_text("\n".join(md), encoding="utf-8")
    return Report(files, ranking, overall)


def main(argv: list[str] | None = None) -> None:
    """Re-draw OUT/report from the results in OUT (every agent and battle there)."""
    from eval.plan import latest_outcomes, read_results

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", help="tournament folder (holds results/)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = list(latest_outcomes(read_results(args.out)).values())
    if not rows:
        raise SystemExit(f"error: no results in {args.out}/results; run a tournament first")
    names = sorted({r["agent_a"] for r in rows} | {r["agent_b"] for r in rows})
    report = write_report(rows, names, Path(args.out) / "report", n_boot=args.bootstrap, seed=args.seed,
                          title=f"Tournament {args.out}")
    print(report.ranking_markdown)
    for name, path in report.files.items():
        print(f"{name:>16}: {path}")


if __name__ == "__main__":
    main()
