"""Import the official `cn_clip` 1.6.0 package (MIT) as a parity reference.

`cn_clip.clip` imports torchvision at import time, only for the image transforms
of `cn_clip.clip.utils.image_transform`, which no test calls (our own
preprocessing is compared against PIL + torch directly). torchvision has no CPU
build on these machines, so a stub module stands in for it before the import;
`cn_clip.training.data` also needs timm at import, stubbed the same way.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from typing import Any


def _install_torchvision_stub() -> None:
    if "torchvision" in sys.modules:
        return

    class _Unavailable:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("torchvision is stubbed out in the tests")

    transforms = types.ModuleType("torchvision.transforms")
    for name in ("Compose", "ToTensor", "Normalize", "Resize"):
        setattr(transforms, name, _Unavailable)
    transforms.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic")  # type: ignore[attr-defined]
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = transforms  # type: ignore[attr-defined]
    # transformers probes find_spec("torchvision"); a spec-less module breaks that probe.
    torchvision.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    transforms.__spec__ = importlib.machinery.ModuleSpec("torchvision.transforms", None)
    sys.modules["torchvision"] = torchvision
    sys.modules["torchvision.transforms"] = transforms


def _install_timm_stub() -> list[str]:
    """Stub `timm` and `timm.data`; returns the module names it added to sys.modules."""
    if "timm" in sys.modules:
        return []

    def create_transform(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("timm is stubbed out in the tests")

    timm = types.ModuleType("timm")
    data = types.ModuleType("timm.data")
    data.create_transform = create_transform  # type: ignore[attr-defined]
    timm.data = data  # type: ignore[attr-defined]
    timm.__spec__ = importlib.machinery.ModuleSpec("timm", None)
    data.__spec__ = importlib.machinery.ModuleSpec("timm.data", None)
    sys.modules["timm"] = timm
    sys.modules["timm.data"] = data
    return ["timm", "timm.data"]


def official_training_data() -> types.ModuleType:
    """Return `cn_clip.training.data` (the official LMDBDataset).

    It imports torchvision's transforms and timm's `create_transform` at import time,
    only to build image transforms; tests replace the transform, so stubs stand in
    during the import (the timm stub is removed from sys.modules afterwards).
    """
    _install_torchvision_stub()
    added = _install_timm_stub()
    try:
        import cn_clip.training.data as data
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return data


def official_clip() -> types.ModuleType:
    """Return the `cn_clip.clip` package (model, tokenizer, utils)."""
    _install_torchvision_stub()
    import cn_clip.clip as clip

    return clip


def official_tokenize(text: str) -> list[int]:
    """Word-piece ids of the official tokenizer, without [CLS]/[SEP] and untruncated."""
    clip = official_clip()
    tok = clip._tokenizer
    ids: list[int] = tok.convert_tokens_to_ids(tok.tokenize(text))
    return ids
