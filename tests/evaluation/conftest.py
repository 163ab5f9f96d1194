"""A tiny checkpoint, its fp32 bundle, and official-format datasets made of real images."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.conftest import data_root, tiny_config

COCO_BASE = 1000  # coco photo k gets image id 1001 + k
CIFAR_BASE = 2000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def cifar_images(per_class: int) -> list[tuple[str, str, bytes]]:
    """``(class folder, file name, jpeg bytes)`` of the first images of each test class."""
    out: list[tuple[str, str, bytes]] = []
    taken: dict[str, int] = {}
    with tarfile.open(data_root() / "cifar10" / "test.tar.gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 3 or not parts[-1].endswith(".jpg"):
                continue
            folder = parts[-2]
            if taken.get(folder, 0) >= per_class:
                continue
            taken[folder] = taken.get(folder, 0) + 1
            handle = tar.extractfile(member)
            assert handle is not None
            out.append((folder, parts[-1], handle.read()))
    return sorted(out)


def write_official(
    directory: Path,
    split: str,
    images: list[tuple[str, bytes]],
    texts: list[tuple[int, str, list[int | str]]],
) -> Path:
    """``{split}_imgs.tsv`` and ``{split}_texts.jsonl`` in the official format."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / f"{split}_imgs.tsv").open("w", encoding="utf-8") as f:
        for image_id, data in images:
            f.write(f"{image_id}\t{_b64(data)}\n")
    with (directory / f"{split}_texts.jsonl").open("w", encoding="utf-8") as f:
        for text_id, text, image_ids in texts:
            row = {"text_id": text_id, "text": text, "image_ids": image_ids}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return directory


def mixed_dataset(directory: Path, split: str = "valid") -> Path:
    """32 real images and 14 texts: the COCO photos with their judged queries, the MUGE
    sample with its two queries, ten CIFAR images, and COCO-CN captions each paired with
    one image."""
    root = data_root()
    photos = sorted((root / "coco-photos").glob("*.jpg"))
    photo_id = {p.name: COCO_BASE + 1 + k for k, p in enumerate(photos)}
    images: list[tuple[str, bytes]] = [(str(photo_id[p.name]), p.read_bytes()) for p in photos]
    muge = root / "muge-sample"
    for line in (muge / f"{'valid'}_imgs.tsv").read_text(encoding="utf-8").splitlines():
        image_id, b64 = line.split("\t")
        images.append((image_id, base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))))
    cifar = cifar_images(1)
    images += [(str(CIFAR_BASE + k), data) for k, (_, _, data) in enumerate(cifar)]
    texts: list[tuple[int, str, list[int | str]]] = []
    for k, line in enumerate((root / "coco-photos" / "queries.jsonl").read_text().splitlines()):
        if line.strip():
            row = json.loads(line)
            texts.append((100 + k, row["query"], [photo_id[name] for name in row["relevant"]]))
    for line in (muge / "valid_texts.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        texts.append((row["text_id"], row["text"], row["image_ids"]))
    captions = (root / "coco-cn-captions.txt").read_text(encoding="utf-8").splitlines()[:8]
    for k, line in enumerate(captions):
        texts.append((300 + k, line.split("\t", 1)[1], [int(images[(5 * k) % 32][0])]))
    return write_official(directory, split, images, texts)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from model.checkpoints import save_checkpoint
    from model.modeling import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("eval") / "tiny.pt"
    return save_checkpoint(build_model(tiny_config("vit")).eval(), path)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.bundle import export_bundle
    from model.checkpoints import load_model

    path = tmp_path_factory.mktemp("eval") / "tiny-fp32"
    export_bundle(load_model(tiny_checkpoint), path, verify_data=data_root())
    return path


@pytest.fixture(scope="session")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mixed_dataset(tmp_path_factory.mktemp("mixed"))


def encode_png_bytes(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()
