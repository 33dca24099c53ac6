"""Checkpoint folders: round trip, safe replacement, and the errors a user can meet."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from models.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from models.policy import PolicyConfig, PolicyTransformer


def make_model(seed: int = 0) -> PolicyTransformer:
    torch.manual_seed(seed)
    return PolicyTransformer(
        PolicyConfig.preset("tiny", vocab_size=50, n_tokens=6, n_numbers=4)
    ).eval()


def inputs(cfg: PolicyConfig):
    g = torch.Generator().manual_seed(3)
    legal = torch.rand(2, 5, 13, generator=g) < 0.5
    legal[..., 4] = True
    return (
        torch.randint(0, cfg.vocab_size, (2, 5, cfg.n_tokens), generator=g),
        torch.randn(2, 5, cfg.n_numbers, generator=g),
        legal,
    )


def save(path, model, **kw):
    kw = {"encoder_version": 3, "vocab_hash": "abc123", **kw}
    return save_checkpoint(path, model, **kw)


def test_round_trip_identical_outputs_without_unpickling(tmp_path, monkeypatch):
    model = make_model()
    path = save(tmp_path / "ckpt", model, metadata={"step": 7, "source_mix": {"human": 0.5}})
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]

    def refuse(*a, **k):
        raise AssertionError("loading a checkpoint must not unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded, info = load_checkpoint(path, expected_encoder_version=3, expected_vocab_hash="abc123")
    assert not loaded.training
    assert info.config == model.cfg and info.encoder_version == 3 and info.vocab_hash == "abc123"
    assert info.metadata == {"step": 7, "source_mix": {"human": 0.5}}
    x = inputs(model.cfg)
    for a, b in zip(model(*x), loaded(*x), strict=True):
        assert torch.equal(a, b)


def test_save_replaces_existing_checkpoint_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "runs" / "final"
    save(path, make_model(seed=0))
    second = make_model(seed=1)
    save(path, second, metadata={"step": 2})
    assert sorted(p.name for p in path.parent.iterdir()) == ["final"]
    loaded, info = load_checkpoint(path)
    assert info.metadata == {"step": 2}
    x = inputs(second.cfg)
    assert torch.equal(loaded(*x)[0], second(*x)[0])


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt"
    save(path, make_model(seed=0), metadata={"step": 1})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save(path, make_model(seed=1), metadata={"bad": object()})
    assert read_checkpoint_info(path).metadata == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_missing_folder_and_files_name_their_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint folder at .*nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    path = save(tmp_path / "ckpt", make_model())
    (path / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{WEIGHTS_NAME}.*incomplete"):
        load_checkpoint(path)
    (path / CONFIG_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=rf"no {CONFIG_NAME}"):
        load_checkpoint(path)


def test_interrupted_save_points_at_the_previous_checkpoint(tmp_path):
    path = save(tmp_path / "ckpt", make_model())
    aside = tmp_path / ".ckpt.old-deadbeef"
    path.rename(aside)  # what a crash between save's two renames leaves
    with pytest.raises(FileNotFoundError, match="previous checkpoint is at .*old-deadbeef"):
        load_checkpoint(path)


def test_corrupt_weights_name_their_path(tmp_path):
    path = save(tmp_path / "ckpt", make_model())
    weights = path / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"corrupt checkpoint weights .*{WEIGHTS_NAME}"):
        load_checkpoint(path)


def test_corrupt_config_names_its_path(tmp_path):
    path = save(tmp_path / "ckpt", make_model())
    (path / CONFIG_NAME).write_text('{"format": "qabra-checkpoint", ')
    with pytest.raises(ValueError, match=rf"corrupt checkpoint config .*{CONFIG_NAME}"):
        load_checkpoint(path)


def test_config_that_does_not_match_weights_is_reported(tmp_path):
    path = save(tmp_path / "ckpt", make_model())
    raw = json.loads((path / CONFIG_NAME).read_text())
    raw["model"]["d_model"] = 64
    raw["model"]["n_heads"] = 2
    (path / CONFIG_NAME).write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="do not match the model config"):
        load_checkpoint(path)
    raw["model"]["n_layerz"] = 2
    (path / CONFIG_NAME).write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"bad model config .*n_layerz"):
        load_checkpoint(path)


def test_other_encoder_version_fails_with_both_versions(tmp_path):
    path = save(tmp_path / "ckpt", make_model(), encoder_version=3)
    with pytest.raises(ValueError) as err:
        load_checkpoint(path, expected_encoder_version=4)
    msg = str(err.value)
    assert "encoder version 3" in msg and "version 4" in msg
    assert "rebuild trajectories and retrain, or use the matching Qabra version" in msg
    with pytest.raises(ValueError, match="vocabulary hash 'abc123'.*'zzz'"):
        load_checkpoint(path, expected_vocab_hash="zzz")


def test_save_rejects_bad_arguments(tmp_path):
    model = make_model()
    with pytest.raises(TypeError, match="unwrap"):
        save_checkpoint(tmp_path / "a", torch.nn.Linear(2, 2), encoder_version=1, vocab_hash="x")
    with pytest.raises(ValueError, match="vocab_hash"):
        save_checkpoint(tmp_path / "a", model, encoder_version=1, vocab_hash="")
    assert not (tmp_path / "a").exists()


def test_a_pickled_model_pt_is_named_as_ignored(tmp_path):
    path = save(tmp_path / "ckpt", make_model())
    (path / WEIGHTS_NAME).unlink()
    torch.save(make_model().state_dict(), path / "model.pt")
    # FileNotFoundError and ValueError both: a CLI catching either prints one line.
    for kind in (FileNotFoundError, ValueError):
        with pytest.raises(kind, match=rf"no {WEIGHTS_NAME}; model.pt is ignored: .*never loads pickled"):
            load_checkpoint(path)


def test_a_config_asking_for_a_huge_model_is_refused_before_allocating_it(tmp_path):
    path = save(tmp_path / "ckpt", make_model())
    raw = json.loads((path / CONFIG_NAME).read_text())
    # About 4 TB of parameters: allocating them would fail or take the machine; the shapes
    # in the safetensors header are compared first.
    raw["model"].update(d_model=65536, n_heads=64, n_layers=64)
    (path / CONFIG_NAME).write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"do not match the model config .*config \(65536"):
        load_checkpoint(path)
