"""The imitation scaling study on real battles: a stopped point continues where it stopped,
finished points and matches are not redone, and the report is written."""

from __future__ import annotations

import json

import pytest

from battles.logs import count_battles
from curriculum.study_imitation import StudyConfig, run

pytestmark = [pytest.mark.server, pytest.mark.slow]


def steps_logged(point_dir):
    lines = [json.loads(x) for x in (point_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in lines if "loss" in r]


def test_study_resumes_a_stopped_point_and_skips_finished_ones(tmp_path, showdown):
    cfg = dict(run_dir=str(tmp_path / "study"), team_sets=["competitive"], sparring=["maxbp"],
               mirror_share=0.75, round_battles=8, decisions=[1000, 1500], presets=["tiny"],
               min_steps=20, max_steps=20, batch_size=4, window=16, judges=["maxbp"], eval_battles=2,
               concurrency=4, eval_concurrency=2, val_fraction=0.3)
    rows = run(StudyConfig(**cfg, stop_after_steps=12), showdown)
    assert rows == []  # stopped inside the first point
    first = tmp_path / "study" / "points" / "tactician-tiny-1000"
    assert not (first / "point.json").exists()
    games = tmp_path / "study" / "games"
    played = count_battles(games)
    assert played >= 8

    rows = run(StudyConfig(**cfg), showdown)
    assert [r["decisions"] for r in rows] == [1000, 1500]
    steps = steps_logged(first)
    assert steps == sorted(set(steps)) and steps[-1] == 20  # resumed: every step once
    for r in rows:
        assert 0.0 <= r["agreement"] <= 1.0 and r["held_out_decisions"] > 0
        assert 0.0 <= r["brier"] <= 1.0
        assert r["against"]["tactician"]["battles"] == 2 and r["against"]["maxbp"]["battles"] == 2
    assert rows[0]["trained_decisions"] < rows[1]["trained_decisions"]
    report = (tmp_path / "study" / "study.md").read_text()
    assert "| tactician | tiny |" in report and (tmp_path / "study" / "study.png").stat().st_size > 0

    stamp = (first / "point.json").stat().st_mtime_ns
    evals = count_battles(tmp_path / "study" / "points")
    again = run(StudyConfig(**cfg), showdown)
    assert again == rows
    assert (first / "point.json").stat().st_mtime_ns == stamp
    assert count_battles(tmp_path / "study" / "points") == evals and count_battles(games) == played
