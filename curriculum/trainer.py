"""The one trainer every curriculum stage uses.

A recipe builds the model, the data and a loss function, then calls `Trainer(...).fit()`.
The trainer owns what is easy to get subtly wrong and so lives once: accelerate set-up,
gradient accumulation and clipping, the learning-rate schedule, validation, model
checkpoints, and automatic resume. Running the same command again on the same run folder
continues from the last saved step with the same data position, RNG state and wandb run
id; the metrics log keeps every step exactly once.

Several processes (torchrun, accelerate launch): build the Accelerator with
`make_accelerator(cfg)` before the data, so that datasets see their rank; it sets the NCCL
defaults, guards the rendezvous and runs a pre-flight check (curriculum.distributed).

A run folder has one owner: `run_dir_lock` (taken by `fit`, and by a recipe before it
builds anything) refuses a second command on a folder in use, naming the holder; the
kernel drops the lock when its holder dies, so a crashed run never leaves it stuck.
A finished run started again changes nothing and reports its results; a kill between a
state save and its model checkpoint is repaired on resume (the checkpoint is written
from that state); temporary folders a kill left behind are removed on start.

Run folder layout:
    run.lock             who runs in this folder now (pid, host, command)
    config.yaml          resolved config (written by the recipe)
    metrics.jsonl        one JSON line per logged step (and per validation)
    wandb_id             the wandb run id, fixed at the first start (every restart logs to it)
    state/step-NNNNNNN/  full training state (accelerate save_state + trainer.json), last K kept
    checkpoints/step-NNNNNNN/, final/   model checkpoints (safetensors + config.json)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DistributedType,
    InitProcessGroupKwargs,
    broadcast_object_list,
    gather_object,
    set_seed,
)
from tqdm import tqdm

from battles.files import write_atomic, write_json
from curriculum import distributed
from curriculum.run_folder import logged_metrics, remove_temporaries, run_dir_lock

log = logging.getLogger(__name__)


class ResumableData(Protocol):
    """Training data the trainer can rewind: an iterable of batches with a position."""

    def __iter__(self) -> Iterator[dict]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


LossFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]


@dataclass
class TrainerConfig:
    """Optimisation, schedule, checkpointing and logging settings shared by every recipe."""

    max_steps: int = 1000
    batch_size: int = 16  # battles (windows) per micro-batch per process
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | constant
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    eval_every: int = 100
    eval_batches: int = 8
    log_every: int = 10
    keep_states: int = 2
    mixed_precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU | no | bf16
    seed: int = 0
    stop_after_steps: int = 0  # >0: stop this invocation after that many steps (time-boxed chunks)
    wandb_project: str = "qabra"
    wandb_mode: str = "offline"  # offline | online | disabled
    threads: int = 0  # torch's intra-op threads while training (0: half the cores, at most 4)

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be auto|no|bf16|fp16, got {self.mixed_precision!r}")
        if self.wandb_mode not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb_mode must be offline|online|disabled, got {self.wandb_mode!r}")
        if self.threads < 0:
            raise ValueError(f"trainer.threads={self.threads}: must be >= 0 (0: half the cores, at most 4)")
        for key in ("max_steps", "batch_size", "grad_accum", "checkpoint_every", "eval_every", "log_every", "keep_states"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step `step` (0-based): linear warm-up, then cosine or constant."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine)


@dataclass
class TrainResult:
    step: int
    finished: bool
    final_checkpoint: Path | None
    last_metrics: dict
    val_metrics: dict


_STATE_RE = re.compile(r"^step-(\d+)$")


def _step_folders(folder: Path) -> list[tuple[int, Path]]:
    if not folder.exists():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STATE_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def state_steps(run_dir: str | Path) -> list[int]:
    """Steps of the training states saved in `run_dir` (oldest first)."""
    return [step for step, _ in _step_folders(Path(run_dir) / "state")]


def finished_result(run_dir: str | Path, cfg: TrainerConfig, *, checkpoints: bool = True) -> TrainResult | None:
    """A finished run's result read from its folder (nothing is loaded), or None when unfinished.

    Finished: a training state at `max_steps` and the model checkpoints it implies (`final`,
    and the last step's when that step is a checkpoint step) are there. `checkpoints=False`
    for trainers that save no model. Lets a recipe that is started again on a finished run
    report it without building data or a model.
    """
    run_dir = Path(run_dir)
    steps = state_steps(run_dir)
    if not steps or steps[-1] < cfg.max_steps:
        return None
    step = steps[-1]
    final = run_dir / "final"
    if checkpoints and (not final.is_dir() or (
            step % cfg.checkpoint_every == 0 and not (run_dir / "checkpoints" / f"step-{step:07d}").is_dir())):
        return None
    last, val = logged_metrics(run_dir, step)
    return TrainResult(step, True, final if checkpoints else None, last, val)


def set_threads(threads: int) -> None:
    """Torch's intra-op threads (0: half the cores, at most 4). Spinning threads on a busy machine
    cost far more than they give: on a shared 2-core box a step took ~8x longer with torch's
    default of two than with one."""
    torch.set_num_threads(threads or min(4, max(1, (os.cpu_count() or 2) // 2)))


def make_accelerator(cfg: TrainerConfig) -> Accelerator:
    """The process's training set-up, made safely: torch's threads (`cfg.threads`; the one place
    every recipe's are set), NCCL defaults, a guarded rendezvous, a pre-flight.

    Call it before building datasets (they split data by the rank of the process group)
    and pass it to Trainer (which makes one when not given). On CPU several processes use gloo.
    """
    set_threads(cfg.threads)
    started = torch.distributed.is_available() and torch.distributed.is_initialized()
    settings = [] if started else distributed.setup_nccl_environment()
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    with distributed.rendezvous_guard():
        accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),  # without it, torchrun on CPU runs N separate jobs
            gradient_accumulation_steps=cfg.grad_accum, mixed_precision=precision,
            kwargs_handlers=[InitProcessGroupKwargs(timeout=distributed.process_group_timeout())],
        )
    if accelerator.num_processes > 1:
        distributed.preflight(accelerator.device, settings,
                              out=lambda text: log.info("%s", text))
    return accelerator


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers (name, dtype, shape and bytes)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _unsharded_class(model: torch.nn.Module) -> type:
    """The model's own class under FSDP2, which swaps in a generated FSDP subclass."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def _check_data_ranks(train_data: Any, num_processes: int) -> None:
    """Refuse data that split itself for another world size (built before the process group)."""
    source = getattr(train_data, "mix", train_data)
    world = getattr(source, "world_size", None)
    if isinstance(world, int) and world != num_processes:
        raise ValueError(
            f"the training data was split for world_size={world}, but this run has "
            f"{num_processes} processes: every rank would train on the same data. Create the "
            "accelerator first (curriculum.trainer.make_accelerator) and build the data after it"
        )


class Trainer:
    """Trains `model` on `train_data` with `loss_fn`, resuming from `run_dir` when it holds state."""

    def __init__(
        self,
        cfg: TrainerConfig,
        run_dir: str | Path,
        model: torch.nn.Module,
        loss_fn: LossFn,
        train_data: ResumableData,
        *,
        val_data: Iterable[dict] | None = None,
        save_model: Callable[[torch.nn.Module, Path, dict], None] | None = None,
        run_config: dict | None = None,
        accelerator: Accelerator | None = None,
    ):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.loss_fn = loss_fn
        self.train_data = train_data
        self.val_data = val_data
        self.save_model = save_model
        self.run_config = run_config or {}
        self.accelerator = accelerator or make_accelerator(cfg)
        _check_data_ranks(train_data, self.accelerator.num_processes)
        set_seed(cfg.seed)
        decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(0.9, 0.95),
            fused=torch.cuda.is_available() or None,
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.step = 0
        self.wandb_id: str | None = None
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._wandb = None

    # -- state ----------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def is_fsdp(self) -> bool:
        return self.accelerator.distributed_type == DistributedType.FSDP

    def _parameter_digests(self) -> list[str]:
        """Every rank's parameter digest (rank order); replicas must agree. Empty under FSDP."""
        if self.is_fsdp:  # each rank holds a different shard by design
            return []
        digest = parameter_digest(self.accelerator.unwrap_model(self.model))
        digests = gather_object([digest]) if self.accelerator.num_processes > 1 else [digest]
        if len(set(digests)) > 1:
            raise RuntimeError(
                f"model replicas diverged at step {self.step}: parameter digests per rank "
                f"{[d[:12] for d in digests]}; a rank skipped a step or a collective is broken. "
                f"Resume from the previous state in {self.run_dir / 'state'}"
            )
        return digests

    def _save_state(self) -> None:
        """Full training state, atomically: a temporary folder renamed into place."""
        states = self.run_dir / "state"
        final = states / f"step-{self.step:07d}"
        tmp = states / f".tmp-step-{self.step:07d}"
        digests = self._parameter_digests()
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp))
        self.accelerator.wait_for_everyone()
        if self.is_main:
            write_json(tmp / "trainer.json",
                       {"step": self.step, "data": self.train_data.state_dict(), "wandb_id": self.wandb_id,
                        "world_size": self.accelerator.num_processes, "param_digests": digests})
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for _, old in _step_folders(states)[: -self.cfg.keep_states]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def _try_resume(self) -> None:
        """Load the newest state every rank can read; a corrupt one falls back to the one before."""
        several = self.accelerator.num_processes > 1
        for _, folder in reversed(_step_folders(self.run_dir / "state")):
            error = None
            try:
                meta = json.loads((folder / "trainer.json").read_text())
                self.accelerator.load_state(str(folder))
            except Exception as err:  # a half-written or damaged state: try the previous one
                error = err
            # All ranks must resume from the same step, even if only one rank's files are bad.
            failed = gather_object([error is not None]) if several else [error is not None]
            if any(failed):
                why = error or f"unreadable on rank(s) {[r for r, bad in enumerate(failed) if bad]}"
                log.warning("training state %s is unreadable (%s); falling back to an earlier one",
                            folder, why)
                continue
            self.step = int(meta["step"])
            self.train_data.load_state_dict(meta["data"])
            self.wandb_id = meta.get("wandb_id")
            if self.is_main:
                log.info("resumed %s at step %d", self.run_dir, self.step)
            return

    def _truncate_metrics(self) -> None:
        """Drop metrics logged after the resumed step, so every step appears exactly once."""
        if not self.is_main or not self.metrics_path.exists():
            return
        kept, damaged = [], 0
        for line in self.metrics_path.read_text().splitlines():
            try:
                if line.strip() and json.loads(line).get("step", 0) <= self.step:
                    kept.append(line)
            except json.JSONDecodeError:  # a line cut short by a crash mid-write
                damaged += 1
        if damaged:
            log.warning("dropped %d damaged line(s) from %s", damaged, self.metrics_path)
        write_atomic(self.metrics_path, "".join(line + "\n" for line in kept))

    def _log(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            # global_step too: offline restarts are separate wandb folders, merged by this axis.
            values = {k: v for k, v in record.items() if k != "step"}
            self._wandb.log({**values, "global_step": record["step"]}, step=record["step"])

    def _fix_wandb_id(self) -> None:
        """One wandb id per run folder, fixed at the first start, before any state exists.

        A crash before the first saved state would otherwise give the restart a new id.
        """
        if self.wandb_id is not None or not self.is_main:
            return
        path = self.run_dir / "wandb_id"
        if path.exists():
            self.wandb_id = path.read_text().strip()
        else:
            self.wandb_id = os.environ.get("WANDB_RUN_ID") or uuid.uuid4().hex[:12]
            write_atomic(path, self.wandb_id + "\n")

    def _start_wandb(self) -> None:
        if not self.is_main or self.cfg.wandb_mode == "disabled":
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        # Offline runs keep the id but start a new folder on every init; the step axis is ours.
        self._wandb = wandb.init(
            project=self.cfg.wandb_project, id=self.wandb_id, resume="allow", mode=self.cfg.wandb_mode,
            dir=str(self.run_dir), config={"trainer": asdict(self.cfg), **self.run_config},
            name=self.run_dir.name,
        )

    def _save_checkpoint(self, path: Path, metrics: dict) -> None:
        if self.save_model is None:
            return
        self.accelerator.wait_for_everyone()
        model = self.accelerator.unwrap_model(self.model)
        if self.is_fsdp:
            # Gathering a sharded model is a collective: every rank takes part, rank 0 saves.
            full = self.accelerator.get_state_dict(self.model)
            if self.is_main:
                cls = _unsharded_class(model)
                if not hasattr(model, "cfg"):
                    raise TypeError(f"cannot rebuild {cls.__name__} from its state under FSDP: "
                                    "it needs a `cfg` attribute its constructor takes")
                with torch.device("meta"):  # no second random init: the weights come next
                    model = cls(model.cfg)
                model.load_state_dict(full, assign=True)
        if self.is_main:
            meta = {"step": self.step, "run_dir": str(self.run_dir), "wandb_id": self.wandb_id, **metrics}
            self.save_model(model, path, meta)
        self.accelerator.wait_for_everyone()

    # -- evaluation ---------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean validation metrics over `eval_batches` batches (weighted by decisions)."""
        several = self.accelerator.num_processes > 1
        if self.val_data is None and not several:
            return {}
        # Every rank takes part even without data of its own, or the others would wait forever.
        source = self.val_data if self.val_data is not None else []
        batches = [b for _, b in zip(range(self.cfg.eval_batches), source)]
        if self.is_fsdp:  # a sharded forward is a collective: the same number of batches everywhere
            batches = batches[: min(gather_object([len(batches)]))]
        self.model.eval()
        totals: dict[str, float] = {}
        weight = 0.0
        for batch in batches:
            batch = {k: v.to(self.accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with self.accelerator.autocast():
                _, metrics = self.loss_fn(self.model, batch)
            n = float(metrics.get("decisions", 1.0))
            weight += n
            for k, v in metrics.items():
                if k != "decisions":
                    totals[k] = totals.get(k, 0.0) + float(v) * n
        self.model.train()
        # Objects, not a tensor: ranks may have seen no batch and so know no metric names.
        parts = gather_object([(weight, totals)]) if several else [(weight, totals)]
        weight = sum(w for w, _ in parts)
        if weight <= 0:
            return {}
        merged: dict[str, float] = {}
        for _, part in parts:
            for k, v in part.items():
                merged[k] = merged.get(k, 0.0) + v
        return {f"val_{k}": v / weight for k, v in merged.items()}

    # -- the loop -----------------------------------------------------------------
    def _restore_checkpoints(self) -> None:
        """Write the model checkpoints the resumed state implies but a kill kept from being saved.

        The state is saved first, then the checkpoint; a kill between them leaves a state
        whose checkpoint is missing, and the resumed model is exactly the one to save.
        """
        if self.save_model is None or self.step == 0:
            return
        wanted = []
        if self.step % self.cfg.checkpoint_every == 0:
            wanted.append(self.run_dir / "checkpoints" / f"step-{self.step:07d}")
        if self.step >= self.cfg.max_steps:
            wanted.append(self.run_dir / "final")
        for path in wanted:
            missing = [not path.is_dir()]
            if self.accelerator.num_processes > 1:  # rank 0's file system decides, for every rank
                missing = broadcast_object_list(missing)
            if missing[0]:
                last, val = logged_metrics(self.run_dir, self.step) if self.is_main else ({}, {})
                log.info("writing checkpoint %s from the training state at step %d", path, self.step)
                self._save_checkpoint(path, {**last, **val})

    def fit(self) -> TrainResult:
        """Train to `max_steps` (or `stop_after_steps` more), checkpointing and resuming."""
        with run_dir_lock(self.run_dir, self.accelerator):
            return self._fit()

    def _fit(self) -> TrainResult:
        cfg = self.cfg
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_temporaries(self.run_dir)
        self.accelerator.wait_for_everyone()
        self._try_resume()
        self._fix_wandb_id()
        self._truncate_metrics()
        self._restore_checkpoints()
        if self.step >= cfg.max_steps:  # finished before: report it, rewrite nothing
            last, val = logged_metrics(self.run_dir, self.step) if self.is_main else ({}, {})
            final = self.run_dir / "final" if self.save_model is not None else None
            return TrainResult(self.step, True, final, last, val)
        self._start_wandb()
        stop_at = min(cfg.max_steps, self.step + cfg.stop_after_steps) if cfg.stop_after_steps else cfg.max_steps
        data = iter(self.train_data)
        self.model.train()
        last: dict = {}
        val: dict = {}
        window_decisions, window_start = 0.0, time.monotonic()
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not self.is_main, desc=self.run_dir.name,
                   dynamic_ncols=True)
        try:
            while self.step < stop_at:
                lr = cfg.lr_at(self.step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                sums: dict[str, float] = {}
                for _ in range(cfg.grad_accum):
                    batch = next(data)
                    batch = {k: v.to(self.accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                    with self.accelerator.accumulate(self.model):
                        with self.accelerator.autocast():
                            loss, metrics = self.loss_fn(self.model, batch)
                        self.accelerator.backward(loss)
                        if self.accelerator.sync_gradients:
                            grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                        self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                self.step += 1
                window_decisions += sums.get("decisions", 0.0) * self.accelerator.num_processes
                if self.step % cfg.log_every == 0 or self.step == stop_at:
                    stats = torch.tensor(list(sums.values()), device=self.accelerator.device, dtype=torch.float64)
                    stats = self.accelerator.reduce(stats, reduction="mean") / cfg.grad_accum
                    elapsed = max(time.monotonic() - window_start, 1e-9)
                    last = {"step": self.step, "lr": lr, "grad_norm": float(grad_norm),
                            **{k: float(v) for k, v in zip(sums.keys(), stats)},
                            "decisions_per_s": window_decisions / elapsed}
                    last.pop("decisions", None)
                    self._log(last)
                    bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4f}",
                                    dec_s=f"{last['decisions_per_s']:.0f}")
                    window_decisions, window_start = 0.0, time.monotonic()
                bar.update(1)
                if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                    val = self.evaluate()
                    if val:
                        self._log({"step": self.step, **val})
                if self.step % cfg.checkpoint_every == 0 or self.step == stop_at:
                    self._save_state()
                    if self.step % cfg.checkpoint_every == 0:
                        self._save_checkpoint(self.run_dir / "checkpoints" / f"step-{self.step:07d}", {**last, **val})
        finally:
            bar.close()
            if self._wandb is not None:
                self._wandb.finish()
        final = None
        if self.step >= cfg.max_steps:
            final = self.run_dir / "final"
            self._save_checkpoint(final, {**last, **val})
        return TrainResult(self.step, self.step >= cfg.max_steps, final, last, val)
