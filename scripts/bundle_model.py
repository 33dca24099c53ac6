"""Ship a checkpoint in the repository as a bundled model: `models/bundled/NAME/`.

    python scripts/bundle_model.py runs/best/final --name qabra-gen1ou \
        --results runs/eval_best/results.json --how "scripts/best_model.sh"

Copies `config.json` and `model.safetensors` (weights cast to bf16 with --bf16), and writes
beside them `lineage.json` (the run that made it: its config, data and selection, the
curriculum chain when the checkpoint came from a stage), `results.json` (what
scripts/evaluate_model.py measured) and `MODEL_CARD.md`. The folder is written under a
temporary name and swapped in whole. The agent spec `bundled` (or `bundled:NAME`) plays it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file

from agents.registry import BUNDLED_DIR
from models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_checkpoint_info

REPO = Path(__file__).resolve().parents[1]


def run_of(checkpoint: Path) -> Path | None:
    """The run folder that holds a checkpoint (…/final or …/checkpoints/step-N), if any,
    relative to the repository when inside it."""
    for parent in checkpoint.resolve().parents:
        if (parent / "config.yaml").is_file():
            return parent.relative_to(REPO) if parent.is_relative_to(REPO) else parent
    return None


def card(name: str, info, run: Path | None, run_cfg: dict, results: dict, how: str) -> str:
    """The model card's Markdown."""
    meta = info.metadata
    lines = [f"# {name}", "",
             f"A Qabra policy for {results.get('format', 'gen1ou')}: the `{info.config.d_model}`-wide, "
             f"{info.config.n_layers}-layer PolicyTransformer (encoder version {info.encoder_version}). "
             "Play it with the agent "
             f"spec `bundled` (greedy) or `bundled:{name},temperature=1`.", "",
             "## Data and training", ""]
    lines += [f"- made by: `{run}`" if run else "- made by: (no run folder)",
              f"- recipe: {meta.get('recipe', '?')}, step {meta.get('step', '?')}",
              f"- data: {run_cfg.get('data', meta.get('data'))}, mix {run_cfg.get('mix', meta.get('mix'))}, "
              f"select {run_cfg.get('select', meta.get('select'))}",
              f"- preset {run_cfg.get('preset', '?')}, window {run_cfg.get('window', '?')}, "
              f"init_from {run_cfg.get('init_from')}", ""]
    lines += ["## Results", "",
              f"Greedy play, {results.get('format')}, team sets {', '.join(results.get('team_sets', []))}, "
              "battles split evenly over the team sets; 95% Wilson intervals.", "",
              "| opponent | battles | win rate | 95% interval | by team set |", "|---|---:|---:|---|---|"]
    for r in results.get("results", []):
        lines.append(f"| {r['opponent']} | {r['battles']} | {r['winrate']:.3f} | "
                     f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | {r['by_team_set']} |")
    lines += ["", "## How to reproduce", "", how, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--name", default="qabra-gen1ou")
    parser.add_argument("--results", type=Path, required=True, help="results.json of scripts/evaluate_model.py")
    parser.add_argument("--how", default="", help="the commands that reproduce it (Markdown)")
    parser.add_argument("--bf16", action="store_true", help="store the weights in bf16")
    args = parser.parse_args()
    info = read_checkpoint_info(args.checkpoint)
    results = json.loads(args.results.read_text())
    run = run_of(args.checkpoint)
    run_cfg = yaml.safe_load((run / "config.yaml").read_text()) if run else {}
    lineage = {"checkpoint": str(args.checkpoint), "run": str(run) if run else None, "config": run_cfg,
               "metadata": info.metadata}
    if run and (run / "lineage.json").is_file():
        lineage["stage"] = json.loads((run / "lineage.json").read_text())

    dest = BUNDLED_DIR / args.name
    tmp = BUNDLED_DIR / f".{args.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(args.checkpoint / CONFIG_NAME, tmp / CONFIG_NAME)
    weights = load_file(str(args.checkpoint / WEIGHTS_NAME))
    if args.bf16:
        import torch

        weights = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, str(tmp / WEIGHTS_NAME))
    (tmp / "lineage.json").write_text(json.dumps(lineage, indent=1, default=str))
    (tmp / "results.json").write_text(json.dumps({**results, "spec": "bundled",
                                                  "what": f"{args.name}"}, indent=1))
    (tmp / "MODEL_CARD.md").write_text(card(args.name, info, run, run_cfg, results, args.how))
    old = BUNDLED_DIR / f".{args.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    print(f"bundled {args.checkpoint} as {dest} ({(dest / WEIGHTS_NAME).stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
