"""What is evaluated: a model bundle (no torch) or a PyTorch checkpoint, behind one protocol.

:func:`open_model` tells them apart: a directory with a ``manifest.json`` is a bundle
written by ``cnclip export``; anything else is a checkpoint (an official
``clip_cn_<arch>.pt``, one of ours, or a Hugging Face directory), loaded through the
trainer, which imports torch only then.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from runtime.bundle_manifest import is_bundle
from runtime.errors import CnClipError
from runtime.identity import ModelRef
from runtime.images import PreprocessConfig
from runtime.retrieval import normalize
from runtime.tokenizer import ChineseTokenizer

FloatArray = npt.NDArray[np.float32]


class EvalModel(Protocol):
    """The two towers, their tokenizer and preprocessing; outputs are unit rows."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def tokenizer(self) -> ChineseTokenizer: ...

    @property
    def preprocess_config(self) -> PreprocessConfig: ...

    @property
    def logit_scale(self) -> float: ...

    def encode_token_ids(self, ids: npt.NDArray[np.int64]) -> FloatArray: ...

    def encode_pixels(self, pixels: FloatArray) -> FloatArray: ...


@dataclass(frozen=True)
class ModelInfo:
    """How a model is named in reports: ``label`` (unique within a comparison), ``kind``
    (``checkpoint`` or ``bundle``), ``precision`` and the rest of its description."""

    label: str
    kind: str
    path: str
    precision: str
    architecture: str
    backend: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kind": self.kind,
            "path": self.path,
            "precision": self.precision,
            "architecture": self.architecture,
            "backend": self.backend,
            **self.details,
        }


class BundleModel:
    """A bundle's ONNX (or TensorRT, torch-cuda) towers through :mod:`runtime`."""

    def __init__(self, bundle: Any, label: str, backend: str) -> None:
        self.bundle = bundle
        manifest = bundle.manifest
        precision = manifest.precision
        self._info = ModelInfo(
            label=label,
            kind="bundle",
            path=str(bundle.directory),
            precision=precision,
            architecture=manifest.architecture or "custom",
            backend=backend,
            details={"model_id": bundle.identity.model_id, "bundle_id": bundle.bundle_id},
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def tokenizer(self) -> ChineseTokenizer:
        tokenizer: ChineseTokenizer = self.bundle.tokenizer
        return tokenizer

    @property
    def preprocess_config(self) -> PreprocessConfig:
        config: PreprocessConfig = self.bundle.preprocess_config
        return config

    @property
    def logit_scale(self) -> float:
        return float(self.bundle.logit_scale)

    def encode_token_ids(self, ids: npt.NDArray[np.int64]) -> FloatArray:
        return normalize(self.bundle.encode_token_ids(ids))

    def encode_pixels(self, pixels: FloatArray) -> FloatArray:
        return normalize(self.bundle.encode_pixels(pixels))


class CheckpointModel:
    """A PyTorch checkpoint on the CPU or a CUDA device (imports torch)."""

    def __init__(self, path: Path, label: str, arch: str | None, device: str) -> None:
        import torch

        from model.checkpoints import load_checkpoint
        from model.embed import resolve_device

        self._torch = torch
        self.device = resolve_device(device)  # fail before reading gigabytes
        loaded = load_checkpoint(path, arch, device="cpu")
        self.model = loaded.model.eval().to(self.device)
        config = loaded.config
        self._tokenizer = ChineseTokenizer(context_length=config.context_length)
        self._preprocess = PreprocessConfig(image_size=config.vision.image_size)
        self._logit_scale = float(self.model.logit_scale.detach().exp().cpu())
        self._info = ModelInfo(
            label=label,
            kind="checkpoint",
            path=str(path),
            precision="fp32",
            architecture=config.name,
            backend=f"torch-{self.device.type}",
            details={"checkpoint_format": loaded.format},
        )
        self._identity: ModelRef | None = None

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def identity(self) -> ModelRef:
        """The checkpoint's model id (:mod:`model.identity`), the one its bundles carry;
        computed from the weights on first use."""
        if self._identity is None:
            from model.identity import model_id

            digest = model_id(self.model, vocab_sha256=self._tokenizer.vocab_sha256)
            self._identity = ModelRef(model_id=digest, precision="fp32")
        return self._identity

    @property
    def tokenizer(self) -> ChineseTokenizer:
        return self._tokenizer

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self._preprocess

    @property
    def logit_scale(self) -> float:
        return self._logit_scale

    def encode_token_ids(self, ids: npt.NDArray[np.int64]) -> FloatArray:
        with self._torch.inference_mode():
            out = self.model.encode_text(self._torch.from_numpy(ids).to(self.device))
        return normalize(out.float().cpu().numpy())

    def encode_pixels(self, pixels: FloatArray) -> FloatArray:
        with self._torch.inference_mode():
            out = self.model.encode_image(self._torch.from_numpy(pixels).to(self.device))
        return normalize(out.float().cpu().numpy())


def default_label(path: str | os.PathLike[str], precision: str | None = None) -> str:
    """The file or directory name, with the precision unless the name says it already."""
    name = Path(path).name or str(path)
    return name if not precision or precision in name else f"{name} ({precision})"


def open_model(
    path: str | os.PathLike[str],
    *,
    label: str | None = None,
    arch: str | None = None,
    backend_options: Any = None,
    device: str = "cpu",
) -> EvalModel:
    """A bundle directory or a checkpoint, ready to encode.

    Args:
        path: a bundle directory (with ``manifest.json``) or a checkpoint.
        label: the name in reports (default: the file or directory name and, for a
            bundle, its precision).
        arch: for a checkpoint, the official architecture it must hold.
        backend_options: for a bundle, :class:`runtime.sessions.BackendOptions`
            (default: ONNX Runtime on the CPU).
        device: for a checkpoint, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        CnClipError: a missing path, an unreadable bundle or checkpoint (one line).
    """
    p = Path(path)
    if not p.exists():
        raise CnClipError(f"{p}: no such model (give a bundle directory or a checkpoint)")
    if is_bundle(p):
        from runtime.bundle import load_bundle
        from runtime.sessions import BackendOptions

        options = backend_options or BackendOptions()
        bundle = load_bundle(p, options=options)
        precision = bundle.manifest.precision
        return BundleModel(bundle, label or default_label(p, precision), options.backend)
    if p.is_dir() and not (p / "config.json").is_file():
        raise CnClipError(
            f"{p}: a directory with neither manifest.json (a bundle) nor config.json "
            "(a Hugging Face checkpoint)"
        )
    return CheckpointModel(p, label or default_label(p), arch, device)


def embed(
    path: str | os.PathLike[str],
    *,
    texts: Sequence[str] | None = None,
    images: Sequence[str | os.PathLike[str]] | None = None,
    arch: str | None = None,
    device: str = "cpu",
    backend_options: Any | None = None,
    batch_size: int | None = None,
    max_pixels: int | None = None,
    progress: bool = False,
) -> tuple[FloatArray, str]:
    """``cnclip embed``: the unit embeddings of ``texts`` or ``images`` by the bundle or
    checkpoint at ``path``, and the model's name.

    A bundle runs through :mod:`runtime` on ``backend_options`` (no torch); a checkpoint
    through :class:`model.embed.Embedder` on ``device``. The first image that cannot be
    read stops the run (InvalidImageError naming it).

    Raises:
        CnClipError: neither or both of ``texts`` and ``images``, a missing or unreadable
            model, backend options given for a checkpoint, an unreadable image.
    """
    if (texts is None) == (images is None):
        raise CnClipError("give either texts or images to embed")
    path = Path(path)
    if is_bundle(path):
        from runtime.bundle import load_bundle

        bundle = load_bundle(path, options=backend_options)
        size = batch_size or (64 if texts is not None else 16)
        items: list[Any] = list(texts if texts is not None else images or [])
        encode: Any = bundle.encode_texts if texts is not None else bundle.encode_images
        parts = [encode(items[i : i + size]) for i in range(0, len(items), size)]
        vectors = np.concatenate(parts) if parts else np.zeros((0, bundle.embed_dim), np.float32)
        return vectors, f"{bundle.manifest.architecture or 'custom'} bundle"
    if backend_options is not None:
        raise CnClipError(f"{path}: a checkpoint; backend options apply to bundles only")
    from model.embed import DEFAULT_IMAGE_BATCH, DEFAULT_TEXT_BATCH, Embedder
    from runtime.images import DEFAULT_MAX_PIXELS

    embedder = Embedder.from_checkpoint(
        path, arch, device=device, max_pixels=max_pixels or DEFAULT_MAX_PIXELS
    )
    if texts is not None:
        out = embedder.embed_texts(
            texts, batch_size=batch_size or DEFAULT_TEXT_BATCH, progress=progress
        )
    else:
        out = embedder.embed_images(
            list(images or []), batch_size=batch_size or DEFAULT_IMAGE_BATCH, progress=progress
        )
    return out, embedder.model.config.name
