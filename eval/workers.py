"""A `sim`-backend match split over worker processes, each with its own simulator host.

    Match("heuristic", "maxbp", battle_format="gen1ou", team_set="competitive", n=1000,
          out_dir="runs/m", workers=4).run()

Each worker is a fresh Python process (spawned, so nothing of the parent's event loops or
threads is copied) that plays its share as a one-process `Match` into the same folder,
under its own shard prefix; finished battles reach disk as they finish. The parent counts
what the workers recorded: a worker that died (killed, crashed) is replaced and the battles
it had not recorded are played again, so the run ends with exactly the planned battles.
Workers die with the parent (SIGKILL included), and their hosts with them.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from battles.shards import list_shards
from battles.sim import _die_with_parent
from eval.recorded import MatchResult, add_recorded

log = logging.getLogger(__name__)

SEED_STRIDE = 1_000_003  # worker k of round r plays seed + (r * workers + k + 1) * SEED_STRIDE


def _worker(play_share, kwargs: dict, report: str) -> None:
    """One worker: play a share as a one-process match, then write a summary for the parent."""
    _die_with_parent()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("poke_env").setLevel(logging.CRITICAL)
    try:
        summary = play_share(kwargs)
    except ValueError as err:
        summary = {"fatal": f"{err}", "kind": "ValueError"}
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises it
        summary = {"fatal": f"{type(err).__name__}: {err}", "kind": "RuntimeError"}
    Path(report).write_text(json.dumps(summary))


def _recorded(match, shards: set[Path]):
    """A result counting the battles of this match's pairing in the given shards."""
    result = MatchResult(match.p1_spec, match.p2_spec, match.battle_format)
    add_recorded(result, match.out_dir, match.p1_spec, match.p2_spec, match.battle_format, shards=shards)
    return result


class _Played:
    """Battles of this run recorded so far: each shard is read once (a finished shard never changes)."""

    def __init__(self, match, before: set[Path]):
        self.match, self.counted = match, set(before)
        self.result = MatchResult(match.p1_spec, match.p2_spec, match.battle_format)

    def __call__(self) -> int:
        m = self.match
        new = set(list_shards(m.out_dir)) - self.counted
        add_recorded(self.result, m.out_dir, m.p1_spec, m.p2_spec, m.battle_format, shards=new)
        self.counted |= new
        return self.result.battles


def play_in_workers(match, workers: int, play_share):
    """Play `match` (sim backend) over `workers` processes, each running `play_share(kwargs)` (a
    module-level function: a spawned process finds it by name); its MatchResult over this run's shards."""
    out = match.out_dir
    out.mkdir(parents=True, exist_ok=True)
    before = set(list_shards(out))
    todo = match.n - (_recorded(match, before).battles if match.resume else 0)
    ctx = multiprocessing.get_context("spawn")
    errors = restarts = deaths = 0
    start = time.monotonic()
    played = _Played(match, before)
    with tempfile.TemporaryDirectory(prefix="qabra-workers-") as tmp, tqdm(total=match.n, initial=match.n - todo, desc=f"{match.p1_spec} vs {match.p2_spec}",
              disable=not match.progress) as bar:
        reports = Path(tmp)
        for round_ in range(match.max_restarts + 1):
            done = played()
            bar.n = match.n - todo + done
            bar.refresh()
            remaining = todo - done
            if remaining <= 0:
                break
            k = min(workers, remaining)
            procs = []
            for i in range(k):
                share = remaining // k + (i < remaining % k)
                kwargs = dict(p1_spec=match.p1_spec, p2_spec=match.p2_spec, battle_format=match.battle_format,
                              n=share, out_dir=str(out), team_set=match.team_set_name,
                              concurrency=match.concurrency, seed=match.seed + (round_ * workers + i + 1) * SEED_STRIDE,
                              stall_timeout=match.stall_timeout, max_restarts=match.max_restarts, progress=False,
                              shard_size=match.shard_size, backend="sim", flush_seconds=match.flush_seconds)
                report = reports / f"{round_}-{i}.json"
                proc = ctx.Process(target=_worker, args=(play_share, kwargs, str(report)), daemon=True)
                proc.start()
                procs.append((proc, report))
            while any(p.is_alive() for p, _ in procs):
                time.sleep(1.0)
                bar.n = match.n - todo + played()
                bar.refresh()
            for proc, report in procs:
                proc.join()
                summary = json.loads(report.read_text()) if report.exists() else None
                if summary is None:
                    deaths += 1
                    log.warning("worker pid %d died (exit %s); its unrecorded battles are played again",
                                proc.pid, proc.exitcode)
                elif "fatal" in summary:
                    raise (ValueError if summary["kind"] == "ValueError" else RuntimeError)(summary["fatal"])
                else:
                    errors += summary["errors"]
                    restarts += summary["restarts"]
        else:
            raise RuntimeError(f"gave up after {deaths} dead workers; battles recorded in {out}")
    result = _recorded(match, set(list_shards(out)) if match.resume else set(list_shards(out)) - before)
    result.played = played()
    result.errors, result.restarts = errors + deaths, restarts + deaths
    result.seconds = time.monotonic() - start
    result.shards = [str(p) for p in sorted(set(list_shards(out)) - before)]
    return result
