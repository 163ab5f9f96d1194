"""A milvus-lite server on a loopback port: Milvus's gRPC protocol on one machine, for the
tests, the benchmarks and a first try of the Milvus backend (``pip install milvus-lite``)::

    with LiteServer(tmp_path / "milvus") as server:
        index.build_index(server.location("shop"), corpus)

milvus-lite is a Python re-implementation of the Milvus server: the same API as a
cluster for what it supports (FLAT, IVF_FLAT, IVF_SQ8, HNSW, HNSW_SQ), but nothing of a
cluster's speed, and no IVF_PQ, DiskANN or GPU index.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from runtime.errors import ConfigError

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _command() -> list[str]:
    found = shutil.which("milvus-lite") or str(Path(sys.executable).with_name("milvus-lite"))
    if not Path(found).is_file():
        raise ConfigError("milvus-lite is not installed: pip install 'cnclip[milvus]' milvus-lite")
    return [found]


class LiteServer:
    """``milvus-lite server`` on 127.0.0.1 with its data in ``data_dir``; ``stop()`` kills
    it (as a crash would) and ``start()`` brings it back on the same port and data."""

    def __init__(self, data_dir: str | Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.log = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def location(self, name: str) -> str:
        return f"milvus://127.0.0.1:{self.port}/{name}"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> LiteServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            *_command(),
            "server",
            "--data-dir",
            str(self.data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ConfigError(
                    f"milvus-lite exited with {self._process.returncode}; see {self.log}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.2)
                continue
            if self._answers():
                return self
            time.sleep(0.2)
        self.stop()
        raise ConfigError(f"milvus-lite did not answer within {timeout_s:.0f} s; see {self.log}")

    def _answers(self) -> bool:
        from index.backend import IndexUnavailableError
        from index.milvus import Connection, MilvusLocation

        connection = Connection(MilvusLocation.parse(self.location("probe")), timeout_s=2.0)
        try:
            connection.call("get_server_version")
            return True
        except (IndexUnavailableError, ConfigError):
            return False
        finally:
            connection.close()

    def stop(self) -> None:
        """Kill the server (SIGKILL: nothing is flushed that was not already)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def __enter__(self) -> LiteServer:
        return self.start() if self._process is None else self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
