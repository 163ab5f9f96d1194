"""The model bundle's ``manifest.json``: one class that the exporter writes and every reader reads.

Format 2 adds ``model_id`` (:mod:`runtime.identity`); format-1 manifests still load
(their model id is unknown, and they are identified by the sha256 of the file, as before).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import CnClipError
from runtime.files import file_sha256
from runtime.identity import ModelRef
from runtime.manifests import MANIFEST, content_sha256, read_json, write_json

FORMAT = "cnclip-bundle"
FORMAT_VERSION = 2
TOWERS = ("text", "image")
# Left out of the bundle id: when it was written and what one machine measured.
VOLATILE = ("created", "parity")


class BundleError(CnClipError):
    """A model bundle that is missing, incomplete, corrupted or inconsistent."""


@dataclass(frozen=True)
class FileRef:
    """A file of the bundle (relative path) and its sha256."""

    file: str
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256}


@dataclass(frozen=True)
class TowerSpec:
    """One exported tower: its graph, the graph's input and output names, its precision."""

    file: str
    sha256: str
    input: str
    output: str
    precision: str
    dynamic_axes: Mapping[str, list[str]] = field(default_factory=dict)
    external_data: FileRef | None = None  # weights past protobuf's 2 GB, beside the graph

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "file": self.file,
            "sha256": self.sha256,
            "input": self.input,
            "output": self.output,
            "precision": self.precision,
            "dynamic_axes": {k: list(v) for k, v in self.dynamic_axes.items()},
        }
        if self.external_data is not None:
            out["external_data"] = self.external_data.to_dict()
        return out


@dataclass(frozen=True)
class ImageSpec:
    """How images are prepared: the official squash resize to ``size``, then normalize."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "bicubic-squash"  # the whole image to N x N, as the official code

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "resize": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass(frozen=True)
class BundleManifest:
    """Everything needed to use the towers exactly as the model was trained.

    ``torch`` (the ``torch.export`` programs) and ``engines`` (TensorRT engines, one entry
    per GPU model and TensorRT version) are optional extras, kept as their JSON objects.
    """

    architecture: str | None
    model_config: Mapping[str, Any]
    embed_dim: int
    context_length: int
    image: ImageSpec
    vocab: FileRef
    logit_scale: float
    precision: str
    towers: Mapping[str, TowerSpec]
    source: Mapping[str, Any]
    parity: Mapping[str, Any]
    created: str
    model_id: str | None = None
    torch: Mapping[str, Any] | None = None
    engines: tuple[Mapping[str, Any], ...] = ()
    format_version: int = FORMAT_VERSION

    # -- writing ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "format_version": self.format_version,
            "model_id": self.model_id,
            "architecture": self.architecture,
            "model_config": dict(self.model_config),
            "embed_dim": self.embed_dim,
            "context_length": self.context_length,
            "image": self.image.to_dict(),
            "tokenizer": {"vocab": self.vocab.file, "vocab_sha256": self.vocab.sha256},
            "logit_scale": self.logit_scale,
            "precision": self.precision,
            "towers": {name: tower.to_dict() for name, tower in self.towers.items()},
            "source": dict(self.source),
            "parity": dict(self.parity),
            "created": self.created,
        }
        if self.torch is not None:
            out["torch"] = dict(self.torch)
        if self.engines:
            out["engines"] = [dict(e) for e in self.engines]
        return out

    def write(self, directory: Path) -> Path:
        return write_json(Path(directory) / MANIFEST, self.to_dict())

    def replace(self, **changes: Any) -> BundleManifest:
        return dataclasses.replace(self, **changes)

    # -- identity -----------------------------------------------------------------------

    @functools.cached_property
    def bundle_id(self) -> str:
        """The content identity: the same files and settings give the same id (computed
        once: cache keys use it on every request)."""
        return content_sha256(self.to_dict(), exclude=VOLATILE)

    def ref(self, file_sha256: str | None = None) -> ModelRef:
        """What an index built with this bundle records (``file_sha256``: the manifest
        file's digest, the identity of format 1)."""
        parity = {
            key: float(self.parity[key])
            for key in ("text_min_cosine", "image_min_cosine")
            if isinstance(self.parity.get(key), int | float)
        }
        return ModelRef(
            model_id=self.model_id,
            bundle_id=self.bundle_id,
            bundle_sha256=file_sha256,
            precision=self.precision,
            parity=parity or None,
        )

    # -- reading ------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: Path) -> BundleManifest:
        """The manifest of ``data`` (read from ``where``); BundleError naming the field
        that is missing or malformed."""
        try:
            image = data["image"]
            towers = {name: _tower(data["towers"][name]) for name in TOWERS}
            return cls(
                architecture=None
                if data.get("architecture") is None
                else str(data["architecture"]),
                model_config=dict(data.get("model_config") or {}),
                embed_dim=int(data["embed_dim"]),
                context_length=int(data["context_length"]),
                image=ImageSpec(
                    size=int(image["size"]),
                    mean=_triple(image["mean"]),
                    std=_triple(image["std"]),
                    resize=str(image.get("resize", "bicubic-squash")),
                ),
                vocab=FileRef(
                    str(data["tokenizer"]["vocab"]), str(data["tokenizer"]["vocab_sha256"])
                ),
                logit_scale=float(data["logit_scale"]),
                precision=str(data["precision"]),
                towers=towers,
                source=dict(data.get("source") or {}),
                parity=dict(data.get("parity") or {}),
                created=str(data.get("created", "")),
                model_id=None if data.get("model_id") is None else str(data["model_id"]),
                torch=dict(data["torch"]) if isinstance(data.get("torch"), Mapping) else None,
                engines=tuple(e for e in data.get("engines") or () if isinstance(e, Mapping)),
                format_version=int(data["format_version"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            what = f"entry {exc.args[0]!r}" if isinstance(exc, KeyError) else f"content ({exc})"
            raise BundleError(
                f"{where}: the manifest's {what} is missing or malformed; export the bundle again"
            ) from exc

    @classmethod
    def read(cls, directory: str | Path) -> BundleManifest:
        """The checked manifest of a bundle directory (no other file is opened)."""
        path = Path(directory)
        if not path.is_dir():
            raise BundleError(
                f"{path}: not a model bundle directory (write one with cnclip export)"
            )
        data = read_json(
            path / MANIFEST,
            format=FORMAT,
            version=FORMAT_VERSION,
            error=BundleError,
            what="model bundle",
            fix="export the bundle again",
        )
        return cls.from_dict(data, path / MANIFEST)


def _triple(values: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return (a, b, c)


def _tower(raw: Mapping[str, Any]) -> TowerSpec:
    data = raw.get("external_data")
    return TowerSpec(
        file=str(raw["file"]),
        sha256=str(raw["sha256"]),
        input=str(raw["input"]),
        output=str(raw["output"]),
        precision=str(raw["precision"]),
        dynamic_axes={str(k): list(v) for k, v in (raw.get("dynamic_axes") or {}).items()},
        external_data=None if data is None else FileRef(str(data["file"]), str(data["sha256"])),
    )


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a bundle directory (it holds a manifest), not a checkpoint."""
    return (Path(path) / MANIFEST).is_file()


def bundle_ref(directory: str | Path) -> ModelRef:
    """What an index built with the bundle at ``directory`` records, without opening it."""
    path = Path(directory)
    manifest = BundleManifest.read(path)
    return manifest.ref(file_sha256(path / MANIFEST))
