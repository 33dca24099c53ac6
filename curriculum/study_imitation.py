"""The imitation scaling study: how close a policy gets to its teacher as data and model grow.

    python -m curriculum.study_imitation [--config FILE.yaml] [key=value ...]
    scripts/imitation_study.sh teachers=[tactician] decisions=[10000,100000] presets=[tiny]

Reads top to bottom, one phase after another, each resumable:
1. play: the teacher's games, shared by every point: the teacher against itself and against
   the `sparring` heuristics on every team set, in rounds, until its decisions (both seats of
   the mirror count) exceed the largest point. Rounds already played are kept.
2. build: the games to trajectories (only what is new).
3. for every point (teacher, preset, decisions): imitation on the teacher's decisions only
   (`select.selfplay.agents=[TEACHER]`), on a nested subset of the battles holding about
   that many decisions, for `epochs` passes (at least `min_steps`); then held-out top-1
   agreement with the teacher, the value head's calibration (Brier score and expected
   calibration error of P(win) = (v + 1) / 2), and win rates against the teacher and each
   `judges` agent (`eval_battles` per pair, over the team sets, the policy greedy).
4. report: `study.md` (one table row per point), `study.png` (agreement and win rates
   against decisions, a line per teacher and preset) and `study.json`.

A point that was stopped continues from its last training state; finished points (their
`point.json`) are not redone; a match that was cut short plays only its missing battles.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from battles.config import check_same_run, recipe_main, save_config
from battles.dataset import Selection
from battles.encode import ObservationEncoder
from battles.files import write_atomic, write_json
from curriculum.imitation import PretrainConfig, train_imitation, validation_batches
from curriculum.phases import ServerOnDemand
from curriculum.run_folder import owns_run_folder
from curriculum.teacher_games import TeacherGames, play_teacher_games, teacher_decisions
from curriculum.trainer import TrainerConfig
from eval.match import folder_name, play_over_team_sets
from models.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

# Which points to run may change between invocations (a point's own settings may not).
_MUTABLE = {"run_dir", "concurrency", "eval_concurrency", "threads", "stop_after_steps", "decisions",
            "presets", "teachers"}


@dataclass
class StudyConfig(TeacherGames):
    """Teachers, data sizes, presets, and how each point is trained and judged (and, from
    TeacherGames, how the teachers' games are played: format, team sets, sparring, rounds)."""

    run_dir: str = "runs/imitation_study"
    teachers: list[str] = field(default_factory=lambda: ["tactician"])
    decisions: list[int] = field(default_factory=lambda: [10_000, 30_000, 100_000, 300_000, 1_000_000])
    presets: list[str] = field(default_factory=lambda: ["tiny", "small"])
    epochs: float = 3.0
    min_steps: int = 400
    max_steps: int = 20_000
    batch_size: int = 16
    window: int = 64
    lr: float = 1e-3
    judges: list[str] = field(default_factory=lambda: ["maxbp", "bestdamage"])
    eval_battles: int = 200  # per pair, split over the team sets
    eval_concurrency: int = 8
    threads: int = 1
    val_fraction: float = 0.05  # battles held out for agreement and calibration
    stop_after_steps: int = 0  # > 0: stop this invocation after so many training steps of a point

    def __post_init__(self) -> None:
        if not self.teachers or not self.decisions or not self.presets:
            raise ValueError("teachers, decisions and presets each need at least one value")
        if any(d < 1000 for d in self.decisions):
            raise ValueError(f"decisions={self.decisions}: each point needs at least 1,000 decisions")
        super().__post_init__()
        if self.eval_battles < len(self.team_sets):
            raise ValueError(f"eval_battles={self.eval_battles}: at least one per team set")


_slug = folder_name


# -- 3: one point -------------------------------------------------------------------------
def point_config(cfg: StudyConfig, run: Path, teacher: str, preset: str, decisions: int,
                 available: int) -> PretrainConfig:
    """The imitation run of one point: the teacher's decisions only, a nested subset of them."""
    subset = min(1.0, decisions / max(available * (1.0 - cfg.val_fraction), 1))
    per_step = cfg.batch_size * cfg.window * 0.7  # windows are rarely full
    steps = int(min(cfg.max_steps, max(cfg.min_steps, math.ceil(cfg.epochs * decisions / per_step))))
    trainer = TrainerConfig(max_steps=steps, batch_size=cfg.batch_size, lr=cfg.lr,
                            warmup_steps=min(100, steps // 10), eval_every=max(100, steps // 5),
                            checkpoint_every=max(10, min(500, steps // 4)), log_every=50, seed=cfg.seed,
                            stop_after_steps=cfg.stop_after_steps, wandb_mode="disabled", threads=cfg.threads)
    return PretrainConfig(
        run_dir=str(run / "points" / f"{_slug(teacher)}-{preset}-{decisions}"),
        data=[str(run / "trajectories" / _slug(teacher))], mix={"selfplay": 1.0},
        select={"selfplay": Selection(agents=[teacher])}, formats=[cfg.format],
        preset=preset, window=cfg.window, subset=subset, val_fraction=cfg.val_fraction, trainer=trainer,
    )


@torch.no_grad()
def calibration(checkpoint: Path, pre: PretrainConfig) -> dict:
    """Held-out agreement with the teacher (on decisions with a choice; by the teacher's kind of
    action: a move, a voluntary switch, a forced switch), the value head's Brier score and ECE."""
    encoder = ObservationEncoder()
    model, _ = load_checkpoint(checkpoint, expected_encoder_version=encoder.version,
                               expected_vocab_hash=encoder.vocab.hash)
    model.eval()
    pre = replace(pre, trainer=replace(pre.trainer, eval_batches=40))
    hits = total = 0
    probs, wins = [], []
    kinds = {"move": [0, 0], "switch": [0, 0], "forced_switch": [0, 0]}  # teacher's action: [agree, all]
    for batch in validation_batches(pre, encoder):
        logits, value = model(batch["tokens"], batch["numbers"], batch["legal"])
        scored = batch["loss_mask"] & batch["mask"]
        act = batch["action"]
        bc = scored & (act >= 0) & (batch["legal"].sum(-1) > 1)  # a choice to make
        agree = logits.argmax(-1) == act
        hits += int(agree[bc].sum())
        total += int(bc.sum())
        switch = (act >= 4) & (act < 9)
        forced = ~batch["legal"][..., :4].any(-1) & ~batch["legal"][..., 9:].any(-1)
        for name, where in (("move", ~switch), ("switch", switch & ~forced), ("forced_switch", forced)):
            kinds[name][0] += int(agree[bc & where].sum())
            kinds[name][1] += int((bc & where).sum())
        probs.append(((value[scored] + 1) / 2).numpy())
        wins.append(((batch["outcome"][:, None].expand_as(value)[scored]) > 0).float().numpy())
    if total == 0:
        return {"agreement": math.nan, "held_out_decisions": 0, "brier": math.nan, "ece": math.nan}
    p, y = np.concatenate(probs), np.concatenate(wins)
    bins = np.minimum((p * 10).astype(int), 9)
    ece = sum(abs(p[bins == b].mean() - y[bins == b].mean()) * (bins == b).mean()
              for b in range(10) if (bins == b).any())
    by_kind = {f"agreement_{k}": round(a / n, 4) if n else None for k, (a, n) in kinds.items()}
    by_kind.update({f"share_{k}": round(n / total, 4) for k, (_, n) in kinds.items()})
    return {"agreement": hits / max(total, 1), "held_out_decisions": total, **by_kind,
            "brier": float(((p - y) ** 2).mean()), "ece": float(ece)}


def judge(cfg: StudyConfig, policy: str, opponent: str, out: Path, servers: ServerOnDemand) -> dict:
    """`eval_battles` of the policy against one opponent over the team sets (resumable)."""
    return play_over_team_sets(policy, opponent, cfg.eval_battles, cfg.team_sets, out,
                               battle_format=cfg.format, seed=cfg.seed + 7919,
                               concurrency=cfg.eval_concurrency, server=servers())


def run_point(cfg: StudyConfig, run: Path, teacher: str, preset: str, decisions: int,
              servers: ServerOnDemand) -> dict | None:
    """Train (or resume) and judge one point; its point.json once done, None if training stopped early."""
    available = teacher_decisions(run / "trajectories" / _slug(teacher), teacher)
    pre = point_config(cfg, run, teacher, preset, decisions, available)
    point_dir = Path(pre.run_dir)
    done = point_dir / "point.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.monotonic()
    result = train_imitation(pre)
    if not result.finished:
        return None
    train_s = time.monotonic() - t0
    final = point_dir / "final"
    stats = calibration(final, pre)
    policy = f"policy:{final},greedy=true"
    t1 = time.monotonic()
    against = {name: judge(cfg, policy, name, point_dir / "eval", servers)
               for name in [teacher, *cfg.judges]}
    row = {"teacher": teacher, "preset": preset, "decisions": decisions,
           "trained_decisions": round(available * (1.0 - cfg.val_fraction) * pre.subset), "steps": result.step,
           **stats, "against": against, "train_s": round(train_s), "eval_s": round(time.monotonic() - t1)}
    write_json(done, row)
    return row


# -- 4: report ----------------------------------------------------------------------------
def finished_points(run: Path) -> list[dict]:
    """Every finished point of the study folder, whichever invocation ran it."""
    return [json.loads(p.read_text()) for p in sorted((run / "points").glob("*/point.json"))]


def report(cfg: StudyConfig, run: Path, rows: list[dict]) -> None:
    """study.md, study.json and study.png from the given points."""
    write_json(run / "study.json", rows)
    names = [cfg.teachers[0], *cfg.judges] if len(cfg.teachers) == 1 else ["teacher", *cfg.judges]
    head = ("| teacher | preset | decisions | agreement | Brier | ECE | "
            + " | ".join(f"vs {n}" for n in names) + " | train s | eval s |")
    lines = ["# Imitation scaling study", "",
             f"{cfg.format}, team sets {', '.join(cfg.team_sets)}; win rates of the greedy policy over "
             f"{cfg.eval_battles} battles a pair with 95% intervals; agreement = held-out top-1 "
             "agreement with the teacher.", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(rows, key=lambda r: (r["teacher"], r["preset"], r["decisions"])):
        cells = []
        for name in [r["teacher"], *cfg.judges]:
            a = r["against"][name]
            cells.append(f"{a['winrate']:.3f} [{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}]")
        lines.append(f"| {r['teacher']} | {r['preset']} | {r['trained_decisions']:,} | {r['agreement']:.3f} | "
                     f"{r['brier']:.3f} | {r['ece']:.3f} | " + " | ".join(cells)
                     + f" | {r['train_s']} | {r['eval_s']} |")
    write_atomic(run / "study.md", "\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for (teacher, preset) in sorted({(r["teacher"], r["preset"]) for r in rows}):
        pts = sorted((r for r in rows if (r["teacher"], r["preset"]) == (teacher, preset)),
                     key=lambda r: r["trained_decisions"])
        x = [r["trained_decisions"] for r in pts]
        ax1.plot(x, [r["agreement"] for r in pts], marker="o", label=f"{teacher} / {preset}")
        ax2.plot(x, [r["against"][teacher]["winrate"] for r in pts], marker="o",
                 label=f"{preset} vs {teacher}")
        for judge_name in cfg.judges:
            ax2.plot(x, [r["against"][judge_name]["winrate"] for r in pts], marker=".", linestyle="--",
                     label=f"{preset} vs {judge_name}")
    for ax, title in ((ax1, "held-out agreement with the teacher"), (ax2, "win rate")):
        ax.set_xscale("log")
        ax.set_xlabel("teacher decisions trained on")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax2.axhline(0.5, color="grey", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(run / "study.png", dpi=110)
    plt.close(fig)


@owns_run_folder(lambda cfg: cfg.run_dir)
def run(cfg: StudyConfig, server=None) -> list[dict]:
    """Every phase of the study, skipping what is done; returns the finished points' rows.
    Battles go to `server` when given, else to a server of its own started when first needed."""
    run_dir = Path(cfg.run_dir)
    check_same_run(cfg, run_dir, _MUTABLE, what=f"study {run_dir}")
    save_config(cfg, run_dir / "config.yaml")
    servers = ServerOnDemand(server)
    rows = []
    try:
        for teacher in cfg.teachers:
            want = max(cfg.decisions) / (1.0 - cfg.val_fraction)  # the held-out share is not trained on
            played = play_teacher_games(cfg, run_dir, teacher, want, servers)
            write_json(run_dir / "phases" / f"play-{_slug(teacher)}.json", played)
            for preset in cfg.presets:
                for decisions in sorted(cfg.decisions):
                    row = run_point(cfg, run_dir, teacher, preset, decisions, servers)
                    if row is None:
                        print(f"stopped after {cfg.stop_after_steps} steps of {teacher}/{preset}/{decisions:,} "
                              "(stop_after_steps); run the command again to go on")
                        return rows
                    rows.append(row)
                    report(cfg, run_dir, finished_points(run_dir))
                    print(f"point {teacher}/{preset}/{decisions:,}: agreement {row['agreement']:.3f}, "
                          + ", ".join(f"vs {k} {v['winrate']:.3f}" for k, v in row["against"].items()),
                          flush=True)
    finally:
        servers.stop()
    print(f"study: {run_dir / 'study.md'}, {run_dir / 'study.png'}")
    return rows


def main(argv: list[str] | None = None) -> None:
    recipe_main(StudyConfig, run, argv, description="The imitation scaling study.",
                example="decisions=[10000,100000] presets=[tiny]")


if __name__ == "__main__":
    main()
