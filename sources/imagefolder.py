"""Classification data in ImageFolder layout: one subfolder of images per class.

``root/<class folder>/.../<image>``: class folders in sorted name order give the
class indices; images are files with a common image extension (case-insensitive),
found recursively inside each class folder; hidden files and folders are ignored.
When the root holds a single folder that itself holds only folders (as in an archive
of ``train/<class>/...``), the class folders are looked for inside it.

``root`` may also be a ``.tar``, ``.tar.gz`` or ``.tgz`` archive of such a tree. An
archive is read into memory once at open, which suits small datasets such as
CIFAR-10 (tens of MB); extract larger ones and point ``root`` at the folder.
"""

from __future__ import annotations

import logging
import os
import tarfile
import zlib
from array import array
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from runtime.errors import DataError
from sources.records import Record

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
ClassNames = PathLike | Mapping[str, str]
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _clean(name: str) -> str | None:
    """A member path as ``a/b/c``; None for hidden, absolute or escaping paths."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or name.startswith("/") or any(p == ".." or p.startswith(".") for p in parts):
        return None
    return "/".join(parts)


class _Tree:
    """Image files (relative POSIX paths) and folders of a directory or an archive."""

    def __init__(self) -> None:
        self.files: dict[str, bytes | None] = {}  # bytes for archives, None on disk
        self.dirs: set[str] = set()

    def add_file(self, path: str, data: bytes | None) -> None:
        self.files[path] = data
        parent = path.rpartition("/")[0]
        while parent:
            self.dirs.add(parent)
            parent = parent.rpartition("/")[0]

    def children(self, prefix: str) -> tuple[list[str], list[str]]:
        """Sorted names of the folders and image files directly under ``prefix``."""
        start = f"{prefix}/" if prefix else ""
        dirs = sorted(d[len(start) :] for d in self.dirs if d.startswith(start))
        files = sorted(f[len(start) :] for f in self.files if f.startswith(start))
        return [d for d in dirs if "/" not in d], [f for f in files if "/" not in f]

    def class_root(self) -> str:
        """Descend through single folders that hold only folders."""
        prefix = ""
        while True:
            dirs, files = self.children(prefix)
            if files or len(dirs) != 1:
                return prefix
            inner = f"{prefix}/{dirs[0]}" if prefix else dirs[0]
            inner_dirs, inner_files = self.children(inner)
            if inner_files or not inner_dirs:
                return prefix
            prefix = inner


def _scan_directory(root: Path) -> _Tree:
    tree = _Tree()
    for current, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(current).relative_to(root).as_posix()
        rel = "" if rel == "." else rel
        if rel:
            tree.dirs.add(rel)
        for name in filenames:
            if not name.startswith(".") and _is_image(name):
                tree.add_file(f"{rel}/{name}" if rel else name, None)
    return tree


def _read_archive(path: Path) -> _Tree:
    tree = _Tree()
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for info in tar:
                name = _clean(info.name)
                if name is None:
                    continue
                if info.isdir():
                    tree.dirs.add(name)
                elif info.isfile() and _is_image(name):
                    f = tar.extractfile(info)
                    tree.add_file(name, f.read() if f is not None else b"")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: unreadable archive ({e}); check or re-create the file") from e
    return tree


def _names_from_file(path: Path, classes: list[str]) -> Mapping[str, str] | list[str]:
    if path.suffix.lower() not in (".txt", ".tsv"):
        raise DataError(f"{path}: class names must be a .tsv (folder<TAB>name) or a .txt file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read class names ({e}); give a UTF-8 file") from e
    if path.suffix.lower() == ".txt":
        names = [line.strip() for line in lines if line.strip()]
        if len(names) != len(classes):
            raise DataError(
                f"{path}: {len(names)} class names for {len(classes)} class folders; "
                "give one name per line in class-index order"
            )
        return names
    mapping: dict[str, str] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        folder, tab, name = line.partition("\t")
        if not tab or not folder.strip() or not name.strip():
            raise DataError(f"{path}: line {lineno} is not 'folder<TAB>name'; fix the line")
        mapping[folder.strip()] = name.strip()
    return mapping


def resolve_class_names(classes: list[str], class_names: ClassNames | None) -> list[str]:
    """Display names of ``classes`` (folder names) from a .tsv, a .txt, a dict, or None."""
    if class_names is None:
        return list(classes)
    if isinstance(class_names, Mapping):
        names: Mapping[str, str] | list[str] = class_names
    else:
        names = _names_from_file(Path(class_names), classes)
    if isinstance(names, list):
        return names
    missing = [c for c in classes if c not in names]
    if missing:
        raise DataError(
            f"class names lack the folders {', '.join(missing)}; add a name for each folder"
        )
    return [str(names[c]) for c in classes]


class ImageFolderSource:
    """An IndexedSource over an ImageFolder tree or archive.

    ``Record(key=path relative to the class root, e.g. "cat/0001.jpg", image=file bytes,
    text=class display name, label=class index)``, class by class, paths in sorted
    order. ``classes`` are the folder names, ``class_names`` the display names (from
    ``class_names``: a ``folder<TAB>name`` .tsv, a .txt of names in class-index order,
    or a dict; by default the folder names). Image files outside any class folder are
    ignored and counted in ``skipped``. DataError for a missing root, an unreadable
    archive, a tree without class folders or with an empty one, or names that miss a
    folder; ``get`` raises DataError for an unreadable file.
    """

    def __init__(self, root: PathLike, class_names: ClassNames | None = None) -> None:
        self.root = Path(root)
        if self.root.is_dir():
            tree, self.archive = _scan_directory(self.root), False
        elif self.root.is_file() and self.root.name.lower().endswith(ARCHIVE_SUFFIXES):
            tree, self.archive = _read_archive(self.root), True
        else:
            raise DataError(
                f"{self.root}: not a folder or a .tar/.tar.gz/.tgz archive of class folders"
            )
        self._prefix = tree.class_root()
        self.classes, loose = tree.children(self._prefix)
        if not self.classes:
            raise DataError(f"{self.root}: no class folders with images; expected root/<class>/")
        self.class_names = resolve_class_names(self.classes, class_names)
        self.skipped = {"files_outside_class_folders": len(loose)}
        if loose:
            log.warning("%s: ignored %d images outside class folders", self.root, len(loose))
        start = f"{self._prefix}/" if self._prefix else ""
        by_class: dict[str, list[str]] = {folder: [] for folder in self.classes}
        for path in sorted(p for p in tree.files if p.startswith(start)):
            folder, slash, _ = path[len(start) :].partition("/")
            if slash:
                by_class[folder].append(path)
        self._keys: list[str] = []
        self._labels = array("q")
        self._data: list[bytes] = []
        for label, folder in enumerate(self.classes):
            if not by_class[folder]:
                raise DataError(
                    f"{self.root}: class folder {folder!r} has no images; fill or remove it"
                )
            for path in by_class[folder]:
                self._keys.append(path[len(start) :])
                self._labels.append(label)
                if self.archive:
                    self._data.append(tree.files[path] or b"")

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def labels(self) -> list[int]:
        """The class index of every record, in order."""
        return list(self._labels)

    @property
    def keys(self) -> list[str]:
        """The key (path below the class root) of every record, in order."""
        return list(self._keys)

    def get(self, index: int) -> Record:
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} out of range for {len(self)} images")
        key, label = self._keys[index], self._labels[index]
        if self.archive:
            image = self._data[index]
        else:
            path = self.root / self._prefix / key
            try:
                image = path.read_bytes()
            except OSError as e:
                raise DataError(f"{path}: cannot read ({e.strerror}); check the file") from e
        return Record(key=key, image=image, text=self.class_names[label], label=label)
