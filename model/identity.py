"""The model id of a PyTorch model: which embedding space its vectors live in.

See :mod:`runtime.identity` for what the id is for. It is computed from what decides
the vectors and nothing else: the architecture (the config without its display name),
the tokenizer's vocabulary and context length, the image preprocessing, and every
tensor of the state dict as float32 bytes in key order. So an fp16 official checkpoint
and the fp32 copy made for export give the same id, and so does every bundle exported
from either.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

from model.modeling import ChineseCLIP
from runtime.bundle_manifest import ImageSpec
from runtime.images import PreprocessConfig

SCHEME = b"cnclip-model-id/1\n"


def model_id(
    model: ChineseCLIP, *, vocab_sha256: str, image: Mapping[str, Any] | None = None
) -> str:
    """The sha256 hex digest naming ``model``'s embedding space.

    ``vocab_sha256``: the tokenizer vocabulary's digest; ``image``: the preprocessing
    (size, resize, mean, std) as the bundle manifest records it; by default the official
    preprocessing at the model's image size, the one every bundle is exported with, so a
    checkpoint and its bundles get the same id.
    """
    if image is None:
        preprocess = PreprocessConfig(image_size=model.config.vision.image_size)
        spec = ImageSpec(size=preprocess.image_size, mean=preprocess.mean, std=preprocess.std)
        image = spec.to_dict()
    config = model.config.to_dict()
    config.pop("name", None)
    head = {"config": config, "vocab_sha256": vocab_sha256, "image": dict(image)}
    digest = hashlib.sha256(SCHEME)
    digest.update(json.dumps(head, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            value = tensor.detach().to("cpu")
            if value.is_floating_point():
                value = value.to(torch.float32)
            value = value.contiguous()
            digest.update(f"\n{name}:{value.dtype}:{list(value.shape)}\n".encode())
            digest.update(value.numpy().tobytes())
    return digest.hexdigest()
