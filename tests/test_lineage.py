"""Lineage: resolving parents and printing the chain from pretraining to a stage (no server)."""

from __future__ import annotations

import json

import pytest
import yaml

from curriculum.lineage import (
    chain,
    format_chain,
    main,
    read_lineage,
    resolve_parent,
    update_lineage,
)
from models.checkpoint import save_checkpoint
from models.policy import PolicyConfig, PolicyTransformer


def checkpoint(path, **metadata):
    model = PolicyTransformer(PolicyConfig.preset("tiny", vocab_size=50, n_tokens=4, n_numbers=3))
    return save_checkpoint(path, model, encoder_version=1, vocab_hash="h", metadata=metadata)


def stage(run, parent_ckpt, parent_run, promoted, output, gain):
    decision = {"child": {"rating": 1500 + gain, "lo": 1480 + gain, "hi": 1520 + gain},
                "parent": {"rating": 1500, "lo": 1480, "hi": 1520}, "gain": gain,
                "reason": "because" if promoted else "not significant"}
    update_lineage(run, stage=run.name, status="done", parent={"checkpoint": str(parent_ckpt), "run": str(parent_run)},
                   data={"battles": {"tactician": {"battles": 60, "learner_wins": 30}},
                         "learner": {"trajectories": 60, "decisions": 2400, "shards": [{"path": "x"}]}},
                   training={"steps": 40, "epochs": 4, "finetune": "full"}, decision=decision,
                   promoted=promoted, output=str(output))


@pytest.fixture
def runs(tmp_path):
    pre = tmp_path / "pretrain"
    pre.mkdir()
    (pre / "config.yaml").write_text(yaml.safe_dump({"data": ["runs/q/trajectories"], "mix": {"selfplay": 1.0},
                                                     "preset": "tiny", "trainer": {"max_steps": 1500}}))
    checkpoint(pre / "final", recipe="pretrain", run_dir=str(pre), step=1500, loss=1.2)
    a, b = tmp_path / "stage1a", tmp_path / "stage1b"
    checkpoint(a / "final", recipe="selfplay", run_dir=str(a))
    stage(a, pre / "final", pre, True, a / "final", gain=80)
    stage(b, a / "final", a, False, a / "final", gain=10)  # not promoted: its output is its parent
    return pre, a, b


def test_chain_runs_from_pretraining_to_the_stage(runs):
    pre, a, b = runs
    nodes = chain(b)
    assert [n["kind"] for n in nodes] == ["pretrain", "stage", "stage"]
    assert [n["run"] for n in nodes] == [str(pre), str(a), str(b)]
    assert nodes[0]["steps"] == 1500 and nodes[0]["final_metrics"]["loss"] == 1.2
    text = format_chain(nodes)
    assert text.index(f"pretrain  {pre}") < text.index(f"stage1a  {a}  PROMOTED") < text.index(
        f"stage1b  {b}  not promoted")
    assert "+80" in text and "not significant" in text and "60 battles (tactician 60)" in text


def test_cli_prints_the_chain_and_json(runs, capsys):
    pre, a, b = runs
    main([str(b)])
    out = capsys.readouterr().out
    assert str(pre) in out and "stage1b" in out
    main([str(a), "--json"])
    nodes = json.loads(capsys.readouterr().out)
    assert [n["kind"] for n in nodes] == ["pretrain", "stage"]
    with pytest.raises(SystemExit, match="no lineage.json"):
        main([str(pre.parent / "nothing")])


def test_resolve_parent_from_checkpoint_pretrain_run_or_stage(runs, tmp_path):
    pre, a, b = runs
    assert resolve_parent(pre) == (pre / "final", pre)
    assert resolve_parent(pre / "final") == (pre / "final", pre)
    assert resolve_parent(b) == (a / "final", b)  # a stage's output, and the stage itself as the run
    update_lineage(tmp_path / "unfinished", status="played", output=None)
    with pytest.raises(ValueError, match="has not finished"):
        resolve_parent(tmp_path / "unfinished")
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        resolve_parent(tmp_path / "missing")


def test_the_bundled_model_is_a_parent_despite_its_lineage_file():
    """A bundled checkpoint keeps its lineage.json beside its weights (it has no run folder
    here): a curriculum starts from it (README), it is not taken for an unfinished stage."""
    from agents.registry import bundled_path

    checkpoint, _ = resolve_parent(bundled_path())
    assert checkpoint == bundled_path() and (checkpoint / "lineage.json").is_file()


def test_update_merges_and_a_loop_is_an_error(tmp_path):
    x, y = tmp_path / "x", tmp_path / "y"
    update_lineage(x, status="played", parent={"checkpoint": "c", "run": str(y)})
    update_lineage(x, status="built")
    assert read_lineage(x)["parent"]["run"] == str(y) and read_lineage(x)["status"] == "built"
    update_lineage(y, status="done", parent={"checkpoint": "c", "run": str(x)})
    with pytest.raises(ValueError, match="loop"):
        chain(x)
