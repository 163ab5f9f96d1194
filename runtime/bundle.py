"""Model bundles: a self-describing directory the index and the service read, without torch.

A bundle holds ``manifest.json``, ``text.onnx``, ``image.onnx`` and ``vocab.txt``;
optionally ``text.pt2``/``image.pt2`` (``torch.export`` programs for the
torch-cuda backend) and ``engines/<gpu>_trt<version>/`` (TensorRT engines built
at export time on that GPU model and TensorRT version).
The manifest records everything needed to use the towers exactly as the model
was trained: architecture, embedding size, image size and normalisation,
context length, the vocabulary's sha256, the logit scale, each tower's file
(with its sha256), precision, input and output names, the source checkpoint's
sha256 and the parity measured against PyTorch when the bundle was written.

:func:`load_bundle` checks all of it before anything runs: a missing or
changed file, a vocabulary that is not the one the model was exported with,
or a manifest of an unknown version is refused with a message that says what
is wrong and what to do. Only the files the chosen backend runs are hashed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from runtime.bundle_manifest import BundleError, BundleManifest, FileRef, TowerSpec
from runtime.errors import ConfigError
from runtime.files import file_sha256
from runtime.identity import ModelRef
from runtime.images import PreprocessConfig, load_image, preprocess_batch
from runtime.manifests import MANIFEST
from runtime.sessions import (
    ONNX_BACKENDS,
    TORCH_BACKENDS,
    BackendOptions,
    EncoderSession,
    open_session,
)
from runtime.tokenizer import ChineseTokenizer

__all__ = ["MANIFEST", "Bundle", "BundleError", "BundleManifest", "load_bundle"]


class Bundle:
    """A loaded bundle: tokenizer, preprocessing and the two encoder sessions.

    ``encode_texts(texts)`` and ``encode_images(images)`` return L2-normalized
    float32 ``[n, embed_dim]`` rows.
    """

    def __init__(
        self,
        directory: Path,
        manifest: BundleManifest,
        text: EncoderSession,
        image: EncoderSession,
        tokenizer: ChineseTokenizer,
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.text_session = text
        self.image_session = image
        self.tokenizer = tokenizer
        self.identity: ModelRef = manifest.ref(file_sha256(directory / MANIFEST))
        self.preprocess_config = preprocess_config(manifest, directory)

    @property
    def embed_dim(self) -> int:
        return self.manifest.embed_dim

    @property
    def logit_scale(self) -> float:
        """The exponentiated scale: zero-shot logits are ``logit_scale * cosine``."""
        return self.manifest.logit_scale

    @property
    def bundle_id(self) -> str:
        """The bundle's content identity (:mod:`runtime.identity`): cache keys, metrics."""
        return self.manifest.bundle_id  # computed once per manifest

    def encode_token_ids(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return self.text_session.run(np.ascontiguousarray(ids, dtype=np.int64))

    def encode_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Texts -> ``[n, d]``; rows are padded to the longest text, not to 52 tokens."""
        if not texts:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        ids = self.tokenizer(list(texts), pad_to="longest").ids
        return self.encode_token_ids(ids)

    def encode_pixels(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self.image_session.run(np.ascontiguousarray(pixels, dtype=np.float32))

    def encode_images(
        self, images: Sequence[Image.Image | str | Path | bytes]
    ) -> npt.NDArray[np.float32]:
        """Decoded images, paths or encoded bytes -> ``[n, d]``."""
        if not images:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        decoded = [
            item
            if isinstance(item, Image.Image)
            else load_image(item, max_pixels=self.preprocess_config.max_pixels)
            for item in images
        ]
        return self.encode_pixels(preprocess_batch(decoded, self.preprocess_config))


def _checked(path: Path, entry: FileRef | Mapping[str, Any] | None, what: str) -> Path:
    """``entry``'s file inside ``path``, present and with the manifest's sha256."""
    try:
        if isinstance(entry, FileRef):
            file, wanted = path / entry.file, entry.sha256
        else:
            file, wanted = path / str(entry["file"]), str(entry["sha256"])  # type: ignore[index]
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{path}: the manifest's {what} entry is incomplete ({exc})") from exc
    if not file.is_file():
        raise BundleError(f"{path}: the {what} {file.name} is missing")
    if file_sha256(file) != wanted:
        raise BundleError(
            f"{file}: sha256 differs from the manifest (corrupted or replaced); "
            "export the bundle again"
        )
    return file


def _checked_graph(path: Path, name: str, tower: TowerSpec) -> Path:
    """A tower's ONNX graph, and its external weights file when it has one, both checked."""
    if tower.external_data is not None:
        _checked(path, tower.external_data, f"{name} tower's weights")
    return _checked(path, FileRef(tower.file, tower.sha256), f"{name} tower")


def _profiles(manifest: BundleManifest) -> dict[str, Any]:
    from runtime.tensorrt import image_profile, text_profile

    return {
        "text": text_profile(manifest.context_length),
        "image": image_profile(manifest.image.size),
    }


def _tower_files(path: Path, manifest: BundleManifest, options: BackendOptions) -> dict[str, Path]:
    """The file each tower runs from on ``options.backend``, checked against the manifest."""
    towers = manifest.towers
    if options.backend in ONNX_BACKENDS:
        return {name: _checked_graph(path, name, t) for name, t in towers.items()}
    if options.backend in TORCH_BACKENDS:
        if manifest.torch is None:
            raise BundleError(
                f"{path}: this bundle has no PyTorch programs for backend {options.backend}; "
                "export it with cnclip export --torch"
            )
        programs = manifest.torch.get("towers", {})
        return {
            name: _checked(path, programs.get(name), f"PyTorch {name} program") for name in towers
        }
    if manifest.precision == "int8":
        raise ConfigError(
            f"{path}: TensorRT runs fp32 and fp16 bundles; this one is int8 (for the CPU)"
        )
    from runtime.tensorrt import cached_engine, current_engine_key, default_cache_dir

    key = current_engine_key(options.device)
    for engine in manifest.engines:
        if engine.get("key") == key:
            return {
                name: _checked(path, engine.get("towers", {}).get(name), f"TensorRT {name} engine")
                for name in towers
            }
    # No engine for this GPU and TensorRT: build one from the ONNX graph, once per machine.
    cache = options.cache_dir or default_cache_dir()
    return {
        name: cached_engine(
            _checked_graph(path, name, t),
            t.sha256,
            options.profiles[name],
            cache,
            name,
            device=options.device,
        )
        for name, t in towers.items()
    }


def load_bundle(
    directory: str | Path,
    *,
    backend: str = "onnxruntime",
    threads: int | None = None,
    options: BackendOptions | None = None,
) -> Bundle:
    """Check a bundle, then open its sessions on a backend.

    ``options`` (a :class:`runtime.sessions.BackendOptions`) says everything about
    the backend; ``backend`` and ``threads`` are the short form for the CPU.

    Raises:
        BundleError: missing, changed or foreign files, an unknown format version.
        ConfigError: an unknown backend, or one that is not installed.
    """
    path = Path(directory)
    manifest = BundleManifest.read(path)
    vocab = path / manifest.vocab.file
    if not vocab.is_file():
        raise BundleError(f"{path}: the vocabulary {vocab.name} is missing")
    tokenizer = ChineseTokenizer(vocab, context_length=manifest.context_length)
    if tokenizer.vocab_sha256 != manifest.vocab.sha256:
        raise BundleError(
            f"{vocab}: not the vocabulary the model was exported with (sha256 differs)"
        )
    options = options or BackendOptions(backend=backend, threads=threads)
    gpu = options.backend in ("tensorrt", "onnxruntime-tensorrt")
    if gpu and not options.profiles:
        options = dataclasses.replace(options, profiles=_profiles(manifest))
    files = _tower_files(path, manifest, options)
    sessions = {
        name: open_session(
            files[name], tower.input, tower.output, options, options.profiles.get(name)
        )
        for name, tower in manifest.towers.items()
    }
    return Bundle(path, manifest, sessions["text"], sessions["image"], tokenizer)


def preprocess_config(manifest: BundleManifest, path: Path) -> PreprocessConfig:
    """How the bundle's image tower wants its pixels, from its manifest alone.

    Raises:
        BundleError: the manifest's image entry is invalid.
    """
    try:
        return PreprocessConfig(
            image_size=manifest.image.size, mean=manifest.image.mean, std=manifest.image.std
        )
    except (ValueError, ConfigError) as exc:
        raise BundleError(f"{path}: the manifest's image entry is invalid ({exc})") from exc
