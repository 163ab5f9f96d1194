"""The five official architectures: names, numbers and parameter counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.configs import ARCHITECTURES, ModelConfig, from_official_json, get_config
from model.modeling import ChineseCLIP
from runtime.errors import ConfigError

# Paper, Table 1 (millions of parameters).
PAPER_PARAMS = {
    "RN50": 77e6,
    "ViT-B-16": 188e6,
    "ViT-L-14": 406e6,
    "ViT-L-14-336": 407e6,
    "ViT-H-14": 958e6,
}

OFFICIAL_JSON = {
    "RN50": ("RN50", "RBT3-chinese"),
    "ViT-B-16": ("ViT-B-16", "RoBERTa-wwm-ext-base-chinese"),
    "ViT-L-14": ("ViT-L-14", "RoBERTa-wwm-ext-base-chinese"),
    "ViT-L-14-336": ("ViT-L-14-336", "RoBERTa-wwm-ext-base-chinese"),
    "ViT-H-14": ("ViT-H-14", "RoBERTa-wwm-ext-large-chinese"),
}


def test_the_five_official_names() -> None:
    assert list(ARCHITECTURES) == ["RN50", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14"]


@pytest.mark.parametrize("name", list(OFFICIAL_JSON))
def test_configs_carry_the_official_numbers(name: str, data_dir: Path) -> None:
    vision, text = OFFICIAL_JSON[name]
    folder = data_dir / "cn-clip-reference" / "model_configs"
    official = from_official_json(name, folder / f"{vision}.json", folder / f"{text}.json")
    assert official == ARCHITECTURES[name]


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_parameter_counts_match_the_paper_within_one_percent(name: str) -> None:
    with torch.device("meta"):
        count = ChineseCLIP(ARCHITECTURES[name]).num_parameters()
    assert abs(count / PAPER_PARAMS[name] - 1) < 0.01, f"{name}: {count / 1e6:.1f}M"


def test_head_counts_follow_the_official_rule() -> None:
    assert ARCHITECTURES["ViT-H-14"].vision.heads == 16  # 1280 / 80
    assert ARCHITECTURES["ViT-B-16"].vision.heads == 12
    assert ARCHITECTURES["RN50"].vision.heads == 32  # attention pool over 2048 channels
    assert ARCHITECTURES["ViT-H-14"].text.heads == 16


@pytest.mark.parametrize(
    "alias", ["ViT-B-16", "vit-b-16", "ViT-B/16", "ViT-B-16@RoBERTa-wwm-ext-base-chinese"]
)
def test_aliases(alias: str) -> None:
    assert get_config(alias).name == "ViT-B-16"


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="ViT-B-32.*known: RN50, ViT-B-16"):
        get_config("ViT-B-32")


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_dict_round_trip(name: str) -> None:
    config = ARCHITECTURES[name]
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig.from_dict(
            {
                **ARCHITECTURES["ViT-B-16"].to_dict(),
                "vision": {
                    "kind": "vit",
                    "image_size": 225,
                    "width": 768,
                    "layers": 12,
                    "patch_size": 16,
                },
            }
        )
    with pytest.raises(ConfigError, match="invalid model config"):
        ModelConfig.from_dict({"name": "x"})
