"""The promotion rule and the tournament report on constructed results, and the stage config's guards (no server)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import yaml

from battles.config import check_same_run, load_config, save_config
from curriculum import stage1_play as selfplay
from curriculum.phases import apportion
from curriculum.promotion import (
    TournamentResult,
    agent_names,
    decide,
    describe,
    write_tournament_report,
)
from curriculum.stage1_play import SelfPlayConfig
from eval.report import rate_rows

AGENTS = ["child", "parent", "tactician", "maxbp"]


def rows_from(scores: dict[tuple[str, str], float], n: int = 100, errors: int = 0) -> list[dict]:
    """n battles per pair; agent_a wins the given share of them (deterministically spread)."""
    rows = []
    for a, b in itertools.combinations(AGENTS, 2):
        share = scores[(a, b)] if (a, b) in scores else 1 - scores[(b, a)]
        wins = round(share * n)
        rows += [{"agent_a": a, "agent_b": b, "score_a": 1.0 if i < wins else 0.0, "error": ""} for i in range(n)]
        rows += [{"agent_a": a, "agent_b": b, "score_a": None, "error": "timed out"} for _ in range(errors)]
    return rows


def field(child_vs_parent: float, child_vs_tact: float, child_vs_maxbp: float) -> dict:
    return {("child", "parent"): child_vs_parent, ("child", "tactician"): child_vs_tact,
            ("child", "maxbp"): child_vs_maxbp, ("parent", "tactician"): 0.40, ("parent", "maxbp"): 0.55,
            ("tactician", "maxbp"): 0.80}


def ratings(scores, **kw):
    return rate_rows(rows_from(scores, **kw), AGENTS, n_boot=400, seed=1)


def test_a_clearly_better_child_is_promoted():
    r = ratings(field(0.75, 0.65, 0.85))
    d = decide(r)
    assert d.promoted, d.reason
    assert d.gain > 100 and d.child["lo"] > d.parent["rating"]
    assert d.head_to_head["rate"] == pytest.approx(0.75) and d.head_to_head["battles"] == 100
    # Win rates before (parent) and after (child) against each opponent, from the tournament.
    assert d.win_rates["tactician"]["parent"]["rate"] == pytest.approx(0.40)
    assert d.win_rates["tactician"]["child"]["rate"] == pytest.approx(0.65)
    assert set(d.win_rates) == {"tactician", "maxbp"}
    assert "PROMOTED" in describe(d) and "tactician" in describe(d)


def test_a_slightly_better_child_is_not_promoted_and_the_reason_says_why():
    d = decide(ratings(field(0.53, 0.43, 0.58)))
    assert d.gain > 0
    assert not d.promoted
    assert "not significant" in d.reason and "lower end" in d.reason
    assert d.child["lo"] <= d.parent["rating"]


def test_a_worse_child_is_not_promoted():
    d = decide(ratings(field(0.35, 0.30, 0.45)))
    assert not d.promoted and d.gain < 0
    assert "does not beat" in d.reason


def test_disjoint_is_stricter_than_the_default_rule():
    # Find a constructed result that the default rule promotes and `disjoint` does not.
    for p in (0.58, 0.60, 0.62, 0.64, 0.66, 0.68):
        r = ratings(field(p, p - 0.08, p + 0.05))
        default, strict = decide(r), decide(r, rule="disjoint")
        assert not (strict.promoted and not default.promoted)  # never looser
        if default.promoted and not strict.promoted:
            assert "overlaps" in strict.reason
            return
    pytest.fail("no constructed result separated the two rules")


def test_the_gain_rule_reads_the_interval_of_the_difference():
    """`gain`: the child minus the parent on the same resampled battles; its interval, not two
    overlapping ones, decides."""
    clear = decide(ratings(field(0.75, 0.65, 0.85)), rule="gain")
    assert clear.promoted and clear.gain_ci[0] > 0 and "excludes zero" in clear.reason, clear.reason
    assert clear.gain_ci[0] < clear.gain < clear.gain_ci[1]
    slight = decide(ratings(field(0.53, 0.43, 0.58)), rule="gain")
    assert not slight.promoted and slight.gain > 0 and slight.gain_ci[0] <= 0
    assert "does not exclude zero" in slight.reason
    worse = decide(ratings(field(0.35, 0.30, 0.45)), rule="gain")
    assert not worse.promoted and "does not beat" in worse.reason


def test_error_rows_are_left_out():
    clean = decide(ratings(field(0.75, 0.65, 0.85)))
    noisy = decide(ratings(field(0.75, 0.65, 0.85), errors=7))
    assert noisy.child == clean.child and noisy.parent == clean.parent


def test_the_tournament_report_is_written_from_the_rows_and_named(tmp_path):
    rows = [{**r, "spec_a": r["agent_a"], "spec_b": r["agent_b"], "format": "gen1ou", "team_set": "competitive",
             "key": str(k), "attempts": 1} for k, r in enumerate(rows_from(field(0.75, 0.65, 0.85), n=8, errors=1))]
    done = sum(1 for r in rows if not r["error"])
    result = TournamentResult(str(tmp_path), len(rows), done, len(rows) - done, rows, played_now=0)
    assert result.complete and not dataclasses.replace(result, planned=len(rows) + 1).complete
    path = write_tournament_report(result, AGENTS, n_boot=20, seed=0, anchor="maxbp", title="Promotion test")
    assert path == tmp_path / "report" / "report.md"
    text = path.read_text()
    assert text.startswith("# Promotion test") and "maxbp at 1500" in text and f"{done} finished battles" in text


def test_bad_rule_and_missing_agents_are_clear_errors():
    r = ratings(field(0.75, 0.65, 0.85))
    with pytest.raises(ValueError, match="rule 'best'"):
        decide(r, rule="best")
    with pytest.raises(ValueError, match="no agent 'stage1'"):
        decide(r, child="stage1")


def test_agent_names_are_unique_and_valid():
    names = agent_names(["tactician", "policy:runs/x/final,temperature=0.5", "child", "policy:runs/x/final,temperature=0.5 "])
    assert names["tactician"] == "tactician"
    assert names["child"] == "child_2"  # child and parent are the stage's own agents
    assert names["policy:runs/x/final,temperature=0.5"] == "policy_runs_x_final_temperature_0.5"
    assert len(set(names.values())) == len(names)


def test_apportion_splits_battles_by_weight():
    assert apportion(10, {"a": 0.5, "b": 0.3, "c": 0.2}) == {"a": 5, "b": 3, "c": 2}
    counts = apportion(7, {"a": 1, "b": 1, "c": 1})
    assert sum(counts.values()) == 7 and max(counts.values()) - min(counts.values()) == 1
    assert apportion(5, {"a": 1.0, "b": 0.0}) == {"a": 5, "b": 0}



@pytest.mark.parametrize("override,message", [
    ("finetune=qlora", "finetune='qlora'"),
    ("stop_after=trian", "stop_after='trian'"),
    ("opponents={tactican: 1.0}", "unknown agent kind 'tactican'"),
    ("opponents={maxbp: -1}", "weights >= 0"),
    ("promotion.battles_per_pair=10", "multiple of 4"),
    ("promotion.rule=best", "promotion.rule='best'"),
    ("parent_data_share=1.0", "parent_data_share=1.0"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(SelfPlayConfig, None, [override])


def test_a_resumed_run_must_keep_its_settings(tmp_path):
    def resume(*overrides):  # the check stage 1 makes before anything else
        cfg = load_config(SelfPlayConfig, None, [f"run_dir={tmp_path}", *overrides])
        check_same_run(cfg, tmp_path, selfplay._MUTABLE, keep=("opponents",))

    save_config(load_config(SelfPlayConfig, None, [f"run_dir={tmp_path}", "battles=100"]), tmp_path / "config.yaml")
    resume("battles=100", "concurrency=4", "stop_after=play", "trainer.stop_after_steps=5")
    with pytest.raises(ValueError, match=r"battles: 100 -> 200.*new run_dir"):
        resume("battles=200")
    with pytest.raises(ValueError, match="opponents"):
        resume("battles=100", "opponents={maxbp: 1.0}")
    # A setting the code gained after the run started: unchanged while at its default.
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["awr_beta"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    resume("battles=100")
    with pytest.raises(ValueError, match=r"awr_beta: None -> 0.5"):
        resume("battles=100", "awr_beta=0.5")
