"""The run config: YAML + overrides, and one clear error per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import ConfigError
from tests.conftest import ROOT
from trainer.run_config import load_config

BASE = """\
run_dir: runs/x
model: {arch: RN50}
data: {kind: official, path: data/muge}
stages:
  - {name: lit, lock_image: true, lr: 1.0e-4, batch_size: 64, steps: 10, warmup: 2}
  - {name: both, lr: 2.0e-5, batch_size: 32, epochs: 1.5}
"""


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(BASE, encoding="utf-8")
    return path


def test_loads_and_applies_overrides(base: Path) -> None:
    config = load_config(
        base, ["stages.0.lr=3e-4", "stages.both.batch_size=16", "data.workers=0", "seed=7"]
    )
    assert config.stages[0].lr == 3e-4 and config.stages[0].lock_image
    assert config.stages[1].batch_size == 16 and config.stages[1].epochs == 1.5
    assert config.data.workers == 0 and config.seed == 7
    assert config.data.augment.scale == (0.9, 1.0)
    dumped = config.to_dict()
    assert dumped["stages"][0]["name"] == "lit" and dumped["optim"]["betas"] == [0.9, 0.98]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stages.0.lrr=1", "unknown key stages[0].lrr"),
        ("stages.0.lr=fast", "stages[0].lr: expected a number"),
        ("stages.9.lr=1", "index 9 is out of range"),
        ("stages.nope.lr=1", "no item named 'nope'"),
        ("precision=fp8", "precision: must be one of"),
        ("stages.0.epochs=2", "exactly one of steps or epochs"),
        ("stages.1.name=lit", "is used twice"),
        ("model.config={embed_dim: 8}", "exactly one of model.arch or model.config"),
        ("data.augment.scale=[0.5]", "expected a list of 2 values"),
        ("validation.task=zeroshot", ""),  # fine without validation data
        ("nonsense", "is not key=value"),
    ],
)
def test_mistakes_are_named(base: Path, override: str, message: str) -> None:
    if not message:
        load_config(base, [override])
        return
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(base, [override])


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_shipped_recipes_are_valid() -> None:
    recipes = sorted((ROOT / "trainer" / "recipes").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        load_config(recipe)
