"""Does iterating stage 2 help? The chain of rounds against two controls with matched budgets.

    python -m curriculum.ablate_iteration --config curriculum/configs/stage2_ablate.yaml [key=value ...]
    scripts/ablate_iteration.sh [--config FILE] chain.student=runs/stage1 chain.coach=runs/coach/final

Phases; running the same command again continues where it stopped, redoing nothing finished:

  1 chain       stage 2 (python -m curriculum.stage2_coach, run as its own command on OUT/chain.yaml, the
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
  3 tournament  every round's child, the controls, the first student, the coach (`with_coach`)
                and `eval.references`, round robin (curriculum/comparison.py, resumable) on the
                chain's team set (or `eval.team_sets`) in OUT/tournament/ with its report.
  4 table       OUT/report/iteration.{md,csv,json} and ratings.png: ratings with 95% intervals, each
                model's budget (training steps along its own lineage, decisions trained, the data's
                decisions, battles played for it) and what the comparison shows. Always redrawn.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from battles.config import check_same_run, recipe_main, save_config
from battles.files import write_atomic, write_json
from curriculum.comparison import EvalConfig, compare, play
from curriculum.distill import CoachStageConfig, train_student
from curriculum.lineage import read_lineage
from curriculum.run_folder import owns_run_folder
from eval.report import plot_ratings, rate_rows

CONTROLS = ("pooled", "first_round")
STOPS = ("", "chain", "controls", "tournament")
_MUTABLE = {"stop_after", "eval.concurrency", "eval.max_battles", "chain.concurrency", "chain.trainer.threads",
            "chain.label_batch_size", "chain.stop_after", "chain.promotion.concurrency",
            "chain.promotion.max_battles", "chain.trainer.stop_after_steps", "chain.trainer.wandb_mode",
            "chain.trainer.log_every", "chain.run_dir"}


@dataclass
class IterationAblationConfig:
    out: str = "runs/ablate_iteration"
    chain: CoachStageConfig = field(default_factory=lambda: CoachStageConfig(rounds=2))  # run_dir: OUT/chain
    controls: list[str] = field(default_factory=lambda: list(CONTROLS))
    with_coach: bool = True  # the coach plays in the final tournament
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(policy_params="temperature=1"))
    stop_after: str = ""  # chain | controls | tournament

    def __post_init__(self) -> None:
        if self.chain.rounds < 2:
            raise ValueError(f"chain.rounds={self.chain.rounds}: iteration needs at least 2 rounds to compare")
        if self.stop_after not in STOPS:
            raise ValueError(f"stop_after={self.stop_after!r}: use one of chain, controls, tournament or leave it empty")
        bad = [c for c in self.controls if c not in CONTROLS]
        if bad:
            raise ValueError(f"controls={self.controls}: unknown {bad}; choose among {', '.join(CONTROLS)}")
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
    cmd = [sys.executable, "-m", "curriculum.stage2_coach", "--config", str(config)]
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
    write_json(path, {**plan, "student": str(student), "finished": False})
    print(f"controls: {name}: {plan['steps']} steps on {len(plan['data'])} round(s) of data "
          f"({plan['data_decisions']} decisions)", flush=True)
    trained = train_student(chain_cfg, folder, student, [Path(p) for p in plan["data"]], steps=plan["steps"],
                            coach_source=coach_source, recipe=f"coach-control-{name}")
    record = {**plan, "student": str(student), "training": trained, "finished": trained["finished"],
              "decisions_trained": trained["decisions_trained"], "checkpoint": trained["checkpoint"]}
    write_json(path, record)
    return record


# -- phases 3 and 4: tournament and table ------------------------------------------------------
def agents_of(cfg: IterationAblationConfig, summary: dict, budget: dict, controls: dict) -> dict[str, str]:
    """Tournament name -> spec of every model compared, the coach and the references."""
    models = {"student": summary["student"]["checkpoint"],
              **{f"round-{r['round']}": r["child"] for r in budget["rounds"]},
              **{name: c["checkpoint"] for name, c in controls.items()}}
    if cfg.with_coach:
        models["coach"] = summary["coach"]["checkpoint"]
    return cfg.eval.agents(models)


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


def write_table(cfg: IterationAblationConfig, rows: list[dict], agents: dict[str, str], summary: dict,
                budget: dict, controls: dict) -> dict:
    """OUT/report: the comparison table (md, csv, json), the ratings plot and the conclusions."""
    e = cfg.eval
    names = list(agents)
    ratings = rate_rows(rows, names, n_boot=e.bootstrap, seed=e.seed, anchor=e.anchor or None)
    report_dir = Path(cfg.out) / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    own_steps = lineage_steps(budget)
    output_name = next((f"round-{r['round']}" for r in budget["rounds"] if r["child"] == summary["output"]),
                       "student")
    d = cfg.chain.decisions_per_step
    what = {"student": ("the first student", 0, 0, 0)}
    for r in budget["rounds"]:
        what[f"round-{r['round']}"] = (f"chain round {r['round']} child ({'promoted' if r['promoted'] else 'not promoted'})",
                                       own_steps[f"round-{r['round']}"], r["data_decisions"], r["battles"])
    for name, c in controls.items():
        what[name] = (f"control: {'all rounds pooled' if name == 'pooled' else 'round 1 data only'}, trained once",
                      c["steps"], c["data_decisions"], c["battles"])
    table = []
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
    table_lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                   *("| " + " | ".join("–" if row[h] is None else str(row[h]) for h in header) + " |" for row in table)]
    md = [f"# Iteration ablation ({cfg.out})", "", *budget_lines, "",
          f"Tournament: {len(rows)} battles, {e.battles_per_pair} per pair, {cfg.chain.format} / "
          f"{', '.join(e.team_sets or [cfg.chain.team_set])}; Bradley-Terry ratings "
          f"({e.anchor + ' = 1500' if e.anchor else 'mean 1500'}), 95% bootstrap intervals. Steps: training steps "
          "along the model's own lineage (a round's child includes its promoted ancestors').", "",
          *table_lines, "", "## What it shows", "", *(f"- {f}" for f in findings), "", "![ratings](ratings.png)", "",
          f"Full tournament report: {Path(cfg.out) / 'tournament' / 'report' / 'report.md'}"]
    write_atomic(report_dir / "iteration.md", "\n".join(md) + "\n")
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=[*header, "spec"])
    w.writeheader()
    w.writerows(table)
    write_atomic(report_dir / "iteration.csv", text.getvalue())
    result = {"table": table, "findings": findings, "budget": budget, "controls": controls,
              "chain_output": output_name}
    write_json(report_dir / "iteration.json", result)
    plot_ratings(ratings, report_dir / "ratings.png", f"Iterated coach rounds vs controls, {budget['steps']} steps each")
    print("\n".join(["", *budget_lines, "", *table_lines, "", *findings, f"report: {report_dir / 'iteration.md'}"]),
          flush=True)
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
    result = play(cfg.eval, agents, battle_format=chain_cfg.format, out=out / "tournament", server=server,
                  team_sets=cfg.eval.team_sets or [chain_cfg.team_set], title=f"Iteration ablation {cfg.out}")
    if not result.complete:
        print(f"tournament: {result.finished + result.errors} of {result.planned} battles done; run again to continue")
        return None
    if cfg.stop_after == "tournament":
        return None

    # 4. table
    return write_table(cfg, result.rows, agents, summary, budget, controls)


def main(argv: list[str] | None = None) -> None:
    recipe_main(IterationAblationConfig, run, argv, description="The stage 2 chain against pooled and non-iterated controls.",
                example="chain.rounds=3 eval.battles_per_pair=40")


if __name__ == "__main__":
    main()
