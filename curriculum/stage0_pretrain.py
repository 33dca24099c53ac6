"""Stage 0: imitation pretraining on battle trajectories.

    python -m curriculum.stage0_pretrain [--config FILE.yaml] [key=value ...]
    python -m curriculum.stage0_pretrain data=[runs/quickstart/trajectories] mix=selfplay:0.7,human:0.3 \
        preset=tiny trainer.max_steps=2000 run_dir=runs/pretrain

One training, read top to bottom in curriculum/imitation.py's `train_imitation`: set up the
process (torch's threads, the process group), build the data mix and a held-out split, build
(or load, `init_from`) the model, hand model, loss (curriculum/losses.py) and data to the
shared trainer. Running the same command again resumes the run in `run_dir`; on a finished run
it changes nothing and prints its results; on a run folder another command is running in, it
stops at once naming that command. Several processes:

    torchrun --nproc_per_node N -m curriculum.stage0_pretrain key=value ...
    accelerate launch --config_file curriculum/configs/fsdp_large.yaml -m curriculum.stage0_pretrain \
        --config curriculum/configs/pretrain_large.yaml

and `python -m curriculum.supervise -- <that command>` restarts it after a crash.
"""

from __future__ import annotations

import logging

from battles.config import recipe_main
from curriculum.distributed import DistributedStartError
from curriculum.imitation import PretrainConfig, train_imitation


def main(argv: list[str] | None = None) -> None:
    # Errors a user causes (a bad preset, window, mix or data path, a missing or damaged
    # checkpoint, a run folder in use: RunFolderBusy) are ValueError / FileNotFoundError with a message
    # naming the key or path and what to do: one line, no traceback.
    recipe_main(PretrainConfig, train_imitation, argv, description="Imitation pretraining (stage 0).",
                example="trainer.max_steps=500 preset=small", log_level=logging.INFO, errors=(DistributedStartError,))


if __name__ == "__main__":
    main()
