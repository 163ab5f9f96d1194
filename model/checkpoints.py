"""Checkpoint formats, all loading into :class:`model.modeling.ChineseCLIP`.

* **official** — ``clip_cn_<arch>.pt``: a ``torch.save``d dict with ``epoch``,
  ``step``, ``name`` and ``state_dict`` (keys with or without ``module.``;
  ``bert.pooler.*`` ignored; fp16 or fp32). The architecture comes from
  ``arch`` or is inferred from the weights' shapes.
* **huggingface** — a ``ChineseCLIPModel`` directory (``config.json`` +
  ``model.safetensors`` or ``pytorch_model.bin``) as published under
  ``OFA-Sys/chinese-clip-vit-*``; its weights are mapped to the official layout
  with the mapping of transformers' ``convert_chinese_clip_original_pytorch_to_hf.py``
  (:mod:`model.hf`).
* **cnclip** — ours: the official dict plus ``format``, ``format_version`` and
  ``model_config``; weights in the official key layout, so the official code
  loads it too.

Every problem a user can cause (missing file, not a checkpoint, wrong
architecture, missing or mis-shaped weights) raises :class:`CheckpointError`
with one line naming the file and the problem.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from model.configs import (
    ModelConfig,
    TextConfig,
    VisionConfig,
    find_architecture,
    get_config,
)
from model.modeling import ChineseCLIP
from runtime.bundle_manifest import is_bundle
from runtime.errors import CheckpointError, ConfigError
from runtime.files import atomic_path

CheckpointFormat = Literal["official", "huggingface", "cnclip"]
FORMAT_TAG = "cnclip-checkpoint"
FORMAT_VERSION = 1

StateDict = dict[str, torch.Tensor]


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint, with where it came from."""

    model: ChineseCLIP
    config: ModelConfig
    format: CheckpointFormat
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- reading


def torch_load(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers (no code from pickles)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file") from exc
    except Exception as exc:
        text = str(exc)
        if "Unsupported global" in text or "Weights only load failed" in text:
            match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            what = match.group(1) if match else "Python objects"
            reason = f"it holds {what}, not only tensors; refusing to unpickle code"
        elif "zip archive" in text or isinstance(exc, EOFError):
            reason = "the file is truncated or corrupted"
        else:
            reason = "not a file written by torch.save"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from exc


def _clean_state_dict(raw: Mapping[str, Any], path: Path) -> StateDict:
    """Strip ``module.``, drop unused entries, cast floating weights to float32."""
    if not isinstance(raw, Mapping) or not raw:
        raise CheckpointError(f"{path}: the checkpoint's state_dict is empty or not a mapping")
    out: StateDict = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: state_dict entry {key!r} is not a tensor")
        name = key[len("module.") :] if key.startswith("module.") else key
        if name.startswith("bert.pooler."):
            continue  # the official BERT has no pooler; the features use [CLS]
        out[name] = value.float() if value.is_floating_point() else value
    return out


def _layer_count(state: StateDict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _shape(state: StateDict, key: str, path: Path) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{path}: not a Chinese CLIP checkpoint (no weight {key})")
    return tuple(state[key].shape)


def infer_config(state: StateDict, path: Path | str = "<state_dict>") -> ModelConfig:
    """Rebuild the architecture from the shapes of official-layout weights.

    The only thing shapes cannot tell is the attention head count; it is taken
    from the matching official architecture, else 64 channels per head.
    """
    path = Path(path)
    if not any(k.startswith("visual.") for k in state) or not any(
        k.startswith("bert.") for k in state
    ):
        sample = ", ".join(sorted(state)[:3])
        raise CheckpointError(
            f"{path}: not a Chinese CLIP checkpoint (no visual.* and bert.* weights; "
            f"found keys like {sample})"
        )
    hidden_vocab = _shape(state, "bert.embeddings.word_embeddings.weight", path)
    hidden = hidden_vocab[1]
    text = TextConfig(
        hidden_size=hidden,
        layers=_layer_count(state, "bert.encoder.layer."),
        heads=max(1, hidden // 64),
        intermediate_size=_shape(state, "bert.encoder.layer.0.intermediate.dense.weight", path)[0],
        vocab_size=hidden_vocab[0],
        max_position_embeddings=_shape(state, "bert.embeddings.position_embeddings.weight", path)[
            0
        ],
        type_vocab_size=_shape(state, "bert.embeddings.token_type_embeddings.weight", path)[0],
    )
    embed_dim = _shape(state, "text_projection", path)[1]
    if "visual.proj" in state:
        width, _, patch, _ = _shape(state, "visual.conv1.weight", path)
        tokens = _shape(state, "visual.positional_embedding", path)[0]
        grid = math.isqrt(tokens - 1)
        mlp = _shape(state, "visual.transformer.resblocks.0.mlp.c_fc.weight", path)[0]
        vision = VisionConfig(
            kind="vit",
            image_size=grid * patch,
            width=width,
            layers=_layer_count(state, "visual.transformer.resblocks."),
            patch_size=patch,
            mlp_ratio=mlp // width,
        )
    else:
        width = _shape(state, "visual.conv3.weight", path)[0]
        tokens = _shape(state, "visual.attnpool.positional_embedding", path)[0]
        vision = VisionConfig(
            kind="resnet",
            image_size=math.isqrt(tokens - 1) * 32,
            width=width,
            resnet_layers=(
                _layer_count(state, "visual.layer1."),
                _layer_count(state, "visual.layer2."),
                _layer_count(state, "visual.layer3."),
                _layer_count(state, "visual.layer4."),
            ),
        )
    try:
        config = ModelConfig(name="custom", embed_dim=embed_dim, vision=vision, text=text)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: inconsistent weight shapes ({exc})") from exc
    # Head counts are invisible in shapes: take them from the official architecture
    # whose shapes match, then name the config after it.
    for name in ("RN50", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14"):
        known = get_config(name)
        if _same_shapes(known, config):
            return known
    return config


def _same_shapes(a: ModelConfig, b: ModelConfig) -> bool:
    def key(c: ModelConfig) -> tuple[Any, ...]:
        v, t = c.vision, c.text
        return (
            c.embed_dim,
            v.kind,
            v.image_size,
            v.width,
            v.layers,
            v.patch_size,
            v.resnet_layers,
            v.mlp_ratio,
            t.hidden_size,
            t.layers,
            t.intermediate_size,
            t.vocab_size,
            t.max_position_embeddings,
            t.type_vocab_size,
        )

    return key(a) == key(b)


def _preview(keys: Iterable[str], limit: int = 3) -> str:
    items = sorted(keys)
    text = ", ".join(items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _count(items: Iterable[object], noun: str) -> str:
    n = len(list(items))
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _fmt(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_state_dict(state: StateDict, config: ModelConfig, path: Path | str) -> StateDict:
    """Verify keys and shapes against ``config``; returns the dict ready to load.

    Raises:
        CheckpointError: missing weights, unexpected weights or shape mismatches,
            named in one line with what the file looks like instead.
    """
    path = Path(path)
    with torch.device("meta"):
        reference = ChineseCLIP(config).state_dict()
    expected = {k: tuple(v.shape) for k, v in reference.items()}
    state = dict(state)
    for key in expected:
        # Older or converted checkpoints may lack BatchNorm's step counters.
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.tensor(0, dtype=torch.long)
    guess = ""
    try:
        inferred = infer_config(state, path)
        if not _same_shapes(inferred, config):
            guess = (
                f" (the file looks like {find_architecture(inferred) or 'another architecture'})"
            )
    except CheckpointError:
        pass
    arch = config.name if config.name != "custom" else "the inferred architecture"
    missing = expected.keys() - state.keys()
    if missing:
        raise CheckpointError(
            f"{path}: missing {_count(missing, 'weight')} of {arch}: {_preview(missing)}{guess}"
        )
    unexpected = state.keys() - expected.keys()
    if unexpected:
        raise CheckpointError(
            f"{path}: {_count(unexpected, 'unexpected weight')} for {arch}: "
            f"{_preview(unexpected)}{guess}"
        )
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise CheckpointError(
                f"{path}: shape mismatch with {arch}: {key} is "
                f"{_fmt(state[key].shape)} in the file, {arch} expects {_fmt(shape)}{guess}"
            )
        if state[key].is_floating_point() != reference[key].is_floating_point():
            raise CheckpointError(
                f"{path}: {key} holds {str(state[key].dtype).removeprefix('torch.')} values, "
                f"{arch} expects {str(reference[key].dtype).removeprefix('torch.')}"
            )
    return state


# ------------------------------------------------------------------------ public


def _official_config(state: StateDict, wanted: ModelConfig | None, path: Path) -> ModelConfig:
    """The architecture of official weights: ``wanted`` if given (and plausible), else inferred."""
    if wanted is None:
        return infer_config(state, path)
    try:
        inferred = infer_config(state, path)
    except CheckpointError:
        return wanted  # check_state_dict names what is missing or mis-shaped
    known = find_architecture(inferred)
    if known is not None and known != wanted.name:
        raise CheckpointError(
            f"{path}: holds {known} weights, not {wanted.name} as given with --arch"
        )
    return wanted


def detect_format(path: str | os.PathLike[str]) -> CheckpointFormat:
    """Which checkpoint format ``path`` holds, without loading weights where possible."""
    p = Path(path)
    if p.is_dir():
        if is_bundle(p):
            raise CheckpointError(
                f"{p}: is a model bundle (manifest.json); bundles are read by the ONNX "
                "runtime, not as PyTorch checkpoints"
            )
        if (p / "config.json").is_file():
            return "huggingface"
        raise CheckpointError(
            f"{p}: a directory without config.json; expected a Hugging Face ChineseCLIPModel "
            "directory or a checkpoint file"
        )
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    return "official"  # refined to "cnclip" once the file is read


def load_checkpoint(
    path: str | os.PathLike[str],
    arch: str | None = None,
    *,
    device: str | torch.device = "cpu",
) -> LoadedCheckpoint:
    """Load any supported checkpoint into a :class:`ChineseCLIP` in eval mode.

    Args:
        path: an official ``.pt``, one of ours, or a Hugging Face directory.
        arch: an official architecture name; when given it must agree with what
            the file holds (its own config, or its weights' shapes).
        device: where the model goes (``"cpu"``, ``"cuda"``).

    Raises:
        CheckpointError: for any problem with the file, in one line.
        ConfigError: for an unknown ``arch``.
    """
    p = Path(path)
    fmt = detect_format(p)
    wanted = get_config(arch) if arch else None
    metadata: dict[str, Any] = {}
    config: ModelConfig | None = None
    if fmt == "huggingface":
        from model.hf import hf_config, hf_to_official, load_hf_weights

        config = hf_config(p)
        state = _clean_state_dict(hf_to_official(load_hf_weights(p)), p)
    else:
        raw = torch_load(p)
        if not isinstance(raw, dict):
            raise CheckpointError(f"{p}: not a checkpoint dict (found {type(raw).__name__})")
        if raw.get("format") == FORMAT_TAG:
            fmt = "cnclip"
            version = raw.get("format_version")
            if not isinstance(version, int) or version > FORMAT_VERSION:
                raise CheckpointError(
                    f"{p}: checkpoint format version {version!r} is newer than this cnclip "
                    f"understands ({FORMAT_VERSION}); upgrade cnclip"
                )
            try:
                config = ModelConfig.from_dict(raw["model_config"])
            except (KeyError, ConfigError) as exc:
                raise CheckpointError(f"{p}: its model_config is invalid ({exc})") from exc
        if "state_dict" in raw:
            state = _clean_state_dict(raw["state_dict"], p)
            metadata = {k: raw[k] for k in ("epoch", "step", "name") if k in raw}
        elif all(isinstance(v, torch.Tensor) for v in raw.values()):
            state = _clean_state_dict(raw, p)  # a bare state dict
        else:
            raise CheckpointError(
                f"{p}: no state_dict in the checkpoint (keys: {_preview(map(str, raw))})"
            )
        if config is None:
            config = _official_config(state, wanted, p)
    if wanted is not None and not _same_shapes(wanted, config):
        raise CheckpointError(
            f"{p}: holds {find_architecture(config) or 'a custom architecture'}, "
            f"not {wanted.name} as given with --arch"
        )
    if wanted is not None and fmt != "cnclip":
        config = wanted
    state = check_state_dict(state, config, p)
    with torch.device("meta"):
        model = ChineseCLIP(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device)
    return LoadedCheckpoint(model.eval(), config, fmt, p, metadata)


def load_model(
    path: str | os.PathLike[str], arch: str | None = None, *, device: str | torch.device = "cpu"
) -> ChineseCLIP:
    """Shortcut for ``load_checkpoint(path, arch, device=device).model``."""
    return load_checkpoint(path, arch, device=device).model


def save_checkpoint(
    model: ChineseCLIP,
    path: str | os.PathLike[str],
    *,
    epoch: int = 0,
    step: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write our checkpoint format atomically (a temporary file renamed into place).

    The file carries the model config and the official key layout, so
    ``cn_clip``'s own loader reads it as an official checkpoint.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "format": FORMAT_TAG,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "name": model.config.struct_name,
        "epoch": int(epoch),
        "step": int(step),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if extra:
        payload.update(extra)
    with atomic_path(target) as tmp:
        torch.save(payload, tmp)
    return target
