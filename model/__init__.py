"""Chinese CLIP in PyTorch: the five architectures, the model, checkpoints and embedding.

- :mod:`model.configs`: architectures (RN50, ViT-B-16, ViT-L-14, ViT-L-14-336, ViT-H-14
  and the official JSON configs) as typed configs;
- :mod:`model.modeling` (with :mod:`model.modeling_text`, :mod:`model.modeling_vision`):
  :class:`ChineseCLIP`, whose weights use the official key layout;
- :mod:`model.checkpoints`: official ``.pt``, Hugging Face directories (:mod:`model.hf`)
  and ours, loaded and saved;
- :mod:`model.init`: a model's starting weights, per tower;
- :mod:`model.identity`: the model id that names a model's embedding space;
- :mod:`model.embed`: texts and images to embeddings with PyTorch (CPU or CUDA).

Training lives in :mod:`trainer`, which imports this package; nothing here imports it.
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use: ``model.configs`` needs no torch, and importing this package (the
# CLI does, for the architecture names) must not load it.
_EXPORTS = {
    "ARCHITECTURES": "model.configs",
    "ModelConfig": "model.configs",
    "get_config": "model.configs",
    "ChineseCLIP": "model.modeling",
    "build_model": "model.modeling",
    "LoadedCheckpoint": "model.checkpoints",
    "load_checkpoint": "model.checkpoints",
    "load_model": "model.checkpoints",
    "save_checkpoint": "model.checkpoints",
    "model_id": "model.identity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
