"""Lineage: which model came from which, trained on what, judged how.

Every curriculum stage's run folder holds `lineage.json`: the parent (checkpoint and the
run that made it), the data (battle and trajectory shards with their sizes), the config,
the training summary, the promotion tournament's result, whether the child was promoted
and why, and `output`, the checkpoint the next stage should start from (the child when
promoted, else the parent). A stage's parent may be a checkpoint, a pretraining run
folder, or another stage's run folder (then its `output`).

    python -m curriculum.lineage RUN [--json]

prints the chain from pretraining to RUN, following parents.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from battles.files import write_atomic
from models.checkpoint import read_checkpoint_info

LINEAGE = "lineage.json"
VERSION = 1


def read_lineage(run: str | Path) -> dict:
    """The lineage record of a stage run folder; ValueError naming the folder when absent."""
    path = Path(run) / LINEAGE
    if not path.is_file():
        raise ValueError(f"{run} has no {LINEAGE}: it is not a curriculum stage run folder "
                         "(or the stage has not started); give the run_dir of a stage")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); rerun the stage's command to rewrite it") from None


def update_lineage(run_dir: str | Path, **fields) -> dict:
    """Merge `fields` into RUN/lineage.json (created when absent), atomically; returns the record."""
    path = Path(run_dir) / LINEAGE
    record = json.loads(path.read_text()) if path.is_file() else {"version": VERSION}
    record.update(fields)
    record["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_atomic(path, json.dumps(record, indent=1, default=str) + "\n")
    return record


def resolve_parent(path: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint folder, run folder that made it or None) for a checkpoint, pretrain run or stage run."""
    p = Path(path)
    if (p / "config.json").is_file():  # a checkpoint (a bundled one keeps its lineage beside it)
        run = read_checkpoint_info(p).metadata.get("run_dir")
        return p, Path(run) if run else None
    if (p / LINEAGE).is_file():
        out = read_lineage(p).get("output")
        if not out:
            raise ValueError(f"parent {p} is a stage that has not finished (its {LINEAGE} names no output "
                             "yet); finish it by running its command again, or give a checkpoint folder")
        return Path(out), p
    if (p / "final" / "config.json").is_file():
        return p / "final", p
    raise ValueError(f"parent {p}: not a checkpoint folder (config.json + model.safetensors), a pretraining "
                     f"run folder (with final/) or a stage run folder (with {LINEAGE}); train a parent first "
                     "(scripts/pretrain.sh or scripts/quickstart.sh) or fix the path")


def _root(run: Path | None, checkpoint: str | None) -> dict:
    """The first link: a pretraining run (its config.yaml) or a bare checkpoint."""
    node: dict = {"kind": "checkpoint", "run": str(run) if run else None, "checkpoint": checkpoint}
    if run is not None and (run / "config.yaml").is_file():
        cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
        node.update(kind="pretrain", data=cfg.get("data"), mix=cfg.get("mix"), preset=cfg.get("preset"),
                    formats=cfg.get("formats"), steps=(cfg.get("trainer") or {}).get("max_steps"))
        node["checkpoint"] = checkpoint or str(run / "final")
    if node["checkpoint"] and (Path(node["checkpoint"]) / "config.json").is_file():
        meta = read_checkpoint_info(node["checkpoint"]).metadata
        node["final_metrics"] = {k: meta[k] for k in ("step", "loss", "val_loss", "val_acc") if k in meta}
    return node


def chain(run: str | Path) -> list[dict]:
    """The lineage from the first model (pretraining) to RUN, oldest first."""
    run = Path(run)
    if not (run / LINEAGE).is_file():
        if (run / "config.yaml").is_file() or (run / "config.json").is_file():
            ckpt, made_by = resolve_parent(run)
            return [_root(made_by, str(ckpt))]
        read_lineage(run)  # raises, naming the folder
    nodes: list[dict] = []
    seen: set[Path] = set()
    current: Path | None = run
    while current is not None:
        if current.resolve() in seen:
            raise ValueError(f"lineage loop: {current} is its own ancestor")
        seen.add(current.resolve())
        if not (current / LINEAGE).is_file():
            nodes.append(_root(current, nodes[-1]["parent"]["checkpoint"] if nodes else None))
            break
        record = read_lineage(current)
        nodes.append({"kind": "stage", "run": str(current), **record})
        parent = record.get("parent") or {}
        current = Path(parent["run"]) if parent.get("run") else None
        if current is None:
            nodes.append(_root(None, parent.get("checkpoint")))
    return list(reversed(nodes))


def _stage_lines(node: dict) -> list[str]:
    status = node.get("status", "?")
    if node.get("promoted") is True:
        verdict = "PROMOTED"
    elif node.get("promoted") is False:
        verdict = "not promoted (parent kept)"
    else:
        verdict = f"in progress ({status})"
    lines = [f"{node.get('stage', 'stage')}  {node['run']}  {verdict}",
             f"    parent: {(node.get('parent') or {}).get('checkpoint')}"]
    battles = (node.get("data") or {}).get("battles") or {}
    if battles:
        total = sum(b["battles"] for b in battles.values())
        wins = sum(b["learner_wins"] for b in battles.values())
        per = ", ".join(f"{name} {b['battles']}" for name, b in battles.items())
        lines.append(f"    played: {total} battles ({per}); the learner won {wins / max(total, 1):.1%}")
    learner = (node.get("data") or {}).get("learner")
    if learner:
        lines.append(f"    data: {learner['trajectories']} trajectories, {learner['decisions']} decisions "
                     f"in {len(learner['shards'])} shard(s)")
    training = node.get("training")
    if training:
        lines.append(f"    trained: {training['steps']} steps ({training['epochs']:g} epochs, {training['finetune']}), "
                     f"parent data share {training.get('parent_data_share', 0):g}")
    decision = node.get("decision")
    if decision:
        c, p = decision["child"], decision["parent"]
        lines.append(f"    tournament: child {c['rating']:.0f} [{c['lo']:.0f}, {c['hi']:.0f}] vs parent "
                     f"{p['rating']:.0f} [{p['lo']:.0f}, {p['hi']:.0f}] ({decision['gain']:+.0f})")
        lines.append(f"    reason: {decision['reason']}")
    if node.get("output"):
        lines.append(f"    output: {node['output']}")
    return lines


def format_chain(nodes: list[dict]) -> str:
    """The chain as indented text, oldest first."""
    lines = []
    for depth, node in enumerate(nodes):
        pad = "  " * depth + ("└─ " if depth else "")
        if node["kind"] == "stage":
            body = _stage_lines(node)
        elif node["kind"] == "pretrain":
            body = [f"pretrain  {node['run']}",
                    f"    data: {node.get('data')} mix {node.get('mix')}; {node.get('preset')} preset, "
                    f"{node.get('steps')} steps", f"    checkpoint: {node['checkpoint']}"]
            if node.get("final_metrics"):
                body.append(f"    final: {node['final_metrics']}")
        else:
            body = [f"checkpoint  {node.get('checkpoint')}  (no run folder recorded)"]
        lines.append(pad + body[0])
        lines.extend("  " * depth + ("   " if depth else "") + line for line in body[1:])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the chain of models from pretraining to RUN.")
    parser.add_argument("run", help="a stage run folder (with lineage.json) or a pretraining run folder")
    parser.add_argument("--json", action="store_true", help="print the chain as JSON")
    args = parser.parse_args(argv)
    try:
        nodes = chain(args.run)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(nodes, indent=1, default=str) if args.json else format_chain(nodes))


if __name__ == "__main__":
    main()
