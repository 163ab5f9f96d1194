"""ImageFolderSource: the CIFAR-10 test archive and small trees written here."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from runtime.errors import DataError
from sources.imagefolder import ImageFolderSource
from sources.records import IndexedSource

CIFAR_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


@pytest.fixture(scope="module")
def cifar(data_dir: Path) -> ImageFolderSource:
    """The 10,000 test images, read once for the module."""
    cifar10 = data_dir / "cifar10"
    return ImageFolderSource(cifar10 / "test.tar.gz", class_names=cifar10 / "labels_zh.tsv")


def test_cifar10_test_archive(cifar: ImageFolderSource) -> None:
    assert isinstance(cifar, IndexedSource)
    assert cifar.archive
    assert len(cifar) == 10_000
    assert cifar.classes == CIFAR_CLASSES
    assert cifar.class_names == ["飞机", "汽车", "鸟", "猫", "鹿", "狗", "青蛙", "马", "船", "卡车"]
    assert Counter(cifar.labels) == dict.fromkeys(range(10), 1000)
    first, last = cifar.get(0), cifar.get(len(cifar) - 1)
    assert (first.key, first.text, first.label) == ("airplane/0000.jpg", "飞机", 0)
    assert (last.key, last.text, last.label) == ("truck/0999.jpg", "卡车", 9)
    cat = cifar.get(3000)
    assert (cat.key, cat.text, cat.label) == ("cat/0000.jpg", "猫", 3)
    with Image.open(io.BytesIO(cat.image)) as image:
        image.load()
        assert (image.format, image.size) == ("JPEG", (32, 32))
    assert cifar.skipped == {"files_outside_class_folders": 0}


@pytest.fixture
def tree(tmp_path: Path, cifar: ImageFolderSource) -> Path:
    """root/{cat,dog}/ with nested, upper-case, hidden and non-image files."""
    jpeg = cifar.get(3000).image
    root = tmp_path / "tree"
    files = {
        "dog/c.jpeg": jpeg,
        "cat/b.JPG": jpeg,
        "cat/sub/a.png": jpeg,
        "cat/notes.txt": b"not an image",
        "cat/.hidden.jpg": jpeg,
        ".cache/x.jpg": jpeg,
        "loose.jpg": jpeg,
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_folder_tree(tree: Path) -> None:
    source = ImageFolderSource(tree)
    assert not source.archive
    assert source.classes == source.class_names == ["cat", "dog"]
    records = [source.get(i) for i in range(len(source))]
    assert [(r.key, r.text, r.label) for r in records] == [
        ("cat/b.JPG", "cat", 0),
        ("cat/sub/a.png", "cat", 0),
        ("dog/c.jpeg", "dog", 1),
    ]
    assert records[0].image == (tree / "cat" / "b.JPG").read_bytes()
    assert source.skipped == {"files_outside_class_folders": 1}

    named = ImageFolderSource(tree, class_names={"cat": "猫", "dog": "狗", "fox": "狐狸"})
    assert named.class_names == ["猫", "狗"]
    assert named.get(2).text == "狗"
    (tree.parent / "names.txt").write_text("小猫\n小狗\n", encoding="utf-8")
    assert ImageFolderSource(tree, tree.parent / "names.txt").class_names == ["小猫", "小狗"]

    (tree / "cat" / "b.JPG").unlink()
    with pytest.raises(DataError, match=r"b\.JPG: cannot read"):
        source.get(0)


def test_class_name_errors(tree: Path) -> None:
    with pytest.raises(DataError, match="lack the folders dog"):
        ImageFolderSource(tree, class_names={"cat": "猫"})
    tsv = tree.parent / "names.tsv"
    tsv.write_text("cat\t猫\n", encoding="utf-8")
    with pytest.raises(DataError, match="lack the folders dog"):
        ImageFolderSource(tree, tsv)
    tsv.write_text("cat 猫\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 1 is not 'folder<TAB>name'"):
        ImageFolderSource(tree, tsv)
    txt = tree.parent / "names.txt"
    txt.write_text("猫\n", encoding="utf-8")
    with pytest.raises(DataError, match="1 class names for 2 class folders"):
        ImageFolderSource(tree, txt)
    with pytest.raises(DataError, match=r"must be a \.tsv"):
        ImageFolderSource(tree, tree.parent / "names.csv")


def test_tar_archive_under_one_top_folder(tree: Path, tmp_path: Path) -> None:
    archive = tmp_path / "small.tar"
    with tarfile.open(archive, "w") as tar:
        # Without the loose image, which would make "train" a class folder itself.
        tar.add(tree, arcname="./train", filter=lambda m: None if "loose" in m.name else m)
    source = ImageFolderSource(archive)
    assert source.archive
    assert source.classes == ["cat", "dog"]
    assert [source.get(i).key for i in range(len(source))] == [
        "cat/b.JPG",
        "cat/sub/a.png",
        "dog/c.jpeg",
    ]
    assert source.get(2).image == (tree / "dog" / "c.jpeg").read_bytes()


def test_one_class_folder_is_a_class_not_a_wrapper(tmp_path: Path) -> None:
    (tmp_path / "only" / "cat").mkdir(parents=True)
    (tmp_path / "only" / "cat" / "a.jpg").write_bytes(b"\xff\xd8\xff")
    assert ImageFolderSource(tmp_path / "only").classes == ["cat"]
    (tmp_path / "wrapped" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "wrapped" / "train" / "cat" / "a.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "wrapped" / "train" / "dog").mkdir()
    (tmp_path / "wrapped" / "train" / "dog" / "b.jpg").write_bytes(b"\xff\xd8\xff")
    assert ImageFolderSource(tmp_path / "wrapped").classes == ["cat", "dog"]


def test_bad_roots_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a folder or a .tar"):
        ImageFolderSource(tmp_path / "missing")
    with pytest.raises(DataError, match="no class folders"):
        ImageFolderSource(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="class folder 'empty' has no images"):
        ImageFolderSource(tmp_path)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b" + b"garbage" * 50)
    with pytest.raises(DataError, match="unreadable archive"):
        ImageFolderSource(broken)
