"""Shared by the catalog-embedding tests: a tiny real bundle and a catalog with bad images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from export.bundle import export_bundle
from model.modeling import build_model
from runtime.bundle import Bundle, load_bundle
from runtime.images import PreprocessConfig
from sources.catalog import CatalogItem, read_catalog
from tests.conftest import data_root, tiny_config


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("embed") / "bundle"
    export_bundle(build_model(tiny_config("vit")), path, precision="fp32", verify_data=data_root())
    return path


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


class CountingEncoder:
    """The real bundle, counting the images it encodes (to see what a resumed run redoes)."""

    def __init__(self, bundle: Bundle, config: PreprocessConfig | None = None) -> None:
        self.bundle = bundle
        self.images = 0
        self.config = config or bundle.preprocess_config

    @property
    def bundle_id(self) -> str:
        return self.bundle.bundle_id

    @property
    def embed_dim(self) -> int:
        return self.bundle.embed_dim

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self.config

    def encode_pixels(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self.images += len(pixels)
        return self.bundle.encode_pixels(pixels)


def photos() -> list[Path]:
    return sorted((data_root() / "coco-photos").glob("*.jpg"))


BAD = {"missing", "truncated", "text"}


@pytest.fixture
def catalog(tmp_path: Path) -> tuple[Path, list[CatalogItem]]:
    """16 items: 13 photos by relative path, absolute path and file:// URL, and 3 bad images.

    The bad ones are in the first two shards (of 4), so the last two hold 4 photos each.
    """
    folder = tmp_path / "catalog"
    (folder / "imgs").mkdir(parents=True)
    shots = photos()[:13]
    for shot in shots[:2]:
        shutil.copy(shot, folder / "imgs" / shot.name)
    (folder / "imgs" / "truncated.jpg").write_bytes(shots[0].read_bytes()[:2000])
    (folder / "imgs" / "text.jpg").write_text("这不是图片\n", encoding="utf-8")
    images = [
        f"imgs/{shots[0].name}",
        "imgs/missing.jpg",
        f"imgs/{shots[1].name}",
        str(shots[2]),
        "imgs/truncated.jpg",
        shots[3].as_uri(),
        str(folder / "imgs" / "text.jpg"),
        *(str(shot) for shot in shots[4:]),
    ]
    names = ["p0", "missing", "p1", "p2", "truncated", "p3", "text"]
    names += [f"p{i}" for i in range(4, 13)]
    lines = [
        json.dumps({"id": name, "image": image, "title": f"照片 {name}", "shop": 7})
        for name, image in zip(names, images, strict=True)
    ]
    path = folder / "catalog.jsonl"
    path.write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n", encoding="utf-8")
    return path, read_catalog(path)
