"""Which embedding space a vector belongs to, and the one check of a bundle against an index.

Two identities, kept apart on purpose:

- the **model id** names an embedding space: the sha256 of the architecture, the
  tokenizer, the image preprocessing and the float32 weights (:func:`model.identity.model_id`
  computes it from a PyTorch model). Every bundle exported from one checkpoint has the
  same model id, whatever its precision or backend, and so does a re-export of the same
  weights;
- the **bundle id** names one bundle's files: the sha256 of its manifest's content
  without the fields that change on every export (``created``) or with the machine
  that measured it (``parity``), so re-exporting identical weights gives the same id.

Vectors of one model id can be compared, whichever bundle made them: an index built with
a checkpoint's fp16 bundle on a GPU is served by its int8 bundle on CPU replicas.
:func:`check_serves` is the single place that decides it, for the service, the CLI,
evaluation and index updates. Artifacts written before model ids existed (bundle and
index format 1) carry only the sha256 of the bundle's manifest file; they are compared
by that, as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime.errors import CnClipError


class ModelMismatchError(CnClipError):
    """Vectors of two different models would be compared (an index and a bundle)."""


def _short(value: str | None) -> str:
    return "unknown" if value is None else value[:12]


@dataclass(frozen=True)
class ModelRef:
    """What an artifact records of the model whose vectors it holds or makes.

    ``model_id``: the embedding space (None for artifacts of format 1).
    ``bundle_id``: the bundle's content identity (None for format 1).
    ``bundle_sha256``: the sha256 of the bundle's ``manifest.json`` file, the identity
    of format 1, still recorded so that old and new artifacts can be compared.
    ``precision`` and ``parity`` (the minimum text and image cosines against PyTorch
    measured at export) say what the bundle costs in accuracy.
    """

    model_id: str | None = None
    bundle_id: str | None = None
    bundle_sha256: str | None = None
    precision: str | None = None
    parity: Mapping[str, float] | None = None

    @property
    def known(self) -> bool:
        return self.model_id is not None or self.bundle_sha256 is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "bundle_id": self.bundle_id,
            "bundle_sha256": self.bundle_sha256,
            "precision": self.precision,
            "parity": None if self.parity is None else dict(self.parity),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ModelRef:
        if not data:
            return cls()
        parity = data.get("parity")

        def text(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        return cls(
            model_id=text("model_id"),
            bundle_id=text("bundle_id"),
            bundle_sha256=text("bundle_sha256"),
            precision=text("precision"),
            parity=(
                {str(k): float(v) for k, v in parity.items()}
                if isinstance(parity, Mapping)
                else None
            ),
        )

    def describe(self) -> str:
        """One line: the model, the bundle and its measured parity."""
        bundle = self.bundle_id or self.bundle_sha256
        parts = [
            f"model {_short(self.model_id)}",
            f"{self.precision or '?'} bundle {_short(bundle)}",
        ]
        if self.parity:
            parts.append(", ".join(f"{k} {v:.5f}" for k, v in sorted(self.parity.items())))
        return ", ".join(parts)


def same_bundle(a: ModelRef, b: ModelRef) -> bool:
    """Whether two references name the same bundle files (by content, else by file)."""
    if a.bundle_id is not None and b.bundle_id is not None:
        return a.bundle_id == b.bundle_id
    return a.bundle_sha256 is not None and a.bundle_sha256 == b.bundle_sha256


def check_serves(built: ModelRef, serving: ModelRef, where: object) -> str | None:
    """Whether the bundle ``serving`` may answer queries against vectors of ``built``.

    Same model id: yes; when the bundles differ (another precision or backend of the same
    weights) the returned note names both with the parity each measured at export, for
    the caller to log or print. Different model ids, or (for format-1 artifacts)
    different bundle files: a :class:`ModelMismatchError` whose one line says what to do.
    An index that records no model at all (built from bare embeddings) is accepted with
    a note.
    """
    if built.model_id is not None and serving.model_id is not None:
        if built.model_id != serving.model_id:
            raise ModelMismatchError(
                f"{where}: built with model {_short(built.model_id)}, this bundle is model "
                f"{_short(serving.model_id)}; vectors of different models cannot be compared: "
                "serve a bundle exported from the same checkpoint, or rebuild the index with "
                "this one (cnclip index build --bundle)"
            )
    elif not built.known:
        return f"{where}: records no model; cannot check that this bundle made its vectors"
    elif not same_bundle(built, serving):
        raise ModelMismatchError(
            f"{where}: built with bundle {_short(built.bundle_id or built.bundle_sha256)}, "
            f"this is bundle {_short(serving.bundle_id or serving.bundle_sha256)}, and one of "
            "them predates model ids: rebuild the index with this bundle (cnclip index "
            "build --bundle), or export both again with this cnclip"
        )
    if same_bundle(built, serving):
        return None
    return (
        f"{where}: built with {built.describe()}; served with {serving.describe()} "
        "(same model, another bundle)"
    )
