"""A tiny bundle and an index of the real photos, and a real server on a free port."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
import yaml

from export.bundle import export_bundle
from index.build import Corpus, build_version
from model.modeling import build_model
from runtime.bundle import Bundle, load_bundle
from service.app import create_app
from service.settings import Settings
from tests.conftest import data_root, tiny_config

REDIS_URL = "redis://127.0.0.1:6379/15"


def photos() -> list[Path]:
    return sorted((data_root() / "coco-photos").glob("*.jpg"))


def queries() -> list[str]:
    lines = (data_root() / "coco-photos" / "queries.jsonl").read_text(encoding="utf-8")
    return [json.loads(line)["query"] for line in lines.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("service") / "bundle"
    export_bundle(build_model(tiny_config("vit")).eval(), path, verify_data=data_root())
    return path


@pytest.fixture(scope="session")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir, threads=1)


@pytest.fixture(scope="session")
def index_template(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The photos (ids photo-0..), two categories, and their queries as the text corpus."""
    files = photos()
    vectors = bundle.encode_images(files)
    ids = [f"photo-{i}" for i in range(len(files))]
    items = [
        {"id": ids[i], "title": f.stem, "category": "街景" if i % 2 else "室内", "price": 10 * i}
        for i, f in enumerate(files)
    ]
    texts = queries()
    text_corpus = Corpus(
        bundle.encode_texts(texts),
        [f"text-{i}" for i in range(len(texts))],
        [{"id": f"text-{i}", "title": t} for i, t in enumerate(texts)],
    )
    root = tmp_path_factory.mktemp("service") / "index"
    build_version(
        root,
        Corpus(vectors, ids, items),
        model=bundle.identity,
        texts=text_corpus,
        progress=False,
    )
    return root


@pytest.fixture
def index_root(index_template: Path, tmp_path: Path) -> Path:
    """A copy each test may change."""
    root = tmp_path / "index"
    shutil.copytree(index_template, root)
    return root


def make_settings(bundle_dir: Path, index: Path | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"bundle": bundle_dir, "index": index, "threads": 1}
    values.update(overrides)
    return Settings(**values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(settings: Settings) -> Iterator[str]:
    """A real uvicorn server for ``settings`` on a free port: yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@contextmanager
def cnclip_serve(
    args: list[str], env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``cnclip serve ARGS --port P`` in its own process (without the caller's CNCLIP_*
    variables), once ``/readyz`` answers 200: yields its URL and the process, whose
    standard error can be read after the block."""
    port = free_port()
    environment = env or {k: v for k, v in os.environ.items() if not k.startswith("CNCLIP_")}
    command = [sys.executable, "-m", "cnclip.cli", "serve", *args, "--port", str(port)]
    root = Path(__file__).resolve().parents[2]
    server = subprocess.Popen(command, cwd=root, env=environment, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "cnclip serve did not become ready"
            time.sleep(0.2)
        yield url, server
    finally:
        server.terminate()
        server.wait(30)


@contextmanager
def local_prometheus(targets: list[str], work: Path) -> Iterator[str]:
    """Debian's Prometheus on a free loopback port, with the project's scrape configuration
    (deploy/prometheus/prometheus.yml) pointed at ``targets`` instead of the compose
    service ``api``; yields its URL once ready."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is installed by make install (scripts/system-deps.sh)"
    project = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "prometheus.yml"
    scrape = yaml.safe_load(project.read_text(encoding="utf-8"))
    jobs = [job for job in scrape["scrape_configs"] if job["job_name"] == "cnclip-api"]
    del jobs[0]["dns_sd_configs"]
    jobs[0]["static_configs"] = [{"targets": targets}]
    scrape["scrape_configs"] = jobs  # without the GPU profile's DCGM job
    config = work / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape), encoding="utf-8")
    log = work / "prometheus.log"
    port = free_port()
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not become ready: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def photo_bytes(i: int = 0) -> bytes:
    return photos()[i].read_bytes()


def vector_close(a: list[float], b: np.ndarray, tol: float = 1e-4) -> bool:
    return bool(np.allclose(np.asarray(a, dtype=np.float32), b, atol=tol))
