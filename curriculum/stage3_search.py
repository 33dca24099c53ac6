"""Curriculum stage 3: learning from a search bot (agents/search.py, in the style of foul-play).

    python -m curriculum.stage3_search [--config curriculum/configs/stage3.yaml] [key=value ...]
    scripts/curriculum_stage3.sh parent=runs/stage2 run_dir=runs/stage3

The searcher teaches three ways, and the student learns from all three, mixed by weights:

  - as an opponent: the student's own battles against it (and the rest of the pool), where
    the student imitates its actions in the battles it won and learns the outcome (value);
  - as a teacher: while the student plays, the search bot searches every position the
    student faces (`label_ms` per decision, in parallel worker processes) and its visit
    shares become the student's teacher probabilities (KL(search || student));
  - as an expert: the search bot's own side of its games, with its visit shares at each of
    its decisions as the teacher probabilities.

One stage reads top to bottom; each phase leaves a marker in RUN/phases/ and running the same
command again continues where it stopped (labels are written per battle, atomically, as the
battles end, so a kill loses only the battles in flight):

  1 play      the parent (sampling at `temperature`, labelled by the searcher) plays `battles`
              battles against `opponents`; `search` there is the search bot (`search`, which
              records its own visit shares).
  2 build     the student's sides (role `learner`, recorded with each battle) into student/ and
              the search bot's (role `expert`) into expert/, built from the logs plus the label
              sets recorded while playing (labels/student, labels/expert; battles/labels.py): each
              label joins exactly the decision it was made for (its index in that side's
              requests), sharpened by `label_temperature` (a short search's visit shares are
              close to uniform; a decision searched with fewer than `label_min_visits`
              simulations per root choice has no label at all, counted as shallow); a label that
              finds no decision is counted by reason, never guessed.
  3 label     the labelled trajectories kept apart (student-labelled/, expert-labelled/), with
              a warning to raise `label_ms` when more than 10% of decisions were shallow.
  4 train     the parent's weights on the labelled trajectories, sampling the sources by
              `sources` weights ({student: w, expert: w}), each step exactly
              `decisions_per_step` decisions of
                  kl_weight * KL(search || student) + win_weight * won-battle imitation
                + value_weight * (value - outcome)^2
              (curriculum/distill.py's training, curriculum/losses.py's loss; resumes from RUN/state).
  5 evaluate  stage 1's promotion tournament: child, parent and the opponents (the search bot
              included), then stage 1's rule; RUN/lineage.json gets the verdict and `output`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from agents.registry import parse_spec
from agents.search_labels import MIN_VISITS
from battles.config import recipe_main
from curriculum import phases
from curriculum.distill import DistillSettings, train_student
from curriculum.phases import PlayConfig, PromotionConfig, ServerOnDemand
from curriculum.promotion import Decision, describe
from curriculum.run_folder import owns_run_folder

log = logging.getLogger(__name__)

PHASES = ("play", "build", "label", "train", "evaluate")
SEARCH = "search"  # the opponent name that stands for the search bot
SOURCES = ("student", "expert")
EXPERT = "expert"  # the role of the search bot's side in the battles (recorded with each)
# (train_threads: a key of runs made before trainer.threads.)
_MUTABLE = {"run_dir", "stop_after", "concurrency", "train_threads", "trainer.threads", "promotion.concurrency",
            "promotion.max_battles", "trainer.stop_after_steps", "trainer.wandb_mode", "trainer.log_every"}


@dataclass
class SearchStageConfig(DistillSettings):
    """Stage 3's settings: the parent, the search bot, what the student plays and is judged by, the
    sources it learns from; how it learns (kl_weight, win_weight, value_weight, epochs, steps,
    decisions_per_step, window, val_fraction, trainer) is DistillSettings'."""

    run_dir: str = "runs/stage3"
    stage: str = "stage3"
    parent: str = "runs/stage2"  # the best promoted model so far: checkpoint or run folder (its output)
    search: str = "search:ms=300"  # the search bot as opponent and expert (any search:... spec)
    label_ms: int = 300  # search time per labelled student position
    label_samples: int = 1  # opponent guesses per labelled position
    label_temperature: float = 0.25  # visit shares ** (1/T): a short search's shares are near uniform
    label_min_visits: float = MIN_VISITS  # a decision searched less (simulations per root choice) gets no label
    label_below: float = 1.0  # search only positions where the student's top action is less likely than this
    format: str = "gen1ou"
    team_set: str = "competitive"
    battles: int = 300
    opponents: dict[str, float] = field(default_factory=lambda: {SEARCH: 0.5, "tactician": 0.25, "bestdamage": 0.25})
    temperature: float = 1.0  # the student's sampling temperature while playing
    concurrency: int = 4  # battles in flight: the searchers share the cores
    shard_battles: int = 25
    seed: int = 0
    # learning
    sources: dict[str, float] = field(default_factory=lambda: {"student": 1.0, "expert": 0.5})
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    stop_after: str = ""  # play | build | label | train | evaluate

    def __post_init__(self) -> None:
        super().__post_init__()
        if parse_spec(self.search).kind != "search":
            raise ValueError(f"search={self.search!r}: give a search bot spec, e.g. search:ms=300")
        if "labels" in parse_spec(self.search).params:
            raise ValueError(f"search={self.search!r}: leave labels out; the stage records them in its run folder")
        if self.label_ms < 1 or self.label_samples < 1:
            raise ValueError(f"label_ms={self.label_ms}, label_samples={self.label_samples}: must be at least 1")
        if isinstance(self.label_min_visits, bool) or not isinstance(self.label_min_visits, int | float) or \
                not self.label_min_visits >= 0:
            raise ValueError(f"label_min_visits={self.label_min_visits!r}: must be a number >= 0 (0 keeps every label)")
        if isinstance(self.label_below, bool) or not isinstance(self.label_below, int | float) or \
                not 0 < self.label_below <= 1:
            raise ValueError(f"label_below={self.label_below!r}: must be in (0, 1] (1 labels every position)")
        if not self.label_temperature > 0:
            raise ValueError(f"label_temperature={self.label_temperature}: must be > 0 (1 keeps the visit shares)")
        if set(self.sources) - set(SOURCES) or any(not w >= 0 for w in self.sources.values()) or \
                sum(self.sources.values()) <= 0:
            raise ValueError(f"sources={self.sources}: weights >= 0 with a positive sum over {', '.join(SOURCES)}")
        if self.stop_after not in ("", *PHASES):
            raise ValueError(f"stop_after={self.stop_after!r}: use one of {', '.join(PHASES)} or leave it empty")
        if SEARCH not in self.opponents and self.sources.get("expert", 0) > 0:
            raise ValueError(f"opponents={self.opponents}: sources.expert needs the search bot among the opponents "
                             f"(add {SEARCH}: WEIGHT) or set sources.expert=0")
        PlayConfig.of(self, opponents=self._opponents(Path(".")))  # checks the pool

    def _opponents(self, labels: Path | None) -> dict[str, float]:
        """The pool with `search` resolved (recording its own labels under `labels` when given)."""
        bot = self.search
        if labels is not None:
            bot += f",labels={labels},label_min_visits={self.label_min_visits:g}"
        return {(bot if s == SEARCH else s): w for s, w in self.opponents.items()}


def play_config(cfg: SearchStageConfig, rundir: Path) -> PlayConfig:
    return PlayConfig.of(cfg, opponents=cfg._opponents(rundir / "labels" / "expert"))


def pool_config(cfg: SearchStageConfig) -> PlayConfig:
    """The promotion pool: the opponents, the search bot playing without recording."""
    return PlayConfig.of(cfg, opponents=cfg._opponents(None))


def student_params(cfg: SearchStageConfig, rundir: Path) -> str:
    """What the student plays with besides the parent's spec: the searcher that labels it."""
    folder = rundir / "labels" / "student"
    if "," in str(folder):
        raise ValueError(f"run_dir {rundir} contains a comma, which agent specs cannot hold; choose another")
    return (f"labels={folder},label_ms={cfg.label_ms},label_samples={cfg.label_samples},label_seed={cfg.seed},"
            f"label_min_visits={cfg.label_min_visits:g}" + (f",label_below={cfg.label_below:g}"
                                                             if cfg.label_below < 1 else ""))


def expert_roles(play_cfg: PlayConfig) -> dict[str, str]:
    """The search bots among the opponents play as `expert` (their own visit shares are labels)."""
    return {spec: EXPERT for spec in play_cfg.opponents if parse_spec(spec).kind == "search"}


def keep_labelled(src: Path, out: Path, prefix: str) -> dict:
    """The trajectories of `src` that got their labels, into `out`."""
    return phases.select_rows(src, out, lambda table: [s is not None for s in table["teacher_source"].to_pylist()],
                              prefix)


# -- phases 3 and 4: label, train ------------------------------------------------------------------
def label(cfg: SearchStageConfig, rundir: Path, built: dict) -> dict:
    """The trajectories the recorded visit shares labelled (joined at the build), kept apart."""
    labelled = {}
    for source in SOURCES:
        counts = built[source].get("labels", {})
        kept = keep_labelled(rundir / source, rundir / f"{source}-labelled", source)
        labelled[source] = {"joined": counts, "kept": kept}
        print(f"label: {source}: {kept['trajectories']} trajectories ({kept['decisions']} decisions) "
              f"labelled; {json.dumps(counts)}", flush=True)
        shallow = counts.get("shallow_decisions", 0)
        if shallow > 0.1 * max(kept["decisions"], 1):
            budget = f"label_ms (now {cfg.label_ms})" if source == "student" else f"the bot's ms ({cfg.search})"
            print(f"label: warning: {shallow} {source} decisions had fewer than {cfg.label_min_visits:g} "
                  f"simulations per choice and no label; raise {budget}", flush=True)
    return labelled


def train(cfg: SearchStageConfig, rundir: Path, parent: Path, labelled: dict) -> dict:
    """The parent trained on the labelled sources, sampled by their `sources` weights."""
    mix = {s: (w, [rundir / f"{s}-labelled"]) for s, w in cfg.sources.items()
           if w > 0 and labelled[s]["kept"]["decisions"] > 0}
    if not mix:
        raise ValueError(f"no labelled decisions to learn from in {rundir}: play more battles")
    return train_student(cfg, rundir, parent, [p for _, ps in mix.values() for p in ps],
                         coach_source=cfg.search, recipe="learn_from_search", mix=mix)


# -- the stage ----------------------------------------------------------------------------------
@owns_run_folder(lambda cfg: cfg.run_dir)
def run(cfg: SearchStageConfig, server=None) -> dict:
    """Run (or resume) stage 3 (on `server`, or its own); returns the lineage record."""
    rundir = Path(cfg.run_dir)
    search = {"bot": cfg.search, "label_ms": cfg.label_ms, "label_samples": cfg.label_samples}
    parent, _, _ = phases.start_run(cfg, rundir, cfg.parent, _MUTABLE, keep=("opponents", "sources"),
                                    stage=cfg.stage, recipe="curriculum.stage3_search", search=search)
    get_server = ServerOnDemand(server)
    play_cfg = play_config(cfg, rundir)
    plan = [
        # 1. play: the student labelled by a searcher; the search bot recording its own shares
        phases.play_phase(lambda: phases.play(play_cfg, rundir, parent, student_params(cfg, rundir),
                                              roles=expert_roles(play_cfg))),
        # 2. build: both sides' trajectories; the student's and the search bot's apart
        phases.build_phase(rundir, {"student": phases.LEARNER, "expert": EXPERT},
                           labels={s: rundir / "labels" / s for s in SOURCES}, label_temperature=cfg.label_temperature),
        # 3. label: the recorded visit shares into the trajectories they belong to
        phases.Phase("label", lambda done: label(cfg, rundir, done["build"]["build"]), "labelled",
                     lambda done: {"labels": done["label"]}),
        # 4. train: the sources sampled by weight
        phases.train_phase(lambda done: train(cfg, rundir, parent, done["label"])),
        # 5. evaluate
        phases.evaluate_phase(pool_config(cfg), cfg.promotion, rundir, parent, get_server),
    ]
    record, decided = phases.run_and_decide(rundir, plan, cfg.stop_after, parent, server=get_server)  # 6. decide
    if decided:
        print_summary(record)
    return record


def print_summary(record: dict) -> None:
    """The stage in a few lines: play, labels, training, ratings, verdict."""
    print(f"\n{record['stage']} ({record['run']}), parent {record['parent']['checkpoint']}, "
          f"search bot {record['search']['bot']}")
    for name, b in record["data"]["battles"].items():
        print(f"  played {b['battles']:5d} vs {name:16} student won {b['learner_wins'] / max(b['battles'], 1):.3f}")
    for source, lab in record["labels"].items():
        print(f"  {source:7}: {lab['kept']['trajectories']} labelled trajectories ({lab['kept']['decisions']} decisions)")
    t = record["training"]
    print(f"  {t['steps']} steps of {t['decisions_per_step']} decisions, mix "
          f"{ {k: v['weight'] for k, v in t['mix'].items()} }, final loss {t['last_metrics'].get('loss', float('nan')):.4f}")
    for name, r in record["tournament"].get("ratings", {}).items():
        print(f"  rating {name:16} {r['rating']:7.1f} [{r['lo']:.1f}, {r['hi']:.1f}]")
    print("  " + describe(Decision(**record["decision"])).replace("\n", "\n  "))
    print(f"  next stage starts from: {record['output']}\n  lineage: {Path(record['run']) / 'lineage.json'}")


def main(argv: list[str] | None = None) -> None:
    recipe_main(SearchStageConfig, run, argv, description="Curriculum stage 3: learn from a search bot, then promote.",
                example="parent=runs/stage2 battles=200", quiet={"agents.search": logging.ERROR})


if __name__ == "__main__":
    main()
