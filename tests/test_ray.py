"""A match split over 2 workers on a local Ray instance (the optional `ray` extra): a Ray worker
killed midway loses nothing, the run ends with exactly the planned battles, and a rerun resumes."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from battles.logs import count_battles, read_battle_logs
from tests.test_sim_backend import sim_hosts_of

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.server]  # real Node simulator hosts, in Ray's workers


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _playing_ray_worker() -> psutil.Process | None:
    """A Ray worker running a share whose simulator host is up."""
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "ray::_run_share" in " ".join(proc.info["cmdline"] or []) and sim_hosts_of(proc.pid):
                return proc
        except psutil.Error:
            continue
    return None


def test_two_ray_workers_play_exactly_the_plan_and_a_rerun_resumes(tmp_path, local_ray):
    from eval.match import Match

    def match(n):
        return Match("maxbp", "random", battle_format="gen1ou", team_set="competitive", n=n, out_dir=tmp_path,
                     concurrency=2, workers=2, ray="auto", resume=True, progress=False, flush_seconds=0)

    results = []
    thread = threading.Thread(target=lambda: results.append(match(12).run()), daemon=True)
    thread.start()
    victim = None
    for _ in range(1200):
        victim = _playing_ray_worker()
        if victim is not None or not thread.is_alive():
            break
        time.sleep(0.05)
    assert victim is not None, "no Ray worker with a simulator host was seen"
    victim.kill()  # its share's unrecorded battles go to the next round
    thread.join(timeout=300)
    (result,) = results
    assert result.battles == 12 == count_battles(tmp_path) and result.restarts >= 1
    records = list(read_battle_logs(tmp_path))
    assert len({r.id for r in records}) == 12 and all(r.specs == {"p1": "maxbp", "p2": "random"} for r in records)
    assert len({p.name.rsplit("-", 1)[0] for p in tmp_path.glob("*.parquet")}) >= 2  # each worker its own shards
    again = match(14).run()  # resumes: plays only the 2 missing battles
    assert again.battles == 14 == count_battles(tmp_path) and again.played == 2
