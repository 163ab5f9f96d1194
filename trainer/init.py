"""Building the model of a run and loading its starting weights.

The paper initialises the image tower from a pretrained vision model and the
text tower from a Chinese RoBERTa; finetuning starts from a whole Chinese CLIP
checkpoint. Whatever the source, the weights that were expected but not found
(``missing``) and those found but not used (``unexpected``) are listed, and
either stops the run unless ``model.allow_missing`` is set.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from runtime.errors import CheckpointError, ConfigError
from trainer.checkpoints import StateDict, load_checkpoint, load_hf_weights
from trainer.configs import ModelConfig, get_config
from trainer.model import ChineseCLIP, build_model
from trainer.run_config import ModelSection

log = logging.getLogger(__name__)

# A BERT's pretraining heads and pooler are not part of the text tower.
_IGNORED_TEXT_PREFIXES = ("pooler.", "cls.", "lm_head.")


@dataclass
class InitReport:
    """What each weight source contributed."""

    sources: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def model_config(section: ModelSection) -> ModelConfig:
    if section.arch is not None:
        return get_config(section.arch)
    assert section.config is not None  # checked by run_config
    return ModelConfig.from_dict(section.config)


def _load_into(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str, report: InitReport
) -> None:
    """Copy matching weights; shape mismatches are errors, key mismatches are reported."""
    own = module.state_dict()
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{where}: {key} is {list(value.shape)} in the file but "
                f"{list(own[key].shape)} in the model"
            )
    result = module.load_state_dict(dict(state), strict=False)
    report.missing += [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    report.unexpected += list(result.unexpected_keys)


def _hf_text_weights(path: Path) -> tuple[StateDict, dict[str, object]]:
    """A Hugging Face BERT/RoBERTa (directory or weights file) as ``BertModel`` keys."""
    directory = path if path.is_dir() else path.parent
    config_path = directory / "config.json"
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"{directory}: no config.json (a Hugging Face BERT directory)"
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path}: not readable JSON ({exc})") from exc
    raw = load_hf_weights(directory)
    state: StateDict = {}
    for key, value in raw.items():
        for prefix in ("bert.", "roberta.", "text_model."):
            key = key.removeprefix(prefix)
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias"
        )
        state[key] = value
    return state, hf_config


def _check_text_config(model: ChineseCLIP, hf: dict[str, object], where: Path) -> None:
    text = model.config.text
    pairs = {
        "hidden_size": text.hidden_size,
        "num_hidden_layers": text.layers,
        "num_attention_heads": text.heads,
        "intermediate_size": text.intermediate_size,
        "vocab_size": text.vocab_size,
    }
    wrong = [f"{k}={hf.get(k)} (model: {v})" for k, v in pairs.items() if hf.get(k) != v]
    if wrong:
        raise CheckpointError(f"{where}: text tower does not fit the model: {', '.join(wrong)}")


def build_initial_model(section: ModelSection) -> tuple[ChineseCLIP, InitReport]:
    """The run's model with its starting weights (see the module docstring).

    Raises:
        CheckpointError: unreadable sources, shape mismatches, and missing or
            unexpected weights unless ``allow_missing``.
    """
    config = model_config(section)
    report = InitReport()
    if section.init:
        loaded = load_checkpoint(section.init)
        if not loaded.config.same_architecture(config):
            raise ConfigError(
                f"model.init {section.init} holds another architecture than model "
                f"{section.arch or 'config'}"
            )
        model = build_model(config)
        model.load_state_dict(loaded.model.state_dict())
        report.sources.append(f"whole model from {section.init} ({loaded.format})")
        return model, report

    model = build_model(config)
    if section.init_image:
        loaded = load_checkpoint(section.init_image)
        visual = {
            k.removeprefix("visual."): v
            for k, v in loaded.model.state_dict().items()
            if k.startswith("visual.")
        }
        _load_into(model.visual, visual, section.init_image, report)
        report.sources.append(f"image tower from {section.init_image} ({loaded.format})")
    if section.init_text:
        path = Path(section.init_text)
        state, hf_config = _hf_text_weights(path)
        _check_text_config(model, hf_config, path)
        kept = {k: v for k, v in state.items() if not k.startswith(_IGNORED_TEXT_PREFIXES)}
        kept = {k: v for k, v in kept.items() if not k.endswith(("position_ids", "token_type_ids"))}
        report.ignored += sorted(set(state) - set(kept))
        _load_into(model.bert, kept, section.init_text, report)
        report.sources.append(f"text tower from {section.init_text} (Hugging Face BERT)")
    if (report.missing or report.unexpected) and not section.allow_missing:
        parts = []
        if report.missing:
            parts.append(f"missing {len(report.missing)}: {', '.join(report.missing[:5])}")
        if report.unexpected:
            parts.append(f"unexpected {len(report.unexpected)}: {', '.join(report.unexpected[:5])}")
        raise CheckpointError(
            "initial weights do not cover the towers exactly ("
            + "; ".join(parts)
            + "); set model.allow_missing=true to start those from random weights"
        )
    return model, report
