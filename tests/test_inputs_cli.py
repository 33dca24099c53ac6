"""Errors a user causes on the command line come as one line naming the key and what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_run_folder import trajectories  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize(("override", "named"), [
    ("preset=huge", "unknown policy preset 'huge'"),
    ("window=999", "window=999"),
    ("mix=nosuch:1", "source 'nosuch'"),
    ("data=[/nonexistent]", "/nonexistent"),
])
def test_pretrain_errors_after_the_config_loads_are_one_line(tmp_path, trajectories, override, named):  # noqa: F811
    args = [f"run_dir={tmp_path / 'run'}", f"data=[{trajectories}]", "mix=human:1.0", "trainer.max_steps=2",
            "trainer.wandb_mode=disabled", "trainer.threads=1", override]
    done = subprocess.run([sys.executable, "-m", "curriculum.stage0_pretrain", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and named in last, last


def test_pretraining_on_a_damaged_shard_names_the_file(tmp_path, trajectories):  # noqa: F811
    """Bytes flipped inside a shard's data pages: pyarrow's own error says only 'ZSTD
    decompression failed'; the user is told which of the shards it is."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(trajectories, data)
    shard = sorted(data.rglob("*.parquet"))[0]
    raw = bytearray(shard.read_bytes())
    middle = len(raw) // 2
    raw[middle - 200:middle + 200] = bytes(400)  # the footer stays readable: the damage is found reading data
    shard.write_bytes(bytes(raw))
    args = [f"run_dir={tmp_path / 'run'}", f"data=[{data}]", "mix=human:1.0", "window=16", "trainer.max_steps=2",
            "trainer.wandb_mode=disabled", "trainer.threads=1"]
    done = subprocess.run([sys.executable, "-m", "curriculum.stage0_pretrain", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(shard) in last and "cannot read this shard" in last, last
