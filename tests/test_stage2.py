"""Curriculum stage 2 for real: coach labels, the KL loss, a round on the local server, resume, chaining."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from battles.config import load_config
from battles.encode import ObservationEncoder
from battles.logs import count_battles
from battles.shards import list_shards
from battles.trajectories import read_trajectories
from curriculum import stage2_coach as stage2
from curriculum.lineage import chain, format_chain, resolve_parent
from curriculum.losses import teacher_loss
from curriculum.stage2_coach import CoachStageConfig
from eval.tournament import read_results
from models.checkpoint import load_checkpoint, save_checkpoint
from models.policy import PolicyConfig, PolicyTransformer

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "curriculum" / "configs" / "stage2_smoke.yaml"


def toy_batch():
    """Two one-window battles of 4 decisions, 3 legal actions each; the first won, the second lost."""
    legal = torch.zeros(2, 4, 13, dtype=torch.bool)
    legal[..., :3] = True
    teacher = torch.zeros(2, 4, 13)
    teacher[..., :3] = torch.tensor([0.7, 0.2, 0.1])
    ones = torch.ones(2, 4, dtype=torch.bool)
    return {"tokens": torch.randint(1, 50, (2, 4, 4)), "numbers": torch.randn(2, 4, 3), "legal": legal,
            "action": torch.tensor([[0, 1, 2, 0], [1, 1, 1, 1]]), "mask": ones, "loss_mask": ones.clone(),
            "outcome": torch.tensor([1.0, -1.0]), "teacher": teacher, "has_teacher": torch.tensor([True, True])}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return PolicyTransformer(PolicyConfig.preset("tiny", vocab_size=50, n_tokens=4, n_numbers=3, dropout=0.0)).eval()


def test_loss_is_kl_to_the_coach_plus_won_imitation():
    model, batch = tiny_model(), toy_batch()
    with torch.no_grad():
        logits, _ = model(batch["tokens"], batch["numbers"], batch["legal"])
    q = torch.softmax(logits[..., :3], -1)  # the student over the legal actions
    p = batch["teacher"][..., :3]
    want_kl = (p * (p.log() - q.log())).sum(-1).mean()
    want_win = -torch.log(q[0].gather(-1, batch["action"][0][:, None])).mean()  # the won battle only
    _, m = teacher_loss(1.0, 0.0, 0.0)(model, batch)
    assert float(m["kl"]) == pytest.approx(float(want_kl), rel=1e-5) and float(m["kl"]) > 0
    assert float(m["win_ce"]) == pytest.approx(float(want_win), rel=1e-5)
    assert m["labelled"] == 8 and m["won"] == 4 and m["decisions"] == 8
    loss, m2 = teacher_loss(2.0, 0.5, 0.25)(model, batch)
    assert float(loss.detach()) == pytest.approx(2 * float(m2["kl"]) + 0.5 * float(m2["win_ce"]) + 0.25 * float(m2["value_loss"]),
                                        rel=1e-5)
    # A battle without labels gives no KL; a cut loss mask (DecisionBatches) removes decisions from both terms.
    batch["has_teacher"] = torch.tensor([False, True])
    batch["loss_mask"][1, 2:] = False
    _, m3 = teacher_loss(1.0, 1.0, 0.0)(model, batch)
    assert m3["labelled"] == 2 and m3["won"] == 4 and m3["decisions"] == 6
    assert float(m3["kl"]) == pytest.approx(float((p * (p.log() - q.log())).sum(-1)[1, :2].mean()), rel=1e-5)


def test_kl_is_zero_when_the_student_is_the_coach_and_training_moves_toward_the_coach():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: spinning threads on a busy machine cost 40x
    try:
        model, batch = tiny_model(), toy_batch()
        with torch.no_grad():
            logits, _ = model(batch["tokens"], batch["numbers"], batch["legal"])
        batch["teacher"] = torch.softmax(logits.float(), -1) * batch["legal"]
        _, m = teacher_loss(1.0, 0.0, 0.0)(model, batch)
        assert abs(float(m["kl"])) < 1e-6 and float(m["coach_agree"]) == 1.0
        batch = toy_batch()
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        loss_fn = teacher_loss(1.0, 0.0, 0.0)
        first = float(loss_fn(model, batch)[1]["kl"])
        for _ in range(20):
            loss, _ = loss_fn(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert float(loss_fn(model, batch)[1]["kl"]) < 0.2 * first
    finally:
        torch.set_num_threads(threads)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="coach is not set"):
        stage2.run(load_config(CoachStageConfig, None, [f"run_dir={tmp_path / 'nocoach'}"]))
    assert not (tmp_path / "nocoach").exists()
    with pytest.raises(ValueError, match="stop_after"):
        load_config(CoachStageConfig, None, ["coach=x", "stop_after=decide"])
    with pytest.raises(ValueError, match="promotion tournament needs an opponent"):
        load_config(CoachStageConfig, None, ["coach=x", "opponents={self: 1.0}", "promote_with_coach=false"])
    with pytest.raises(ValueError, match="unknown agent kind|nosuchbot"):
        load_config(CoachStageConfig, None, ["coach=x", "opponents={nosuchbot: 1.0}"])
    cfg = load_config(CoachStageConfig, SMOKE, [f"run_dir={tmp_path}", "coach=x"])
    play = stage2.play_config(cfg, 2, Path("/m/student"), Path("/m/coach"))
    assert play.opponents == {"policy:/m/student,temperature=1": 0.5, "maxbp": 0.5} and play.seed == 1009
    pool = stage2.tournament_config(load_config(CoachStageConfig, SMOKE, [
        "coach=x", "opponents={self: 0.5, coach: 0.5}", "promote_with_coach=true"]), play, Path("/m/coach"))
    assert list(pool.opponents) == ["policy:/m/coach,temperature=1"]  # self left out, the coach once


# -- on the real server -------------------------------------------------------------------
def save_random_policy(path: Path, seed: int) -> Path:
    enc = ObservationEncoder()
    torch.manual_seed(seed)
    model = PolicyTransformer(PolicyConfig.preset("tiny", vocab_size=enc.vocab.size, n_tokens=enc.n_tokens,
                                                  n_numbers=enc.n_numbers, max_context=32))
    save_checkpoint(path, model, encoder_version=enc.version, vocab_hash=enc.vocab.hash, metadata={"step": seed})
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return save_random_policy(root / "student", 1), save_random_policy(root / "coach", 2)


def cfg_for(run, models, *overrides):
    student, coach = models
    return load_config(CoachStageConfig, SMOKE, [
        f"run_dir={run}", f"student={student}", f"coach={coach}", "battles=6", "concurrency=6", *overrides])


def mtimes(folder):
    return {str(p): p.stat().st_mtime_ns for p in list_shards(folder)}


@pytest.fixture(scope="module")
def stage(tmp_path_factory, models, showdown):
    """One round stopped after every phase, then finished; what each invocation saw is kept."""
    run = tmp_path_factory.mktemp("stage2") / "run"
    seen = {}
    for phase in ("play", "label"):
        seen[phase] = stage2.run(cfg_for(run, models, f"stop_after={phase}"), server=showdown)
        seen[f"battles_after_{phase}"] = mtimes(run / "round-1" / "battles")
        seen[f"built_after_{phase}"] = (run / "round-1" / "learner").exists()
    seen["learner_after_label"] = mtimes(run / "round-1" / "learner")
    seen["label_again"] = stage2.run(cfg_for(run, models, "stop_after=label"), server=showdown)
    seen["train_part"] = stage2.run(cfg_for(run, models, "trainer.stop_after_steps=2"), server=showdown)
    seen["done"] = stage2.run(cfg_for(run, models), server=showdown)
    return run, seen


@pytest.mark.server
def test_round_labels_with_the_coachs_own_forward_pass(stage, models):
    run, seen = stage
    r1 = run / "round-1"
    assert seen["play"]["status"] == "round 1: played" and not seen["built_after_play"]
    assert count_battles(r1 / "battles") == 6
    coach, _ = load_checkpoint(models[1])
    trajs = list(read_trajectories(r1 / "learner-labelled"))
    # Against itself both sides are the student's: 3 self-play battles give 6, 3 against maxbp give 3.
    assert len(trajs) == 9 and all(t.agent.startswith(f"policy:{models[0]},temperature=1") for t in trajs)
    # The built student trajectories are never rewritten: the labels are a set of their own.
    assert all(t.teacher is None for t in read_trajectories(r1 / "learner"))
    (label_set,) = (r1 / "labels").iterdir()
    assert label_set.name.startswith("coach-") and (label_set / "manifest.json").is_file()
    for t in trajs:
        assert t.teacher_source.startswith(f"coach:{models[1].resolve()}@step2,T=1")
        with torch.no_grad():
            logits, _ = coach(torch.tensor(t.tokens).long()[None], torch.tensor(t.numbers)[None],
                              torch.tensor(t.legal)[None])
        want = torch.nan_to_num(torch.softmax(logits[0].masked_fill(~torch.from_numpy(t.legal), float("-inf")), -1))
        np.testing.assert_allclose(t.teacher, want.numpy(), atol=1e-5)


@pytest.mark.server
def test_a_stopped_round_resumes_without_redoing_finished_phases(stage):
    run, seen = stage
    r1 = run / "round-1"
    # Play was not redone by the later invocations; labelling was not redone by the third.
    assert seen["battles_after_play"] == seen["battles_after_label"] == mtimes(r1 / "battles")
    assert seen["learner_after_label"] == mtimes(r1 / "learner")  # labelling left the built shards as they were
    assert seen["label_again"]["rounds"][0]["status"] == "labelled"
    # Training stopped after 2 of 3 steps, then resumed: every step logged exactly once.
    assert seen["train_part"]["status"] == "round 1: training"
    steps = [m["step"] for m in map(json.loads, (r1 / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
    assert steps == [1, 2, 3]
    assert sorted(p.name for p in (r1 / "phases").iterdir()) == [f"{p}.json" for p in
                                                                   ("build", "evaluate", "label", "play", "train")]


@pytest.mark.server
def test_a_round_stopped_mid_training_learns_what_an_uninterrupted_round_learns(stage, models, showdown, tmp_path):
    run, _ = stage
    # The same round up to its label phase, in a new folder (no lineage: not a finished round).
    shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns(
        "lineage.json", "state", "checkpoints", "final", "tournament", "metrics.jsonl", "train.json",
        "evaluate.json", "run.lock", "wandb*", "NOT_PROMOTED.txt"))
    record = stage2.run(cfg_for(tmp_path / "run", models, "stop_after=train"), server=showdown)
    assert record["rounds"][0]["status"] == "trained"

    def losses(folder):
        lines = map(json.loads, (folder / "round-1" / "metrics.jsonl").read_text().splitlines())
        return [(m["step"], round(m["loss"], 6), round(m["kl"], 6)) for m in lines if "loss" in m]

    assert [s for s, *_ in losses(run)] == [1, 2, 3]  # stopped after 2 steps, then resumed (the fixture)
    assert losses(tmp_path / "run") == losses(run)  # the same batches, dropout masks and weights


@pytest.mark.server
def test_round_trains_on_the_labels_is_judged_and_joins_the_lineage(stage, models):
    run, seen = stage
    r1 = run / "round-1"
    record = json.loads((r1 / "lineage.json").read_text())
    assert record["status"] == "done" and record["round"] == 1 and record["parent"]["checkpoint"] == str(models[0])
    t = record["training"]
    assert t["steps"] == 3 and t["decisions_trained"] == 3 * 128 and t["data"] == [str(r1 / "learner-labelled")]
    assert t["last_metrics"]["kl"] > 0 and record["coach"]["source"].startswith("coach:")
    child, info = load_checkpoint(r1 / "final")
    assert info.metadata["recipe"] == "coach" and info.metadata["coach"] == record["coach"]["source"]
    student, _ = load_checkpoint(models[0])
    assert any(not torch.equal(a, b) for a, b in zip(child.state_dict().values(), student.state_dict().values()))
    results = read_results(r1 / "tournament")
    assert len(results) == 12 == len({r["key"] for r in results})  # child, parent, maxbp: 3 pairs x 4
    assert set(record["tournament"]["ratings"]) == {"child", "parent", "maxbp"}
    decision = record["decision"]
    assert decision["promoted"] == (decision["child"]["lo"] > decision["parent"]["rating"])
    assert record["output"] == (str(r1 / "final") if decision["promoted"] else str(models[0]))
    summary = seen["done"]
    assert summary["status"] == "done" and summary["output"] == record["output"]
    assert summary["rounds"][0]["ratings"] == record["tournament"]["ratings"]
    assert resolve_parent(run)[0] == Path(record["output"])  # a later stage may start from RUN
    nodes = chain(run)
    assert [n["kind"] for n in nodes] == ["checkpoint", "stage", "stage"] and "round-1" in format_chain(nodes)


@pytest.mark.server
def test_rounds_chain_from_the_last_output_and_keep_finished_rounds(stage, models, showdown):
    run, _ = stage
    r1 = run / "round-1"
    before = {p: p.stat().st_mtime_ns for p in (r1 / "lineage.json", r1 / "final" / "model.safetensors")}
    summary = stage2.run(cfg_for(run, models, "rounds=2", "stop_after=play"), server=showdown)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # round 1 was not redone
    assert summary["status"] == "round 2: played" and summary["output"] is None
    r2 = json.loads((run / "round-2" / "lineage.json").read_text())
    assert r2["parent"] == {"checkpoint": json.loads((r1 / "lineage.json").read_text())["output"],
                            "run": str(r1), "recipe": r2["parent"]["recipe"]}
    assert count_battles(run / "round-2" / "battles") == 6
    spec = pq.read_table(list_shards(run / "round-2" / "battles"), columns=["p1_spec", "p2_spec"]).to_pylist()
    assert all(r2["parent"]["checkpoint"] in (s["p1_spec"] + s["p2_spec"]) for s in spec)
    assert not math.isnan(summary["rounds"][0]["gain"])
    with pytest.raises(ValueError, match="other settings"):
        stage2.run(cfg_for(run, models, "rounds=2", "kl_weight=2"), server=showdown)


@pytest.mark.server
def test_iteration_ablation_runs_stage_2_as_its_own_command(models, tmp_path):
    from curriculum import ablate_iteration as ab

    student, coach = models
    common = [f"chain.student={student}", "chain.battles=4", "chain.concurrency=4", "chain.window=32",
              "chain.opponents={maxbp: 1.0}", "chain.stop_after=play"]
    cfg = load_config(ab.IterationAblationConfig, None, [f"out={tmp_path / 'a'}", f"chain.coach={coach}", *common])
    assert ab.run(cfg) is None  # the chain stopped after round 1's play
    chain_cfg = load_config(CoachStageConfig, tmp_path / "a" / "chain.yaml")
    assert chain_cfg.run_dir == str(tmp_path / "a" / "chain") and chain_cfg.coach == cfg.chain.coach
    assert count_battles(tmp_path / "a" / "chain" / "round-1" / "battles") == 4
    # The chain's own error stops the ablation.
    bad = load_config(ab.IterationAblationConfig, None, [f"out={tmp_path / 'b'}", "chain.coach=/no/coach", *common])
    with pytest.raises(ValueError, match="exit status 1"):
        ab.run(bad)


# -- the iteration ablation's budgets and table (no server) ------------------------------------
def fake_round(k, steps, promoted, student, data_decisions=1000):
    return {"round": k, "promoted": promoted, "parent": {"checkpoint": student},
            "data": {"battles": {"maxbp": {"battles": 10}, "self": {"battles": 5}}},
            "training": {"steps": steps, "decisions_trained": steps * 64, "data": [f"/r{k}/learner"],
                         "data_decisions": data_decisions, "checkpoint": f"/r{k}/final"}}


@pytest.mark.parametrize("promoted", [True, False])
def test_ablation_budgets_match_the_chain(promoted):
    from curriculum import ablate_iteration as ab

    r2_student = "/r1/final" if promoted else "/s"
    budget = ab.chain_budget([fake_round(1, 30, promoted, "/s"), fake_round(2, 40, False, r2_student, 1500)])
    assert budget["steps"] == 70 and budget["decisions_trained"] == 70 * 64 and budget["battles"] == 30
    assert budget["data_decisions"] == 2500
    # A promoted round's child carries its compute into the next round; a kept student does not.
    assert ab.lineage_steps(budget) == {"round-1": 30, "round-2": 70 if promoted else 40}
    pooled, first = ab.control_plan("pooled", budget), ab.control_plan("first_round", budget)
    assert pooled["steps"] == first["steps"] == 70
    assert pooled["data"] == ["/r1/learner", "/r2/learner"] and pooled["data_decisions"] == 2500
    assert first["data"] == ["/r1/learner"] and first["data_decisions"] == 1000 and first["battles"] == 15


def test_ablation_table_states_budgets_and_findings(tmp_path):
    from curriculum import ablate_iteration as ab

    with pytest.raises(ValueError, match="at least 2 rounds"):
        load_config(ab.IterationAblationConfig, None, ["chain.rounds=1"])
    cfg = load_config(ab.IterationAblationConfig, None, [
        f"out={tmp_path}", "chain.coach=/c", "chain.decisions_per_step=64", "eval.bootstrap=100",
        "eval.references={maxbp: maxbp}"])
    budget = ab.chain_budget([fake_round(1, 30, True, "/s"), fake_round(2, 40, False, "/r1/final")])
    controls = {n: {**ab.control_plan(n, budget), "checkpoint": f"/{n}/final"} for n in ab.CONTROLS}
    summary = {"student": {"checkpoint": "/s"}, "coach": {"checkpoint": "/c"}, "output": "/r1/final"}
    agents = ab.agents_of(cfg, summary, budget, controls)
    assert list(agents) == ["student", "round-1", "round-2", "pooled", "first_round", "coach", "maxbp"]
    assert agents["pooled"] == "policy:/pooled/final,temperature=1"
    rng = np.random.default_rng(0)
    strength = {"student": 0.0, "round-1": 0.3, "round-2": 0.3, "pooled": 2.0, "first_round": 0.0, "coach": 1.0,
                "maxbp": -1.0}
    rows = []
    for a in agents:
        for b in agents:
            if a < b:
                for _ in range(40):
                    p = 1 / (1 + np.exp(strength[b] - strength[a]))
                    rows.append({"agent_a": a, "agent_b": b, "score_a": float(rng.random() < p), "error": ""})
    result = ab.write_table(cfg, rows, agents, summary, budget, controls)
    assert result["chain_output"] == "round-1"
    by = {r["agent"]: r for r in result["table"]}
    assert by["round-1"]["steps"] == 30 and by["round-2"]["steps"] == 70 and by["pooled"]["steps"] == 70
    assert by["pooled"]["decisions_trained"] == 70 * 64 and by["maxbp"]["steps"] is None
    assert by["pooled"]["rating"] == max(r["rating"] for r in result["table"])
    assert any(f.startswith("round-1 vs pooled") and "intervals apart" in f for f in result["findings"])
    md = (tmp_path / "report" / "iteration.md").read_text()
    assert "70 steps in all (30, 40 per round)" in md and "round-1; the chain's output" in md.replace(
        "chain round 1 child (promoted)", "round-1")
    assert (tmp_path / "report" / "ratings.png").stat().st_size > 0 and (tmp_path / "report" / "iteration.csv").exists()
