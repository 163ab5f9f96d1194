"""Reading and writing the ``manifest.json`` of every artifact, in one place.

Each artifact on disk (model bundle, index version) has one typed manifest class
(:class:`runtime.bundle_manifest.BundleManifest`, :class:`index.versions.IndexManifest`;
a Milvus version's is a collection property, :class:`index.milvus.MilvusManifest`);
the files all read and write through these functions, so
the format name and version are checked the same way everywhere, a reader never sees
half a file, and a newer format is refused with "upgrade cnclip".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from runtime.errors import CnClipError
from runtime.files import write_atomically

MANIFEST = "manifest.json"


def read_json(
    path: Path,
    *,
    format: str,
    version: int,
    error: type[CnClipError],
    what: str,
    fix: str,
) -> dict[str, Any]:
    """The JSON object at ``path``, checked to be a ``format`` manifest of a version this
    cnclip reads (1 to ``version``).

    ``what`` names the artifact in messages ("bundle", "index version"); ``fix`` says
    what to do when the file is unreadable ("export the bundle again").

    Raises:
        error: a missing, unreadable or foreign file, or a newer format version.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise error(f"{path.parent}: no {path.name}; not a {what}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: unreadable ({exc}); {fix}") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: not a {format} manifest")
    if data.get("format") != format:
        raise error(f"{path}: not a {format} manifest")
    found = data.get("format_version")
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise error(f"{path}: invalid {what} format version {found!r}; {fix}")
    if found > version:
        raise error(
            f"{path}: {what} format version {found} is newer than this cnclip reads "
            f"({version}); upgrade cnclip"
        )
    return data


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """``data`` as indented UTF-8 JSON, written atomically (readers see old or new)."""
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    return write_atomically(path, text.encode("utf-8"))


def _without(value: Any, keys: frozenset[str]) -> Any:
    if isinstance(value, Mapping):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list | tuple):
        return [_without(v, keys) for v in value]
    return value


def content_sha256(data: Mapping[str, Any], *, exclude: Iterable[str] = ()) -> str:
    """The sha256 of ``data`` as canonical JSON (sorted keys, no spaces), leaving out the
    keys in ``exclude`` at every depth: the same content always gives the same digest."""
    kept = _without(data, frozenset(exclude))
    blob = json.dumps(kept, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
