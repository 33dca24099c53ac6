"""Several processes on CPU (gloo): replicas stay identical, a killed rank costs only the steps
since the last state, and a start that cannot work says why instead of hanging."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from battles.encode import ObservationEncoder
from battles.trajectories import ShardWriter, Trajectory
from curriculum import distributed

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = 30


def synthetic_shards(folder: Path, battles: int = 48, seed: int = 0) -> Path:
    """Random trajectories with the real encoder's sizes and vocabulary (no server needed)."""
    enc = ObservationEncoder()
    rng = np.random.default_rng(seed)
    with ShardWriter(folder, "synthetic", rows_per_shard=16, row_group_size=4) as writer:
        for i in range(battles):
            t = int(rng.integers(6, 20))
            legal = rng.random((t, 13)) < 0.5
            legal[:, 0] = True
            action = np.where(legal[:, 1], 1, 0).astype(np.int16)  # learnable: a rule on the mask
            writer.write(Trajectory(
                battle_id=f"syn-{seed}-{i}", player="p1", format="gen1ou",
                source="selfplay" if i % 2 else "human", outcome=int(rng.choice([-1, 1])),
                encoder_version=enc.version, vocab_hash=enc.vocab.hash,
                tokens=rng.integers(1, enc.vocab.size, (t, enc.n_tokens), dtype=np.int32),
                numbers=rng.standard_normal((t, enc.n_numbers)).astype(np.float32),
                action=action, legal=legal,
            ))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pretrain_command(data: Path, run_dir: Path, steps: int = STEPS) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
            "-m", "curriculum.stage0_pretrain", f"data=[{data}]", f"run_dir={run_dir}", "window=16",
            "val_fraction=0.2", "dropout=0.0",
            f"trainer.max_steps={steps}", "trainer.batch_size=4", "trainer.warmup_steps=2",
            "trainer.checkpoint_every=5", "trainer.eval_every=10", "trainer.eval_batches=2",
            "trainer.log_every=1", "trainer.wandb_mode=disabled"]


def child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def final_state(run_dir: Path) -> dict:
    states = sorted((run_dir / "state").glob("step-*"))
    return json.loads((states[-1] / "trainer.json").read_text())


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return synthetic_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    proc = subprocess.run(pretrain_command(shards, run_dir), cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


@pytest.mark.slow
def test_two_process_run_keeps_replicas_identical(uninterrupted):
    run_dir, proc = uninterrupted
    assert "pre-flight ok: 2 ranks" in proc.stderr
    state = final_state(run_dir)
    assert state["step"] == STEPS and state["world_size"] == 2
    digests = state["param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # each rank hashed its own parameters
    rows = [r for r in metrics(run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert any("val_loss" in r for r in metrics(run_dir))
    assert (run_dir / "final" / "model.safetensors").exists()


@pytest.mark.slow
def test_killed_rank_is_restarted_and_the_run_matches(shards, uninterrupted, tmp_path):
    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "curriculum.supervise", "--run-dir", str(run_dir),
               "--backoff", "0.2", "--", *pretrain_command(shards, run_dir)]
    sup = subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and sup.poll() is None and time.monotonic() < deadline:
        steps = [r["step"] for r in metrics(run_dir) if "loss" in r]
        if steps and steps[-1] >= 7:  # past the state at step 5, before the end
            for child in psutil.Process(sup.pid).children(recursive=True):
                try:
                    if child.environ().get("RANK") == "1" and "curriculum.stage0_pretrain" in " ".join(child.cmdline()):
                        child.send_signal(signal.SIGKILL)
                        killed = steps[-1]
                except psutil.Error:
                    continue
        time.sleep(0.02)
    _, stderr = sup.communicate(timeout=300)
    assert killed is not None and killed < STEPS, "the run ended before a rank could be killed"
    assert sup.returncode == 0, stderr[-3000:]
    log = (run_dir / "supervisor.log").read_text()
    assert "attempt 1 failed" in log and "attempt 2 finished" in log, log
    assert "SIGKILL" in log  # torchrun's report of the dead worker, quoted as the cause

    rows = [r for r in metrics(run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # every step exactly once
    full_rows = [r for r in metrics(uninterrupted[0]) if "loss" in r]
    # Resume restores data position and RNG: the same losses as the uninterrupted run.
    assert [round(r["loss"], 5) for r in rows] == [round(r["loss"], 5) for r in full_rows]
    state = final_state(run_dir)
    assert state["step"] == STEPS and state["param_digests"] == final_state(uninterrupted[0])["param_digests"]


def test_unreachable_rendezvous_fails_fast_with_a_diagnosis():
    port = free_port()  # nobody listens there
    env = {**child_env(), "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), distributed.START_TIMEOUT_ENV: "3"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "curriculum.distributed", "check"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == distributed.EXIT_HANG
    assert time.monotonic() - start < 60
    assert f"nothing listens at the rendezvous MASTER_ADDR:MASTER_PORT = 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_nccl_defaults_respect_the_user(tmp_path):
    route = tmp_path / "route"
    route.write_text("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
                     "ens5\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
                     "ens7\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\n")
    ib = tmp_path / "infiniband"
    ib.mkdir()
    env: dict[str, str] = {"NCCL_DEBUG": "INFO"}
    settings = distributed.setup_nccl_environment(env, route_file=route, ib_dir=ib,
                                                  peer_access=lambda: [(0, 1), (1, 0)])
    assert env["NCCL_DEBUG"] == "INFO"  # the user's value is kept
    assert env["NCCL_SOCKET_IFNAME"] == "ens7"  # the default route's interface
    assert env["NCCL_IB_DISABLE"] == "1" and env["NCCL_P2P_DISABLE"] == "1"
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    by_name = {s.name: s for s in settings}
    assert by_name["NCCL_DEBUG"].origin == "yours"
    assert "GPU 0 cannot reach GPU 1" in by_name["NCCL_P2P_DISABLE"].reason

    (ib / "mlx5_0").mkdir()
    env = {"NCCL_SOCKET_IFNAME": "ib0"}
    distributed.setup_nccl_environment(env, route_file=route, ib_dir=ib, peer_access=lambda: [])
    assert env["NCCL_SOCKET_IFNAME"] == "ib0" and "NCCL_IB_DISABLE" not in env
    assert "NCCL_P2P_DISABLE" not in env
    with pytest.raises(ValueError, match="QABRA_COLLECTIVE_TIMEOUT_S"):
        distributed.setup_nccl_environment({"QABRA_COLLECTIVE_TIMEOUT_S": "soon"}, route_file=route,
                                           ib_dir=ib, peer_access=lambda: None)


def test_diagnosis_names_the_setting_to_try():
    port = free_port()
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "3", "WORLD_SIZE": "8"}
    assert "MASTER_ADDR and MASTER_PORT" in distributed.explain("rendezvous", None, env)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        env["MASTER_PORT"] = str(server.getsockname()[1])
        assert "not all WORLD_SIZE=8 processes joined" in distributed.explain("rendezvous", None, env)
    hang = distributed.explain("pre-flight all-reduce and barrier", None, env)
    assert "NCCL_SOCKET_IFNAME" in hang and "NCCL_IB_DISABLE" in hang and "NCCL_P2P_DISABLE" in hang
    died = distributed.explain("pre-flight all-reduce and barrier",
                               RuntimeError("Connection closed by peer [127.0.0.1]:1234"), env)
    assert "another rank died" in died


def test_shipped_accelerate_configs_resolve(monkeypatch):
    import importlib.util
    import sys

    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    from battles.config import load_config
    from curriculum.imitation import PretrainConfig

    spec = importlib.util.spec_from_file_location("estimate_memory", REPO / "scripts" / "estimate_memory.py")
    estimate_memory = sys.modules["estimate_memory"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(estimate_memory)
    GB, estimate = estimate_memory.GB, estimate_memory.estimate
    from models.policy import Block, PolicyConfig

    envs, gpus = {}, {}
    for name in ("ddp", "fsdp_large"):
        args = launch_command_parser().parse_args(
            ["--config_file", str(REPO / "curriculum" / "configs" / f"{name}.yaml"), "-m", "x"])
        args, _, _ = _validate_launch_command(args)
        envs[name], gpus[name] = prepare_multi_gpu_env(args), args.num_processes
    assert envs["ddp"]["ACCELERATE_MIXED_PRECISION"] == "bf16" and "ACCELERATE_USE_FSDP" not in envs["ddp"]
    for key, value in envs["fsdp_large"].items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    plugin.set_auto_wrap_policy(Block(PolicyConfig.preset("tiny", vocab_size=9, n_tokens=2, n_numbers=2)))
    assert plugin.auto_wrap_policy.keywords["transformer_layer_cls"] == {Block}  # our block class

    # The recipe config for it fits a 40 GB card by the estimator, with 15% to spare.
    cfg = load_config(PretrainConfig, REPO / "curriculum" / "configs" / "pretrain_large.yaml")
    enc = ObservationEncoder()
    model = PolicyConfig.preset(cfg.preset, vocab_size=enc.vocab.size, n_tokens=enc.n_tokens,
                                n_numbers=enc.n_numbers, dropout=cfg.dropout)
    peak = estimate(model, cfg.trainer.batch_size, cfg.window, bf16=True, strategy="fsdp",
                    world_size=gpus["fsdp_large"],
                    checkpointing=cfg.activation_checkpointing)
    assert cfg.trainer.mixed_precision == "bf16" and cfg.trainer.grad_accum > 1
    assert peak.total < 0.85 * 40 * GB


def test_fsdp2_sharded_model_saves_as_the_plain_model():
    """The trainer's FSDP checkpoint path: gather the full state, rebuild the model's own class."""
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from curriculum.trainer import _unsharded_class
    from models.policy import PolicyConfig, PolicyTransformer

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        torch.manual_seed(0)
        model = PolicyTransformer(PolicyConfig.preset("tiny", vocab_size=50, n_tokens=3, n_numbers=2))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        assert type(model) is not PolicyTransformer and _unsharded_class(model) is PolicyTransformer
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        with torch.device("meta"):
            plain = _unsharded_class(model)(model.cfg)
        plain.load_state_dict(full, assign=True)
        assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())
    finally:
        dist.destroy_process_group()
