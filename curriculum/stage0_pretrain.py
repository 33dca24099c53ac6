"""Stage 0: imitation pretraining on battle trajectories.

    python -m curriculum.pretrain [--config FILE.yaml] [key=value ...]
    python -m curriculum.pretrain data=[runs/quickstart/trajectories] mix=selfplay:0.7,human:0.3 \
        preset=tiny trainer.max_steps=2000 run_dir=runs/pretrain

Reads top to bottom: resolve the config, build the data mix and a held-out split, build
(or load) the model, define the loss, hand everything to the shared trainer. Running the
same command again resumes the run in `run_dir`; on a finished run it changes nothing and
prints its results; on a run folder another command is running in, it stops at once
naming that command. Several processes:

    torchrun --nproc_per_node N -m curriculum.pretrain key=value ...
    accelerate launch --config_file curriculum/configs/fsdp_large.yaml -m curriculum.pretrain \
        --config curriculum/configs/pretrain_large.yaml

and `python -m curriculum.supervise -- <that command>` restarts it after a crash.

The config, the model, the loss and the data filters are curriculum/imitation.py's
(shared with the data-mix ablation); this file wires them into the shared trainer.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list

from battles.dataset import MixLoader
from battles.encode import ObservationEncoder
from battles.config import recipe_main, save_config, to_dict
from curriculum.distributed import DistributedStartError
from curriculum.imitation import (
    PretrainConfig,
    build_model,
    checkpoint_saver,
    imitation_loss,
    set_threads,
    training_mix,
    validation_batches,
)
from curriculum.run_folder import run_dir_lock
from curriculum.trainer import Trainer, TrainResult, finished_result, make_accelerator

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    # Errors a user causes (a bad preset, window, mix or data path, a missing or damaged
    # checkpoint, a run folder in use: RunFolderBusy) are ValueError / FileNotFoundError with a message
    # naming the key or path and what to do: one line, no traceback.
    recipe_main(PretrainConfig, run, argv, description="Imitation pretraining (stage 0).",
                example="trainer.max_steps=500 preset=small", log_level=logging.INFO, errors=(DistributedStartError,))


def _report(result: TrainResult, cfg: PretrainConfig) -> None:
    print(f"pretrain: step {result.step}/{cfg.trainer.max_steps}, "
          f"loss {result.last_metrics.get('loss', float('nan')):.4f}, "
          f"val {result.val_metrics}, checkpoint {result.final_checkpoint}", flush=True)


def run(cfg: PretrainConfig):
    """Train (or resume) the pretraining run described by `cfg`; returns the TrainResult."""
    run_dir = Path(cfg.run_dir)
    # First: the process group, so that the data below is split by rank.
    accelerator = make_accelerator(cfg.trainer)
    with run_dir_lock(run_dir, accelerator):
        done = [finished_result(run_dir, cfg.trainer)]
        if accelerator.num_processes > 1:  # rank 0's view of the folder decides for every rank
            done = broadcast_object_list(done)
        if done[0] is not None:  # finished before: build nothing, rewrite nothing
            if accelerator.is_main_process:
                log.info("%s is a finished run; raise trainer.max_steps to train it further", run_dir)
                _report(done[0], cfg)
            return done[0]
        return _train(cfg, run_dir, accelerator)


def _train(cfg: PretrainConfig, run_dir: Path, accelerator):
    set_threads(cfg.threads)
    encoder = ObservationEncoder()
    mix = training_mix(cfg, encoder)
    train_data = MixLoader(mix, batch_size=cfg.trainer.batch_size, num_workers=cfg.num_workers)
    val_batches = validation_batches(cfg, encoder)
    if not val_batches:
        log.warning("no validation trajectories (val_fraction=%s); validation is skipped", cfg.val_fraction)
    torch.manual_seed(cfg.trainer.seed)  # the same initial weights on every rank and every run
    model = build_model(cfg, encoder)
    if accelerator.is_main_process:
        save_config(cfg, run_dir / "config.yaml")
    log.info("model: %s preset, %.2fM parameters; data: %s", cfg.preset, model.num_parameters() / 1e6, cfg.mix)
    trainer = Trainer(
        cfg.trainer, run_dir, model, imitation_loss(cfg), train_data,
        val_data=val_batches or None, save_model=checkpoint_saver(encoder, cfg),
        run_config={"recipe": "pretrain", **to_dict(cfg)}, accelerator=accelerator,
    )
    result = trainer.fit()
    if trainer.is_main:
        _report(result, cfg)
    return result


if __name__ == "__main__":
    main()
