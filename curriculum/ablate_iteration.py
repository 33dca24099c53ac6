"""Does iterating stage 2 help? The chain of rounds against two controls with matched budgets.

    python -m curriculum.ablate_iteration --config curriculum/configs/stage2_ablate.yaml [key=value ...]
    scripts/ablate_iteration.sh [--config FILE] chain.student=runs/stage1 chain.coach=runs/coach/final

Phases; running the same command again continues where it stopped, redoing nothing finished:

  1 chain       stage 2 (python -m curriculum.coach, run as its own command on OUT/chain.yaml, the
                `chain` settings with run_dir OUT/chain): R rounds, each playing fresh battles with
                the last promoted student, labelled by the coach, trained for its own steps, judged
                by the promotion tournament; it starts its own Showdown server.
  2 controls    from the same first student, with the same coach labels, loss, decisions per step
                and seed, each for S steps, S = the chain's total training steps (every round's):
                  pooled       every round's data pooled, trained once: the chain's data and compute,
                               without iteration
                  first_round  round 1's data only, for S steps: one round's data with the chain's
                               compute, without iteration (more passes over less data)
                OUT/controls/NAME is an ordinary training run folder; control.json keeps its budget.
  3 tournament  every round's child, the controls, the first student, the coach (`eval.with_coach`)
                and `eval.references`, round robin (resumable) in OUT/tournament/ with its report.
  4 table       OUT/report/iteration.{md,csv,json} and ratings.png: ratings with 95% intervals, each
                model's budget (training steps along its own lineage, decisions trained, the data's
                decisions, battles played for it) and what the comparison shows. Always redrawn.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from curriculum.coaching import CoachStageConfig, train_student
from battles.config import check_same_run, recipe_main, save_config
from curriculum.lineage import read_lineage
from curriculum.phases import write_json
from curriculum.promotion import play_tournament, rate_results, write_tournament_report
from curriculum.run_folder import owns_run_folder

log = logging.getLogger(__name__)

CONTROLS = ("pooled", "first_round")
STOPS = ("", "chain", "controls", "tournament")
_MUTABLE = {"stop_after", "eval.concurrency", "eval.max_battles", "chain.concurrency", "chain.train_threads",
            "chain.label_batch_size", "chain.stop_after", "chain.promotion.concurrency",
            "chain.promotion.max_battles", "chain.trainer.stop_after_steps", "chain.trainer.wandb_mode",
            "chain.trainer.log_every", "chain.run_dir"}


@dataclass
class EvalConfig:
    """The final tournament of every model of the comparison and the references."""

    references: dict[str, str] = field(default_factory=lambda: {"tactician": "tactician", "bestdamage": "bestdamage",
                                                                "maxbp": "maxbp"})
    with_coach: bool = True
    battles_per_pair: int = 40  # a multiple of 4
    temperature: float = 1.0  # how the policies play (0: arg-max)
    concurrency: int = 16
    bootstrap: int = 1000
    level: float = 0.95
    seed: int = 0
    max_battles: int = 0  # >0: play at most this many battles per invocation


@dataclass
class IterationAblationConfig:
    out: str = "runs/ablate_iteration"
    chain: CoachStageConfig = field(default_factory=lambda: CoachStageConfig(rounds=2))  # run_dir: OUT/chain
    controls: list[str] = field(default_factory=lambda: list(CONTROLS))
    eval: EvalConfig = field(default_factory=EvalConfig)
    stop_after: str = ""  # chain | controls | tournament

    def __post_init__(self) -> None:
        if self.chain.rounds < 2:
            raise ValueError(f"chain.rounds={self.chain.rounds}: iteration needs at least 2 rounds to compare")
        if self.stop_after not in STOPS:
            raise ValueError(f"stop_after={self.stop_after!r}: use one of chain, controls, tournament or leave it empty")
        bad = [c for c in self.controls if c not in CONTROLS]
        if bad:
            raise ValueError(f"controls={self.controls}: unknown {bad}; choose among {', '.join(CONTROLS)}")
        if self.eval.battles_per_pair < 4 or self.eval.battles_per_pair % 4:
            raise ValueError(f"eval.battles_per_pair={self.eval.battles_per_pair}: must be a positive multiple of 4")
        reserved = {"student", "coach", *CONTROLS} | {f"round-{k}" for k in range(1, self.chain.rounds + 1)}
        if reserved & set(self.eval.references):
            raise ValueError(f"eval.references may not use the names {sorted(reserved & set(self.eval.references))}")


# -- phase 1: chain -------------------------------------------------------------------------
def run_chain(chain_cfg: CoachStageConfig, out: Path) -> dict:
    """Run (or resume) stage 2 on `chain_cfg` as its own command; the chain's lineage record."""
    # A recipe is run, never imported (DESIGN.md): the chain is the stage 2 command a user would
    # type, on its settings saved to OUT/chain.yaml.
    config = out / "chain.yaml"
    save_config(chain_cfg, config)
    cmd = [sys.executable, "-m", "curriculum.coach", "--config", str(config)]
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
    with subprocess.Popen(cmd, env=env) as proc:
        try:
            status = proc.wait()
        except KeyboardInterrupt:
            proc.wait()  # Ctrl-C reached the chain too: let it stop its server and keep what it finished
            raise
    if status != 0:
        raise ValueError(f"the chain (stage 2) stopped with exit status {status}, its message above: {' '.join(cmd)}")
    return read_lineage(chain_cfg.run_dir)


# -- phase 2: controls ----------------------------------------------------------------------
def chain_budget(rounds: list[dict]) -> dict:
    """What the chain spent and on what: steps, decisions and data per round, and in all."""
    per = [{"round": r["round"], "steps": r["training"]["steps"], "decisions_trained": r["training"]["decisions_trained"],
            "data": r["training"]["data"], "data_decisions": r["training"]["data_decisions"],
            "battles": sum(b["battles"] for b in r["data"]["battles"].values()), "promoted": r["promoted"],
            "student": r["parent"]["checkpoint"], "child": r["training"]["checkpoint"]} for r in rounds]
    return {"rounds": per, "steps": sum(p["steps"] for p in per),
            "decisions_trained": sum(p["decisions_trained"] for p in per),
            "data_decisions": sum(p["data_decisions"] for p in per), "battles": sum(p["battles"] for p in per)}


def control_plan(name: str, budget: dict) -> dict:
    """A control's data and budget: the chain's total steps on pooled or first-round data."""
    rounds = budget["rounds"] if name == "pooled" else budget["rounds"][:1]
    return {"control": name, "steps": budget["steps"], "data": [d for r in rounds for d in r["data"]],
            "data_decisions": sum(r["data_decisions"] for r in rounds), "battles": sum(r["battles"] for r in rounds)}


def run_control(cfg: IterationAblationConfig, chain_cfg: CoachStageConfig, name: str, student: Path,
                budget: dict, coach_source: str) -> dict:
    """Train (or find trained) one control; its control.json."""
    folder = Path(cfg.out) / "controls" / name
    plan = control_plan(name, budget)
    path = folder / "control.json"
    record = json.loads(path.read_text()) if path.is_file() else None
    if record and {k: record[k] for k in plan} != plan:
        raise ValueError(f"control {name} in {folder} was trained with another plan ({record['steps']} steps on "
                         f"{record['data']}); delete {folder} to retrain it")
    if record and record.get("finished"):
        print(f"controls: {name} done before, skipped", flush=True)
        return record
    write_json({**plan, "student": str(student), "finished": False}, path)
    print(f"controls: {name}: {plan['steps']} steps on {len(plan['data'])} round(s) of data "
          f"({plan['data_decisions']} decisions)", flush=True)
    trained = train_student(chain_cfg, folder, student, [Path(p) for p in plan["data"]], steps=plan["steps"],
                            coach_source=coach_source, recipe=f"coach-control-{name}")
    record = {**plan, "student": str(student), "training": trained, "finished": trained["finished"],
              "decisions_trained": trained["decisions_trained"], "checkpoint": trained["checkpoint"]}
    write_json(record, path)
    return record


# -- phases 3 and 4: tournament and table ------------------------------------------------------
def agents_of(cfg: IterationAblationConfig, summary: dict, budget: dict, controls: dict) -> dict[str, str]:
    """Tournament name -> spec of every model compared, the coach and the references."""
    play_as = f"temperature={cfg.eval.temperature:g}"
    agents = {"student": f"policy:{summary['student']['checkpoint']},{play_as}"}
    agents.update({f"round-{r['round']}": f"policy:{r['child']},{play_as}" for r in budget["rounds"]})
    agents.update({name: f"policy:{c['checkpoint']},{play_as}" for name, c in controls.items()})
    if cfg.eval.with_coach:
        agents["coach"] = f"policy:{summary['coach']['checkpoint']},{play_as}"
    agents.update(cfg.eval.references)
    return agents


def lineage_steps(budget: dict) -> dict[str, int]:
    """Training steps along each round child's own lineage (promoted ancestors' rounds included)."""
    by_child = {r["child"]: r for r in budget["rounds"]}
    out = {}
    for r in budget["rounds"]:
        steps, node = r["steps"], r
        while node["student"] in by_child:  # the round started from an earlier round's child
            node = by_child[node["student"]]
            steps += node["steps"]
        out[f"round-{r['round']}"] = steps
    return out


def compare(ratings, a: str, b: str) -> str:
    """One sentence: a against b in rating (intervals) and head to head."""
    i, j = ratings.names.index(a), ratings.names.index(b)
    gap = ratings.rating[i] - ratings.rating[j]
    apart = ratings.lo[i] > ratings.hi[j] or ratings.lo[j] > ratings.hi[i]
    h2h = ratings.matrix
    cell = (f"; head to head {h2h.rate[i, j]:.2f} [{h2h.lo[i, j]:.2f}, {h2h.hi[i, j]:.2f}] over {h2h.games[i, j]} battles"
            if h2h.games[i, j] else "")
    verdict = ("intervals apart: a real difference" if apart else "intervals overlap: no clear difference")
    return f"{a} vs {b}: {gap:+.0f} rating points ({verdict}){cell}."


def write_table(cfg: IterationAblationConfig, rows: list[dict], agents: dict[str, str], summary: dict,
                budget: dict, controls: dict) -> dict:
    """OUT/report: the comparison table (md, csv, json), the ratings plot and the conclusions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(agents)
    ratings = rate_results(rows, names, n_boot=cfg.eval.bootstrap, seed=cfg.eval.seed, level=cfg.eval.level)
    report_dir = Path(cfg.out) / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    chain_out = summary["output"]
    own_steps = lineage_steps(budget)
    output_name = next((f"round-{r['round']}" for r in budget["rounds"] if r["child"] == chain_out), "student")
    d = cfg.chain.decisions_per_step
    what, table = {}, []
    what["student"] = ("the first student", 0, 0, 0)
    for r in budget["rounds"]:
        what[f"round-{r['round']}"] = (f"chain round {r['round']} child ({'promoted' if r['promoted'] else 'not promoted'})",
                                       own_steps[f"round-{r['round']}"], r["data_decisions"], r["battles"])
    for name, c in controls.items():
        what[name] = (f"control: {'all rounds pooled' if name == 'pooled' else 'round 1 data only'}, trained once",
                      c["steps"], c["data_decisions"], c["battles"])
    for i in ratings.order():
        n = ratings.names[i]
        desc, steps, data, battles = what.get(n, ("the coach" if n == "coach" else "reference", None, None, None))
        if n == output_name:
            desc += "; the chain's output"
        table.append({"agent": n, "what": desc, "rating": round(float(ratings.rating[i]), 1),
                      "lo": round(float(ratings.lo[i]), 1), "hi": round(float(ratings.hi[i]), 1),
                      "battles_rated": int(ratings.games[i]), "steps": steps,
                      "decisions_trained": None if steps is None else steps * d, "data_decisions": data,
                      "battles_in_data": battles, "spec": agents[n]})
    findings = []
    if output_name == "student":
        findings.append("No round was promoted: the chain's output is the first student itself.")
    last = f"round-{budget['rounds'][-1]['round']}"
    for model in dict.fromkeys([output_name, last]):
        for control in controls:
            findings.append(compare(ratings, model, control))
    if "round-1" in names:
        findings.append(compare(ratings, "round-1", "student"))
    budget_lines = [
        f"Budget: the chain played {budget['battles']} battles in {len(budget['rounds'])} rounds and trained "
        f"{budget['steps']} steps in all ({', '.join(str(r['steps']) for r in budget['rounds'])} per round) of exactly "
        f"{d} decisions each = {budget['steps'] * d} decisions trained, on {budget['data_decisions']} decisions of play.",
        *(f"Control {n}: {c['steps']} steps x {d} = {c['steps'] * d} decisions trained (the chain's total), on "
          f"{c['data_decisions']} decisions of play ({c['battles']} battles), "
          f"{c['steps'] * d / max(c['data_decisions'], 1):.2f} passes." for n, c in controls.items()),
        "Every model starts from the same student and learns from the same coach's labels with the same loss."]
    header = ["agent", "what", "rating", "lo", "hi", "battles_rated", "steps", "decisions_trained", "data_decisions",
              "battles_in_data"]
    md = [f"# Iteration ablation ({cfg.out})", "", *budget_lines, "",
          f"Tournament: {len(rows)} battles, {cfg.eval.battles_per_pair} per pair, {cfg.chain.format} / "
          f"{cfg.chain.team_set}; Bradley-Terry ratings (mean 1500), {cfg.eval.level:.0%} bootstrap intervals. "
          "Steps: training steps along the model's own lineage (a round's child includes its promoted ancestors').",
          ""]
    table_lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                   *("| " + " | ".join("–" if row[h] is None else str(row[h]) for h in header) + " |" for row in table)]
    md += [*table_lines, "", "## What it shows", "", *(f"- {f}" for f in findings), "", "![ratings](ratings.png)", "",
           f"Full tournament report: {Path(cfg.out) / 'tournament' / 'report' / 'report.md'}"]
    (report_dir / "iteration.md").write_text("\n".join(md) + "\n")
    with open(report_dir / "iteration.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*header, "spec"])
        w.writeheader()
        w.writerows(table)
    result = {"table": table, "findings": findings, "budget": budget, "controls": controls,
              "chain_output": output_name}
    write_json(result, report_dir / "iteration.json")
    colors = {"student": "black", "coach": "tab:purple", "pooled": "tab:orange", "first_round": "tab:red"}
    order = ratings.order()[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.45 * len(order)))
    for y, i in enumerate(order):
        n = ratings.names[i]
        color = colors.get(n, "tab:blue" if n.startswith("round-") else "tab:gray")
        ax.errorbar(ratings.rating[i], y, xerr=[[ratings.rating[i] - ratings.lo[i]], [ratings.hi[i] - ratings.rating[i]]],
                    fmt="o", capsize=4, color=color)
    ax.set_yticks(range(len(order)), [ratings.names[i] + (" (chain output)" if ratings.names[i] == output_name else "")
                                      for i in order])
    ax.axvline(1500, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"rating (Elo scale, {cfg.eval.level:.0%} bootstrap interval)")
    ax.set_title(f"Iterated coach rounds vs controls, {budget['steps']} steps each")
    fig.tight_layout()
    fig.savefig(report_dir / "ratings.png", dpi=120)
    plt.close(fig)
    print("\n".join(["", *budget_lines, "", *table_lines, "", *findings,
                     f"report: {report_dir / 'iteration.md'}"]), flush=True)
    return result


# -- the recipe --------------------------------------------------------------------------------
@owns_run_folder(lambda cfg: cfg.out)
def run(cfg: IterationAblationConfig, server=None) -> dict | None:
    """Run (or resume) the ablation (its tournament on `server`, or its own; the chain starts its own);
    the table's data once every phase is done, else None."""
    out = Path(cfg.out)
    check_same_run(cfg, out, _MUTABLE, keep=("opponents", "references"), what=str(out), fix="give another out=")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "config.yaml").is_file():
        save_config(cfg, out / "config.yaml")
    chain_cfg = dataclasses.replace(cfg.chain, run_dir=str(out / "chain"))

    # 1. chain
    summary = run_chain(chain_cfg, out)
    if summary["status"] != "done":
        print("chain: not finished; run the same command again to continue", flush=True)
        return None
    if cfg.stop_after == "chain":
        return None
    rounds = [read_lineage(r["run"]) for r in summary["rounds"]]
    budget = chain_budget(rounds)

    # 2. controls
    student = Path(summary["student"]["checkpoint"])
    coach_source = rounds[0]["coach"]["source"]
    controls = {}
    for name in cfg.controls:
        controls[name] = run_control(cfg, chain_cfg, name, student, budget, coach_source)
        if not controls[name]["finished"]:
            print(f"controls: {name} stopped at step {controls[name]['training']['steps']}; run again to continue")
            return None
    if cfg.stop_after == "controls":
        return None

    # 3. tournament
    agents = agents_of(cfg, summary, budget, controls)
    e = cfg.eval
    print(f"tournament: {', '.join(agents)}; {e.battles_per_pair} battles per pair", flush=True)
    result = play_tournament(agents, battle_format=chain_cfg.format, team_set=chain_cfg.team_set,
                             battles_per_pair=e.battles_per_pair, out=out / "tournament", seed=e.seed,
                             concurrency=e.concurrency, bootstrap=e.bootstrap, max_battles=e.max_battles,
                             server=server, progress=True)
    if not result.complete:
        print(f"tournament: {result.finished + result.errors} of {result.planned} battles done; run again to continue")
        return None
    write_tournament_report(result, list(agents), n_boot=e.bootstrap, seed=e.seed)
    if cfg.stop_after == "tournament":
        return None

    # 4. table
    return write_table(cfg, result.rows, agents, summary, budget, controls)


def main(argv: list[str] | None = None) -> None:
    recipe_main(IterationAblationConfig, run, argv, description="The stage 2 chain against pooled and non-iterated controls.",
                example="chain.rounds=3 eval.battles_per_pair=40")


if __name__ == "__main__":
    main()
