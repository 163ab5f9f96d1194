"""Typed model configurations: the five official Chinese CLIP architectures.

The numbers are those of the official `model_configs/*.json` of Chinese-CLIP
(cn_clip 1.6.0) and of the paper's Tables 1, 6 and 7:

=============  ====================  =======================  =========  ======
name           image tower           text tower               embed dim  params
=============  ====================  =======================  =========  ======
RN50           ModifiedResNet-50     RBT3 (3 layers, 768)     1024       77M
ViT-B-16       ViT-B/16 @224         RoBERTa-wwm-ext base     512        188M
ViT-L-14       ViT-L/14 @224         RoBERTa-wwm-ext base     768        406M
ViT-L-14-336   ViT-L/14 @336         RoBERTa-wwm-ext base     768        407M
ViT-H-14       ViT-H/14 @224         RoBERTa-wwm-ext large    1024       958M
=============  ====================  =======================  =========  ======
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from runtime.errors import ConfigError
from runtime.tokenizer import CONTEXT_LENGTH

VisionKind = Literal["vit", "resnet"]


@dataclass(frozen=True)
class VisionConfig:
    """Image tower.

    ``kind="vit"``: ``layers`` transformer blocks of ``width`` channels over
    ``patch_size`` patches. ``kind="resnet"``: a ModifiedResNet with
    ``resnet_layers`` bottleneck blocks per stage and stem ``width``.
    Attention heads are ``width // head_width`` (ViT) or ``width * 32 // head_width``
    (the ResNet's attention pool), as in the official code.
    """

    kind: VisionKind
    image_size: int
    width: int
    layers: int = 0
    patch_size: int = 0
    resnet_layers: tuple[int, int, int, int] = (0, 0, 0, 0)
    head_width: int = 64
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        if self.kind not in ("vit", "resnet"):
            raise ConfigError(f"vision kind must be 'vit' or 'resnet', not {self.kind!r}")
        if self.kind == "vit":
            if self.layers < 1 or self.patch_size < 1 or self.image_size % self.patch_size:
                raise ConfigError(
                    f"ViT needs layers >= 1 and an image size ({self.image_size}) divisible by "
                    f"the patch size ({self.patch_size})"
                )
            if self.width % self.head_width:
                raise ConfigError(f"ViT width {self.width} is not a multiple of {self.head_width}")
        else:
            if len(self.resnet_layers) != 4 or min(self.resnet_layers) < 1:
                raise ConfigError(f"ResNet needs four stage depths >= 1, not {self.resnet_layers}")
            if self.image_size % 32:
                raise ConfigError(f"ResNet image size {self.image_size} is not a multiple of 32")

    @property
    def heads(self) -> int:
        if self.kind == "vit":
            return self.width // self.head_width
        return self.width * 32 // self.head_width

    @property
    def grid_size(self) -> int:
        """Patches per side (ViT) or feature-map side of the attention pool (ResNet)."""
        if self.kind == "vit":
            return self.image_size // self.patch_size
        return self.image_size // 32


@dataclass(frozen=True)
class TextConfig:
    """BERT-style text tower (Chinese RoBERTa-wwm-ext / RBT3)."""

    hidden_size: int = 768
    layers: int = 12
    heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 21128
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.hidden_size % self.heads:
            raise ConfigError(
                f"text hidden size {self.hidden_size} is not a multiple of {self.heads} heads"
            )


@dataclass(frozen=True)
class ModelConfig:
    """A whole two-tower model: what a checkpoint carries to rebuild itself."""

    name: str
    embed_dim: int
    vision: VisionConfig
    text: TextConfig
    context_length: int = CONTEXT_LENGTH

    @property
    def struct_name(self) -> str:
        """The official ``<vision>@<text>`` name, e.g. ``ViT-B-16@RoBERTa-wwm-ext-base-chinese``."""
        return _STRUCT_NAMES.get(self.name, self.name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["vision"]["resnet_layers"] = list(self.vision.resnet_layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        try:
            vision = dict(data["vision"])
            vision["resnet_layers"] = tuple(vision.get("resnet_layers", (0, 0, 0, 0)))
            return cls(
                name=str(data["name"]),
                embed_dim=int(data["embed_dim"]),
                vision=VisionConfig(**vision),
                text=TextConfig(**data["text"]),
                context_length=int(data.get("context_length", CONTEXT_LENGTH)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid model config: {exc}") from exc

    def same_architecture(self, other: ModelConfig) -> bool:
        """True when both describe the same weights' shapes and computation (names aside)."""
        return (self.embed_dim, self.vision, self.text) == (
            other.embed_dim,
            other.vision,
            other.text,
        )


def _text(hidden: int, layers: int, heads: int, intermediate: int) -> TextConfig:
    return TextConfig(
        hidden_size=hidden, layers=layers, heads=heads, intermediate_size=intermediate
    )


_RBT3 = _text(768, 3, 12, 3072)
_ROBERTA_BASE = _text(768, 12, 12, 3072)
_ROBERTA_LARGE = _text(1024, 24, 16, 4096)

ARCHITECTURES: dict[str, ModelConfig] = {
    "RN50": ModelConfig(
        name="RN50",
        embed_dim=1024,
        vision=VisionConfig(kind="resnet", image_size=224, width=64, resnet_layers=(3, 4, 6, 3)),
        text=_RBT3,
    ),
    "ViT-B-16": ModelConfig(
        name="ViT-B-16",
        embed_dim=512,
        vision=VisionConfig(kind="vit", image_size=224, width=768, layers=12, patch_size=16),
        text=_ROBERTA_BASE,
    ),
    "ViT-L-14": ModelConfig(
        name="ViT-L-14",
        embed_dim=768,
        vision=VisionConfig(kind="vit", image_size=224, width=1024, layers=24, patch_size=14),
        text=_ROBERTA_BASE,
    ),
    "ViT-L-14-336": ModelConfig(
        name="ViT-L-14-336",
        embed_dim=768,
        vision=VisionConfig(kind="vit", image_size=336, width=1024, layers=24, patch_size=14),
        text=_ROBERTA_BASE,
    ),
    "ViT-H-14": ModelConfig(
        name="ViT-H-14",
        embed_dim=1024,
        vision=VisionConfig(
            kind="vit", image_size=224, width=1280, layers=32, patch_size=14, head_width=80
        ),
        text=_ROBERTA_LARGE,
    ),
}

_STRUCT_NAMES = {
    "RN50": "RN50@RBT3-chinese",
    "ViT-B-16": "ViT-B-16@RoBERTa-wwm-ext-base-chinese",
    "ViT-L-14": "ViT-L-14@RoBERTa-wwm-ext-base-chinese",
    "ViT-L-14-336": "ViT-L-14-336@RoBERTa-wwm-ext-base-chinese",
    "ViT-H-14": "ViT-H-14@RoBERTa-wwm-ext-large-chinese",
}

# Official checkpoint file names and the names people type for them.
_ALIASES = {
    "rn50": "RN50",
    "vit-b-16": "ViT-B-16",
    "vit-l-14": "ViT-L-14",
    "vit-l-14-336": "ViT-L-14-336",
    "vit-h-14": "ViT-H-14",
}


def get_config(name: str) -> ModelConfig:
    """The configuration of an official architecture by name (case-insensitive).

    Accepts ``ViT-B-16``, ``vit-b-16``, the official struct name
    ``ViT-B-16@RoBERTa-wwm-ext-base-chinese`` and ``ViT-B/16``.

    Raises:
        ConfigError: for an unknown name, listing the known ones.
    """
    key = name.strip().split("@")[0].replace("/", "-").lower()
    canonical = _ALIASES.get(key)
    if canonical is None:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[canonical]


def find_architecture(config: ModelConfig) -> str | None:
    """The official name whose shapes and computation equal ``config``, if any."""
    for name, known in ARCHITECTURES.items():
        if known.same_architecture(config):
            return name
    return None


def from_official_json(name: str, vision_json: str | Path, text_json: str | Path) -> ModelConfig:
    """Build a config from the official ``model_configs/<vision>.json`` + ``<text>.json``.

    Used to check that :data:`ARCHITECTURES` carries the official numbers.
    """
    vision = json.loads(Path(vision_json).read_text(encoding="utf-8"))
    text = json.loads(Path(text_json).read_text(encoding="utf-8"))
    layers = vision["vision_layers"]
    if isinstance(layers, str):
        layers = json.loads(layers)
    head_width = int(vision.get("vision_head_width", 64))
    if isinstance(layers, list):
        vcfg = VisionConfig(
            kind="resnet",
            image_size=int(vision["image_resolution"]),
            width=int(vision["vision_width"]),
            resnet_layers=(int(layers[0]), int(layers[1]), int(layers[2]), int(layers[3])),
            head_width=head_width,
        )
    else:
        vcfg = VisionConfig(
            kind="vit",
            image_size=int(vision["image_resolution"]),
            width=int(vision["vision_width"]),
            layers=int(layers),
            patch_size=int(vision["vision_patch_size"]),
            head_width=head_width,
        )
    tcfg = TextConfig(
        hidden_size=int(text["text_hidden_size"]),
        layers=int(text["text_num_hidden_layers"]),
        heads=int(text["text_num_attention_heads"]),
        intermediate_size=int(text["text_intermediate_size"]),
        vocab_size=int(text["vocab_size"]),
        max_position_embeddings=int(text["text_max_position_embeddings"]),
        type_vocab_size=int(text["text_type_vocab_size"]),
        hidden_dropout=float(text["text_hidden_dropout_prob"]),
        attention_dropout=float(text["text_attention_probs_dropout_prob"]),
    )
    return ModelConfig(name=name, embed_dim=int(vision["embed_dim"]), vision=vcfg, text=tcfg)
