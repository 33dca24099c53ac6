"""Multi-process start-up that explains itself: NCCL defaults, a guarded rendezvous, a pre-flight.

Large runs die for reasons unrelated to the model: a collective that hangs forever, NCCL
picking a network the nodes cannot use, a rank that never joins. This module makes a failed
start say why, on every rank, instead of hanging or printing a bare stack trace:

    setup_nccl_environment()      before any process group exists: safe, overridable defaults
    with rendezvous_guard(): ...  creating the process group, under a deadline
    preflight(device, settings)   all-reduce + barrier under a deadline, then a table

The trainer runs all three (curriculum.trainer.make_accelerator). To check a cluster before
a long run, launch the same checks alone on every node:

    torchrun --nnodes 2 --nproc_per_node 8 ... -m curriculum.distributed check

Environment knobs (seconds): QABRA_START_TIMEOUT_S (joining the rendezvous, default 600),
QABRA_PREFLIGHT_TIMEOUT_S (the pre-flight collectives, default 180),
QABRA_COLLECTIVE_TIMEOUT_S (any later collective, default 900). A hang past a deadline
prints the diagnosis and ends the process with exit code 3; an error raises
DistributedStartError carrying the same diagnosis.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

EXIT_HANG = 3  # exit code of a process ended by a start-up deadline
START_TIMEOUT_ENV = "QABRA_START_TIMEOUT_S"
PREFLIGHT_TIMEOUT_ENV = "QABRA_PREFLIGHT_TIMEOUT_S"
COLLECTIVE_TIMEOUT_ENV = "QABRA_COLLECTIVE_TIMEOUT_S"
_DEFAULT_TIMEOUTS = {START_TIMEOUT_ENV: 600.0, PREFLIGHT_TIMEOUT_ENV: 180.0, COLLECTIVE_TIMEOUT_ENV: 900.0}

NETWORK_HINT = (
    "NCCL most often hangs because it picked a network the ranks cannot use: set "
    "NCCL_SOCKET_IFNAME to the interface that connects the nodes (see `ip -br addr`), "
    "NCCL_IB_DISABLE=1 if InfiniBand is present but unusable, NCCL_P2P_DISABLE=1 if GPUs of "
    "one node cannot reach each other; rerun with NCCL_DEBUG=INFO to see the transport chosen"
)


class DistributedStartError(RuntimeError):
    """The process group could not be formed or failed its pre-flight; the message says why."""


@dataclass
class Setting:
    """One environment variable the start-up chose (or left alone), and why."""

    name: str
    value: str | None  # None: left unset
    origin: str  # 'yours' (set before we ran, kept), 'default' (set by us), 'unset'
    reason: str


def timeout_s(name: str, env: MutableMapping[str, str] | None = None) -> float:
    """One of the QABRA_*_TIMEOUT_S settings in seconds (validated)."""
    env = os.environ if env is None else env
    raw = env.get(name, str(_DEFAULT_TIMEOUTS[name]))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{name}={raw!r}: expected a positive number of seconds")
    return value


# -- what the machine has ------------------------------------------------------------------
def default_route_interface(route_file: str | Path = "/proc/net/route") -> str | None:
    """The network interface of the default route (destination 0.0.0.0), or None."""
    try:
        lines = Path(route_file).read_text().splitlines()[1:]
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in lines:
        parts = line.split()
        if len(parts) < 8:
            continue
        iface, dest, flags, metric = parts[0], parts[1], int(parts[3], 16), int(parts[6])
        if dest == "00000000" and flags & 0x1 and (best is None or metric < best[0]):  # RTF_UP
            best = (metric, iface)
    return best[1] if best else None


def infiniband_devices(ib_dir: str | Path = "/sys/class/infiniband") -> list[str]:
    """Names of the InfiniBand devices the kernel knows (empty when there are none)."""
    try:
        return sorted(p.name for p in Path(ib_dir).iterdir())
    except OSError:
        return []


def _probe_peer_access() -> list[tuple[int, int]] | None:
    """Pairs of local GPUs that cannot reach each other directly; None with fewer than 2 GPUs.

    Runs in a short-lived subprocess: asking CUDA here would create a context on GPU 0 in
    every rank of the node, memory that a 40 GB card cannot spare.
    """
    if torch.cuda.device_count() < 2:  # counts through NVML, creates no context
        return None
    code = (
        "import torch; n = torch.cuda.device_count(); "
        "print(' '.join(f'{a},{b}' for a in range(n) for b in range(n) "
        "if a != b and not torch.cuda.can_device_access_peer(a, b)))"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, check=True).stdout
    except (subprocess.SubprocessError, OSError) as err:
        log.warning("could not check GPU peer access (%s); leaving NCCL_P2P_DISABLE unset", err)
        return None
    return [tuple(int(x) for x in pair.split(",")) for pair in out.split()]


def _interfaces(net_dir: str | Path = "/sys/class/net") -> list[str]:
    try:
        return sorted(p.name for p in Path(net_dir).iterdir())
    except OSError:
        return []


# -- the defaults --------------------------------------------------------------------------
def setup_nccl_environment(
    env: MutableMapping[str, str] | None = None,
    *,
    route_file: str | Path = "/proc/net/route",
    ib_dir: str | Path = "/sys/class/infiniband",
    net_dir: str | Path = "/sys/class/net",
    peer_access: Callable[[], list[tuple[int, int]] | None] = _probe_peer_access,
    announce: bool | None = None,
) -> list[Setting]:
    """Set safe NCCL defaults in `env` (os.environ) without overriding anything already set.

    Call before any process group exists: NCCL and torch read these when communicators are
    made. Returns what was chosen and why; logs it on each node's first rank (`announce`).
    """
    env = os.environ if env is None else env
    if dist.is_available() and dist.is_initialized():
        log.warning("setup_nccl_environment() ran after the process group was created; NCCL may "
                    "have read its settings already: call it before Accelerator()")
    settings: list[Setting] = []

    def choose(name: str, value: str | None, reason: str, also: tuple[str, ...] = ()) -> None:
        for key in (name, *also):
            if key in env:
                settings.append(Setting(key, env[key], "yours", "set before start-up; kept"))
                return
        if value is None:
            settings.append(Setting(name, None, "unset", reason))
            return
        env[name] = value
        settings.append(Setting(name, value, "default", reason))

    choose("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1",
           "a failed or timed-out collective aborts NCCL and ends the process with an error "
           "instead of hanging", also=("NCCL_ASYNC_ERROR_HANDLING",))
    for name in (COLLECTIVE_TIMEOUT_ENV, START_TIMEOUT_ENV, PREFLIGHT_TIMEOUT_ENV):
        choose(name, f"{_DEFAULT_TIMEOUTS[name]:g}", {
            COLLECTIVE_TIMEOUT_ENV: "a collective slower than this is treated as a hang",
            START_TIMEOUT_ENV: "every rank must join the rendezvous within this",
            PREFLIGHT_TIMEOUT_ENV: "the pre-flight all-reduce and barrier must finish within this",
        }[name])
        timeout_s(name, env)  # a bad value of the user's fails here, naming the variable
    choose("NCCL_DEBUG", "WARN", "NCCL reports its warnings and errors (INFO traces transports)")
    ib = infiniband_devices(ib_dir)
    if ib:
        choose("NCCL_IB_DISABLE", None, f"InfiniBand devices present ({', '.join(ib)}); NCCL uses them")
    else:
        choose("NCCL_IB_DISABLE", "1", f"no InfiniBand devices under {ib_dir}")
    if "NCCL_P2P_DISABLE" in env:
        choose("NCCL_P2P_DISABLE", None, "")
    else:
        blocked = peer_access()
        if blocked is None:
            choose("NCCL_P2P_DISABLE", None, "fewer than 2 GPUs on this node")
        elif blocked:
            a, b = blocked[0]
            choose("NCCL_P2P_DISABLE", "1", f"GPU {a} cannot reach GPU {b} directly "
                   f"({len(blocked)} such pairs; torch.cuda.can_device_access_peer)")
        else:
            choose("NCCL_P2P_DISABLE", None, "every pair of GPUs on this node has peer access")
    iface = default_route_interface(route_file)
    if "NCCL_SOCKET_IFNAME" in env:
        choose("NCCL_SOCKET_IFNAME", None, "")
        _check_ifname(env["NCCL_SOCKET_IFNAME"], _interfaces(net_dir))
    elif iface:
        choose("NCCL_SOCKET_IFNAME", iface, f"the interface of the default route ({route_file})")
    else:
        choose("NCCL_SOCKET_IFNAME", None, f"no default route in {route_file}; NCCL picks one")
    if announce is None:  # once per node, and only under a launcher (torchrun sets LOCAL_RANK)
        announce = env.get("LOCAL_RANK") == "0"
    if announce:
        for s in settings:
            log.info("%s=%s (%s: %s)", s.name, s.value if s.value is not None else "<unset>",
                     s.origin, s.reason)
    return settings


def _check_ifname(value: str, present: list[str]) -> None:
    """Warn when NCCL_SOCKET_IFNAME names no interface of this machine (a common typo)."""
    if not present or value.startswith("^"):
        return
    names = [v.lstrip("=") for v in value.split(",") if v]
    exact = value.startswith("=")
    if not any(p == n or (not exact and p.startswith(n)) for n in names for p in present):
        log.warning("NCCL_SOCKET_IFNAME=%s matches no interface here (%s); NCCL will fail to "
                    "find a socket: pick one of them", value, ", ".join(present))


def process_group_timeout() -> timedelta:
    """The collective timeout given to init_process_group (QABRA_COLLECTIVE_TIMEOUT_S)."""
    return timedelta(seconds=timeout_s(COLLECTIVE_TIMEOUT_ENV))


# -- diagnosis -----------------------------------------------------------------------------
def probe_rendezvous(addr: str, port: int, timeout: float = 3.0) -> str:
    """'ok', 'unresolved', 'refused' or 'unreachable': can a TCP connection reach addr:port?"""
    try:
        infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return "unresolved"
    result = "unreachable"
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as s:
            s.settimeout(timeout)
            try:
                s.connect(sockaddr)
                return "ok"
            except ConnectionRefusedError:
                result = "refused"
            except OSError:
                pass
    return result


def explain(phase: str, error: BaseException | None = None,
            env: MutableMapping[str, str] | None = None) -> str:
    """A diagnosis naming the likely cause and the setting to try, for a failed start."""
    env = os.environ if env is None else env
    addr, port = env.get("MASTER_ADDR", "127.0.0.1"), env.get("MASTER_PORT", "29500")
    rank, world = env.get("RANK", "?"), env.get("WORLD_SIZE", "?")
    where = f"rank {rank} of WORLD_SIZE={world} on {socket.gethostname()}"
    detail = f" ({type(error).__name__}: {str(error).strip().splitlines()[0][:300]})" if error else ""
    text = str(error or "").lower()
    if phase == "rendezvous":
        if "address already in use" in text or "eaddrinuse" in text:
            return (f"{where}: MASTER_PORT={port} is already taken on this host{detail}. Pick a "
                    "free port (MASTER_PORT / --master_port) or end the old run that holds it.")
        state = probe_rendezvous(addr, int(port)) if port.isdigit() else "unresolved"
        if state == "unresolved":
            return (f"{where}: MASTER_ADDR={addr!r} / MASTER_PORT={port!r} cannot be resolved"
                    f"{detail}. Set MASTER_ADDR to rank 0's IP address or hostname as this node "
                    "sees it, and MASTER_PORT to a number.")
        if state == "refused":
            return (f"{where}: nothing listens at the rendezvous MASTER_ADDR:MASTER_PORT = "
                    f"{addr}:{port}{detail}. Rank 0 has not started, died, or uses another "
                    "address or port: start rank 0 first and give every node the same "
                    "MASTER_ADDR and MASTER_PORT.")
        if state == "unreachable":
            return (f"{where}: the rendezvous at MASTER_ADDR:MASTER_PORT = {addr}:{port} does "
                    f"not answer{detail}. A firewall or a wrong network: open TCP port {port} on "
                    "rank 0's host, or set MASTER_ADDR to an address on the network the nodes "
                    "share.")
        return (f"{where}: the rendezvous at {addr}:{port} is up, but not all WORLD_SIZE={world} "
                f"processes joined{detail}. Check that every node started with the same "
                "WORLD_SIZE (--nnodes x --nproc_per_node) and a distinct NODE_RANK, and read the "
                f"missing nodes' logs. (Deadline: {START_TIMEOUT_ENV}.)")
    if any(k in text for k in ("connection closed", "connection reset", "broken pipe", "peer")):
        return (f"{where}: another rank died during the {phase}{detail}; its own output says "
                "why (out of memory, a bad node, a killed process).")
    if phase == "pre-flight result":
        return f"{where}: the pre-flight all-reduce gave a wrong sum{detail}. {NETWORK_HINT}."
    return (f"{where}: the {phase} did not complete{detail}. The ranks met at the rendezvous "
            f"but could not talk over the collective backend. {NETWORK_HINT}. "
            f"(Deadline: {PREFLIGHT_TIMEOUT_ENV}.)")


@contextlib.contextmanager
def deadline(seconds: float, phase: str) -> Iterator[None]:
    """End the process with a diagnosis if the block has not finished after `seconds`.

    A hung collective or rendezvous cannot be interrupted from Python; the only honest way
    out is to say why and exit (code 3), so a launcher or supervisor can react.
    """
    def fire() -> None:
        message = explain(phase)
        sys.stderr.write(f"\nerror: distributed start-up timed out after {seconds:g} s "
                         f"({phase}): {message}\n")
        sys.stderr.flush()
        os._exit(EXIT_HANG)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@contextlib.contextmanager
def rendezvous_guard() -> Iterator[None]:
    """Create the process group inside this block: a hang or a network error gets a diagnosis."""
    with deadline(timeout_s(START_TIMEOUT_ENV), "rendezvous"):
        try:
            yield
        except (dist.DistError, TimeoutError, ConnectionError) as err:
            raise DistributedStartError(explain("rendezvous", err)) from err
        except RuntimeError as err:  # some store errors are plain RuntimeErrors
            if not any(k in str(err).lower() for k in ("connect", "timed out", "timeout", "socket")):
                raise
            raise DistributedStartError(explain("rendezvous", err)) from err


# -- pre-flight ----------------------------------------------------------------------------
@dataclass
class RankInfo:
    rank: int
    local_rank: int
    host: str
    pid: int
    device: str


_checked_groups: set[int] = set()


def preflight(device: torch.device, settings: list[Setting] | None = None,
              timeout: float | None = None, out: Callable[[str], None] = print) -> list[RankInfo]:
    """All-reduce and barrier on every rank under a deadline; rank 0 prints a table.

    Runs once per process group; raises DistributedStartError (or exits with a diagnosis on
    a hang) when the ranks cannot talk.
    """
    if not dist.is_initialized():
        raise RuntimeError("preflight() needs a process group: create the Accelerator first")
    group = id(dist.group.WORLD)
    if group in _checked_groups:
        return []
    seconds = timeout if timeout is not None else timeout_s(PREFLIGHT_TIMEOUT_ENV)
    rank, world = dist.get_rank(), dist.get_world_size()
    name = str(device)
    if device.type == "cuda":
        name = f"{device} {torch.cuda.get_device_name(device)}"
    me = RankInfo(rank, int(os.environ.get("LOCAL_RANK", rank)), socket.gethostname(), os.getpid(), name)
    start = time.perf_counter()
    with deadline(seconds, "pre-flight all-reduce and barrier"):
        try:
            probe = torch.ones(1, device=device) * (rank + 1)
            dist.all_reduce(probe)
            infos: list[RankInfo | None] = [None] * world
            dist.all_gather_object(infos, me)
            dist.barrier()
        except (dist.DistError, RuntimeError) as err:
            raise DistributedStartError(explain("pre-flight all-reduce and barrier", err)) from err
    elapsed = time.perf_counter() - start
    want = world * (world + 1) / 2
    if float(probe.item()) != want:
        raise DistributedStartError(explain(
            "pre-flight result", RuntimeError(f"sum {probe.item()} instead of {want}")))
    _checked_groups.add(group)
    if rank == 0:
        out(format_table([i for i in infos if i is not None], dist.get_backend(), settings or [],
                         elapsed))
    return [i for i in infos if i is not None]


def format_table(infos: list[RankInfo], backend: str, settings: list[Setting], seconds: float) -> str:
    """The pre-flight report: ranks, hosts, devices, backend and the NCCL settings."""
    hosts = sorted({i.host for i in infos})
    lines = [f"pre-flight ok: {len(infos)} ranks on {len(hosts)} host(s), backend {backend}, "
             f"all-reduce + barrier in {seconds * 1000:.0f} ms"]
    rows = [("rank", "local", "host", "pid", "device")]
    rows += [(str(i.rank), str(i.local_rank), i.host, str(i.pid), i.device) for i in infos]
    lines += _columns(rows)
    if settings:
        rows = [("setting", "value", "origin", "why")]
        rows += [(s.name, s.value if s.value is not None else "-", s.origin, s.reason) for s in settings]
        lines += _columns(rows)
    return "\n".join(lines)


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]


# -- CLI -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Check a distributed set-up before training "
                                     "(launch with torchrun on every node).")
    parser.add_argument("command", choices=["check"], help="check: rendezvous + pre-flight")
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    try:
        settings = setup_nccl_environment()
        with rendezvous_guard():
            acc = Accelerator(cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=process_group_timeout())])
        if acc.num_processes == 1:
            print("one process: nothing to check (launch with torchrun --nproc_per_node N)")
            return
        preflight(acc.device, settings)
    except (DistributedStartError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
