"""The official Chinese-CLIP data format (tsv + jsonl) and its LMDB layout.

A split ``S`` of an official dataset directory holds two files:

- ``S_imgs.tsv``: one image a line, ``image_id<TAB>urlsafe-base64 encoded image``;
- ``S_texts.jsonl``: one text a line, ``{"text_id": 1, "text": "...", "image_ids": [...]}``.

Every (text, image id) is one pair, in file order: text lines in order, and each
text's ``image_ids`` in order. That is the order of the official LMDB builder
(``cn_clip/preprocess/build_lmdb_dataset.py``), whose layout is, per split directory:

- ``pairs``: key ``str(index)`` -> ``pickle.dumps((image_id, text_id, text))``, and
  ``num_samples`` -> the pair count as decimal text;
- ``imgs``: key ``str(image_id)`` -> the base64 text, and ``num_images`` -> the count.

Readers skip malformed lines at open (counted in ``.skipped`` and logged), keep only
the first line of a duplicated image id, and drop pairs whose image is not in the
tsv. Image bytes are returned still encoded. Image ids are strings everywhere in
this module's results (``Record.key``, ``texts()``, ``image_ids()``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
import pickle
import shutil
import threading
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeGuard

from tqdm import tqdm

from runtime.errors import DataError
from runtime.files import progress_disabled, replace_directory, staging_directory
from sources.records import (
    ByteRangeFile,
    Record,
    SkipCounter,
)

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
Id = int | str
#: (text_id, text, image ids) of one text line; image ids as strings.
TextEntry = tuple[Id, str, list[str]]

MAP_SIZE = 1 << 40  # 1 TiB of address space, as the official builder; the file stays sparse
_RESERVED_KEYS = frozenset({"num_images", "num_samples"})
_SKIP_REASONS = (
    "malformed_tsv_lines",
    "malformed_jsonl_lines",
    "duplicate_image_ids",
    "missing_images",
)


# ---------------------------------------------------------------- parsing


def split_files(data_dir: Path, split: str) -> tuple[Path, Path]:
    """``(S_imgs.tsv, S_texts.jsonl)`` of a split; DataError when either is missing."""
    tsv, jsonl = data_dir / f"{split}_imgs.tsv", data_dir / f"{split}_texts.jsonl"
    for path in (tsv, jsonl):
        if not path.is_file():
            raise DataError(
                f"{path}: not found; official data of split {split!r} needs "
                f"{tsv.name} and {jsonl.name} in {data_dir}"
            )
    return tsv, jsonl


def decode_base64_image(data: bytes | str, where: str) -> bytes:
    """Image bytes of urlsafe base64 text (standard alphabet and missing padding tolerated).

    Raises DataError naming ``where`` for anything that is not base64.
    """
    raw = data.encode("ascii", "replace") if isinstance(data, str) else bytes(data)
    raw = raw.strip()
    raw += b"=" * (-len(raw) % 4)
    try:
        image = base64.b64decode(raw, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataError(
            f"{where}: invalid base64 image ({e}); re-encode it (urlsafe base64)"
        ) from e
    if not image:
        raise DataError(f"{where}: empty image; re-encode it (urlsafe base64)")
    return image


class _TsvLine(NamedTuple):
    lineno: int
    image_id: str
    offset: int  # file offset of the base64 text
    b64: bytes


def _parse_tsv_line(line: bytes) -> tuple[str, int, bytes] | None:
    """``(image_id, start of the base64 in the line, base64)``, or None when malformed."""
    tab = line.find(b"\t")
    if tab <= 0:
        return None
    try:
        image_id = line[:tab].decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    rest = line[tab + 1 :]
    b64 = rest.strip()
    if not image_id or image_id in _RESERVED_KEYS or any(c.isspace() for c in image_id):
        return None
    if not b64 or b"\t" in b64:
        return None
    return image_id, tab + 1 + len(rest) - len(rest.lstrip()), b64


def _tsv_lines(path: Path, skips: SkipCounter, bar: tqdm[Any] | None = None) -> Iterator[_TsvLine]:
    """The well-formed lines of an images tsv; malformed ones are counted in ``skips``."""
    offset = 0
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            start, offset = offset, offset + len(line)
            if bar is not None:
                bar.update(len(line))
            if not line.strip():
                continue
            parsed = _parse_tsv_line(line)
            if parsed is None:
                skips.add("malformed_tsv_lines", lineno)
                continue
            image_id, b64_start, b64 = parsed
            yield _TsvLine(lineno, image_id, start + b64_start, b64)


def _is_id(value: object) -> TypeGuard[Id]:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and bool(value)
    )


def _parse_text_line(line: bytes) -> tuple[Id, str, list[Id]] | None:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    text_id, text, image_ids = obj.get("text_id"), obj.get("text"), obj.get("image_ids")
    if not _is_id(text_id) or not isinstance(text, str) or not isinstance(image_ids, list):
        return None
    ids = [i for i in image_ids if _is_id(i)]
    if len(ids) != len(image_ids):
        return None
    return text_id, text, ids


def _text_lines(
    path: Path, skips: SkipCounter, bar: tqdm[Any] | None = None
) -> Iterator[tuple[int, tuple[Id, str, list[Id]]]]:
    """``(line number, (text_id, text, image_ids))`` of the well-formed lines of a jsonl."""
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if bar is not None:
                bar.update(len(line))
            if not line.strip():
                continue
            entry = _parse_text_line(line)
            if entry is None:
                skips.add("malformed_jsonl_lines", lineno)
                continue
            yield lineno, entry


# ---------------------------------------------------------------- tsv + jsonl reader


class OfficialSource:
    """An IndexedSource over ``{data_dir}/{split}_imgs.tsv`` and ``{split}_texts.jsonl``.

    Open reads both files once: a byte-offset index of the tsv (the base64 stays on
    disk) and the list of pairs. ``skipped`` counts what was left out:
    ``malformed_tsv_lines``, ``malformed_jsonl_lines``, ``duplicate_image_ids`` (later
    lines of an id) and ``missing_images`` (pairs whose image id is not in the tsv).
    Raises DataError when a file is missing or unreadable; ``get`` raises DataError for
    an image that is not valid base64.
    """

    def __init__(self, data_dir: PathLike, split: str) -> None:
        self.data_dir = Path(data_dir)
        self.split = split
        self.tsv_path, self.jsonl_path = split_files(self.data_dir, split)
        skips = SkipCounter(*_SKIP_REASONS)
        self._image_ids: list[str] = []
        self._positions: dict[str, int] = {}
        self._offsets = array("q")
        self._lengths = array("q")
        self._texts: list[TextEntry] = []
        self._pair_text = array("q")
        self._pair_image = array("q")
        try:
            self._index_images(skips)
            self._read_texts(skips)
        except OSError as e:
            raise DataError(f"{e.filename}: cannot read ({e.strerror}); check the file") from e
        self.skipped: dict[str, int] = skips.as_dict()
        skips.log(log, f"{self.data_dir} split {split}")
        self._file = ByteRangeFile(self.tsv_path)

    def _index_images(self, skips: SkipCounter) -> None:
        for entry in _tsv_lines(self.tsv_path, skips):
            if entry.image_id in self._positions:
                skips.add("duplicate_image_ids", entry.lineno)
                continue
            self._positions[entry.image_id] = len(self._image_ids)
            self._image_ids.append(entry.image_id)
            self._offsets.append(entry.offset)
            self._lengths.append(len(entry.b64))

    def _read_texts(self, skips: SkipCounter) -> None:
        for lineno, (text_id, text, image_ids) in _text_lines(self.jsonl_path, skips):
            present: list[str] = []
            for image_id in map(str, image_ids):
                position = self._positions.get(image_id)
                if position is None:
                    skips.add("missing_images", lineno)
                    continue
                self._pair_text.append(len(self._texts))
                self._pair_image.append(position)
                present.append(image_id)
            self._texts.append((text_id, text, present))

    def __len__(self) -> int:
        return len(self._pair_text)

    @property
    def num_images(self) -> int:
        return len(self._image_ids)

    def get(self, index: int) -> Record:
        """The pair at ``index``: ``Record(key=image id, image=bytes, text=text)``."""
        if not 0 <= index < len(self):
            raise IndexError(f"pair {index} out of range for {len(self)} pairs")
        position = self._pair_image[index]
        text = self._texts[self._pair_text[index]][1]
        return Record(key=self._image_ids[position], image=self._image_at(position), text=text)

    def image(self, image_id: Id) -> bytes:
        """The encoded bytes of one image by id; DataError when the tsv lacks it."""
        position = self._positions.get(str(image_id))
        if position is None:
            raise DataError(f"{self.tsv_path}: no image with id {image_id}")
        return self._image_at(position)

    def _image_at(self, position: int) -> bytes:
        where = f"{self.tsv_path}: image {self._image_ids[position]}"
        length = self._lengths[position]
        try:
            data = self._file.read(self._offsets[position], length)
        except OSError as e:
            raise DataError(f"{where}: cannot read ({e.strerror}); check the file") from e
        if len(data) != length:
            raise DataError(f"{where}: the file changed since it was opened; open it again")
        return decode_base64_image(data, where)

    def texts(self) -> list[TextEntry]:
        """``(text_id, text, image ids)`` of every text, image ids present in the tsv only."""
        return [(text_id, text, list(ids)) for text_id, text, ids in self._texts]

    def image_ids(self) -> list[str]:
        """All image ids of the tsv, in file order."""
        return list(self._image_ids)

    def close(self) -> None:
        self._file.close()


# ---------------------------------------------------------------- LMDB reader


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Refuses every global, so a pickle can only build plain containers and scalars."""

    def find_class(self, module: str, name: str, /) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} refused")


def unpickle_pair(data: bytes, where: str = "LMDB pair") -> tuple[Id, Id, str]:
    """``(image_id, text_id, text)`` of one official pairs value, unpickled safely.

    Globals are refused (no code can run); anything but a tuple of two ids (int or
    str) and a str is a DataError.
    """
    try:
        obj = _NoGlobalsUnpickler(io.BytesIO(data)).load()
    except Exception as e:  # a corrupt pickle can raise almost any exception type
        raise DataError(f"{where}: not a valid pair pickle ({e}); rebuild the LMDB") from e
    if (
        type(obj) is not tuple
        or len(obj) != 3
        or not all(_is_id(v) for v in obj[:2])
        or not isinstance(obj[2], str)
    ):
        raise DataError(
            f"{where}: expected a pickled (image_id, text_id, text) tuple, "
            f"got {type(obj).__name__}; rebuild the LMDB"
        )
    return obj[0], obj[1], obj[2]


def _read_count(env: Any, key: bytes, where: Path) -> int:
    with env.begin() as txn:
        value = txn.get(key)
    try:
        return int(bytes(value).decode("ascii"))
    except (TypeError, ValueError) as e:
        raise DataError(
            f"{where}: no valid {key.decode()} entry; not an official LMDB, rebuild it "
            "with build_lmdb"
        ) from e


# One pair of environments per LMDB directory and process: py-lmdb refuses to open the
# same environment twice in a process, and LMDB forbids using a parent's after fork.
# Keyed by the directory and the identity of its data files, so that a split rebuilt in
# place is opened afresh by a new source while an older source keeps its old files.
_EnvKey = tuple[str, int, int]
_OPEN_ENVS: dict[_EnvKey, tuple[int, Any, Any]] = {}
_OPEN_LOCK = threading.Lock()


def _env_key(path: Path) -> _EnvKey:
    try:
        inodes = [(path / sub / "data.mdb").stat().st_ino for sub in ("pairs", "imgs")]
    except OSError as e:
        raise DataError(f"{e.filename}: cannot read ({e.strerror}); rebuild the LMDB") from e
    return os.path.realpath(path), inodes[0], inodes[1]


def _environments(path: Path, key: _EnvKey) -> tuple[Any, Any]:
    """The ``(pairs, imgs)`` environments of ``path``, opened read-only in this process."""
    entry = _OPEN_ENVS.get(key)
    if entry is not None and entry[0] == os.getpid():
        return entry[1], entry[2]
    with _OPEN_LOCK:
        entry = _OPEN_ENVS.get(key)
        if entry is not None and entry[0] == os.getpid():
            return entry[1], entry[2]
        return _open_environments(path, key)


def _open_environments(path: Path, key: _EnvKey) -> tuple[Any, Any]:
    pid = os.getpid()
    for stale, (owner, *envs) in list(_OPEN_ENVS.items()):
        if owner != pid:  # inherited across fork: close this process's copy only
            for env in envs:
                env.close()
            del _OPEN_ENVS[stale]
    import lmdb

    options = {"readonly": True, "create": False, "lock": False}
    options |= {"readahead": False, "meminit": False}
    try:
        pairs = lmdb.open(str(path / "pairs"), **options)
        try:
            imgs = lmdb.open(str(path / "imgs"), **options)
        except BaseException:
            pairs.close()
            raise
    except lmdb.Error as e:
        raise DataError(
            f"{path}: cannot open the LMDB ({e}); close other users or rebuild it"
        ) from e
    _OPEN_ENVS[key] = (pid, pairs, imgs)
    return pairs, imgs


def close_lmdb(path: PathLike) -> None:
    """Close this process's environments of an LMDB split directory (reopened on next use)."""
    real = os.path.realpath(path)
    for key in [key for key in _OPEN_ENVS if key[0] == real]:
        owner, *envs = _OPEN_ENVS.pop(key)
        if owner == os.getpid():
            for env in envs:
                env.close()


class LmdbSource:
    """An IndexedSource over an official LMDB split directory (``pairs`` and ``imgs``).

    Reads what ``cn_clip.training.data.LMDBDataset`` reads: read-only, without locks.
    The environments are opened on first use in each process and shared by all sources
    of the same directory in that process, so the object can be pickled or forked into
    DataLoader workers. py-lmdb refuses to open the same files twice in one process:
    ``close()`` before another reader (such as the official LMDBDataset) opens them.
    DataError for a missing or non-LMDB directory, a pair that is not a plain tuple, or
    a missing/invalid image.
    """

    def __init__(self, lmdb_split_dir: PathLike) -> None:
        self.path = Path(lmdb_split_dir)
        for sub in ("pairs", "imgs"):
            if not (self.path / sub).is_dir():
                raise DataError(
                    f"{self.path / sub}: not found; an official LMDB split directory holds "
                    "pairs/ and imgs/ (build one with build_lmdb)"
                )
        self._key = _env_key(self.path)
        pairs, imgs = self._open()
        self.num_samples = _read_count(pairs, b"num_samples", self.path / "pairs")
        self.num_images = _read_count(imgs, b"num_images", self.path / "imgs")

    def _open(self) -> tuple[Any, Any]:
        return _environments(self.path, self._key)

    def __len__(self) -> int:
        return self.num_samples

    def pair(self, index: int) -> tuple[Id, Id, str]:
        """``(image_id, text_id, text)`` as stored at ``index``."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"pair {index} out of range for {self.num_samples} pairs")
        with self._open()[0].begin() as txn:
            data = txn.get(str(index).encode("utf-8"))
        if data is None:
            raise DataError(f"{self.path}/pairs: pair {index} is missing; rebuild the LMDB")
        return unpickle_pair(data, f"{self.path}/pairs: pair {index}")

    def get(self, index: int) -> Record:
        image_id, _, text = self.pair(index)
        return Record(key=str(image_id), image=self.image(image_id), text=text)

    def image(self, image_id: Id) -> bytes:
        """The encoded bytes of one image by id; DataError when missing or invalid."""
        with self._open()[1].begin() as txn:
            data = txn.get(str(image_id).encode("utf-8"))
        where = f"{self.path}/imgs: image {image_id}"
        if data is None:
            raise DataError(f"{where} is missing; rebuild the LMDB")
        return decode_base64_image(data, where)

    def texts(self) -> list[TextEntry]:
        """``(text_id, text, image ids)`` grouped from the pairs, in first-seen order."""
        grouped: dict[Id, tuple[str, list[str]]] = {}
        for index in range(self.num_samples):
            image_id, text_id, text = self.pair(index)
            grouped.setdefault(text_id, (text, []))[1].append(str(image_id))
        return [(text_id, text, ids) for text_id, (text, ids) in grouped.items()]

    def image_ids(self) -> list[str]:
        """All image ids of ``imgs``, in LMDB key order (byte-wise, not file order)."""
        with self._open()[1].begin() as txn:
            keys = [bytes(key) for key in txn.cursor().iternext(keys=True, values=False)]
        return [key.decode("utf-8") for key in keys if key != b"num_images"]

    def close(self) -> None:
        """Close the environments in this process (for every source of this directory)."""
        close_lmdb(self.path)


# ---------------------------------------------------------------- LMDB builder


@dataclass(frozen=True)
class LmdbSplitSummary:
    """What :func:`build_lmdb` wrote for one split, and what it skipped (see OfficialSource)."""

    split: str
    path: Path
    num_samples: int
    num_images: int
    skipped: dict[str, int]


class _BatchedWriter:
    """Puts into one LMDB, committing every ``every`` puts to bound the transaction size."""

    def __init__(self, env: Any, every: int) -> None:
        self._env, self._every, self._pending = env, every, 0
        self._txn = env.begin(write=True)

    def put(self, key: bytes, value: bytes) -> None:
        self._txn.put(key, value)
        self._pending += 1
        if self._pending >= self._every:
            self._txn.commit()
            self._txn, self._pending = self._env.begin(write=True), 0

    def commit(self) -> None:
        self._txn.commit()

    def abort(self) -> None:
        self._txn.abort()


def _write_lmdb(path: Path, every: int, fill: Any) -> int:
    """Create the LMDB at ``path`` and let ``fill(writer)`` put into it; returns its result."""
    import lmdb

    env = lmdb.open(str(path), map_size=MAP_SIZE)
    try:
        writer = _BatchedWriter(env, every)
        try:
            count: int = fill(writer)
        except BaseException:
            writer.abort()
            raise
        writer.commit()
        return count
    finally:
        env.close()


def _bar(path: Path, desc: str, progress: bool) -> tqdm[Any]:
    total = path.stat().st_size
    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, disable=progress_disabled(progress)
    )


def _build_split(tsv: Path, jsonl: Path, tmp: Path, split: str, progress: bool) -> LmdbSplitSummary:
    skips = SkipCounter(*_SKIP_REASONS)
    ids: set[str] = set()

    def put_images(writer: _BatchedWriter) -> int:
        with _bar(tsv, f"{split} images", progress) as bar:
            for entry in _tsv_lines(tsv, skips, bar):
                if entry.image_id in ids:
                    skips.add("duplicate_image_ids", entry.lineno)
                    continue
                ids.add(entry.image_id)
                writer.put(entry.image_id.encode("utf-8"), entry.b64)
        writer.put(b"num_images", str(len(ids)).encode("utf-8"))
        return len(ids)

    def put_pairs(writer: _BatchedWriter) -> int:
        count = 0
        with _bar(jsonl, f"{split} pairs", progress) as bar:
            for lineno, (text_id, text, image_ids) in _text_lines(jsonl, skips, bar):
                for image_id in image_ids:
                    if str(image_id) not in ids:
                        skips.add("missing_images", lineno)
                        continue
                    value = pickle.dumps((image_id, text_id, text))
                    writer.put(str(count).encode("utf-8"), value)
                    count += 1
        writer.put(b"num_samples", str(count).encode("utf-8"))
        return count

    num_images = _write_lmdb(tmp / "imgs", 1000, put_images)
    num_samples = _write_lmdb(tmp / "pairs", 5000, put_pairs)
    skips.log(log, f"{tsv.parent} split {split}")
    return LmdbSplitSummary(split, tmp, num_samples, num_images, skips.as_dict())


def _split_names(splits: str | Sequence[str]) -> list[str]:
    names = splits.split(",") if isinstance(splits, str) else list(splits)
    names = list(dict.fromkeys(name.strip() for name in names))
    if not names or any(not n or "/" in n or n.startswith(".") for n in names):
        raise DataError(f"invalid splits {splits!r}; give names like 'train,valid,test'")
    return names


def build_lmdb(
    data_dir: PathLike,
    splits: str | Sequence[str],
    lmdb_dir: PathLike | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, LmdbSplitSummary]:
    """Serialize official tsv/jsonl splits into the official LMDB layout.

    ``splits`` is a list or a comma-separated string; ``lmdb_dir`` defaults to
    ``{data_dir}/lmdb``, and split ``S`` goes to ``{lmdb_dir}/S``. The result is what
    ``cn_clip``'s LMDBDataset reads. Each split is built in a temporary sibling directory
    and renamed into place when complete, so a failure never leaves a half-written split;
    an existing split is refused (DataError) unless ``overwrite``. Malformed lines are
    skipped and counted in the returned summaries, as are pairs whose image is missing
    (which the official reader would fail on). Returns the summaries by split name.
    """
    import lmdb

    data = Path(data_dir)
    if not data.is_dir():
        raise DataError(f"{data}: not a directory; give the folder holding S_imgs.tsv files")
    names = _split_names(splits)
    out = Path(lmdb_dir) if lmdb_dir is not None else data / "lmdb"
    inputs = {name: split_files(data, name) for name in names}
    for name in names:
        target = out / name
        if target.exists() and not overwrite:
            raise DataError(f"{target}: already exists; pass overwrite=True to replace it")
        if target.exists() and not target.is_dir():
            raise DataError(f"{target}: exists and is not a directory; remove it")
    out.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, LmdbSplitSummary] = {}
    for name in names:
        tmp = staging_directory(out, f".{name}.building-")
        try:
            built = _build_split(*inputs[name], tmp, name, progress)
            replace_directory(tmp, out / name)
        except (OSError, lmdb.Error) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"{out}: cannot write LMDB split {name} ({e}); nothing written") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        summaries[name] = LmdbSplitSummary(
            name, out / name, built.num_samples, built.num_images, built.skipped
        )
    return summaries
