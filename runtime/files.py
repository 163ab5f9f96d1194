"""Writing a file so that readers never see half of it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomically(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` (bytes or any buffer) to ``path`` all at once.

    The bytes go to a temporary file beside ``path`` (``.{name}.XXXX.tmp``), are synced,
    and the file is renamed over ``path``; on any failure the temporary file is removed
    and ``path`` is left as it was. Returns ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target
