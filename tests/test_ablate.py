"""The two ablations: the data-mix grid (exact decision budgets, equal accounting across members,
resume, a real grid) and the iteration ablation's controls (stop, resume, the losses of a straight
run); every shipped ablation config loads and validates."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from battles.config import load_config
from battles.dataset import DataMix
from battles.encode import ObservationEncoder
from battles.trajectories import ShardWriter, Trajectory
from curriculum import ablate_data_mix as ablate
from curriculum import ablate_iteration
from curriculum.batches import DecisionBatches, learnable
from curriculum.comparison import EvalConfig, rate_by_team_set, team_set_shifts
from curriculum.lineage import update_lineage
from models.checkpoint import save_checkpoint
from models.policy import PolicyConfig, PolicyTransformer

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "curriculum" / "configs" / "ablate_smoke.yaml"


def fake_battles(folder: Path, source: str, n: int, length: int, seed: int, teacher: bool = False) -> Path:
    """`n` gen1ou trajectories of `length` decisions with the real encoder's sizes; one action hidden
    in 7; with `teacher`, a coach's label on every decision."""
    enc = ObservationEncoder()
    rng = np.random.default_rng(seed)
    trajs = []
    for i in range(n):
        legal = rng.random((length, 13)) < 0.5
        legal[:, 0] = True
        action = np.array([rng.choice(np.flatnonzero(row)) for row in legal], np.int16)
        action[::7] = -1
        trajs.append(Trajectory(
            battle_id=f"{source}-{i}", player="p1", format="gen1ou", source=source, outcome=int(rng.choice([-1, 1])),
            encoder_version=enc.version, vocab_hash=enc.vocab.hash,
            tokens=rng.integers(1, enc.vocab.size, (length, enc.n_tokens)).astype(np.int32),
            numbers=rng.random((length, enc.n_numbers)).astype(np.float32), action=action, legal=legal,
            teacher=(legal * rng.random((length, 13)) / 6.5).astype(np.float32) if teacher else None,
            teacher_source="coach:test" if teacher else None))
    with ShardWriter(folder, "t", rows_per_shard=64, row_group_size=16) as w:
        w.write_many(trajs)
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """Short battles (a small source) and long ones (a large source)."""
    root = tmp_path_factory.mktemp("sources")
    fake_battles(root / "short", "short", 6, 9, seed=1)
    fake_battles(root / "long", "long", 40, 40, seed=2)
    return root


def grid(sources: Path, out: Path, *overrides: str) -> ablate.AblateConfig:
    return load_config(ablate.AblateConfig, None, [
        f"out={out}", f"sources={{short: {{trajectories: [{sources / 'short'}]}}, "
        f"long: {{trajectories: [{sources / 'long'}]}}}}",
        "mixes={shorts: {short: 1.0}, longs: {long: 1.0}, both: {short: 0.5, long: 0.5}}",
        "budget.steps=4", "budget.decisions_per_step=48", "pretrain.window=16", "pretrain.val_fraction=0.1",
        "pretrain.trainer.warmup_steps=1", "pretrain.trainer.checkpoint_every=2", "pretrain.trainer.eval_every=2",
        "pretrain.trainer.wandb_mode=disabled", "pretrain.trainer.log_every=1", "stop_after=train",
        *overrides])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def losses(run: Path) -> dict[int, tuple]:
    """Step -> (training loss, validation loss) as RUN/metrics.jsonl last logged them."""
    found: dict[int, dict] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        found.setdefault(m["step"], {}).update({k: m[k] for k in ("loss", "val_loss") if k in m})
    return {step: (m.get("loss"), m.get("val_loss")) for step, m in sorted(found.items())}


def test_batches_hold_exactly_the_budget_and_resume_exactly(sources):
    def batches(n, state=None):
        data = DecisionBatches(DataMix({"short": 0.5, "long": 0.5}, [sources], window=16, seed=3), 50)
        if state:
            data.load_state_dict(state)
        it = iter(data)
        return [next(it) for _ in range(n)], data

    first, data = batches(5)
    for b in first:
        assert int(learnable(b).sum()) == 50
    assert data.drawn["decisions"] == 250 and data.drawn["batches"] == 5
    assert sum(data.drawn["source_decisions"].values()) == 250
    assert sum(data.drawn["windows"].values()) == data.state_dict()["mix"]["samples"]
    _, head = batches(3)
    rest, _ = batches(2, head.state_dict())
    for x, y in zip(first[3:], rest):
        assert x["battle_id"] == y["battle_id"] and bool((x["loss_mask"] == y["loss_mask"]).all())
    with pytest.raises(ValueError, match="same budget"):
        DecisionBatches(DataMix({"short": 1.0}, [sources], window=16), 49).load_state_dict(head.state_dict())


def test_members_get_equal_budgets_and_an_interrupted_grid_resumes(sources, tmp_path):
    cfg = grid(sources, tmp_path / "grid")

    def stop(name):
        raise KeyboardInterrupt(name)

    with pytest.raises(KeyboardInterrupt, match="shorts.s0"):
        ablate.run(cfg, after_member=stop)
    first = tmp_path / "grid" / "members" / "shorts.s0"
    kept = {p: (digest(first / p), (first / p).stat().st_mtime_ns)
            for p in ("final/model.safetensors", "metrics.jsonl", "ablate.json")}
    assert not (tmp_path / "grid" / "members" / "longs.s0").exists()

    # Stopped inside a member too: its drawn counts come back with its training state.
    stopped = ablate.run(grid(sources, tmp_path / "grid", "pretrain.trainer.stop_after_steps=3"))
    assert stopped["stopped_in"] == "longs.s0"
    result = ablate.run(cfg)
    assert {p: (digest(first / p), (first / p).stat().st_mtime_ns) for p in kept} == kept  # untouched
    records = result["members"]
    assert list(records) == ["shorts.s0", "longs.s0", "both.s0"]
    for name, rec in records.items():
        run = tmp_path / "grid" / "members" / name
        assert rec["recorded"]["steps"] == 4 and rec["recorded"]["decisions"] == 4 * 48 == rec["budget"]["decisions"]
        assert sum(rec["recorded"]["source_decisions"].values()) == 192
        state = json.loads((run / "state" / "step-0000004" / "trainer.json").read_text())
        assert state["step"] == 4 and state["data"]["decisions"] == 192
        logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        steps = [m["step"] for m in logged if "loss" in m]
        assert steps == [1, 2, 3, 4] and (run / "final" / "model.safetensors").exists()
    # Equal decisions, unequal windows: short battles need more windows for the same budget.
    assert records["shorts.s0"]["recorded"]["samples"] > records["longs.s0"]["recorded"]["samples"]
    # 6 short battles (~54 decisions, a few hidden) cannot supply 192: the member repeats and says so.
    assert records["shorts.s0"]["repeats"] == ["short"] and records["shorts.s0"]["epochs"]["short"] > 2
    assert records["longs.s0"]["repeats"] == []
    mixed = records["both.s0"]["recorded"]["source_decisions"]
    assert mixed["short"] > 0 and mixed["long"] > 0

    # Stopped twice, resumed twice: the same losses, step by step, as a grid run straight through.
    straight = ablate.run(grid(sources, tmp_path / "straight"))
    for name in records:
        got, want = losses(tmp_path / "grid" / "members" / name), losses(tmp_path / "straight" / "members" / name)
        assert list(got) == [1, 2, 3, 4] and got == want, name
        assert straight["members"][name]["recorded"] == records[name]["recorded"]

    with pytest.raises(ValueError, match=r"longs.s0 .*budget|shorts.s0 .*other settings"):
        ablate.run(grid(sources, tmp_path / "grid", "budget.steps=5"))


def test_bad_grids_are_refused_with_the_key_named(sources, tmp_path):
    with pytest.raises(ValueError, match="unknown source"):
        grid(sources, tmp_path, "mixes.odd={nope: 1.0}")
    with pytest.raises(ValueError, match="exactly one of"):
        grid(sources, tmp_path, "sources.short.logs=[x]")
    with pytest.raises(ValueError, match="eval.anchor"):
        grid(sources, tmp_path, "eval.anchor=nobody")
    with pytest.raises(ValueError, match="none may be a mix name"):
        grid(sources, tmp_path, "eval.references={both: maxbp}", "eval.anchor=")
    with pytest.raises(ValueError, match="the grid is empty"):
        ablate.run(load_config(ablate.AblateConfig, None, [f"out={tmp_path / 'empty'}"]))
    cfg = grid(sources, tmp_path / "g", "sources.short.trajectories=[" + str(sources / "long") + "]")
    with pytest.raises(ValueError, match="no trajectories labelled 'short'"):
        ablate.run(cfg)


@pytest.mark.server
def test_a_tiny_real_grid_produces_the_table(showdown, tmp_path):
    cfg = load_config(ablate.AblateConfig, SMOKE, [f"out={tmp_path / 'smoke'}"])
    result = ablate.run(cfg, server=showdown)
    report = tmp_path / "smoke" / "report"
    md = (report / "ablation.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| agent |"))
    assert "competitive" in header and "variety" in header and "all" in header
    for name in ("heuristic", "heuristic_human", "maxbp"):
        assert f"| {name} |" in md
    rows = list(csv.DictReader((report / "ablation.csv").open()))
    cells = {(r["name"], r["team_set"]) for r in rows}
    assert {(m, t) for m in ("heuristic", "heuristic_human") for t in ("competitive", "variety", "all")} <= cells
    assert all(float(r["lo"]) <= float(r["rating"]) <= float(r["hi"]) for r in rows)
    assert (report / "ratings_by_mix.png").stat().st_size > 0
    assert (tmp_path / "smoke" / "tournament" / "report" / "report.md").exists()
    budgets = {n: r["recorded"]["decisions"] for n, r in result["members"].items()}
    assert set(budgets.values()) == {3 * 64}
    assert result["tournament"]["finished"] == result["tournament"]["planned"] == 3 * 4 * 2
    again = ablate.run(cfg, server=showdown)  # every phase done: nothing is played or trained again
    assert again["tournament"]["played_now"] == 0


def test_the_comparison_rates_labels_per_team_set_and_refuses_a_bad_tournament():
    e = EvalConfig(references={"maxbp": "maxbp"}, policy_params="temperature=0.5")
    assert e.agents({"a.s0": "/m/a"}) == {"a.s0": "policy:/m/a,temperature=0.5", "maxbp": "maxbp"}
    with pytest.raises(ValueError, match="eval.anchor='nobody'"):
        EvalConfig(anchor="nobody")
    with pytest.raises(ValueError, match="eval.battles_per_pair=10"):
        EvalConfig(battles_per_pair=10)
    # Two seeds of mix a beat maxbp 3 in 4 on one team set and lose 3 in 4 on the other; their
    # games against each other say nothing about a and are left out.
    rows = [{"agent_a": f"a.s{k % 2}", "agent_b": "maxbp", "score_a": float((k % 4 != 0) == (t == "x")),
             "error": "", "team_set": t} for t in ("x", "y") for k in range(40)]
    rows += [{"agent_a": "a.s0", "agent_b": "a.s1", "score_a": 1.0, "error": "", "team_set": "x"}] * 9
    rows += [{"agent_a": "a.s0", "agent_b": "maxbp", "score_a": None, "error": "timed out", "team_set": "y"}]
    r = rate_by_team_set(rows, {"a.s0": "a", "a.s1": "a"}, ["a", "maxbp"], ["x", "y"], n_boot=50, anchor="maxbp")
    assert list(r) == ["x", "y", "all"] and [int(r[c].games[0]) for c in r] == [40, 40, 80]
    assert r["x"].rating[0] > 1500 > r["y"].rating[0] and r["all"].rating[0] == pytest.approx(1500, abs=1)
    assert team_set_shifts(r, ["a"], ["x", "y"])[0].startswith("a: x ")


# -- the iteration ablation ------------------------------------------------------------------
def test_every_shipped_ablation_config_loads_and_validates():
    folder = REPO / "curriculum" / "configs"
    shipped = {p.name: p for p in folder.glob("*ablate*.yaml")}
    assert set(shipped) == {"ablate_gen1ou.yaml", "ablate_smoke.yaml", "stage2_ablate.yaml"}
    for name, path in shipped.items():
        cls = ablate_iteration.IterationAblationConfig if name.startswith("stage2") else ablate.AblateConfig
        assert isinstance(load_config(cls, path), cls), name
        # Validated on construction: the same file with one bad key is refused, naming the key.
        with pytest.raises(ValueError, match="eval.battles_per_pair"):
            load_config(cls, path, ["eval.battles_per_pair=6"])


def finished_chain(root: Path, student: Path, data: list[Path]) -> dict:
    """A finished chain as stage 2 leaves it: one round per data folder, each trained 2 steps on it."""
    rounds = []
    for k, folder in enumerate(data, 1):
        run = root / f"round-{k}"
        update_lineage(run, round=k, run=str(run), status="done", promoted=False, output=str(student),
                       parent={"checkpoint": str(student)}, coach={"source": "coach:test"},
                       data={"battles": {"maxbp": {"battles": 8}}},
                       training={"steps": 2, "decisions_trained": 2 * 32, "data": [str(folder)], "data_decisions": 160,
                                 "checkpoint": str(run / "final")})
        rounds.append({"round": k, "run": str(run)})
    return {"status": "done", "student": {"checkpoint": str(student)}, "coach": {"checkpoint": str(student)},
            "output": str(student), "rounds": rounds}


def test_iteration_controls_stop_resume_and_match_a_straight_run(tmp_path, monkeypatch):
    enc = ObservationEncoder()
    torch.manual_seed(0)
    student = save_checkpoint(tmp_path / "student", PolicyTransformer(PolicyConfig.preset(
        "tiny", vocab_size=enc.vocab.size, n_tokens=enc.n_tokens, n_numbers=enc.n_numbers, max_context=32)),
        encoder_version=enc.version, vocab_hash=enc.vocab.hash)
    data = [fake_battles(tmp_path / f"learner-{k}", "learner", 8, 20, seed=k, teacher=True) for k in (1, 2)]
    # Stage 2 has its own resume test (tests/test_stage2.py); here the chain is one it finished.
    monkeypatch.setattr(ablate_iteration, "run_chain", lambda chain_cfg, out: finished_chain(out / "chain", student, data))

    def run(out: Path, *overrides: str):
        return ablate_iteration.run(load_config(ablate_iteration.IterationAblationConfig, None, [
            f"out={out}", f"chain.student={student}", "chain.coach=/c", "chain.decisions_per_step=32",
            "chain.window=16", "chain.val_fraction=0.0", "chain.trainer={wandb_mode: disabled, log_every: 1, "
            "checkpoint_every: 2, eval_every: 2, warmup_steps: 1}", "stop_after=controls", *overrides]))

    controls = tmp_path / "a" / "controls"
    assert run(tmp_path / "a", "chain.trainer.stop_after_steps=3") is None  # inside the first control
    stopped = json.loads((controls / "pooled" / "control.json").read_text())
    assert stopped["finished"] is False and stopped["steps"] == 4 and not (controls / "first_round").exists()
    assert list(losses(controls / "pooled")) == [1, 2, 3]
    assert run(tmp_path / "a") is None  # resumed; stop_after=controls
    run(tmp_path / "b")  # straight through
    for name in ablate_iteration.CONTROLS:
        got, want = losses(controls / name), losses(tmp_path / "b" / "controls" / name)
        assert list(got) == [1, 2, 3, 4] and got == want, name
        record = json.loads((controls / name / "control.json").read_text())
        assert record["finished"] and record["decisions_trained"] == 4 * 32
    assert json.loads((controls / "pooled" / "control.json").read_text())["data"] == [str(d) for d in data]
    assert json.loads((controls / "first_round" / "control.json").read_text())["data"] == [str(data[0])]
