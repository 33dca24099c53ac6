"""Reports from result rows: Markdown, PNGs, CSVs, cross-team-set flags (no server)."""

from __future__ import annotations

import csv
import itertools

import numpy as np

from eval.report import cross_condition, write_report

AGENTS = ["weak", "mid", "strong"]
STRENGTH = {"weak": 0.0, "mid": 1.0, "strong": 2.0}


def make_rows(seed=0, per_pair=40, flip_set=None):
    """Synthetic results in two team sets; in `flip_set` mid beats strong instead of losing."""
    rng = np.random.default_rng(seed)
    rows = []
    for team_set in ("setA", "setB"):
        for a, b in itertools.combinations(sorted(AGENTS), 2):
            gap = STRENGTH[a] - STRENGTH[b]
            if team_set == flip_set and {a, b} == {"mid", "strong"}:
                gap = -gap
            p = 1 / (1 + np.exp(-gap))
            for k in range(per_pair):
                s = 0.5 if k % 20 == 7 else float(rng.random() < p)
                rows.append({"key": f"gen1ou/{team_set}/{a}/{b}/{k}", "format": "gen1ou", "team_set": team_set,
                             "agent_a": a, "agent_b": b, "spec_a": a, "spec_b": b, "score_a": s,
                             "winner": "" if s == 0.5 else (a if s else b), "error": "", "attempts": 1})
    rows.append({**rows[0], "key": "gen1ou/setA/x/err", "score_a": None, "winner": None,
                 "error": "timed out: not over 120s after the challenge", "attempts": 3})
    return rows


def test_report_files_and_ranking(tmp_path):
    report = write_report(make_rows(), AGENTS, tmp_path, n_boot=200, title="T")
    for key in ("report", "matrix_png", "ratings_png", "ratings_csv", "winrates_csv", "errors_csv"):
        assert report.files[key].exists() and report.files[key].stat().st_size > 0
    assert report.files["matrix_png"].read_bytes()[:4] == b"\x89PNG"
    md = report.files["report"].read_text()
    ranking = md.split("## Ranking")[1].split("##")[0]
    assert ranking.index("| strong |") < ranking.index("| mid |") < ranking.index("| weak |")
    assert "### gen1ou/setA" in md and "### gen1ou/setB" in md
    assert "1 battles could not be finished" in md and "timed out" in md
    assert report.ranking_markdown in md
    r = report.ratings
    assert [r.names[i] for i in r.order()] == ["strong", "mid", "weak"]
    assert r.games.tolist() == [160, 160, 160]  # the error row counts for no one

    with open(report.files["ratings_csv"]) as f:
        ratings = list(csv.DictReader(f))
    assert {row["condition"] for row in ratings} == {"all", "gen1ou/setA", "gen1ou/setB"}
    top = [row for row in ratings if row["condition"] == "all"][0]
    assert top["agent"] == "strong" and float(top["lo"]) <= float(top["rating"]) <= float(top["hi"])
    with open(report.files["winrates_csv"]) as f:
        cells = [row for row in csv.DictReader(f) if row["condition"] == "all"]
    assert len(cells) == 6
    for row in cells:
        back = next(c for c in cells if c["agent"] == row["opponent"] and c["opponent"] == row["agent"])
        assert abs(float(row["rate"]) + float(back["rate"]) - 1) < 1e-9
    with open(report.files["errors_csv"]) as f:
        assert len(list(csv.DictReader(f))) == 1


def test_cross_team_set_flags_only_real_differences():
    conditions, pairs = cross_condition(make_rows(seed=1, per_pair=60, flip_set="setB"), AGENTS)
    assert conditions == ["gen1ou/setA", "gen1ou/setB"]
    flagged = {(p["agent"], p["opponent"]) for p in pairs if p["differs"]}
    assert flagged == {("mid", "strong")}
    cell = next(p for p in pairs if p["agent"] == "mid")["cells"]
    assert all(0 <= lo <= rate <= hi <= 1 for rate, lo, hi, _ in cell.values())
