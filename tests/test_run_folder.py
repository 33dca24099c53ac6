"""A run folder has one owner, a finished run started again is unchanged, and a kill
between a state save and its checkpoint is repaired on resume. Real trainings, real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from battles.build import build
from battles.config import load_config
from curriculum.imitation import PretrainConfig
from curriculum.imitation import train_imitation as pretrain
from curriculum.run_folder import LOCK_NAME
from curriculum.trainer import Trainer, TrainerConfig
from tests.test_trainer import SyntheticBattles, bc_loss, make_model

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("traj")
    build([REPO / "battles" / "data" / "replays"], out, progress=False)
    return out


def pretrain_args(run_dir: Path, data: Path) -> list[str]:
    return [f"run_dir={run_dir}", f"data=[{data}]", "mix=human:1.0", "window=16", "val_fraction=0.3", "trainer.threads=1",
            "trainer.max_steps=4", "trainer.checkpoint_every=2", "trainer.eval_every=2", "trainer.log_every=1",
            "trainer.batch_size=4", "trainer.wandb_mode=disabled"]


def metric_steps(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


def snapshot(run_dir: Path) -> dict[str, tuple[str, int]]:
    """Every file but the lock: its content hash and modification time."""
    return {p.relative_to(run_dir).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


def test_a_second_command_on_a_running_folder_stops_and_the_first_is_unharmed(tmp_path, trajectories):
    run_dir = tmp_path / "run"
    second: list[subprocess.CompletedProcess] = []

    def loss_then_second_command(model, batch):
        if not second and model.training:  # mid-training: the first run holds the folder now
            second.append(subprocess.run(
                [sys.executable, "-m", "curriculum.stage0_pretrain", *pretrain_args(run_dir, trajectories)],
                cwd=REPO, env=ENV, capture_output=True, text=True))
        return bc_loss(model, batch)

    cfg = TrainerConfig(max_steps=8, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=4, log_every=1,
                        eval_every=4, wandb_mode="disabled")
    result = Trainer(cfg, run_dir, make_model(), loss_then_second_command, SyntheticBattles(),
                     val_data=[b for _, b in zip(range(2), SyntheticBattles(seed=9))],
                     save_model=lambda m, p, meta: p.mkdir(parents=True, exist_ok=True)).fit()
    refused = second[0]
    assert refused.returncode != 0
    message = refused.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: run folder {run_dir.resolve()} is in use by pid {os.getpid()} on "), message
    assert "Traceback" not in refused.stderr
    assert not (run_dir / "config.yaml").exists()  # the refused command wrote nothing
    assert result.finished and result.step == 8
    assert metric_steps(run_dir) == list(range(1, 9))  # every step once
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-0000004", "step-0000008"]
    assert (run_dir / LOCK_NAME).read_text() == ""  # released


def test_stage0_stopped_and_resumed_learns_what_an_uninterrupted_run_learns(tmp_path, trajectories):
    full = pretrain(load_config(PretrainConfig, None, pretrain_args(tmp_path / "full", trajectories)))
    stopped = pretrain(load_config(PretrainConfig, None, [*pretrain_args(tmp_path / "split", trajectories),
                                                          "trainer.stop_after_steps=3"]))
    assert stopped.step == 3 and not stopped.finished
    resumed = pretrain(load_config(PretrainConfig, None, pretrain_args(tmp_path / "split", trajectories)))
    assert full.finished and resumed.finished and resumed.step == full.step == 4

    def losses(run_dir):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], round(r["loss"], 6)) for r in rows if "loss" in r]

    assert [s for s, _ in losses(tmp_path / "split")] == [1, 2, 3, 4]
    assert losses(tmp_path / "split") == losses(tmp_path / "full")


def test_a_crashed_owner_leaves_no_stuck_lock(tmp_path):
    run_dir = tmp_path / "run"
    code = ("import os, signal, sys; from curriculum.run_folder import run_dir_lock\n"
            "with run_dir_lock(sys.argv[1]):\n    os.kill(os.getpid(), signal.SIGKILL)")
    crashed = subprocess.run([sys.executable, "-c", code, str(run_dir)], cwd=REPO, env=ENV)
    assert crashed.returncode == -signal.SIGKILL
    assert (run_dir / LOCK_NAME).read_text().startswith("pid ")  # it died holding the lock
    cfg = TrainerConfig(max_steps=2, batch_size=4, log_every=1, wandb_mode="disabled")
    assert Trainer(cfg, run_dir, make_model(), bc_loss, SyntheticBattles()).fit().finished


def test_a_finished_run_started_again_is_unchanged(tmp_path, trajectories, capsys):
    run_dir = tmp_path / "run"
    cfg = load_config(PretrainConfig, None, pretrain_args(run_dir, trajectories))
    first = pretrain(cfg)
    before = snapshot(run_dir)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    again = pretrain(cfg)
    assert snapshot(run_dir) == before
    assert capsys.readouterr().out.strip().splitlines()[-1] == printed
    assert "loss nan" not in printed and "val {}" not in printed
    assert (again.step, again.finished, again.last_metrics, again.val_metrics) == (
        first.step, first.finished, first.last_metrics, first.val_metrics)
    meta = json.loads((run_dir / "final" / "config.json").read_text())["metadata"]
    assert meta["loss"] == first.last_metrics["loss"] and meta["val_loss"] == first.val_metrics["val_loss"]


def test_a_kill_between_state_and_checkpoint_is_repaired_on_resume(tmp_path, trajectories):
    run_dir = tmp_path / "run"
    cfg = load_config(PretrainConfig, None, pretrain_args(run_dir, trajectories))
    pretrain(cfg)
    kept = tmp_path / "kept"
    for name in ("final", "checkpoints/step-0000004"):
        shutil.copytree(run_dir / name, kept / name)
        shutil.rmtree(run_dir / name)
    # What a kill after state/step-0000004 was saved leaves: no checkpoint, its temporary folders.
    (run_dir / "checkpoints" / ".step-0000004.tmp-0123abcd").mkdir()
    (run_dir / ".final.tmp-89abcdef").mkdir()
    (run_dir / "state" / ".tmp-step-0000004").mkdir()
    metrics = (run_dir / "metrics.jsonl").read_text()
    result = pretrain(cfg)
    assert result.finished and result.step == 4
    for name in ("final", "checkpoints/step-0000004"):
        a, b = load_file(str(kept / name / "model.safetensors")), load_file(str(run_dir / name / "model.safetensors"))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
        assert json.loads((kept / name / "config.json").read_text()) == json.loads((run_dir / name / "config.json").read_text())
    assert sorted(p.name for p in run_dir.rglob(".*")) == []  # no temporary folder outlived its write
    assert (run_dir / "metrics.jsonl").read_text() == metrics

    # A kill while replacing final put the old one aside and had not renamed the new one in yet.
    os.rename(run_dir / "final", run_dir / ".final.old-deadbeef")
    pretrain(cfg)
    assert (run_dir / "final" / "model.safetensors").read_bytes() == (kept / "final" / "model.safetensors").read_bytes()
    assert not (run_dir / ".final.old-deadbeef").exists()


# The child kills itself inside the save, at a point a poller could miss: after `module.name`
# wrote into the save's temporary folder (named by `prefix`), before the folder is renamed.
_DIE_IN_SAVE = """
import os, runpy, signal, sys
from pathlib import Path
import {module} as m
inner = m.{name}
def dying(*args, **kwargs):
    out = inner(*args, **kwargs)
    if Path(args[{arg}]).parent.name.startswith({prefix!r}):
        os.kill(os.getpid(), signal.SIGKILL)
    return out
m.{name} = dying
sys.argv = ["stage0_pretrain", *sys.argv[1:]]
runpy.run_module("curriculum.stage0_pretrain", run_name="__main__")
"""


@pytest.mark.parametrize("during", ["state save", "checkpoint save", "final save"])
def test_sigkill_during_a_save_then_resume_keeps_every_checkpoint_and_metrics_once(tmp_path, trajectories, during):
    run_dir = tmp_path / "run"
    where = {"state save": ("curriculum.trainer", "write_json", 0, ".tmp-step-"),
             "checkpoint save": ("models.checkpoint", "save_file", 1, ".step-"),
             "final save": ("models.checkpoint", "save_file", 1, ".final.tmp-")}[during]
    code = _DIE_IN_SAVE.format(module=where[0], name=where[1], arg=where[2], prefix=where[3])
    args = pretrain_args(run_dir, trajectories)
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before any {during}: {proc.stderr[-2000:]}"
    assert any(p.name.startswith(where[3]) for p in run_dir.rglob(".*"))  # the save was cut short
    result = pretrain(load_config(PretrainConfig, None, args))
    assert result.finished and result.step == 4
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert (run_dir / "final" / "model.safetensors").is_file()
    assert metric_steps(run_dir) == [1, 2, 3, 4]
    assert sorted(p.name for p in run_dir.rglob(".*")) == []


@pytest.mark.parametrize("recipe", ["curriculum.stage1_play", "curriculum.stage3_search", "curriculum.stage2_coach",
                                    "curriculum.study_imitation"])
def test_every_recipe_refuses_a_folder_in_use_before_it_plays(tmp_path, recipe):
    """Another process holds the folder: the recipe stops at once with one line, writing nothing
    (before, a stage played its battles first and met the lock only when training began)."""
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from curriculum.run_folder import "
                               f"run_dir_lock\nwith run_dir_lock({str(run_dir)!r}):\n print('held', flush=True)\n"
                               " time.sleep(120)"], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = [f"run_dir={run_dir}", "parent=models/bundled/qabra-gen1ou", "coach=models/bundled/qabra-gen1ou",
                "student=models/bundled/qabra-gen1ou"]
        known = {"curriculum.stage1_play": args[:2], "curriculum.stage3_search": args[:2],
                 "curriculum.stage2_coach": [args[0], args[2], args[3]], "curriculum.study_imitation": args[:1]}[recipe]
        done = subprocess.run([sys.executable, "-m", recipe, *known], cwd=REPO, env=ENV, capture_output=True,
                              text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert f"run folder {run_dir.resolve()} is in use by pid {holder.pid}" in last, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # nothing played, nothing written
