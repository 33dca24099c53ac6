"""Curriculum stage 1 for real: a tiny stage on the local server, stopped and resumed in every phase."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import torch

from battles.build import build
from battles.config import load_config
from battles.logs import count_battles, read_battle_logs
from battles.shards import list_shards
from curriculum import stage1_play as selfplay
from curriculum.imitation import PretrainConfig
from curriculum.imitation import train_imitation as pretrain
from curriculum.lineage import chain, format_chain
from curriculum.losses import behaviour_cloning
from eval.match import Match
from eval.tournament import read_results
from models.checkpoint import load_checkpoint
from models.policy import PolicyConfig, PolicyTransformer

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "curriculum" / "configs" / "stage1_smoke.yaml"

def toy_batch():
    """Two one-window battles: the first won, the second lost; both take action 0 of 3 legal."""
    legal = torch.zeros(2, 5, 13, dtype=torch.bool)
    legal[..., :3] = True
    ones = torch.ones(2, 5, dtype=torch.bool)
    return {"tokens": torch.randint(1, 50, (2, 5, 4)), "numbers": torch.randn(2, 5, 3), "legal": legal,
            "action": torch.zeros(2, 5, dtype=torch.long), "mask": ones, "loss_mask": ones,
            "outcome": torch.tensor([1.0, -1.0])}


def test_loss_imitates_wins_only_but_values_every_decision():
    torch.manual_seed(0)
    model = PolicyTransformer(PolicyConfig.preset("tiny", vocab_size=50, n_tokens=4, n_numbers=3))
    batch = toy_batch()
    _, every = behaviour_cloning(0.5)(model, batch)
    _, wins = behaviour_cloning(0.5, wins_only=True)(model, batch)
    assert every["decisions"] == 10 and wins["decisions"] == 5
    assert wins["value_loss"] == every["value_loss"]  # the critic still sees the lost battle
    won_only = {k: v[:1] for k, v in batch.items()}
    _, reference = behaviour_cloning(0.5)(model, won_only)
    assert wins["policy_loss"] == pytest.approx(float(reference["policy_loss"]))
    # Advantage weighting: the won battle's decisions weigh more than the lost one's.
    _, awr = behaviour_cloning(0.5, awr_beta=0.5)(model, batch)
    assert awr["awr_ess"] < 1.0
    assert abs(float(awr["policy_loss"]) - float(reference["policy_loss"])) < abs(
        float(every["policy_loss"]) - float(reference["policy_loss"]))


@pytest.fixture(scope="module")
def parent(tmp_path_factory, showdown):
    """A tiny policy pretrained for a few steps on a few real heuristic battles."""
    root = tmp_path_factory.mktemp("parent")
    Match("tactician", "maxbp", battle_format="gen1ou", team_set="competitive", n=8, out_dir=root / "battles",
          server=showdown, progress=False).run()
    build([root / "battles"], root / "trajectories", progress=False)
    pretrain(load_config(PretrainConfig, None, [
        f"run_dir={root / 'pretrain'}", f"data=[{root / 'trajectories'}]", "mix=selfplay:1.0", "formats=[gen1ou]",
        "val_fraction=0", "trainer.max_steps=4", "trainer.batch_size=4", "trainer.warmup_steps=1",
        "trainer.wandb_mode=disabled"]))
    return root / "pretrain" / "final"


def stage_cfg(run, parent, *overrides):
    return load_config(selfplay.SelfPlayConfig, SMOKE, [
        f"run_dir={run}", f"parent={parent}", "concurrency=6", "steps=0", "epochs=2", "trainer.batch_size=4",
        "parent_data_share=0.3", *overrides])


def snapshot(folder):
    return {str(p): p.stat().st_mtime_ns for p in list_shards(folder)}


@pytest.fixture(scope="module")
def built(tmp_path_factory, parent, showdown):
    """A stage stopped after playing, then after building; what each step saw is kept for the tests."""
    run = tmp_path_factory.mktemp("stage") / "built"
    seen = {"play": selfplay.run(stage_cfg(run, parent, "stop_after=play"), server=showdown)}
    seen["battles_after_play"] = snapshot(run / "battles")
    seen["trajectories_after_play"] = (run / "learner").exists()
    seen["build"] = selfplay.run(stage_cfg(run, parent, "stop_after=build"), server=showdown)
    return run, seen


@pytest.mark.server
def test_play_and_build_resume_without_redoing_work(built, parent):
    run, seen = built
    assert seen["play"]["status"] == "played" and not seen["trajectories_after_play"]
    battles = seen["play"]["data"]["battles"]
    assert {k: v["battles"] for k, v in battles.items()} == {"bestdamage": 6, "maxbp": 6}
    assert count_battles(run / "battles") == 12
    # The second invocation skipped play: the same shards, untouched.
    assert snapshot(run / "battles") == seen["battles_after_play"]
    record = seen["build"]
    assert record["status"] == "built"
    # Only the learner's own side (its role recorded with each battle) is built: one trajectory a battle.
    learner = pq.read_table(list_shards(run / "learner"), columns=["agent", "battle_id", "outcome"]).to_pylist()
    assert len(learner) == 12 == len({r["battle_id"] for r in learner}) == record["data"]["learner"]["trajectories"]
    assert all(r["agent"].startswith(f"policy:{parent},temperature=1,seed=") for r in learner)
    roles = pq.read_table(list_shards(run / "battles"), columns=["roles"])["roles"].to_pylist()
    assert all(json.loads(r) == {"p1": "learner"} for r in roles)
    wins = sum(b["learner_wins"] for b in battles.values())
    assert wins == sum(r["outcome"] == 1 for r in learner)
    sizes = record["data"]["learner"]["shards"]
    assert sizes and all(s["bytes"] > 0 for s in sizes)


@pytest.mark.server
def test_killed_while_building_resumes_the_build(built, parent, showdown, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(built[0], run)
    before = snapshot(run / "learner")
    rows = pq.read_table(list_shards(run / "learner")).num_rows
    # As if killed while the learner's trajectories were written: the marker missing, a half shard left.
    (run / "phases" / "build.json").unlink()
    half = run / "learner" / "learner-99999.parquet.4194305.tmp"  # a pid no process has here
    half.write_bytes(b"half a shard")
    selfplay.run(stage_cfg(run, parent, "stop_after=build"), server=showdown)
    assert snapshot(run / "learner") == before  # every battle was already built: nothing rebuilt
    assert pq.read_table(list_shards(run / "learner")).num_rows == rows and not half.exists()


def losses(run):
    return [(m["step"], round(m["loss"], 6)) for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in m]


@pytest.mark.server
def test_stage_trains_evaluates_and_writes_lineage_resuming_mid_phase(built, parent, showdown, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    shutil.copytree(built[0], full)
    shutil.copytree(built[0], split)
    selfplay.run(stage_cfg(full, parent, "stop_after=train"), server=showdown)  # uninterrupted

    # Killed mid-training: the trainer resumes from its state and ends where an uninterrupted run ends.
    record = selfplay.run(stage_cfg(split, parent, "trainer.stop_after_steps=3"), server=showdown)
    assert record["status"] == "training" and not (split / "final").exists()
    record = selfplay.run(stage_cfg(split, parent, "stop_after=train"), server=showdown)
    training = record["training"]
    windows = training["windows_per_epoch"]
    assert training["max_steps"] == math.ceil(2 * windows / (4 * 0.7)) == training["steps"]
    assert [s for s, _ in losses(split)] == list(range(1, training["steps"] + 1))
    assert losses(split) == losses(full)  # the same batches, dropout masks and weights
    child, _ = load_checkpoint(split / "final")
    parent_model, _ = load_checkpoint(parent)
    assert any(not torch.equal(a, b) for a, b in zip(child.state_dict().values(), parent_model.state_dict().values()))

    # Stopped mid-tournament: the next run plays only the rest, then decides.
    record = selfplay.run(stage_cfg(split, parent, "promotion.max_battles=10"), server=showdown)
    assert record["status"] == "evaluating" and len(read_results(split / "tournament")) == 10
    record = selfplay.run(stage_cfg(split, parent), server=showdown)
    results = read_results(split / "tournament")
    assert len(results) == 24 == len({r["key"] for r in results})  # child, parent, 2 opponents: 6 pairs x 4
    assert {r["agent_a"] for r in results} | {r["agent_b"] for r in results} == {"child", "parent", "bestdamage", "maxbp"}

    lineage = json.loads((split / "lineage.json").read_text())
    assert lineage["status"] == "done" and isinstance(lineage["promoted"], bool)
    assert lineage["parent"]["checkpoint"] == str(parent)
    assert lineage["parent"]["pretrain_data"] == [str(parent.parent.parent / "trajectories")]
    assert lineage["config"]["battles"] == 12 and lineage["data"]["battles"]["maxbp"]["shards"]
    assert lineage["training"]["parent_data"] == lineage["parent"]["pretrain_data"]
    assert set(lineage["tournament"]["ratings"]) == {"child", "parent", "bestdamage", "maxbp"}
    decision = lineage["decision"]
    assert decision["promoted"] == (decision["child"]["lo"] > decision["parent"]["rating"])
    assert lineage["output"] == (str(split / "final") if lineage["promoted"] else str(parent))
    assert (split / "NOT_PROMOTED.txt").exists() != lineage["promoted"]
    assert (split / "tournament" / "report" / "report.md").exists()
    nodes = chain(split)
    assert [n["kind"] for n in nodes] == ["pretrain", "stage"] and "stage1" in format_chain(nodes)

    # A finished stage run again is a no-op.
    metrics = (split / "metrics.jsonl").read_text()
    again = selfplay.run(stage_cfg(split, parent), server=showdown)
    assert again["decision"] == record["decision"] and len(read_results(split / "tournament")) == 24
    assert (split / "metrics.jsonl").read_text() == metrics


@pytest.mark.server
def test_lora_fine_tuning_saves_a_plain_merged_checkpoint(built, parent, showdown, tmp_path):
    run = tmp_path / "lora"
    shutil.copytree(built[0], run)
    (run / "config.yaml").unlink()  # a new stage on the same play
    record = selfplay.run(stage_cfg(run, parent, "finetune=lora", "lora_targets=[qkv]", "lora_rank=4", "steps=3",
                                    "trainer.lr=1e-2", "stop_after=train"), server=showdown)
    assert record["training"]["trainable_parameters"] == 2 * 4 * (128 + 3 * 128)  # 2 layers of A and B
    child, info = load_checkpoint(run / "final")  # strict load: no adapter keys are left
    assert info.metadata["finetune"] == "lora" and info.metadata["parent"] == str(parent)
    before = load_checkpoint(parent)[0].state_dict()
    changed = {k for k, v in child.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"blocks.0.attn.qkv.weight", "blocks.1.attn.qkv.weight"}


@pytest.mark.server
def test_killed_while_playing_resumes_to_exactly_the_planned_battles(parent, showdown, tmp_path):
    run = tmp_path / "killed"
    overrides = ["battles=24", "shard_battles=3", "opponents={maxbp: 1.0}", "stop_after=play"]
    cmd = [sys.executable, "-m", "curriculum.stage1_play", "--config", str(SMOKE), f"run_dir={run}",
           f"parent={parent}", "concurrency=6", "steps=0", "epochs=2", "trainer.batch_size=4",
           "parent_data_share=0.3", *overrides]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600  # a bound, not a timing: the loop ends at 3 battles or the process' end
        while time.monotonic() < deadline and proc.poll() is None and \
                (count_battles(run / "battles") if (run / "battles").exists() else 0) < 3:
            time.sleep(0.05)
        assert proc.poll() is None, "the stage ended before it could be killed"
    finally:
        # No clean-up chance: the process and its Showdown server die at once.
        for p in [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=10)
    kept = snapshot(run / "battles")
    done = count_battles(run / "battles")
    assert 3 <= done < 24
    record = selfplay.run(stage_cfg(run, parent, *overrides), server=showdown)
    assert record["data"]["battles"]["maxbp"]["battles"] == 24 == count_battles(run / "battles")
    ids = [r.id for r in read_battle_logs(run / "battles")]
    assert len(set(ids)) == 24
    assert all(snapshot(run / "battles")[p] == t for p, t in kept.items())  # nothing recorded was replayed


@pytest.mark.server
def test_play_over_two_workers_records_each_planned_battle_once(parent, tmp_path):
    """`workers=2`: two processes, each with its own simulator host, play the plan between them."""
    run = tmp_path / "w2"
    record = selfplay.run(stage_cfg(run, parent, "stop_after=play", "workers=2"))
    assert record["status"] == "played"
    rows = pq.read_table(list_shards(run / "battles"), columns=["id", "roles", "p1_spec"]).to_pylist()
    assert len(rows) == 12 == len({r["id"] for r in rows})
    assert all(json.loads(r["roles"]) == {"p1": "learner"} and r["p1_spec"].startswith(f"policy:{parent},")
               for r in rows)
    prefixes = {Path(p).name.split("-")[1] for p in list_shards(run / "battles" / "bestdamage")}
    assert len(prefixes) == 2  # both workers wrote shards of their own
