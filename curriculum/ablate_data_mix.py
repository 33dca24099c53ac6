"""Data-mix ablation: one preset trained on several mixes of trajectory sources at an equal
budget (the same optimizer steps and decisions seen), then one tournament and a table.

    python -m curriculum.ablate_data_mix --config curriculum/configs/ablate_gen1ou.yaml [key=value ...]
    scripts/ablate_data_mix.sh curriculum/configs/ablate_gen1ou.yaml seeds=[0,1] eval.battles_per_pair=80

Phases; running the same command again continues where it stopped, redoing nothing finished:

  1 data        each source becomes shards labelled with its name in OUT/data/NAME/trajectories:
                battles of the `matches` pairs (OUT/data/NAME/battles/, topped up to `battles`
                per pair), `logs` (replays, server logs, battle shards), or one `trajectories`
                folder used as it is. made.json marks it done; a changed recipe is an error.
  2 train       one member per (mix, seed): an ordinary pretrain run folder OUT/members/MIX.sSEED.
                Each takes `budget.steps` steps of exactly `budget.decisions_per_step` learnable
                decisions (DecisionBatches). What training drew is saved with its state, checked
                against the budget, and kept in ablate.json with each source's epochs: a source
                smaller than its share repeats epochs, and the plan and the table say so. Mix
                weights are shares of windows drawn, as in battles.dataset.DataMix.
  3 tournament  members (policy:OUT/members/M/final) and `eval.references`, round-robin on every
                `eval.team_sets` (curriculum/comparison.py, resumable); report in OUT/tournament/report/.
  4 table       rating by mix per team set with 95% bootstrap intervals (seeds pooled; per member
                too with several seeds), budget and data: OUT/report/ablation.{md,csv,json},
                ratings_by_mix.png. Always redrawn from the results.

Battles (the sources' matches, the tournament) are played on Showdown's simulator, or on the
server `run` is given.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from agents.registry import parse_spec
from battles.build import build
from battles.config import check_same_run, from_dict, recipe_main, save_config, to_dict
from battles.dataset import Filters
from battles.encode import ObservationEncoder
from battles.files import write_atomic, write_json
from battles.logs import count_battles
from battles.shards import list_shards
from battles.trajectories import shard_stats
from curriculum.batches import DecisionBatches, counted
from curriculum.comparison import (
    EvalConfig,
    play,
    plot_by_condition,
    rate_by_team_set,
    ratings_table,
    separations,
    team_set_shifts,
)
from curriculum.imitation import (
    PretrainConfig,
    build_model,
    checkpoint_saver,
    data_filters,
    imitation_loss,
    training_mix,
    validation_batches,
)
from curriculum.promotion import TournamentResult
from curriculum.run_folder import logged_metrics, owns_run_folder
from curriculum.trainer import Trainer, make_accelerator, state_steps

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*")  # no '.': it separates mix and seed
STOPS = ("", "data", "train")
# Pretrain keys that may change between invocations: they change how, not what, is trained.
_MUTABLE = {"trainer.wandb_mode", "trainer.wandb_project", "trainer.log_every", "trainer.stop_after_steps",
            "trainer.checkpoint_every", "trainer.keep_states", "num_workers"}


# -- config ------------------------------------------------------------------------------------
@dataclass
class SourceConfig:
    """How one source's trajectories are made: exactly one of matches, logs, trajectories."""

    matches: list[list[str]] = field(default_factory=list)  # [p1 spec, p2 spec] pairs
    battles: int = 0  # per pair
    team_set: str = "competitive"  # teams of the played battles
    logs: list[str] = field(default_factory=list)  # replay JSON / .log files, battle shards
    trajectories: list[str] = field(default_factory=list)  # trajectory folders labelled NAME
    seed: int = 0


@dataclass
class BudgetConfig:
    """What every member gets: steps x grad_accum x decisions_per_step decisions."""

    steps: int = 1000
    decisions_per_step: int = 512


@dataclass
class AblateConfig:
    """The grid: sources, mixes of them, seeds, the budget, the recipe members share, the tournament."""

    out: str = "runs/ablate"
    format: str = "gen1ou"
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    mixes: dict[str, dict[str, float]] = field(default_factory=dict)  # mix name -> source weights
    seeds: list[int] = field(default_factory=lambda: [0])
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    # The recipe every member shares; run_dir, data, mix, formats, trainer.max_steps and
    # trainer.seed are set per member.
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(
        team_sets=["competitive", "replay", "variety"], anchor="tactician"))
    concurrency: int = 16  # battles in flight while making data
    stop_after: str = ""  # data | train

    def __post_init__(self) -> None:
        """Check the grid (an empty one is refused when run); ValueError naming the key."""
        if self.stop_after not in STOPS:
            raise ValueError(f"stop_after={self.stop_after!r}: use one of {', '.join(repr(s) for s in STOPS)}")
        for name, src in self.sources.items():
            kinds = [k for k in ("matches", "logs", "trajectories") if getattr(src, k)]
            if not _NAME.fullmatch(name) or len(kinds) != 1:
                raise ValueError(f"source {name!r}: needs a plain name (letters, digits, _+-) and exactly one "
                                 f"of matches, logs, trajectories (has {kinds or 'none'})")
            if src.matches and (src.battles < 1 or any(len(p) != 2 for p in src.matches)):
                raise ValueError(f"sources.{name}: matches must be [p1, p2] spec pairs and battles (per pair) >= 1")
            for spec in (s for pair in src.matches for s in pair):
                parse_spec(spec)
        for mix, weights in self.mixes.items():
            unknown = sorted(set(weights) - set(self.sources))
            if unknown:
                raise ValueError(f"mixes.{mix} weighs unknown source(s) {unknown}; sources: {sorted(self.sources)}")
            if not _NAME.fullmatch(mix) or any(not (w >= 0 and np.isfinite(w)) for w in weights.values()) \
                    or sum(weights.values()) <= 0:
                raise ValueError(f"mixes.{mix}={weights}: a plain name (letters, digits, _+-) and weights finite, "
                                 ">= 0, with a positive sum")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds}: give one or more distinct seeds")
        if self.budget.steps < 1 or self.budget.decisions_per_step < 1:
            raise ValueError(f"budget {to_dict(self.budget)}: steps and decisions_per_step must be >= 1")
        clash = sorted(set(self.eval.references) & set(self.mixes))
        if clash:
            raise ValueError(f"eval.references {sorted(self.eval.references)}: none may be a mix name {clash}")
        if not self.eval.team_sets:
            raise ValueError("eval.team_sets is empty: name the team sets the members play on, e.g. [competitive]")

    def members(self) -> dict[str, tuple[str, int]]:
        """Member name -> (mix, seed), in grid order."""
        return {f"{mix}.s{seed}": (mix, seed) for mix in self.mixes for seed in self.seeds}


def member_config(cfg: AblateConfig, mix: str, seed: int) -> PretrainConfig:
    """The pretrain config of one member: the shared recipe plus its mix, seed and budget."""
    data = to_dict(cfg.pretrain)
    # Every source's folder, whatever the mix: all members validate on the same held-out battles.
    data.update(run_dir=str(Path(cfg.out) / "members" / f"{mix}.s{seed}"), mix=dict(cfg.mixes[mix]),
                formats=[cfg.format], data=[str(source_dir(cfg, name)) for name in sorted(cfg.sources)])
    data["trainer"].update(max_steps=cfg.budget.steps, seed=seed)
    return from_dict(PretrainConfig, data)


def source_dir(cfg: AblateConfig, name: str) -> Path:
    return Path(cfg.out) / "data" / name / "trajectories"


# -- phase 1: data -----------------------------------------------------------------------------
def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", spec).strip("_")[-40:]  # a path's end tells checkpoints apart


def make_source(cfg: AblateConfig, name: str, server=None) -> dict:
    """Make (or find made) one source's trajectories; returns its made.json record."""
    src = cfg.sources[name]
    folder = Path(cfg.out) / "data" / name
    recipe = {"format": cfg.format, **to_dict(src)}
    made = folder / "made.json"
    if made.exists():
        record = json.loads(made.read_text())
        if record["recipe"] != recipe:
            raise ValueError(f"source {name!r} in {folder} was made from {record['recipe']}, the config now says "
                             f"{recipe}; delete {folder} to remake it, or give the new recipe another name")
        print(f"data: {name} made before ({record['stats']['decisions']} decisions), skipped", flush=True)
        return record
    summary: dict = {}
    if src.trajectories:
        if len(src.trajectories) > 1 or not Path(src.trajectories[0]).is_dir():
            raise ValueError(f"source {name!r}: trajectories={src.trajectories} must name one existing folder")
        folder.mkdir(parents=True, exist_ok=True)
        link = source_dir(cfg, name)  # a link: the members' data list names every source alike
        if not link.exists():
            link.symlink_to(Path(src.trajectories[0]).resolve(), target_is_directory=True)
        print(f"data: {name}: trajectories in {src.trajectories[0]}", flush=True)
    else:
        if src.matches:
            for i, (a, b) in enumerate(src.matches):
                pair_dir = folder / "battles" / f"{i:02d}-{_slug(a)}-vs-{_slug(b)}"
                have = count_battles(pair_dir) if pair_dir.exists() else 0
                if have < src.battles:
                    from eval.match import Match

                    print(f"data: {name}: {a} vs {b}, {src.battles - have} battles to play", flush=True)
                    result = Match(a, b, battle_format=cfg.format, team_set=src.team_set, n=src.battles - have,
                                   out_dir=pair_dir, concurrency=cfg.concurrency, seed=src.seed + 1000 * i + have,
                                   server=server).run()
                    summary[f"{a} vs {b}"] = result.summary()
            logs = [folder / "battles"]
        else:
            logs = src.logs
        summary["build"] = build(logs, source_dir(cfg, name), source=name)
        print(f"data: {name}: build {json.dumps(summary['build'])}", flush=True)
    stats = shard_stats(source_dir(cfg, name)) if list_shards(source_dir(cfg, name)) else {"decisions": 0}
    if name not in stats.get("per_source", {}):
        labels = sorted(stats.get("per_source", {}))
        raise ValueError(f"source {name!r}: no trajectories labelled {name!r} in {source_dir(cfg, name)} "
                         f"(labels there: {labels or 'none'}); check its inputs, or name the source after a label")
    record = {"source": name, "recipe": recipe, "stats": stats, "summary": summary}
    write_json(made, record)
    return record


def source_sizes(cfg: AblateConfig, encoder: ObservationEncoder) -> dict[str, dict]:
    """Per source, the train split the members draw from: trajectories, windows, decisions."""
    mix, seed = next(iter(cfg.members().values()))
    pre = member_config(cfg, mix, seed)
    filters = data_filters(pre, encoder)
    sizes = {}
    for name in cfg.sources:
        flt = Filters(**filters, source=(name,), split="train")
        n = np.zeros(0, np.int64)
        for shard in list_shards(source_dir(cfg, name)):
            table = pq.read_table(shard, columns=["battle_id", "source", "format", "rating", "outcome",
                                                  "encoder_version", "n_decisions"])
            n = np.concatenate([n, np.asarray(table["n_decisions"], np.int64)[flt.mask(table)]])
        windows = int((-(-n // pre.window)).sum())
        sizes[name] = {"trajectories": len(n), "windows": windows, "decisions": int(n.sum())}
    return sizes


def expected_epochs(weights: dict[str, float], sizes: dict[str, dict], total_decisions: int) -> dict[str, float]:
    """Passes over each source's train split that a budget of `total_decisions` needs (an estimate)."""
    live = {k: w for k, w in weights.items() if w > 0}
    per_window = {k: sizes[k]["decisions"] / max(sizes[k]["windows"], 1) for k in live}
    mean = sum(w * per_window[k] for k, w in live.items()) / sum(live.values())
    windows = total_decisions / max(mean, 1e-9)
    return {k: windows * w / sum(live.values()) / max(sizes[k]["windows"], 1) for k, w in live.items()}


# -- phase 2: train ----------------------------------------------------------------------------
def train_member(pre: PretrainConfig, decisions_per_step: int):
    """Stage 0's imitation training (curriculum/imitation.py) fed DecisionBatches; (TrainResult, data, counted loss)."""
    run_dir = Path(pre.run_dir)
    accelerator = make_accelerator(pre.trainer)
    if accelerator.num_processes != 1:
        raise ValueError("ablation members train in one process; run the grid without torchrun/accelerate")
    encoder = ObservationEncoder()
    data = DecisionBatches(training_mix(pre, encoder), decisions_per_step)
    val = validation_batches(pre, encoder)
    torch.manual_seed(pre.trainer.seed)  # one seed, one initial model, whatever the mix
    model = build_model(pre, encoder)
    save_config(pre, run_dir / "config.yaml")
    loss = counted(imitation_loss(pre))
    trainer = Trainer(pre.trainer, run_dir, model, loss, data, val_data=val or None,
                      save_model=checkpoint_saver(encoder, pre), accelerator=accelerator,
                      run_config={"recipe": "pretrain", "ablate_decisions_per_step": decisions_per_step,
                                  **to_dict(pre)})
    return trainer.fit(), data, loss


def check_member(name: str, pre: PretrainConfig, budget: dict) -> dict | None:
    """The member's ablate.json, if any; ValueError if its folder was made for another recipe."""
    run_dir = Path(pre.run_dir)
    check_same_run(pre, run_dir, _MUTABLE, keep=("mix",), what=f"member {name} in {run_dir}",
                   fix=f"delete {run_dir} to retrain it, or use another out=")
    path = run_dir / "ablate.json"
    record = json.loads(path.read_text()) if path.exists() else None
    if record and record["budget"] != budget:
        raise ValueError(f"member {name} in {run_dir} has budget {record['budget']}, the grid asks {budget}; "
                         f"delete {run_dir} to retrain it, or use another out=")
    return record


def last_losses(run_dir: Path) -> dict:
    """The last logged training loss, validation loss and validation accuracy of a run folder."""
    last, val = logged_metrics(run_dir, math.inf)
    return {"loss": last.get("loss"), "val_loss": val.get("val_loss"), "val_acc": val.get("val_acc")}


def run_member(cfg: AblateConfig, name: str, sizes: dict) -> dict:
    """Train (or find trained) one member; check and record its budget; returns ablate.json."""
    mix, seed = cfg.members()[name]
    pre = member_config(cfg, mix, seed)
    budget = {"steps": cfg.budget.steps, "grad_accum": pre.trainer.grad_accum,
              "decisions_per_step": cfg.budget.decisions_per_step,
              "decisions": cfg.budget.steps * pre.trainer.grad_accum * cfg.budget.decisions_per_step}
    record = check_member(name, pre, budget)
    run_dir = Path(pre.run_dir)
    if record and record.get("finished") and (run_dir / "final").is_dir():
        print(f"train: {name} done before, skipped", flush=True)
        return record
    write_json(run_dir / "ablate.json", {"member": name, "mix": mix, "seed": seed, "weights": pre.mix,
                                         "budget": budget, "finished": False})
    print(f"train: {name} ({pre.mix}), {budget['steps']} steps x {budget['decisions_per_step']} decisions", flush=True)
    result, data, loss = train_member(pre, cfg.budget.decisions_per_step)
    if not result.finished:
        return {"member": name, "finished": False, "step": result.step}
    trained_now = (data.drawn["batches"] - data.batches_at_start) * data.decisions
    if loss.decisions != trained_now:
        raise RuntimeError(f"member {name}: the loss trained on {loss.decisions:.0f} decisions this run, the data "
                           f"gave {trained_now}; DecisionBatches and the loss disagree on what is learnable")
    last = max(state_steps(run_dir))
    state = json.loads((run_dir / "state" / f"step-{last:07d}" / "trainer.json").read_text())
    drawn = state["data"]
    recorded = {"steps": state["step"], "batches": drawn["batches"], "decisions": drawn["decisions"]}
    want = {"steps": budget["steps"], "batches": budget["steps"] * budget["grad_accum"],
            "decisions": budget["decisions"]}
    if recorded != want:
        raise RuntimeError(f"member {name}: training recorded {recorded}, the budget is {want}")
    epochs = {s: drawn["windows"].get(s, 0) / max(sizes[s]["windows"], 1) for s in pre.mix if pre.mix[s] > 0}
    record = {"member": name, "mix": mix, "seed": seed, "weights": pre.mix, "budget": budget,
              "recorded": {**recorded, "samples": drawn["mix"]["samples"], "windows": drawn["windows"],
                           "source_decisions": drawn["source_decisions"]},
              "epochs": {s: round(e, 2) for s, e in epochs.items()},
              "repeats": sorted(s for s, e in epochs.items() if e > 1.0),
              **last_losses(run_dir),
              "checkpoint": str(result.final_checkpoint), "checked": True, "finished": True}
    write_json(run_dir / "ablate.json", record)
    print(f"train: {name} done: {recorded['steps']} steps, {recorded['decisions']} decisions (budget met); "
          f"epochs {record['epochs']}", flush=True)
    return record


# -- phase 4: table -----------------------------------------------------------------------------
def budget_table(records: dict[str, dict]) -> str:
    """Markdown: what each member trained on, as its training state recorded it."""
    lines = ["| member | steps | decisions | windows | decisions by source | epochs by source | loss | val loss | "
             "val acc |", "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |"]
    for name, rec in records.items():
        got = rec["recorded"]
        shares = ", ".join(f"{s} {n} ({n / got['decisions']:.0%})" for s, n in got["source_decisions"].items() if n)
        epochs = ", ".join(f"{s} {e:g}" + (" **repeats**" if s in rec["repeats"] else "") for s, e in rec["epochs"].items())
        if rec.get("val_acc") is None:  # recorded before val_acc was kept
            rec.update(last_losses(Path(rec["checkpoint"]).parent))
        loss, val, acc = (("–" if rec[k] is None else f"{rec[k]:.3f}") for k in ("loss", "val_loss", "val_acc"))
        lines.append(f"| {name} | {got['steps']} | {got['decisions']} | {got['samples']} | {shares} | {epochs} | "
                     f"{loss} | {val} | {acc} |")
    return "\n".join(lines)


def write_ablation(cfg: AblateConfig, tournament: TournamentResult, records: dict[str, dict], sizes: dict) -> dict:
    """OUT/report/ablation.{md,csv,json} and ratings_by_mix.png; returns what ablation.json holds."""
    rows, planned = tournament.rows, tournament.planned
    out = Path(cfg.out) / "report"
    out.mkdir(parents=True, exist_ok=True)
    e, members = cfg.eval, cfg.members()
    mixes, refs = list(cfg.mixes), list(e.references)
    what = {**{m: ", ".join(f"{s} {w:g}" for s, w in cfg.mixes[m].items() if w > 0) for m in mixes},
            **{r: f"reference `{s}`" for r, s in e.references.items()}}
    kw = {"n_boot": e.bootstrap, "seed": e.seed, "anchor": e.anchor}
    by_mix = rate_by_team_set(rows, {n: mix for n, (mix, _) in members.items()}, mixes + refs, e.team_sets, **kw)
    if not by_mix:
        raise ValueError(f"no finished battles in {Path(cfg.out) / 'tournament'}: play the tournament first")
    per_member = rate_by_team_set(rows, {}, list(members) + refs, e.team_sets, **kw) if len(cfg.seeds) > 1 else {}
    table, shifts, seps = ratings_table(by_mix, mixes + refs, what), team_set_shifts(by_mix, mixes + refs, e.team_sets), \
        separations(by_mix, mixes)
    budget = next(iter(records.values()))["budget"]
    md = [f"# Data-mix ablation: {cfg.out}", "",
          f"Every member: preset `{cfg.pretrain.preset}`, {budget['steps']} optimizer steps x {budget['grad_accum']} "
          f"micro-batches x {budget['decisions_per_step']} decisions = {budget['decisions']} decisions seen, seeds "
          f"{cfg.seeds}; checked against each member's saved training state.", "",
          f"{sum(1 for r in rows if not r['error'])} of {planned} planned battles finished "
          f"({sum(1 for r in rows if r['error'])} errors), "
          f"{e.battles_per_pair} per pair per team set, {cfg.format}. Bradley–Terry ratings on the Elo scale, "
          f"{'`' + e.anchor + '` = 1500' if e.anchor else 'mean 1500'} in every column, 95% intervals from "
          f"{e.bootstrap} bootstrap resamples of the battles; seeds of a mix pooled.", "",
          "## Rating by mix and team set", "", table, "", "![ratings by mix](ratings_by_mix.png)", "",
          "## What the intervals support", "", *seps, "",
          "Across team sets (disjoint intervals on two sets): " + ("; ".join(shifts) or "none") + ". Each pair's "
          "win rate per team set: [tournament report](../tournament/report/report.md).", ""]
    if per_member:
        md += ["## Each member (seed)", "", ratings_table(per_member, list(members) + refs, {}), ""]
    md += ["## Budget and data", "", "Train split per source: " + "; ".join(
        f"{s} {z['trajectories']} trajectories, {z['windows']} windows, {z['decisions']} decisions"
        for s, z in sizes.items()) + ".", "", budget_table(records), "",
        "Epochs: windows drawn over the windows of the source's train split; **repeats**: more than one pass. "
        "Val: the last validation on the held-out battles of every source (the same for every member).", ""]
    files = {"markdown": out / "ablation.md", "csv": out / "ablation.csv",
             "png": plot_by_condition(by_mix, mixes + refs, out / "ratings_by_mix.png",
                                      f"Data-mix ablation, {cfg.format}", e.anchor)}
    write_atomic(files["markdown"], "\n".join(md))
    lines = ["kind,name,weights,team_set,rating,lo,hi,battles,observed_score"]
    for kind, ratings in (("mix", by_mix), ("member", per_member)):
        for cond, r in ratings.items():
            for i, name in enumerate(r.names):
                lines.append(f"{'reference' if name in refs else kind},{name},\"{what.get(name, '')}\",{cond},"
                             f"{r.rating[i]:.1f},{r.lo[i]:.1f},{r.hi[i]:.1f},{int(r.games[i])},{r.observed[i]:.4f}")
    write_atomic(files["csv"], "\n".join(lines) + "\n")
    print("\n".join(["", table, "", *seps, "across team sets, intervals apart: " + ("; ".join(shifts) or "none"),
                     *(f"{kind:>9}: {path}" for kind, path in files.items())]), flush=True)
    result = {"members": records, "tournament": tournament.counts(), "files": {k: str(v) for k, v in files.items()},
              "table": table, "separations": seps, "shifts": shifts}
    write_json(out / "ablation.json", result)
    return result


# -- the grid ----------------------------------------------------------------------------------
def check_labels(cfg: AblateConfig, made: dict[str, dict]) -> None:
    """A source's label must live in its own folder only, or a mix would draw it from others too."""
    labels = {name: set(rec["stats"].get("per_source", {})) for name, rec in made.items()}
    for name in cfg.sources:
        others = sorted(o for o in cfg.sources if o != name and name in labels[o])
        if others:
            raise ValueError(f"trajectories labelled {name!r} are also in the folders of source(s) {others}: a "
                             f"weight on {name!r} would draw from them too; rename a source or relabel its data")


def print_plan(cfg: AblateConfig, sizes: dict) -> None:
    """The budget, the sources and, per member, the epochs each source will need."""
    b = cfg.budget
    accum = cfg.pretrain.trainer.grad_accum
    total = b.steps * accum * b.decisions_per_step
    print(f"budget: every member {b.steps} steps x {accum} micro-batches x {b.decisions_per_step} decisions = "
          f"{total} decisions seen, preset {cfg.pretrain.preset}, seeds {cfg.seeds}", flush=True)
    for name, z in sizes.items():
        print(f"  source {name}: {z['trajectories']} trajectories, {z['windows']} windows, "
              f"{z['decisions']} decisions (train split)", flush=True)
        if not z["windows"] and any(m.get(name, 0) > 0 for m in cfg.mixes.values()):
            raise ValueError(f"source {name!r} has no {cfg.format} trajectories in its train split; check its data")
    for mix, weights in cfg.mixes.items():
        eps = expected_epochs(weights, sizes, total)
        said = ", ".join(f"{s} ~{e:.1f}" + (" (repeats epochs)" if e > 1 else "") for s, e in eps.items())
        print(f"  mix {mix}: expected epochs {said}", flush=True)


@owns_run_folder(lambda cfg: cfg.out)
def run(cfg: AblateConfig, server=None, after_member=None) -> dict:
    """Run (or resume) the grid, its battles on `server` (else Showdown's simulator, eval/runner.py);
    `after_member(name)` is called as each member is done."""
    if not cfg.sources or not cfg.mixes:
        raise ValueError("the grid is empty: name at least one source (matches, logs or trajectories) under "
                         "sources and one mix of their weights under mixes (see curriculum/configs/ablate_gen1ou.yaml)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    # 1. data
    made = {name: make_source(cfg, name, server) for name in cfg.sources}
    check_labels(cfg, made)
    sizes = source_sizes(cfg, ObservationEncoder())
    print_plan(cfg, sizes)
    if cfg.stop_after == "data":
        return {"stopped_after": "data", "sizes": sizes}

    # 2. train
    records = {}
    for name in cfg.members():
        records[name] = run_member(cfg, name, sizes)
        if not records[name]["finished"]:
            print(f"train: {name} stopped at step {records[name]['step']}; run the same command again to "
                  "continue", flush=True)
            return {"stopped_in": name, "members": records}
        if after_member is not None:
            after_member(name)
    if cfg.stop_after == "train":
        return {"stopped_after": "train", "members": records}

    # 3. tournament
    agents = cfg.eval.agents({name: str(out / "members" / name / "final") for name in cfg.members()})
    tournament = play(cfg.eval, agents, battle_format=cfg.format, out=out / "tournament",
                      title=f"Data-mix ablation {cfg.out}", server=server)

    # 4. table
    return write_ablation(cfg, tournament, records, sizes)


def main(argv: list[str] | None = None) -> None:
    recipe_main(AblateConfig, run, argv, description="Data-mix ablation: equal-budget members, one tournament, a table.",
                example="seeds=[0,1] budget.steps=500")


if __name__ == "__main__":
    main()
