"""Shared fixtures: the real data in ../shared/data (or $CNCLIP_DATA_DIR)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from model.configs import ModelConfig

ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """The shared real-data folder; tests fail loudly rather than skip when it is missing."""
    path = Path(os.environ.get("CNCLIP_DATA_DIR", ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        raise RuntimeError(
            f"real test data not found at {path}: set CNCLIP_DATA_DIR to the shared data folder"
        )
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return data_root()


# ---------------------------------------------------------------- tiny configs
# One of each architecture family, small enough to run in milliseconds. The
# ``official_kwargs`` twins build the same shapes with the official cn_clip CLIP.
# Heads are 64 channels wide, as in the official models, because an official
# checkpoint file does not record head counts (they are inferred as width / 64).

TINY_TEXT = {
    "hidden_size": 128,
    "layers": 2,
    "heads": 2,
    "intermediate_size": 256,
}


def tiny_config(family: str) -> ModelConfig:
    from model.configs import ModelConfig, TextConfig, VisionConfig

    if family == "vit":
        vision = VisionConfig(kind="vit", image_size=32, width=128, layers=2, patch_size=8)
    elif family == "resnet":
        vision = VisionConfig(kind="resnet", image_size=64, width=16, resnet_layers=(1, 2, 1, 1))
    else:
        raise ValueError(family)
    return ModelConfig(
        name=f"tiny-{family}", embed_dim=32, vision=vision, text=TextConfig(**TINY_TEXT)
    )


def official_kwargs(family: str) -> dict[str, object]:
    """Arguments of ``cn_clip.clip.model.CLIP`` for the same tiny shapes."""
    cfg = tiny_config(family)
    v = cfg.vision
    vision: dict[str, object] = {
        "embed_dim": cfg.embed_dim,
        "image_resolution": v.image_size,
        "vision_width": v.width,
        "vision_head_width": v.head_width,
    }
    if v.kind == "vit":
        vision.update(vision_layers=v.layers, vision_patch_size=v.patch_size)
    else:
        vision.update(vision_layers=list(v.resnet_layers), vision_patch_size=None)
    text = {
        "vocab_size": 21128,
        "text_attention_probs_dropout_prob": 0.1,
        "text_hidden_act": "gelu",
        "text_hidden_dropout_prob": 0.1,
        "text_hidden_size": TINY_TEXT["hidden_size"],
        "text_initializer_range": 0.02,
        "text_intermediate_size": TINY_TEXT["intermediate_size"],
        "text_max_position_embeddings": 512,
        "text_num_attention_heads": TINY_TEXT["heads"],
        "text_num_hidden_layers": TINY_TEXT["layers"],
        "text_type_vocab_size": 2,
    }
    return {**vision, **text}


@pytest.fixture(params=["vit", "resnet"])
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)
