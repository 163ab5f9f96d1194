"""Building the model of a run and loading its starting weights.

The paper initialises the image tower from a pretrained vision model and the
text tower from a Chinese RoBERTa; finetuning starts from a whole Chinese CLIP
checkpoint. Whatever the source, the weights that were expected but not found
(``missing``) and those found but not used (``unexpected``) are listed, and
either stops the run unless ``model.allow_missing`` is set.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.checkpoints import load_checkpoint
from model.configs import ModelConfig
from model.hf import hf_text_weights
from model.modeling import ChineseCLIP, build_model
from runtime.errors import CheckpointError, ConfigError

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


def build_initial_model(
    config: ModelConfig,
    *,
    init: str | None = None,
    init_image: str | None = None,
    init_text: str | None = None,
    allow_missing: bool = False,
    name: str = "config",
) -> tuple[ChineseCLIP, InitReport]:
    """A model of ``config`` with its starting weights (see the module docstring).

    ``init``: a whole-model checkpoint; else ``init_image`` (a whole-model checkpoint
    whose ``visual.*`` weights are taken) and/or ``init_text`` (a Hugging Face Chinese
    BERT/RoBERTa); towers without weights start from the official random initialisation.
    ``name`` is how messages call the architecture.

    Raises:
        CheckpointError: unreadable sources, shape mismatches, and missing or
            unexpected weights unless ``allow_missing``.
    """
    report = InitReport()
    if init:
        loaded = load_checkpoint(init)
        if not loaded.config.same_architecture(config):
            raise ConfigError(f"model.init {init} holds another architecture than model {name}")
        model = build_model(config)
        model.load_state_dict(loaded.model.state_dict())
        report.sources.append(f"whole model from {init} ({loaded.format})")
        return model, report

    model = build_model(config)
    if init_image:
        loaded = load_checkpoint(init_image)
        visual = {
            k.removeprefix("visual."): v
            for k, v in loaded.model.state_dict().items()
            if k.startswith("visual.")
        }
        _load_into(model.visual, visual, init_image, report)
        report.sources.append(f"image tower from {init_image} ({loaded.format})")
    if init_text:
        path = Path(init_text)
        state, hf_config = hf_text_weights(path)
        _check_text_config(model, hf_config, path)
        kept = {k: v for k, v in state.items() if not k.startswith(_IGNORED_TEXT_PREFIXES)}
        kept = {k: v for k, v in kept.items() if not k.endswith(("position_ids", "token_type_ids"))}
        report.ignored += sorted(set(state) - set(kept))
        _load_into(model.bert, kept, init_text, report)
        report.sources.append(f"text tower from {init_text} (Hugging Face BERT)")
    if (report.missing or report.unexpected) and not allow_missing:
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
