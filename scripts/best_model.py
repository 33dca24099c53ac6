"""The chain that makes the best model this machine can: from nothing to a promoted policy.

    scripts/best_model.sh [key=value ...]         # runs/best by default; run again to resume

1. teacher: the tactician's games (against itself and the sparring heuristics, every gen1ou
   team set) until `decisions` teacher decisions exist, built into trajectories.
2. imitation: a policy on the tactician's decisions only (`preset`, `steps`).
3. stage 1: the imitation model plays a pool holding the tactician and itself, learns from its
   won games (with some teacher data kept in each batch); promoted only if the tournament says so.
4. stage 3: the student plays the tactician greedily while the search bot labels the positions
   it is unsure of (curriculum/configs/stage3.yaml); promoted only if the tournament says so.
5. final: a tournament of the imitation model, each stage's output and the heuristics, over
   the competitive, replay and variety team sets; prints the ratings and what each stage gained.

Every step resumes: the games, the trainings and the tournaments keep what they finished.
Stages 1 and 3 run as their own commands (python -m curriculum.stage1_play / stage3_search).
Settings (key=value): run_dir, decisions, preset, steps, stage1_battles, stage3_battles,
search, final_battles, stages (e.g. stages=[imitation,stage1] to stop earlier).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from agents.registry import parse_spec
from battles.config import load_config
from battles.files import write_json
from curriculum.imitation import PretrainConfig, train_imitation
from curriculum.lineage import read_lineage
from curriculum.phases import ServerOnDemand
from curriculum.teacher_games import TeacherGames, play_teacher_games

REPO = Path(__file__).resolve().parents[1]
TEACHER = "tactician"
STAGES = ("imitation", "stage1", "stage3", "final")


@dataclass
class ChainConfig:
    """How much of each step; the defaults fill a few hours of a 2-core CPU."""

    run_dir: str = "runs/best"
    decisions: int = 700_000  # teacher decisions to imitate
    preset: str = "tiny"
    steps: int = 6000
    stage1_battles: int = 3000
    stage3_battles: int = 200
    search: str = "search:ms=1000"  # the search bot labelling the student's positions
    final_battles: int = 48  # per pair, per team set (a multiple of 4)
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    threads: int = 1

    def __post_init__(self) -> None:
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise ValueError(f"stages={self.stages}: unknown {sorted(unknown)}; choose from {list(STAGES)}")


def output_of(run: Path) -> Path:
    """The checkpoint a stage hands on (its lineage's `output`)."""
    return Path(json.loads((run / "lineage.json").read_text())["output"])


def run_stage(module: str, config: str, overrides: list[str]) -> dict:
    """Run (or resume) a stage as its own command; its lineage record."""
    cmd = [sys.executable, "-m", module, "--config", str(REPO / config), *overrides]
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed; run the same command again to resume")
    run_dir = next(o.split("=", 1)[1] for o in overrides if o.startswith("run_dir="))
    return read_lineage(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. decisions=300000 stages=[imitation,stage1]")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("poke_env").setLevel(logging.CRITICAL)
    try:
        cfg = load_config(ChainConfig, None, args.overrides)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    run = Path(cfg.run_dir)
    servers = ServerOnDemand()
    gained = {}
    try:
        # 1-2. the teacher's games, and imitation of its decisions
        want = cfg.decisions / (1.0 - PretrainConfig.val_fraction)  # the held-out share is not trained on
        played = play_teacher_games(TeacherGames(), run / "teacher", TEACHER, want, servers)
        print(f"teacher: {played['decisions']:,} tactician decisions in {played['battles']:,} battles", flush=True)
        pre = load_config(PretrainConfig, None, [
            f"run_dir={run / 'imitation'}", f"data=[{run / 'teacher' / 'trajectories' / TEACHER}]",
            "mix=selfplay:1.0", f"select.selfplay.agents=[{TEACHER}]", "formats=[gen1ou]",
            f"preset={cfg.preset}", f"trainer.max_steps={cfg.steps}", "trainer.lr=1e-3", "trainer.batch_size=16",
            "trainer.warmup_steps=100", "trainer.eval_every=1000", "trainer.checkpoint_every=500",
            "trainer.log_every=100", "window=64", f"trainer.threads={cfg.threads}",
        ])
        train_imitation(pre)
        best = run / "imitation" / "final"
        agents = {"imitation": f"policy:{best}"}
        if "stage1" in cfg.stages:
            lineage = run_stage("curriculum.stage1_play", "curriculum/configs/stage1.yaml", [
                f"run_dir={run / 'stage1'}", f"parent={best}", f"battles={cfg.stage1_battles}",
                f"opponents={{{TEACHER}: 0.6, 'policy:{best}': 0.2, bestdamage: 0.2}}",
                f"trainer.threads={cfg.threads}", "promotion.temperature=0",
            ])
            gained["stage1"] = lineage.get("decision")
            if lineage.get("promoted"):
                best = output_of(run / "stage1")
                agents["stage1"] = f"policy:{best}"
        if "stage3" in cfg.stages:
            lineage = run_stage("curriculum.stage3_search", "curriculum/configs/stage3.yaml", [
                f"run_dir={run / 'stage3'}", f"parent={best}", f"battles={cfg.stage3_battles}",
                f"search={cfg.search}", f"label_ms={parse_spec(cfg.search).params.get('ms', 1000)}",
                f"trainer.threads={cfg.threads}",
            ])
            gained["stage3"] = lineage.get("decision")
            if lineage.get("promoted"):
                best = output_of(run / "stage3")
                agents["stage3"] = f"policy:{best}"
        write_json(run / "chain.json", {"best": str(best), "agents": agents, "gained": gained})
        for stage, decision in gained.items():
            verdict = "promoted" if (decision or {}).get("promoted") else "not promoted"
            print(f"{stage}: {verdict}: {(decision or {}).get('reason', '')}", flush=True)
    finally:
        servers.stop()
    if "final" in cfg.stages:
        from eval.tournament import main as tournament

        overrides = [f"out={run / 'final'}", "formats=[gen1ou]", "team_sets=[competitive,replay,variety]",
                     f"battles_per_pair={cfg.final_battles}", "agents.random=", "agents.heuristic=",
                     "agents.search="]
        overrides += [f"agents.{name}={spec},greedy=true" for name, spec in agents.items()]
        tournament([str(REPO / "eval/configs/default.yaml"), *overrides])
    print(f"best model: {best} (scripts/bundle_model.py {best} --results ... ships it)")


if __name__ == "__main__":
    main()
