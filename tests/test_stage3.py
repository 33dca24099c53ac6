"""Curriculum stage 3 for real: the search bot as opponent, teacher and expert, on the local server."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from battles.config import load_config
from battles.encode import ObservationEncoder
from battles.logs import count_battles
from battles.shards import list_shards
from battles.trajectories import read_trajectories
from curriculum import stage3_search as stage3
from eval.tournament import read_results
from models.checkpoint import load_checkpoint, save_checkpoint
from models.policy import PolicyConfig, PolicyTransformer

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "curriculum" / "configs" / "stage3_smoke.yaml"


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="search=.*search bot spec"):
        load_config(stage3.SearchStageConfig, SMOKE, ["search=tactician"])
    with pytest.raises(ValueError, match="leave labels out"):
        load_config(stage3.SearchStageConfig, SMOKE, ["search=search:ms=10,labels=x"])
    with pytest.raises(ValueError, match="sources"):
        load_config(stage3.SearchStageConfig, SMOKE, ["sources={student: 1.0, coach: 1.0}"])
    with pytest.raises(ValueError, match="sources.expert needs the search bot"):
        load_config(stage3.SearchStageConfig, SMOKE, ["opponents={maxbp: 1.0}"])
    cfg = load_config(stage3.SearchStageConfig, SMOKE, ["opponents={maxbp: 1.0}", "sources={student: 1.0}"])
    play = stage3.play_config(cfg, tmp_path)
    assert play.opponents == {"maxbp": 1.0}
    cfg = load_config(stage3.SearchStageConfig, SMOKE)
    assert stage3.play_config(cfg, tmp_path).opponents == {
        f"search:ms=20,samples=1,labels={tmp_path / 'labels' / 'expert'},label_min_visits=0": 0.5, "maxbp": 0.5}
    assert stage3.pool_config(cfg).opponents == {"search:ms=20,samples=1": 0.5, "maxbp": 0.5}


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    enc = ObservationEncoder()
    torch.manual_seed(3)
    model = PolicyTransformer(PolicyConfig.preset("tiny", vocab_size=enc.vocab.size, n_tokens=enc.n_tokens,
                                                  n_numbers=enc.n_numbers, max_context=32))
    path = tmp_path_factory.mktemp("parent") / "tiny"
    save_checkpoint(path, model, encoder_version=enc.version, vocab_hash=enc.vocab.hash, metadata={"step": 0})
    return path


@pytest.fixture(scope="module")
def stage(tmp_path_factory, parent, showdown):
    """The stage stopped after labelling, then after 2 training steps, then finished; what each
    invocation saw is kept."""
    logging.getLogger("agents.search").setLevel(logging.ERROR)
    run = tmp_path_factory.mktemp("stage3") / "run"
    over = [f"run_dir={run}", f"parent={parent}"]
    seen = {"label": stage3.run(load_config(stage3.SearchStageConfig, SMOKE, [*over, "stop_after=label"]),
                                server=showdown)}
    seen["labels_mtime"] = {p: p.stat().st_mtime_ns for p in (run / "labels").rglob("*.json")}
    seen["train_part"] = stage3.run(load_config(stage3.SearchStageConfig, SMOKE, [*over, "trainer.stop_after_steps=2"]),
                                    server=showdown)
    seen["done"] = stage3.run(load_config(stage3.SearchStageConfig, SMOKE, over), server=showdown)
    return run, seen


@pytest.mark.server
def test_a_stage_stopped_mid_training_learns_what_an_uninterrupted_stage_learns(stage, parent, showdown, tmp_path):
    run, seen = stage
    assert seen["train_part"]["status"] == "training" and seen["train_part"]["training"]["steps"] == 2
    # The same stage up to its label phase, in a new folder, trained without a stop.
    shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns(
        "lineage.json", "state", "checkpoints", "final", "tournament", "metrics.jsonl", "train.json",
        "evaluate.json", "run.lock", "wandb*", "NOT_PROMOTED.txt"))
    over = [f"run_dir={tmp_path / 'run'}", f"parent={parent}", "stop_after=train"]
    assert stage3.run(load_config(stage3.SearchStageConfig, SMOKE, over), server=showdown)["status"] == "trained"

    def losses(folder):
        lines = map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
        return [(m["step"], round(m["loss"], 6), round(m["kl"], 6)) for m in lines if "loss" in m]

    assert [s for s, *_ in losses(run)] == [1, 2, 3]
    assert losses(tmp_path / "run") == losses(run)  # the same batches, dropout masks and weights


@pytest.mark.server
def test_the_student_learns_from_search_labels_and_expert_games(stage, parent):
    run, seen = stage
    assert seen["label"]["status"] == "labelled" and count_battles(run / "battles") == 4
    # Both sources were labelled in full: every student trajectory (4 battles) and the bot's 2.
    labels = json.loads((run / "phases" / "label.json").read_text())
    assert labels["student"]["kept"]["trajectories"] == 4 and labels["expert"]["kept"]["trajectories"] == 2
    for source in ("student", "expert"):
        counts = labels[source]["joined"]  # each recorded label found its decision: none left over
        assert counts["trajectories_labelled"] == labels[source]["kept"]["trajectories"]
        assert counts["unused_entries"] == 0 and counts["ambiguous_entries"] == 0
        for t in (t for s in list_shards(run / f"{source}-labelled") for t in read_trajectories(s)):
            assert t.teacher_source.startswith("search:ms=")
            mass = t.teacher.sum(axis=1)  # a distribution, or no label (forced, or a differing decision)
            assert np.allclose(mass[mass > 0], 1.0, atol=1e-4) and (t.teacher[~t.legal] == 0).all()
            assert (mass > 0).sum() >= 0.8 * t.legal.any(axis=1).sum()
            if source == "student":
                assert t.agent.startswith(f"policy:{parent},")
            else:
                assert t.agent.startswith("search:")
    # Resumed without playing or labelling again, then trained on both sources and judged.
    assert seen["labels_mtime"] == {p: p.stat().st_mtime_ns for p in (run / "labels").rglob("*.json")}
    record = json.loads((run / "lineage.json").read_text())
    assert record["status"] == "done" and record["recipe"] == "curriculum.stage3_search"
    t = record["training"]
    assert t["steps"] == 3 and set(t["mix"]) == {"student", "expert"} and t["last_metrics"]["kl"] > 0
    child, info = load_checkpoint(run / "final")
    assert info.metadata["recipe"] == "learn_from_search"
    before, _ = load_checkpoint(parent)
    assert any(not torch.equal(a, b) for a, b in zip(child.state_dict().values(), before.state_dict().values()))
    results = read_results(run / "tournament")
    assert len(results) == 24  # child, parent, the search bot, maxbp: 6 pairs x 4
    assert set(record["tournament"]["ratings"]) == {"child", "parent", "search_ms_20_samples_1", "maxbp"}
    assert record["output"] in (str(run / "final"), str(parent))
