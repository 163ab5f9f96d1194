"""The typed configuration of a training run, both stages included.

A run is described by one YAML file (see ``trainer/recipes/``) plus optional
``key=value`` overrides on the command line (``stages.0.lr=1e-4``,
``stages.lit.steps=100``, ``data.workers=0``). Every key is checked: unknown
keys, wrong types and inconsistent values are a :class:`ConfigError` naming
the key, before anything is loaded.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from runtime.errors import ConfigError
from runtime.templates import CAPTION_TEMPLATES

if typing.TYPE_CHECKING:
    from model.configs import ModelConfig
    from model.init import InitReport
    from model.modeling import ChineseCLIP

DataKind = Literal["official", "lmdb", "wds", "catalog", "imagefolder"]


@dataclass
class ModelSection:
    """What to train and where its weights start.

    ``arch`` names an official architecture (RN50, ViT-B-16, ...); ``config``
    gives a custom one in the layout of ``ModelConfig.to_dict()``. Weights:
    ``init`` is a whole-model checkpoint (official ``.pt``, Hugging Face
    directory, or ours); or ``init_image`` (a whole-model checkpoint whose
    ``visual.*`` weights are taken) and/or ``init_text`` (a Chinese
    RoBERTa/BERT in Hugging Face format). Towers without weights start from
    the official random initialisation. ``channels_last`` stores the image
    tower's convolutions (and feeds its images) in NHWC order, which speeds
    up ResNet towers on CPUs and GPUs alike.
    """

    arch: str | None = None
    config: dict[str, Any] | None = None
    init: str | None = None
    init_image: str | None = None
    init_text: str | None = None
    allow_missing: bool = False
    grad_checkpointing: bool = False
    patch_dropout: float = 0.0
    channels_last: bool = False

    def model_config(self) -> ModelConfig:
        """The architecture: ``arch``'s official config, or ``config``."""
        from model.configs import ModelConfig, get_config

        if self.arch is not None:
            return get_config(self.arch)
        assert self.config is not None  # checked when the run config is read
        return ModelConfig.from_dict(self.config)

    def initial_model(self) -> tuple[ChineseCLIP, InitReport]:
        """The model with its starting weights (:func:`model.init.build_initial_model`)."""
        from model.init import build_initial_model

        return build_initial_model(
            self.model_config(),
            init=self.init,
            init_image=self.init_image,
            init_text=self.init_text,
            allow_missing=self.allow_missing,
            name=self.arch or "config",
        )


@dataclass
class DataSection:
    """A dataset: its ``kind``, ``path`` and the options of that kind.

    ``split``: official format. ``class_names`` and ``templates``: ImageFolder
    (captions are a random template filled with the class name). ``root``:
    catalogs (image paths are relative to it; default the catalog's folder).
    ``num_samples``: WebDataset shards without a manifest. ``max_samples``:
    use only the first pairs (a quick validation subset).
    """

    kind: DataKind = "official"
    path: str = ""
    split: str = "train"
    class_names: str | None = None
    root: str | None = None
    templates: list[str] = field(default_factory=lambda: list(CAPTION_TEMPLATES))
    num_samples: int | None = None
    max_samples: int | None = None


@dataclass
class AugmentSection:
    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (0.75, 4 / 3)
    hflip: float = 0.0
    autoaugment: bool = False
    pad_crop: int = 0


@dataclass
class TrainDataSection(DataSection):
    workers: int = 2
    shuffle_buffer: int = 2000
    augment: AugmentSection = field(default_factory=AugmentSection)


@dataclass
class ValidationSection:
    """Zero-shot validation every ``every`` steps (0: never between) and at each stage's end.

    ``task``: ``retrieval`` (recall@1/5/10 both ways on image-text pairs) or
    ``zeroshot`` (classification accuracy on an ImageFolder with class names,
    prompt-ensembled over ``data.templates``).
    """

    data: DataSection | None = None
    task: Literal["retrieval", "zeroshot"] = "retrieval"
    every: int = 0
    batch_size: int = 256


@dataclass
class StageSection:
    """One stage: ``lock_image`` freezes the image tower (LiT), BatchNorm included.

    ``batch_size`` is the global contrastive batch of one optimizer step, split
    over ranks and ``accum_freq`` micro-batches. Length: ``steps`` or ``epochs``.
    """

    name: str = ""
    lock_image: bool = False
    lr: float = 5e-5
    batch_size: int = 128
    steps: int | None = None
    epochs: float | None = None
    warmup: int = 0
    weight_decay: float = 0.001
    accum_freq: int = 1


@dataclass
class OptimSection:
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float | None = None


@dataclass
class LossSection:
    multi_positive: bool = False


@dataclass
class RunConfig:
    run_dir: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    data: TrainDataSection = field(default_factory=TrainDataSection)
    stages: list[StageSection] = field(default_factory=list)
    validation: ValidationSection = field(default_factory=ValidationSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    save_every: int = 500
    resume: str = "auto"
    torch_threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


# ------------------------------------------------------------------- building

T = TypeVar("T")


def _plain(value: Any) -> Any:
    """Tuples to lists, so the dict dumps to YAML/JSON and compares after a round trip."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{where}: must be one of {', '.join(map(repr, args))}, not {value!r}"
            )
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(
            _convert(v, a, f"{where}[{i}]")
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp in (int, bool, str):
        if type(value) is not tp:
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {where}")  # a bug, not user input


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(map(str, data)) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (valid keys here: {', '.join(names)})")
    kwargs = {
        name: _convert(value, hints[name], f"{where}.{name}" if where else name)
        for name, value in data.items()
    }
    return cls(**kwargs)


def _apply_override(tree: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not key=value (for example stages.0.lr=1e-4)")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML") from exc
    node: Any = tree
    parts = key.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            index = _list_index(node, part, key)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"override {key}: {'.'.join(parts[:depth])} is not a mapping")


def _list_index(items: list[Any], part: str, key: str) -> int:
    if part.lstrip("-").isdigit():
        index = int(part)
        if -len(items) <= index < len(items):
            return index
        raise ConfigError(f"override {key}: index {index} is out of range ({len(items)} items)")
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    raise ConfigError(f"override {key}: no item named {part!r}")


def _check(config: RunConfig) -> None:
    if not config.run_dir:
        raise ConfigError("run_dir: required (the directory for config, metrics and checkpoints)")
    model = config.model
    if (model.arch is None) == (model.config is None):
        raise ConfigError("model: give exactly one of model.arch or model.config")
    if model.init and (model.init_image or model.init_text):
        raise ConfigError(
            "model.init loads the whole model; do not combine it with init_image/text"
        )
    if not 0.0 <= model.patch_dropout < 1.0:
        raise ConfigError(f"model.patch_dropout: must be in [0, 1), not {model.patch_dropout}")
    if not config.data.path:
        raise ConfigError("data.path: required")
    if config.data.workers < 0:
        raise ConfigError("data.workers: must be >= 0")
    if not config.stages:
        raise ConfigError("stages: at least one stage is required")
    seen: set[str] = set()
    for i, stage in enumerate(config.stages):
        where = f"stages[{i}]"
        if not stage.name:
            raise ConfigError(f"{where}.name: required")
        if stage.name in seen:
            raise ConfigError(f"{where}.name: {stage.name!r} is used twice")
        seen.add(stage.name)
        if (stage.steps is None) == (stage.epochs is None):
            raise ConfigError(f"{where}: give exactly one of steps or epochs")
        if (stage.steps is not None and stage.steps < 1) or (stage.epochs or 1) <= 0:
            raise ConfigError(f"{where}: steps/epochs must be positive")
        if stage.lr <= 0 or stage.batch_size < 1 or stage.accum_freq < 1 or stage.warmup < 0:
            raise ConfigError(f"{where}: lr, batch_size and accum_freq must be positive")
    validation = config.validation
    data = validation.data
    if data is not None and validation.task == "zeroshot" and data.kind != "imagefolder":
        raise ConfigError("validation: the zeroshot task needs data.kind imagefolder")
    if config.log_every < 1 or config.save_every < 0 or validation.every < 0:
        raise ConfigError("log_every must be >= 1; save_every and validation.every >= 0")


def build_config(tree: dict[str, Any]) -> RunConfig:
    """A checked :class:`RunConfig` from a plain mapping (a parsed YAML file)."""
    if not isinstance(tree, dict):
        raise ConfigError("a run config is a mapping of keys to values")
    config = _build(RunConfig, tree, "")
    _check(config)
    return config


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config, apply ``key=value`` overrides, check everything."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{p}: no such config file") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read ({exc})") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: a run config is a mapping of keys to values")
        tree = loaded or {}
    for item in overrides:
        _apply_override(tree, item)
    return build_config(tree)
