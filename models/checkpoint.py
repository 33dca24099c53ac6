"""Checkpoint folders: `config.json` plus `model.safetensors`; loading never unpickles.

config.json holds the model config, the encoder version and vocabulary hash the model was
trained with, and a free-form training metadata dict. The full training state for resume
lives elsewhere (accelerate's state in the run folder), not here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from models.policy import PolicyConfig, PolicyTransformer

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "qabra-checkpoint"
FORMAT_VERSION = 1


PICKLED_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


class CheckpointNotFound(FileNotFoundError, ValueError):
    """A checkpoint folder or one of its files is missing (a ValueError too, for CLIs that catch those)."""


@dataclass
class CheckpointInfo:
    """What a checkpoint's config.json says, besides the weights."""

    path: Path
    config: PolicyConfig
    encoder_version: int | str
    vocab_hash: str
    metadata: dict = field(default_factory=dict)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    path: str | os.PathLike,
    model: PolicyTransformer,
    *,
    encoder_version: int | str,
    vocab_hash: str,
    metadata: dict | None = None,
) -> Path:
    """Write `model` as a checkpoint folder at `path`, replacing any existing one safely."""
    if not isinstance(model, PolicyTransformer):
        raise TypeError(
            f"save_checkpoint needs a PolicyTransformer, got {type(model).__name__}; "
            "unwrap it first (accelerator.unwrap_model, or model._orig_mod after torch.compile)"
        )
    if not isinstance(encoder_version, (int, str)) or isinstance(encoder_version, bool):
        raise ValueError(f"encoder_version={encoder_version!r}: expected an int or a string")
    if not isinstance(vocab_hash, str) or not vocab_hash:
        raise ValueError(f"vocab_hash={vocab_hash!r}: expected a non-empty string")
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.cfg.to_dict(),
        "encoder_version": encoder_version,
        "vocab_hash": vocab_hash,
        "metadata": metadata or {},
    }
    try:
        config_text = json.dumps(config, indent=2, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {e}") from e

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = path.parent / f".{path.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        # clone: safetensors refuses views that share storage; cpu: the file is device-free.
        state = {
            k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()
        }
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        with open(tmp / CONFIG_NAME, "w") as f:
            f.write(config_text + "\n")
            f.flush()
            os.fsync(f.fileno())
        with open(tmp / WEIGHTS_NAME, "rb") as f:
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if path.exists():
            # Linux cannot swap two directories atomically with rename(2); keep the old one
            # aside until the new one is in place, so some complete checkpoint always exists.
            old = path.parent / f".{path.name}.old-{tag}"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


_LEFT_BEHIND = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-[0-9a-f]{8}$")


def clean_interrupted_saves(folder: str | os.PathLike) -> list[Path]:
    """Repair what saves killed mid-way left in `folder`; returns the checkpoints restored.

    A temporary folder (`.NAME.tmp-*`) is deleted; a previous checkpoint put aside
    (`.NAME.old-*`) goes back to NAME when NAME is missing, and is deleted otherwise.
    Call it only when no save into `folder` is running (the trainer holds its run folder).
    """
    folder = Path(folder)
    restored = []
    for left in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = _LEFT_BEHIND.match(left.name)
        if not m or not left.is_dir():
            continue
        final = folder / m.group("name")
        if m.group("kind") == "old" and not final.exists():
            os.rename(left, final)
            restored.append(final)
        else:
            shutil.rmtree(left, ignore_errors=True)
    return restored


def _missing_hint(path: Path) -> str:
    """Point at a previous checkpoint left aside by an interrupted save, if any."""
    aside = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
    if aside:
        return f"; a save was interrupted and the previous checkpoint is at {aside[-1]}"
    return "; check the path, or train one first (e.g. scripts/pretrain.sh)"


def read_checkpoint_info(path: str | os.PathLike) -> CheckpointInfo:
    """Read and validate a checkpoint's config.json without loading weights."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointNotFound(f"no checkpoint folder at {path}{_missing_hint(path)}")
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointNotFound(
            f"checkpoint {path} has no {CONFIG_NAME} ({cfg_path}); it is incomplete: "
            "save it again with models.checkpoint.save_checkpoint"
        )
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt checkpoint config {cfg_path}: {e}") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"{cfg_path} is not a Qabra checkpoint config (no format={FORMAT!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{cfg_path} has checkpoint format_version={raw.get('format_version')!r}; this Qabra "
            f"reads {FORMAT_VERSION}: use the Qabra version that wrote it"
        )
    for key in ("model", "encoder_version", "vocab_hash"):
        if key not in raw:
            raise ValueError(f"corrupt checkpoint config {cfg_path}: missing key {key!r}")
    try:
        config = PolicyConfig.from_dict(raw["model"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad model config in {cfg_path}: {e}") from e
    metadata = raw.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"corrupt checkpoint config {cfg_path}: metadata is not a mapping")
    return CheckpointInfo(path, config, raw["encoder_version"], raw["vocab_hash"], metadata)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    expected_encoder_version: int | str | None = None,
    expected_vocab_hash: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[PolicyTransformer, CheckpointInfo]:
    """Load a checkpoint folder into a PolicyTransformer (in eval mode) on `device`."""
    info = read_checkpoint_info(path)
    path = info.path
    if expected_encoder_version is not None and info.encoder_version != expected_encoder_version:
        raise ValueError(
            f"checkpoint {path} was made with encoder version {info.encoder_version!r}, but this "
            f"Qabra's encoder is version {expected_encoder_version!r}: rebuild trajectories and "
            "retrain, or use the matching Qabra version"
        )
    if expected_vocab_hash is not None and info.vocab_hash != expected_vocab_hash:
        raise ValueError(
            f"checkpoint {path} was made with vocabulary hash {info.vocab_hash!r}, but the "
            f"current vocabulary hashes to {expected_vocab_hash!r}: rebuild trajectories and "
            "retrain, or use the matching Qabra version"
        )
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLED_SUFFIXES)
        if pickled:
            raise CheckpointNotFound(
                f"checkpoint {path} has no {WEIGHTS_NAME}; {', '.join(pickled)} is ignored: Qabra never "
                "loads pickled files (unpickling can run any code). Save the weights as safetensors "
                "with models.checkpoint.save_checkpoint"
            )
        raise CheckpointNotFound(
            f"checkpoint {path} has no {WEIGHTS_NAME} ({weights}); it is incomplete: "
            "save it again with models.checkpoint.save_checkpoint"
        )
    _check_shapes(weights, info.config, path / CONFIG_NAME)
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as e:  # safetensors raises its own error types for bad headers/data
        raise ValueError(f"corrupt checkpoint weights {weights}: {e}") from e
    model = PolicyTransformer(info.config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"weights in {weights} do not match the model config in {path / CONFIG_NAME}: {e}"
        ) from e
    return model.to(device).eval(), info


def _check_shapes(weights: Path, config: PolicyConfig, cfg_path: Path) -> None:
    """Compare the config's parameter shapes with the file's headers before allocating anything:
    a config.json asking for a huge model must not cost gigabytes to be found wrong."""
    with torch.device("meta"):  # shapes only, no memory
        expected = {k: tuple(v.shape) for k, v in PolicyTransformer(config).state_dict().items()}
    try:
        with safe_open(str(weights), framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise ValueError(f"corrupt checkpoint weights {weights}: {e}") from e
    wrong = [f"{k}: config {expected[k]}, file {found[k]}" for k in expected if k in found and expected[k] != found[k]]
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if wrong or missing or extra:
        details = "; ".join(wrong[:3] + ([f"missing {missing[:3]}"] if missing else [])
                            + ([f"unexpected {extra[:3]}"] if extra else []))
        raise ValueError(f"weights in {weights} do not match the model config in {cfg_path}: {details}; "
                         "use the config.json saved with these weights")
