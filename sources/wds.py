"""WebDataset tar shards: a writer and a streaming reader, on the standard library only.

A shard is a plain tar file whose members are grouped by key: every member of one
sample is named ``{key}.{ext}`` and the members of a sample are consecutive. The
writer stores, per record:

- ``{key}.{jpg|png|webp|gif|bmp|img}``: the encoded image (extension from its magic
  number; ``img`` when unknown);
- ``{key}.txt``: the caption, UTF-8;
- ``{key}.cls``: the class index as decimal text, only for labels >= 0;
- ``{key}.json``: ``{"key": the record's own key}``.

Keys are the zero-padded running index of the sample. A directory of shards written
here carries ``manifest.json``: ``{"format": "cnclip-wds", "version": 1,
"num_samples": N, "shards": [{"name": "shard-000000.tar", "num_samples": n}, ...]}``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from runtime.errors import DataError
from runtime.files import (
    progress_disabled,
    replace_directory,
    staging_directory,
    write_atomically,
)
from runtime.manifests import MANIFEST
from sources.records import Record

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
FORMAT, VERSION = "cnclip-wds", 1
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "img")
_KEY_WIDTH = 9
# Errors of a truncated or corrupt tar (or of its compression) while streaming it.
_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, ValueError)


def image_extension(data: bytes) -> str:
    """The file extension of encoded image bytes, from their magic number; ``img`` if unknown."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data.startswith(b"BM"):
        return "bmp"
    return "img"


# ---------------------------------------------------------------- writer


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


class _ShardWriter:
    """Writes shards into ``directory``, each under a temporary name until it is closed."""

    def __init__(self, directory: Path, prefix: str, samples_per_shard: int) -> None:
        self.directory, self.prefix, self.samples_per_shard = directory, prefix, samples_per_shard
        self.shards: list[dict[str, Any]] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def write(self, key: str, record: Record) -> None:
        if self._tar is None:
            name = f"{self.prefix}-{len(self.shards):06d}.tar"
            path = self.directory / f".{name}.tmp"
            # open across many write() calls; closed by finish_shard() or abort()
            self._tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
            self.shards.append({"name": name, "num_samples": 0})
        _add_member(self._tar, f"{key}.{image_extension(record.image)}", record.image)
        _add_member(self._tar, f"{key}.txt", record.text.encode("utf-8"))
        if record.label >= 0:
            _add_member(self._tar, f"{key}.cls", str(record.label).encode("ascii"))
        meta = json.dumps({"key": record.key}, ensure_ascii=False).encode("utf-8")
        _add_member(self._tar, f"{key}.json", meta)
        self._count += 1
        self.shards[-1]["num_samples"] = self._count
        if self._count >= self.samples_per_shard:
            self.finish_shard()

    def finish_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._tar, self._count = None, 0
        name = self.shards[-1]["name"]
        os.replace(self.directory / f".{name}.tmp", self.directory / name)

    def abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None


def _write_json_atomic(path: Path, obj: object) -> None:
    write_atomically(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def write_wds(
    records: Iterable[Record],
    out_dir: PathLike,
    *,
    samples_per_shard: int = 10000,
    total: int | None = None,
    progress: bool = True,
    prefix: str = "shard",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``records`` as WebDataset shards ``{prefix}-{i:06d}.tar`` plus ``manifest.json``.

    The shards are written in a temporary sibling of ``out_dir`` (each under a temporary
    name, renamed when complete, the manifest last), which then replaces ``out_dir``: a
    failure leaves ``out_dir`` as it was. A non-empty ``out_dir`` is refused with
    DataError unless ``overwrite``. ``total`` sizes the progress bar. Returns the manifest.
    """
    if samples_per_shard < 1:
        raise DataError(f"samples_per_shard must be at least 1, got {samples_per_shard}")
    if not prefix or "/" in prefix or prefix.startswith("."):
        raise DataError(f"invalid shard prefix {prefix!r}; use a plain name such as 'shard'")
    target = Path(out_dir)
    if target.exists() and not target.is_dir():
        raise DataError(f"{target}: exists and is not a directory; choose another out_dir")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise DataError(f"{target}: not empty; pass overwrite=True or choose an empty out_dir")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_directory(target.parent, f".{target.name}.writing-")
    writer = _ShardWriter(staging, prefix, samples_per_shard)
    try:
        num_samples = 0
        bar = tqdm(records, total=total, desc="samples", disable=progress_disabled(progress))
        with bar:
            for record in bar:
                writer.write(f"{num_samples:0{_KEY_WIDTH}d}", record)
                num_samples += 1
        writer.finish_shard()
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "num_samples": num_samples,
            "shards": writer.shards,
        }
        _write_json_atomic(staging / MANIFEST, manifest)
        replace_directory(staging, target)
    except BaseException:
        writer.abort()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


# ---------------------------------------------------------------- reader


def _shards_of(path: Path) -> tuple[list[Path], int | None]:
    """The shard files and sample count (None when unknown) of a directory or a .tar."""
    if path.is_file():
        return [path], None
    if not path.is_dir():
        raise DataError(f"{path}: not found; give a directory of .tar shards or one .tar file")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        shards = sorted(p for p in path.glob("*.tar") if p.is_file())
        if not shards:
            raise DataError(f"{path}: no .tar shards and no {MANIFEST}; write them with write_wds")
        return shards, None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ValueError(f"format {manifest.get('format')!r} {manifest.get('version')!r}")
        names = [str(shard["name"]) for shard in manifest["shards"]]
        num_samples = int(manifest["num_samples"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise DataError(
            f"{manifest_path}: not a {FORMAT} v{VERSION} manifest ({e}); rewrite it"
        ) from e
    shards = [path / name for name in names]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise DataError(f"{path}: shards of {MANIFEST} missing: {', '.join(missing[:5])}")
    return shards, num_samples


def _split_name(name: str) -> tuple[str, str]:
    """``(key, extension)`` of a member name: the key ends at the basename's first dot."""
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _record(key: str, members: dict[str, bytes]) -> Record:
    """The record of one sample's members; missing or undecodable parts are left empty."""
    image = next((members[ext] for ext in IMAGE_EXTENSIONS if ext in members), b"")
    try:
        text = members.get("txt", b"").decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    try:
        label = int(members["cls"].decode("ascii").strip()) if "cls" in members else -1
    except (UnicodeDecodeError, ValueError):
        label = -1
    try:
        meta = json.loads(members["json"]) if "json" in members else {}
        original = meta.get("key") if isinstance(meta, dict) else None
    except ValueError:
        original = None
    return Record(
        key=original if isinstance(original, str) else key, image=image, text=text, label=label
    )


class WdsSource:
    """A ShardedSource over WebDataset tar shards: a directory or a single ``.tar`` file.

    A directory with ``manifest.json`` uses its shard list and sample count; without
    one, every ``*.tar`` in name order, with ``num_samples`` None. ``read_shard``
    streams one tar and yields a Record per group of consecutive members sharing a key
    (``Record.key`` is the original key of the ``.json`` member when there is one). A
    group without image or text yields empty bytes or text, for the loader to count as
    corrupt. A truncated or corrupt tar ends its shard early with a logged warning and
    one count in ``corrupt_shards`` (counted in the process that reads it). DataError
    at open for a missing path, an invalid manifest or missing shards.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.shards, self._num_samples = _shards_of(self.path)
        self.corrupt_shards = 0

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def num_samples(self) -> int | None:
        return self._num_samples

    def read_shard(self, shard: int) -> Iterator[Record]:
        if not 0 <= shard < self.num_shards:
            raise IndexError(f"shard {shard} out of range for {self.num_shards} shards")
        path = self.shards[shard]
        key: str | None = None
        members: dict[str, bytes] = {}
        try:
            with tarfile.open(path, mode="r|*") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    member_key, ext = _split_name(info.name)
                    if member_key != key:
                        if key is not None:
                            yield _record(key, members)
                        key, members = member_key, {}
                    data = _read_member(tar.extractfile(info))
                    members.setdefault(ext, data)
        except _TAR_ERRORS as e:
            self.corrupt_shards += 1
            log.warning("%s: corrupt or truncated tar (%s); rest of the shard skipped", path, e)
            return
        if key is not None:
            yield _record(key, members)


def _read_member(f: IO[bytes] | None) -> bytes:
    return f.read() if f is not None else b""
