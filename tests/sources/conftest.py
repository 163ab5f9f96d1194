"""Fixtures of the data-reader tests: the real MUGE sample, and a copy with bad lines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def muge(data_dir: Path) -> Path:
    """The official-format MUGE sample: split ``valid``, 8 images, 2 texts, 5 pairs."""
    return data_dir / "muge-sample"


def tsv_lines(muge: Path) -> list[str]:
    return (muge / "valid_imgs.tsv").read_text(encoding="utf-8").splitlines()


def jsonl_lines(muge: Path) -> list[str]:
    return (muge / "valid_texts.jsonl").read_text(encoding="utf-8").splitlines()


@dataclass(frozen=True)
class MessySplit:
    """A split written to a temporary folder from the real lines plus bad ones."""

    directory: Path
    split: str
    skipped: dict[str, int]
    pairs: list[tuple[str, str]]  # (image id, text) of the pairs a reader must give


@pytest.fixture
def messy(tmp_path: Path, muge: Path) -> MessySplit:
    images = tsv_lines(muge)
    first_id, second_b64 = images[0].split("\t")[0], images[1].split("\t")[1]
    tsv = [
        images[0],
        "no tab on this line",  # 2: malformed
        *images[1:4],
        "",  # blank lines are not counted
        "\tAAAA",  # 7: empty id
        f"{first_id}\t{second_b64}",  # 8: duplicate id, the first line wins
        *images[4:],
        "num_images\tAAAA",  # 13: the LMDB's count key cannot be an image id
    ]
    texts = jsonl_lines(muge)
    jsonl = [
        texts[0],
        "{not json",  # 2
        json.dumps({"text_id": 1, "text": 5, "image_ids": [1]}),  # 3: text not a string
        "[1, 2, 3]",  # 4: not an object
        texts[1],
        json.dumps({"text_id": 7, "text": "新的 文本", "image_ids": [999, int(first_id)]}),
        json.dumps({"text_id": 8, "text": "布尔", "image_ids": [True]}),  # 7: bool id
    ]
    directory = tmp_path / "messy"
    directory.mkdir()
    (directory / "valid_imgs.tsv").write_text("\n".join(tsv) + "\n", encoding="utf-8")
    (directory / "valid_texts.jsonl").write_text("\n".join(jsonl) + "\n", encoding="utf-8")
    pairs = [
        (str(image_id), obj["text"])
        for obj in map(json.loads, texts)
        for image_id in obj["image_ids"]
    ]
    pairs.append((first_id, "新的 文本"))
    skipped = {
        "malformed_tsv_lines": 3,
        "malformed_jsonl_lines": 4,
        "duplicate_image_ids": 1,
        "missing_images": 1,
    }
    return MessySplit(directory, "valid", skipped, pairs)
