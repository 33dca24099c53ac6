"""The supervisor restarts a failing command with back-off, logs why, and knows when to stop;
offline wandb attempts of one run merge into one history."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

from curriculum.supervise import Supervisor, describe_exit, merge_wandb, run_dir_from_command
from curriculum.trainer import Trainer, TrainerConfig
from tests.test_trainer import SyntheticBattles, bc_loss, make_model


def script(code: str) -> list[str]:
    return [sys.executable, "-c", code]


FLAKY = """
import pathlib, sys
counter = pathlib.Path(sys.argv[1]) / "count"
n = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(n + 1))
if {progress}:
    (pathlib.Path(sys.argv[1]) / "state" / f"step-{{n + 1:07d}}").mkdir(parents=True)
print(f"boom on attempt {{n + 1}}", file=sys.stderr)
sys.exit(0 if n >= {fail_times} else 3)
"""


def test_restarts_with_backoff_until_success(tmp_path):
    sup = Supervisor([*script(FLAKY.format(progress=False, fail_times=2)), str(tmp_path)], tmp_path,
                     backoff=0.01, max_backoff=1.0)
    assert sup.run() == 0
    assert [a.returncode for a in sup.attempts] == [3, 3, 0]
    assert sup.delays == [0.01, 0.02]  # no new state in between: the wait doubles
    log = (tmp_path / "supervisor.log").read_text()
    assert "attempt 1 failed" in log and "exit code 3" in log and "boom on attempt 1" in log
    assert "attempt 3 finished" in log


def test_progress_resets_the_backoff_and_no_progress_gives_up(tmp_path):
    progress = tmp_path / "progress"
    sup = Supervisor([*script(FLAKY.format(progress=True, fail_times=3)), str(progress)], progress,
                     backoff=0.01, max_restarts=1)
    assert sup.run() == 0  # 3 failures, but each saved a new state: never more than 1 in a row
    assert sup.delays == [0.01, 0.01, 0.01]
    assert [a.step_after for a in sup.attempts] == [1, 2, 3, 4]

    stuck = tmp_path / "stuck"
    sup = Supervisor(script("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"), stuck,
                     backoff=0.01, max_restarts=2)
    assert sup.run() == 128 + 9
    assert len(sup.attempts) == 3 and sup.delays == [0.01, 0.02]
    log = (stuck / "supervisor.log").read_text()
    assert "killed by SIGKILL" in log and "giving up" in log


def test_cause_and_run_dir_are_read_from_the_command(tmp_path):
    tail = ["  rank      : 3 (local_rank: 3)", "  exitcode  : -9 (pid: 77)  (SIGKILL)"]
    assert "rank 3: -9 (SIGKILL)" in describe_exit(1, tail)
    assert "batch_size" in describe_exit(1, ["torch.OutOfMemoryError: CUDA out of memory."])
    config = tmp_path / "c.yaml"
    config.write_text("run_dir: runs/big\n")
    assert str(run_dir_from_command(["torchrun", "-m", "x", "--config", str(config)])) == "runs/big"
    assert str(run_dir_from_command(["x", "--config", str(config), "run_dir=runs/b"])) == "runs/b"
    assert run_dir_from_command(["x"]) is None


def test_offline_attempts_merge_into_one_history(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)

    def attempt(**extra):
        cfg = TrainerConfig(max_steps=8, batch_size=2, warmup_steps=1, checkpoint_every=3,
                            log_every=1, eval_every=100, wandb_mode="offline", **extra)
        Trainer(cfg, tmp_path, make_model(), bc_loss, SyntheticBattles(batch=2, length=4)).fit()

    attempt(stop_after_steps=4)  # the first attempt "dies" after step 4's state
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines + [lines[-1]]) + "\n{\"step\": 5, \"lo")
    (tmp_path / "state" / "step-0000004").rename(tmp_path / "state" / "step-0000005x")  # lost
    attempt()  # resumes from step 3 and logs 4.. again
    run_id = (tmp_path / "wandb_id").read_text().strip()
    assert len(list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}*"))) == 2

    folder = merge_wandb(tmp_path)
    assert (folder / f"run-{run_id}.wandb").exists()
    history = [json.loads(x) for x in (tmp_path / "wandb-merged" / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == list(range(1, 9))  # ordered, each step once
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in history)


def test_stop_signal_reaches_the_command_and_is_not_restarted(tmp_path):
    child = ("import pathlib, signal, sys, time\n"
             "def stop(*_):\n"
             f"    pathlib.Path({str(tmp_path)!r}, 'got-term').touch(); sys.exit(1)\n"
             "signal.signal(signal.SIGTERM, stop)\n"
             f"pathlib.Path({str(tmp_path)!r}, 'ready').touch()\n"
             "time.sleep(60)\n")
    sup = subprocess.Popen([sys.executable, "-m", "curriculum.supervise", "--run-dir", str(tmp_path),
                            "--", *script(child)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(sup.pid, signal.SIGTERM)  # what a scheduler does before taking the machine back
    assert sup.wait(timeout=30) == 128 + signal.SIGTERM
    assert (tmp_path / "got-term").exists()
    log = (tmp_path / "supervisor.log").read_text()
    assert "stopped by SIGTERM" in log and "attempt 2" not in log


def test_a_run_folder_in_use_is_not_restarted_into(tmp_path):
    """The command stops because another live process owns the run folder: restarting would
    meet that process again, so the supervisor ends at once and says why."""
    holder = subprocess.Popen(script("import sys, time; from curriculum.run_folder import run_dir_lock\n"
                                     f"with run_dir_lock({str(tmp_path)!r}):\n print('held', flush=True)\n"
                                     " time.sleep(60)"), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        sup = Supervisor(script("from curriculum.run_folder import run_dir_lock\n"
                                "try:\n"
                                f" with run_dir_lock({str(tmp_path)!r}): pass\n"
                                "except ValueError as err:\n raise SystemExit(f'error: {err}')"),
                         tmp_path, backoff=0.01, max_restarts=5)
        assert sup.run() == 1
    finally:
        holder.kill()
        holder.wait()
    assert len(sup.attempts) == 1 and sup.delays == []
    assert "not restarting: another process runs in this run folder" in (tmp_path / "supervisor.log").read_text()
