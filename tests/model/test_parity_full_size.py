"""Full-size architectures with seeded random weights against the reference implementations.

* all five architectures against the official ``cn_clip`` 1.6.0 code: its own
  ``CLIP`` built from its own JSON configs, saved as an official checkpoint
  (DDP ``module.`` keys, a BERT pooler), loaded with our loader;
* ViT-B-16 against transformers' ``ChineseCLIPModel``;
* our checkpoint read back by the official ``create_model``.

Embeddings of real photos (../shared/data/coco-photos) and real sentences
(../shared/data/coco-cn-captions.txt) must agree to 1e-5 in fp32. Random
networks can map every input to nearly the same direction, which would make
such a comparison weak, so each test also checks that the reference's
embeddings of different inputs are far apart compared with the tolerance.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.checkpoints import load_checkpoint, save_checkpoint
from model.configs import get_config
from model.modeling import ChineseCLIP, build_model
from runtime.images import PreprocessConfig, load_and_preprocess
from runtime.tokenizer import default_tokenizer
from tests.hf_reference import save_as_hf, to_hf_model
from tests.official import official_clip

pytestmark = pytest.mark.slow

ATOL = 1e-5
PHOTOS = ["000000005082.jpg", "000000014309.jpg", "000000024283.jpg", "000000060621.jpg"]
STRUCT = {
    "RN50": "RN50@RBT3-chinese",
    "ViT-B-16": "ViT-B-16@RoBERTa-wwm-ext-base-chinese",
    "ViT-L-14": "ViT-L-14@RoBERTa-wwm-ext-base-chinese",
    "ViT-L-14-336": "ViT-L-14-336@RoBERTa-wwm-ext-base-chinese",
    "ViT-H-14": "ViT-H-14@RoBERTa-wwm-ext-large-chinese",
}


def _images(data_dir: Path, size: int, names: list[str] = PHOTOS) -> torch.Tensor:
    config = PreprocessConfig(image_size=size)
    arrays = [load_and_preprocess(data_dir / "coco-photos" / n, config) for n in names]
    return torch.from_numpy(np.stack(arrays))


def _sentences(data_dir: Path) -> torch.Tensor:
    lines = (data_dir / "coco-cn-captions.txt").read_text(encoding="utf-8").splitlines()
    texts = [line.split("\t", 1)[1] for line in lines[:5]]
    texts += ["红色的杯子", "蓝色的T恤 size XL", "很长的句子" * 20]  # the last is truncated
    batch = default_tokenizer()(texts)
    assert batch.truncated.tolist() == [False] * 7 + [True]
    return torch.from_numpy(batch.ids)


def _official_model(name: str) -> Any:
    """cn_clip's CLIP from its own model_configs JSON, as its create_model builds it."""
    clip = official_clip()
    from cn_clip.clip.model import CLIP

    vision, text = STRUCT[name].split("@")
    folder = Path(clip.__file__).parent / "model_configs"
    info = json.loads((folder / f"{vision}.json").read_text())
    info.update(json.loads((folder / f"{text}.json").read_text()))
    if isinstance(info["vision_layers"], str):
        info["vision_layers"] = json.loads(info["vision_layers"])
    return CLIP(**info)


def _calibrate_batchnorm(model: Any, images: torch.Tensor) -> None:
    """Random BatchNorm affine terms, then running statistics measured on real photos."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.1)
            bn.reset_running_stats()
            bn.momentum = None  # a plain average over the calibration batch
        model.train()
        model.encode_image(images)
    model.eval()


def _embed_official(model: Any, images: torch.Tensor, ids: torch.Tensor) -> tuple[Any, Any]:
    with torch.no_grad():
        return (
            F.normalize(model.encode_image(images), dim=-1),
            F.normalize(model.encode_text(ids), dim=-1),
        )


def _embed_ours(model: ChineseCLIP, images: torch.Tensor, ids: torch.Tensor) -> tuple[Any, Any]:
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(ids)


def _assert_inputs_are_told_apart(features: torch.Tensor) -> None:
    """Distinct inputs must land far apart relative to ATOL, or parity proves little."""
    distances = torch.cdist(features, features)
    off_diagonal = distances[~torch.eye(len(features), dtype=torch.bool)]
    assert off_diagonal.min().item() > 1000 * ATOL, off_diagonal.min().item()


@pytest.mark.parametrize("name", list(STRUCT))
def test_parity_with_the_official_code(name: str, data_dir: Path, tmp_path: Path) -> None:
    size = get_config(name).vision.image_size
    images, ids = _images(data_dir, size), _sentences(data_dir)
    torch.manual_seed(2022)
    official = _official_model(name)
    if name == "RN50":
        _calibrate_batchnorm(official, images)
    official.eval()
    expected = _embed_official(official, images, ids)
    state = {f"module.{k}": v for k, v in official.state_dict().items()}
    width = official.bert_config.hidden_size
    state["module.bert.pooler.dense.weight"] = torch.zeros(width, width)
    state["module.bert.pooler.dense.bias"] = torch.zeros(width)
    path = tmp_path / f"clip_cn_{name.lower()}.pt"
    torch.save({"epoch": 1, "step": 1, "name": "random", "state_dict": state}, path)
    del official, state
    gc.collect()

    loaded = load_checkpoint(path)  # architecture inferred from the weights
    path.unlink()
    assert loaded.config == get_config(name)
    got = _embed_ours(loaded.model, images, ids)
    for tower, want, have in zip(("image", "text"), expected, got, strict=True):
        _assert_inputs_are_told_apart(want)
        diff = (want - have).abs().max().item()
        assert diff <= ATOL, f"{name} {tower}: max abs diff {diff:.2e}"


def test_parity_with_transformers_chinese_clip(data_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(16)
    ours = build_model(get_config("ViT-B-16")).eval()
    images, ids = _images(data_dir, 224), _sentences(data_dir)
    hf = to_hf_model(ours)
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=(ids != 0).long(), pixel_values=images)
    expected = (out.image_embeds, out.text_embeds)
    got = _embed_ours(ours, images, ids)
    for tower, want, have in zip(("image", "text"), expected, got, strict=True):
        _assert_inputs_are_told_apart(want)
        diff = (want - have).abs().max().item()
        assert diff <= ATOL, f"ViT-B-16 {tower}: max abs diff {diff:.2e}"
    del hf
    # The same weights through the three formats give identical embeddings.
    state = {f"module.{k}": v for k, v in ours.state_dict().items()}
    torch.save({"epoch": 0, "step": 0, "name": "r", "state_dict": state}, tmp_path / "off.pt")
    paths = [
        tmp_path / "off.pt",
        save_checkpoint(ours, tmp_path / "ours.pt"),
        save_as_hf(ours, tmp_path / "hf"),
    ]
    for path in paths:
        loaded = load_checkpoint(path, "ViT-B-16")
        for want, have in zip(got, _embed_ours(loaded.model, images, ids), strict=True):
            torch.testing.assert_close(have, want, rtol=0, atol=1e-6, msg=str(path))


def test_our_checkpoint_through_the_official_loader(data_dir: Path, tmp_path: Path) -> None:
    """cn_clip's create_model (what load_from_name calls) reads our file strictly."""
    official_clip()  # installs the torchvision stub, then imports cn_clip
    from cn_clip.clip.utils import create_model

    torch.manual_seed(50)
    ours = build_model(get_config("RN50"))
    images, ids = _images(data_dir, 224), _sentences(data_dir)
    with torch.no_grad():
        for p in ours.parameters():
            # create_model casts weights to fp16: keep them fp16-exact so nothing is lost.
            p.copy_(p.half().float())
        _calibrate_batchnorm(ours, images)
    path = save_checkpoint(ours, tmp_path / "ours.pt")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    official = create_model(STRUCT["RN50"], checkpoint).float().eval()
    expected = _embed_official(official, images, ids)
    for want, have in zip(expected, _embed_ours(ours.eval(), images, ids), strict=True):
        assert (want - have).abs().max().item() <= ATOL
