"""One configuration path for every command (recipes, tournament, match, quickstart): a typed
dataclass with defaults in code (validated in its `__post_init__`, so on construction), an
optional YAML file, and `key=value` overrides (dotted keys reach nested dataclasses:
`trainer.lr=1e-3`). It sits in `battles/`, the lowest layer, so every layer may import it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from battles.files import write_atomic

T = TypeVar("T")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field's type, or raise naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(f"config key '{key}': {value!r} fits none of {annotation}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"config key '{key}' must be a mapping, got {value!r}")
        return from_dict(annotation, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if value else []
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key '{key}' must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if isinstance(value, str):  # CLI form: a:0.3,b:0.7
            pairs = [p.split(":", 1) for p in value.split(",") if p]
            if any(len(p) != 2 for p in pairs):
                raise ValueError(f"config key '{key}' wants name:value,name:value; got {value!r}")
            value = dict(pairs)
        if not isinstance(value, dict):
            raise ValueError(f"config key '{key}' must be a mapping, got {value!r}")
        vtype = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vtype, f"{key}.{k}") for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config key '{key}' must be true or false, got {value!r}")
    if annotation in (int, float, str):
        try:
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return annotation(value)
        except (TypeError, ValueError):
            raise ValueError(f"config key '{key}' must be {annotation.__name__}, got {value!r}") from None
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys are an error naming them."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(prefix + k for k in sorted(unknown))}; "
            f"known: {', '.join(prefix + k for k in fields)}"
        )
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain YAML-able data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _set_dotted(data: dict, key: str, value: str) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override '{key}': '{part}' is not a section")
    node[parts[-1]] = value


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults from `cls`, then the YAML file at `path`, then `key=value` overrides."""
    # Start from the resolved defaults (nested default_factory values included), so a file
    # or an override names only what differs and never resets its neighbours.
    data: dict = to_dict(cls())
    if path:
        path = Path(path)
        if not path.exists():
            raise ValueError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping of keys, not {type(loaded).__name__}")
        _merge(cls, data, loaded)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. trainer.lr=1e-3)")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value) if value else value
        except yaml.YAMLError:
            parsed = value
        _set_dotted(data, key.strip(), parsed)
    return from_dict(cls, data)


def _merge(cls: type, base: dict, extra: dict) -> None:
    """Merge `extra` into `base`: nested dataclass sections key by key, any other value whole."""
    hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
    for key, value in extra.items():
        section = hints.get(key)
        if dataclasses.is_dataclass(section) and isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(section, base[key], value)
        else:
            base[key] = value


def save_config(obj: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    write_atomic(path, yaml.safe_dump(to_dict(obj), sort_keys=False))


def flatten(data: dict, prefix: str = "", keep: tuple[str, ...] = ()) -> dict:
    """A nested config mapping as dotted keys; the mappings named in `keep` stay whole values."""
    out = {}
    for k, v in data.items():
        out.update(flatten(v, f"{prefix}{k}.", keep) if isinstance(v, dict) and k not in keep else {prefix + k: v})
    return out


def check_same_run(cfg: Any, run: str | Path, mutable: set[str], *, keep: tuple[str, ...] = (),
                   what: str = "", fix: str = "give a new run_dir") -> None:
    """A resumed run keeps the settings its finished work was made with: RUN/config.yaml against
    `cfg`, but for the `mutable` keys (dotted); ValueError naming each changed key. A setting the
    code gained after the run started counts as unchanged while it keeps its default (which is
    how the run was made)."""
    saved_path = Path(run) / "config.yaml"
    if not saved_path.is_file():
        return
    saved = flatten(yaml.safe_load(saved_path.read_text()) or {}, keep=keep)
    now = flatten(to_dict(cfg), keep=keep)
    try:
        defaults = flatten(to_dict(type(cfg)()), keep=keep)
    except (TypeError, ValueError):  # a config without constructible defaults: every key counts
        defaults = {}
    changed = [k for k in sorted(set(saved) | set(now)) if k not in mutable and saved.get(k) != now.get(k)
               and not (k not in saved and k in defaults and now.get(k) == defaults[k])]
    if changed:
        diffs = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ValueError(f"{what or f'run_dir {run}'} was started with other settings ({diffs}). Resume with "
                         f"the same settings, or {fix}")


def recipe_main(cls: type[T], run: typing.Callable[[T], Any], argv: list[str] | None, *, description: str,
                example: str, log_level: int = logging.WARNING, quiet: dict[str, int] | None = None,
                flags: dict[str, type] | None = None, errors: tuple[type[BaseException], ...] = ()) -> Any:
    """Every recipe's command line: `--config FILE.yaml` and `key=value` overrides (plus `flags`,
    each `--name VALUE` standing for the override `name=VALUE`) into `cls`, then `run(cfg)`.

    A user's error (ValueError, FileNotFoundError, and `errors`) is one line, never a traceback;
    SIGTERM stops like Ctrl-C (servers and hosts are closed on the way out) and what was finished
    is kept for the next run of the same command.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="YAML file; key=value overrides follow")
    for name, kind in (flags or {}).items():
        parser.add_argument(f"--{name}", type=kind, default=None, help=f"the config's `{name}`")
    parser.add_argument("overrides", nargs="*", help=f"key=value, e.g. {example}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, level in {"poke_env": logging.CRITICAL, **(quiet or {})}.items():
        logging.getLogger(name).setLevel(level)
    overrides = list(args.overrides) + [f"{name}={getattr(args, name)}" for name in (flags or {})
                                        if getattr(args, name) is not None]
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return run(load_config(cls, args.config, overrides))
    except (ValueError, FileNotFoundError, *errors) as err:
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        raise SystemExit("interrupted; what was finished is kept. Run the same command to resume.") from None
