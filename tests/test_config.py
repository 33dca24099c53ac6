"""The one configuration path: defaults in code, YAML, key=value overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from battles.config import load_config, save_config
from curriculum.imitation import PretrainConfig


def test_nested_override_keeps_the_parents_defaults(tmp_path):
    # PretrainConfig's trainer section defaults to max_steps=2000 (not TrainerConfig's 1000).
    cfg = load_config(PretrainConfig, None, ["trainer.lr=1e-3"])
    assert cfg.trainer.lr == 1e-3 and cfg.trainer.max_steps == 2000
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  warmup_steps: 7\nmix:\n  human: 1.0\n")
    cfg = load_config(PretrainConfig, path, ["preset=small"])
    assert cfg.trainer.warmup_steps == 7 and cfg.trainer.max_steps == 2000
    assert cfg.mix == {"human": 1.0}  # a mapping field is replaced whole, not merged
    assert cfg.preset == "small"


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(PretrainConfig, None, ["mix=human:0.25,selfplay:0.75", "data=[a,b]", "min_rating=1500"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(PretrainConfig, tmp_path / "config.yaml") == cfg


def test_errors_name_the_key():
    with pytest.raises(ValueError, match="trainer.nope"):
        load_config(PretrainConfig, None, ["trainer.nope=1"])
    with pytest.raises(ValueError, match="'window' must be int"):
        load_config(PretrainConfig, None, ["window=wide"])


def test_every_shipped_recipe_config_loads():
    """Each curriculum/configs/*.yaml that a recipe reads loads and validates (the rest are
    accelerate's launch configs)."""
    from curriculum.ablate_data_mix import AblateConfig
    from curriculum.ablate_iteration import IterationAblationConfig
    from curriculum.imitation import PretrainConfig
    from curriculum.stage1_play import SelfPlayConfig
    from curriculum.stage2_coach import CoachStageConfig
    from curriculum.stage3_search import SearchStageConfig

    recipes = {"ablate_gen1ou": AblateConfig, "ablate_smoke": AblateConfig, "pretrain_large": PretrainConfig,
               "stage1": SelfPlayConfig, "stage1_lora": SelfPlayConfig, "stage1_smoke": SelfPlayConfig,
               "stage2": CoachStageConfig, "stage2_smoke": CoachStageConfig,
               "stage2_ablate": IterationAblationConfig, "stage3": SearchStageConfig,
               "stage3_smoke": SearchStageConfig}
    launch = {"ddp", "fsdp_large"}
    folder = Path(__file__).resolve().parents[1] / "curriculum" / "configs"
    assert {p.stem for p in folder.glob("*.yaml")} == set(recipes) | launch  # a new config gets a row here
    for name, cls in recipes.items():
        cfg = load_config(cls, folder / f"{name}.yaml")
        assert isinstance(cfg, cls), name
        if hasattr(cfg, "validate"):  # the ablation checks its grid here, not on construction
            cfg.validate()
