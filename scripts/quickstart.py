"""The quickstart pipeline (see scripts/quickstart.sh). Each step skips what is done.

    python scripts/quickstart.py [--config FILE.yaml] [key=value ...]
    python scripts/quickstart.py --battles 400 --steps 1500 --eval-n 100 --preset tiny --out runs/qs
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from battles.build import build
from battles.config import load_config, recipe_main
from battles.files import write_json
from battles.logs import count_battles
from curriculum.imitation import PretrainConfig, train_imitation
from eval.match import Match

REPO = Path(__file__).resolve().parents[1]

FORMAT = "gen1ou"
TEACHER = "tactician"  # our best heuristic: the policy imitates its decisions only
# The teacher's games, (opponent, share of the battles): mostly against itself, where both
# seats are teacher decisions, and some against weaker play, which it must also punish.
DATA_PAIRS = [("tactician", 0.6), ("maxbp", 0.15), ("bestdamage", 0.15), ("heuristic", 0.1)]
OPPONENTS = ["random", "maxbp", "tactician"]


@dataclass
class QuickstartConfig:
    """How much of each step."""

    out: str = "runs/quickstart"  # relative to the repository
    battles: int = 1000  # the teacher's battles to learn from
    steps: int = 2000  # pretraining steps
    preset: str = "tiny"
    eval_n: int = 100  # battles per opponent in the evaluation
    concurrency: int = 16

    def __post_init__(self) -> None:
        for key in ("battles", "steps", "eval_n", "concurrency"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)}: must be at least 1")


def main(argv: list[str] | None = None) -> None:
    argv = ["--eval_n" if a == "--eval-n" else a for a in (sys.argv[1:] if argv is None else argv)]  # the old spelling
    recipe_main(QuickstartConfig, quickstart, argv, example="battles=400 steps=1500",
                description="Qabra quickstart: battles -> trajectories -> policy -> evaluation",
                flags={"out": str, "battles": int, "steps": int, "preset": str, "eval_n": int, "concurrency": int})


def quickstart(args: QuickstartConfig) -> None:
    """The four steps, each skipping what is done."""
    out = REPO / args.out
    t0 = time.monotonic()
    timings = {}

    # Every battle on Showdown's own simulator, hosted in a process of its own (no server).
    # 1. The teacher's battles, recorded.
    battles_dir = out / "battles"
    for i, (opponent, share) in enumerate(DATA_PAIRS):
        pair_dir = battles_dir / f"{TEACHER}-vs-{opponent}"
        want = max(1, round(args.battles * share))
        have = count_battles(pair_dir) if pair_dir.exists() else 0
        if have < want:
            Match(TEACHER, opponent, battle_format=FORMAT, team_set="competitive", n=want - have,
                  out_dir=pair_dir, concurrency=args.concurrency, seed=100 + i + have, backend="sim").run()
    timings["battles_s"] = round(time.monotonic() - t0, 1)

    # 2. Trajectories from those battles.
    t = time.monotonic()
    traj_dir = out / "trajectories"
    built = build([battles_dir], traj_dir, progress=False)
    print("build:", json.dumps(built))
    timings["build_s"] = round(time.monotonic() - t, 1)

    # 3. Pretrain the policy on the teacher's decisions (resumes if interrupted).
    t = time.monotonic()
    cfg = load_config(PretrainConfig, None, [
        f"run_dir={out / 'pretrain'}", f"data=[{traj_dir}]", "mix=selfplay:1.0",
        f"select.selfplay.agents=[{TEACHER}]",
        f"formats=[{FORMAT}]", f"preset={args.preset}", f"trainer.max_steps={args.steps}",
        "trainer.batch_size=16", "trainer.lr=1e-3", "trainer.warmup_steps=100", "trainer.eval_every=500",
        "trainer.checkpoint_every=500", "trainer.log_every=50", "window=64", "trainer.threads=1",
    ])
    train_imitation(cfg)
    timings["pretrain_s"] = round(time.monotonic() - t, 1)

    # 4. The trained policy (greedy: its best guess of the teacher's move) against each opponent.
    t = time.monotonic()
    policy = f"policy:{out / 'pretrain' / 'final'},greedy=true"
    rows = []
    for j, opponent in enumerate(OPPONENTS):
        result = Match(policy, opponent, battle_format=FORMAT, team_set="competitive", n=args.eval_n,
                       out_dir=out / "eval" / opponent, concurrency=args.concurrency, seed=1000 + j,
                       backend="sim").run()
        rows.append({"opponent": opponent, **result.summary()})
    timings["eval_s"] = round(time.monotonic() - t, 1)

    timings["total_s"] = round(time.monotonic() - t0, 1)
    print(f"\n{'opponent':12} {'battles':>7} {'win rate':>8}   95% interval")
    for r in rows:
        lo, hi = r["ci95"]
        print(f"{r['opponent']:12} {r['battles']:>7} {r['p1_winrate']:>8.3f}   [{lo:.3f}, {hi:.3f}]")
    bundled = bundled_results()
    if bundled:
        print(f"\nthe bundled model ({bundled['spec']}, {bundled['what']}), measured as in its model card:")
        for r in bundled["results"]:
            lo, hi = r["ci95"]
            print(f"{r['opponent']:12} {r['battles']:>7} {r['winrate']:>8.3f}   [{lo:.3f}, {hi:.3f}]")
    summary = {"format": FORMAT, "policy": policy, "preset": args.preset, "steps": args.steps,
               "data": built, "results": rows, "timings": timings, "bundled": bundled}
    write_json(out / "summary.json", summary)
    print(f"\nsummary: {out / 'summary.json'} ({timings['total_s']:.0f}s)")


def bundled_results() -> dict | None:
    """The bundled model's measured results (its results.json), to show what the full chain reaches."""
    path = REPO / "models" / "bundled" / "qabra-gen1ou" / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


if __name__ == "__main__":
    main()
