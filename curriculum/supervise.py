"""Keep a training run alive: restart it after a crash, and merge its offline wandb attempts.

    python -m curriculum.supervise [--run-dir RUN] [options] -- <launch command>
    python -m curriculum.supervise merge-wandb RUN [--out DIR]

The launch command is any command that resumes by itself from the run folder (every Qabra
recipe does: the trainer reloads the newest readable state). When it exits non-zero the
supervisor waits (exponential back-off) and starts it again; a crash costs the steps since
the last saved state. It gives up after `--max-restarts` failures in a row that saved no new
state (a run that keeps making progress is restarted as often as it needs). Every attempt,
its cause of death (exit code or signal, the workers' exit codes torchrun reports, the last
lines of stderr) and the restart are logged to RUN/supervisor.log.

wandb: the trainer fixes one run id per run folder (RUN/wandb_id) and every attempt logs to
it. Online, the attempts append to one run (resume="allow"). Offline, each attempt is a
folder of its own under RUN/wandb/; `merge-wandb` writes one offline run with that id whose
history is the run's metrics.jsonl (ordered by step, each step once: the trainer drops the
steps after the state it resumed from), ready for `wandb sync`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import yaml

from curriculum.run_folder import IN_USE
from curriculum.trainer import state_steps

TAIL_LINES = 20


@dataclass
class Attempt:
    number: int
    returncode: int
    seconds: float
    step_before: int | None
    step_after: int | None
    tail: list[str]


def signal_name(code: int) -> str:
    """'SIGKILL' for 9 (or -9), else the number as text."""
    try:
        return signal.Signals(abs(code)).name
    except ValueError:
        return str(code)


def describe_exit(returncode: int, tail: list[str]) -> str:
    """The cause of an attempt's death: its exit status and what torchrun says of its workers."""
    if returncode < 0:
        cause = f"killed by {signal_name(returncode)}"
    else:
        cause = f"exit code {returncode}"
        if returncode > 128 and returncode - 128 < 65:
            cause += f" (a shell's report of {signal_name(returncode - 128)})"
    text = "\n".join(tail)
    # torchrun's failure report: "rank : 1 (local_rank: 1)" then "exitcode : -9 (pid: 123)".
    workers = re.findall(r"rank\s*:\s*(\d+)[^\n]*\n\s*exitcode\s*:\s*(-?\d+)", text)
    if workers:
        parts = []
        for rank, code in dict(workers).items():
            code_i = int(code)
            parts.append(f"rank {rank}: {code_i}" + (f" ({signal_name(code_i)})" if code_i < 0 else ""))
        cause += "; workers: " + ", ".join(parts)
    if "SIGKILL" in cause:
        cause += ("; SIGKILL comes from outside the program: the kernel's out-of-memory killer "
                  "(see `dmesg`), a preempted machine, or a person")
    elif "out of memory" in text.lower():
        cause += "; out of GPU memory: lower trainer.batch_size (see python scripts/estimate_memory.py)"
    return cause


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the supervisor dies, so no orphaned run goes on (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Tail:
    """Copy a child's stderr through to ours, keeping its last lines (progress bars split on \\r)."""

    def __init__(self, stream, keep: int = 400) -> None:
        self.lines: deque[str] = deque(maxlen=keep)
        self._partial = ""
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
        while chunk := os.read(stream.fileno(), 65536):
            if out is not None:
                out.write(chunk)
                out.flush()
            text = self._partial + chunk.decode("utf-8", "replace")
            pieces = re.split(r"[\r\n]", text)
            self._partial = pieces.pop()[-4000:]
            self.lines.extend(p for p in pieces if p.strip())

    def result(self) -> list[str]:
        self._thread.join(timeout=10)
        return [*self.lines, *([self._partial] if self._partial.strip() else [])]


class Supervisor:
    """Runs `command` until it succeeds, restarting it with back-off; logs to RUN/supervisor.log."""

    def __init__(self, command: list[str], run_dir: str | Path, *, max_restarts: int = 5,
                 backoff: float = 10.0, max_backoff: float = 600.0) -> None:
        if not command:
            raise ValueError("no command to supervise: put it after `--`")
        if max_restarts < 0 or backoff < 0 or max_backoff < backoff:
            raise ValueError(f"need max_restarts >= 0 and 0 <= backoff <= max_backoff, got "
                             f"{max_restarts}, {backoff}, {max_backoff}")
        self.command, self.run_dir = command, Path(run_dir)
        self.max_restarts, self.backoff, self.max_backoff = max_restarts, backoff, max_backoff
        self.log_path = self.run_dir / "supervisor.log"
        self.attempts: list[Attempt] = []
        self.delays: list[float] = []  # the back-off before each restart
        self._stop = threading.Event()
        self._stop_signal: int | None = None
        self._child: subprocess.Popen | None = None

    def log(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write(f"{stamp} {message}\n")
        print(f"supervise: {message}", file=sys.stderr, flush=True)

    def _latest_step(self) -> int | None:
        steps = state_steps(self.run_dir)
        return steps[-1] if steps else None

    def _on_signal(self, signum, _frame) -> None:
        self._stop_signal = signum
        self._stop.set()
        if self._child is not None and self._child.poll() is None:
            try:
                os.killpg(self._child.pid, signum)  # the whole launch: torchrun and its workers
            except ProcessLookupError:
                pass

    def run(self) -> int:
        """Supervise until success, a stop signal, or too many failures without progress."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._loop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _loop(self) -> int:
        failures = 0  # in a row, without a new saved state
        number = 0
        while True:
            number += 1
            before = self._latest_step()
            where = f"resuming from step {before}" if before is not None else "no saved state yet"
            self.log(f"attempt {number} started ({where}): {' '.join(self.command)}")
            start = time.monotonic()
            # Its own session: a stop signal reaches the whole launch (torchrun and its workers).
            self._child = subprocess.Popen(self.command, stderr=subprocess.PIPE, start_new_session=True,
                                           preexec_fn=_die_with_parent)
            tail = _Tail(self._child.stderr)
            returncode = self._child.wait()
            lines = tail.result()
            attempt = Attempt(number, returncode, time.monotonic() - start, before,
                              self._latest_step(), lines)
            self.attempts.append(attempt)
            if self._stop.is_set():
                self.log(f"attempt {number} stopped by {signal_name(self._stop_signal or 15)} "
                         f"(exit code {returncode}); not restarting")
                return 128 + (self._stop_signal or signal.SIGTERM)
            if returncode == 0:
                self.log(f"attempt {number} finished (exit code 0) after {attempt.seconds:.1f} s "
                         f"at step {attempt.step_after}")
                return 0
            progressed = attempt.step_after is not None and (before is None or attempt.step_after > before)
            failures = 1 if progressed else failures + 1
            shown = "\n".join(f"    | {line[-400:]}" for line in lines[-TAIL_LINES:])
            self.log(f"attempt {number} failed after {attempt.seconds:.1f} s: "
                     f"{describe_exit(returncode, lines)}; saved state: step {before} -> "
                     f"{attempt.step_after}; last stderr lines:\n{shown}")
            if any(IN_USE in line for line in lines[-3:]):  # another live command owns the folder
                self.log("not restarting: another process runs in this run folder (above); a restart "
                         "would meet it again")
                return returncode if returncode > 0 else 128 + abs(returncode)
            if failures > self.max_restarts:
                self.log(f"giving up: {failures} failures in a row without a new saved state "
                         f"(--max-restarts {self.max_restarts}); fix the cause above and run the "
                         "same command again to resume")
                return returncode if returncode > 0 else 128 + abs(returncode)
            delay = min(self.backoff * 2 ** (failures - 1), self.max_backoff)
            self.delays.append(delay)
            self.log(f"restarting in {delay:.1f} s (restart {failures} of at most "
                     f"{self.max_restarts} in a row without a new saved state)")
            if self._stop.wait(delay):
                self.log(f"stopped by {signal_name(self._stop_signal or 15)} while waiting; not restarting")
                return 128 + (self._stop_signal or signal.SIGTERM)


def run_dir_from_command(command: list[str]) -> Path | None:
    """The run folder a recipe command names: a `run_dir=` override, else its --config file's."""
    found = None
    for i, token in enumerate(command):
        if token.startswith("run_dir="):
            found = token.split("=", 1)[1]
        elif token == "--config" and i + 1 < len(command) and found is None:
            try:
                data = yaml.safe_load(Path(command[i + 1]).read_text()) or {}
            except (OSError, yaml.YAMLError):
                data = {}
            if isinstance(data, dict) and data.get("run_dir"):
                found = str(data["run_dir"])
    return Path(found) if found else None


# -- wandb ---------------------------------------------------------------------------------
def merged_history(run_dir: str | Path) -> list[dict]:
    """metrics.jsonl as one record per step, ordered; a later value of a key wins."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a run folder with logged steps?")
    by_step: dict[int, dict] = {}
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # the last line, cut by a crash mid-write
                continue
            raise ValueError(f"{path}:{n} is not JSON; the metrics log is damaged") from None
        by_step.setdefault(int(record["step"]), {}).update(record)
    return [by_step[s] for s in sorted(by_step)]


def merge_wandb(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write one offline wandb run (the run's id) holding the whole history; returns its folder."""
    run_dir = Path(run_dir)
    id_file = run_dir / "wandb_id"
    if not id_file.exists():
        raise FileNotFoundError(f"{id_file} does not exist: {run_dir} was not trained with wandb "
                                "by this trainer, or not started yet")
    run_id = id_file.read_text().strip()
    history = merged_history(run_dir)
    attempts = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}*"))
    config = {}
    if (run_dir / "config.yaml").exists():
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    project = (config.get("trainer") or {}).get("wandb_project", "qabra")
    out = Path(out) if out else run_dir / "wandb-merged"
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    run = wandb.init(project=project, id=run_id, resume="allow", mode="offline", dir=str(out),
                     name=run_dir.name, config=config,
                     notes=f"merged from {len(attempts)} offline attempt(s) of {run_dir}")
    try:
        for record in history:
            values = {k: v for k, v in record.items() if k != "step"}
            run.log({**values, "global_step": record["step"]}, step=record["step"])
        folder = Path(run.dir).parent
    finally:
        run.finish()
    with open(out / "history.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in history)
    steps = [r["step"] for r in history]
    print(f"merged {len(attempts)} offline attempt(s) of run {run_id}: {len(history)} steps "
          f"({steps[0] if steps else '-'}..{steps[-1] if steps else '-'}) into {folder}\n"
          f"upload it as one run with:  wandb sync --id {run_id} {folder}")
    return folder


# -- CLI -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["merge-wandb"]:
        parser = argparse.ArgumentParser(prog="python -m curriculum.supervise merge-wandb",
                                         description="Merge a run's offline wandb attempts into one.")
        parser.add_argument("run_dir")
        parser.add_argument("--out", default=None, help="where to write it (default RUN/wandb-merged)")
        args = parser.parse_args(argv[1:])
        try:
            merge_wandb(args.run_dir, args.out)
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(f"error: {err}") from None
        return 0
    if "--" not in argv:
        raise SystemExit("usage: python -m curriculum.supervise [options] -- <launch command>\n"
                         "       python -m curriculum.supervise merge-wandb RUN_DIR")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m curriculum.supervise",
                                     description="Restart a training command after a crash.")
    parser.add_argument("--run-dir", default=None,
                        help="the run folder (default: the command's run_dir=... or --config's)")
    parser.add_argument("--max-restarts", type=int, default=5,
                        help="give up after this many failures in a row without a new saved state")
    parser.add_argument("--backoff", type=float, default=10.0, help="first wait before a restart (s)")
    parser.add_argument("--max-backoff", type=float, default=600.0, help="longest wait (s)")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    run_dir = Path(args.run_dir) if args.run_dir else run_dir_from_command(command)
    if run_dir is None:
        raise SystemExit("error: cannot tell the run folder from the command; pass --run-dir RUN "
                         "(the folder the command trains in)")
    try:
        supervisor = Supervisor(command, run_dir, max_restarts=args.max_restarts,
                                backoff=args.backoff, max_backoff=args.max_backoff)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
