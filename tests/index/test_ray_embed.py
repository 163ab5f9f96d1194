"""Catalog embedding on a real local Ray cluster: the one-machine result; a killed job resumed."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from cnclip.cli import main
from index.embed import CATALOG_FETCH, EmbeddedCatalog, embed_catalog
from index.ray_embed import embed_catalog_ray, plan_actors, start_local_ray
from runtime.bundle import Bundle
from runtime.errors import ConfigError
from sources.catalog import CatalogItem, read_catalog
from tests.index.conftest import CountingEncoder, photos

ROOT = Path(__file__).resolve().parents[2]
GCS_WAIT = "RAY_gcs_server_port_wait_time_s"  # Ray spells it so


def assert_same_embeddings(got: EmbeddedCatalog, want: EmbeddedCatalog) -> None:
    assert got.ids == want.ids and got.rejects == want.rejects
    cosine = np.sum(np.asarray(got.vectors) * np.asarray(want.vectors), axis=1)
    assert len(cosine) == len(want.ids) and float(cosine.min()) >= 0.9999


def test_the_actor_pool_fits_the_cluster() -> None:
    two = {"CPU": 2.0}
    plan = plan_actors(two)
    assert (plan.actors, plan.cpus_per_actor, plan.backend) == (1, 1.0, "onnxruntime")
    assert plan_actors(two, actors=2).cpus_per_actor == 0.5  # 1 CPU left to the tasks
    with pytest.raises(ConfigError, match="no CPU of the cluster's 2 to read"):
        plan_actors(two, actors=2, cpus_per_actor=1.0)
    with pytest.raises(ConfigError, match="need 1 GPUs; the Ray cluster has 0"):
        plan_actors(two, gpus_per_actor=1.0)
    gpus = plan_actors({"CPU": 32.0, "GPU": 4.0}, gpus_per_actor=1.0)
    assert (gpus.actors, gpus.cpus_per_actor, gpus.backend) == (4, 1.0, "onnxruntime-cuda")
    assert plan_actors({"CPU": 32.0, "GPU": 1.0}, actors=2, gpus_per_actor=0.5).actors == 2
    with pytest.raises(ConfigError, match="unknown backend"):
        plan_actors(two, backend="cuda")


def test_a_local_cluster_whose_raylet_was_late_is_started_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray gives its raylet and GCS server 30 s; on a loaded machine the start is tried again
    (the real failure cannot be caused on demand, so ray.init fails here twice)."""
    calls: list[str] = []
    late = Exception("The current node timed out during startup. This could happen ...")
    gcs_late = RuntimeError("Timed out waiting for file /tmp/ray/session_x/gcs_server_port_y")
    waits: list[str | None] = []

    def init(**options: Any) -> None:
        calls.append("init")
        waits.append(os.environ.get(GCS_WAIT))
        if calls.count("init") < 3:
            raise late if len(calls) == 1 else gcs_late

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.delenv(GCS_WAIT, raising=False)
    start_local_ray(num_cpus=2)
    assert calls == ["init", "shutdown", "init", "shutdown", "init"]
    assert waits == ["120"] * 3  # the GCS server's wait, for the start only
    assert GCS_WAIT not in os.environ
    calls.clear()
    monkeypatch.setattr(ray, "init", lambda **options: (_ for _ in ()).throw(late))
    with pytest.raises(Exception, match="timed out during startup"):
        start_local_ray(num_cpus=2)  # three tries, then the error
    other = ValueError("num_cpus must be positive")
    monkeypatch.setattr(ray, "init", lambda **options: (_ for _ in ()).throw(other))
    with pytest.raises(ValueError, match="num_cpus"):
        start_local_ray(num_cpus=-1)  # not retried


def test_ray_gives_the_one_machine_embeddings_and_rejects(
    bundle: Bundle, bundle_dir: Path, catalog: tuple[Path, list[CatalogItem]], tmp_path: Path
) -> None:
    path, items = catalog  # 13 photos and 3 bad images, in shards of 4
    one = embed_catalog(
        bundle,
        items,
        tmp_path / "one",
        base_dir=path.parent,
        batch_size=3,
        shard_size=4,
        progress=False,
    )
    start_local_ray(
        num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
    )
    try:
        distributed = embed_catalog_ray(
            bundle_dir,
            items,
            tmp_path / "ray",
            base_dir=path.parent,
            actors=2,
            batch_size=3,
            shard_size=4,
            progress=False,
        )
    finally:
        ray.shutdown()
    assert_same_embeddings(distributed, one)
    assert [r["id"] for r in distributed.rejects] == ["missing", "truncated", "text"]
    logged = (tmp_path / "ray" / "rejects.jsonl").read_text("utf-8").splitlines()
    assert [json.loads(line) for line in logged] == one.rejects

    def layout(work: Path) -> list[str]:
        return sorted(p.name for p in work.iterdir() if not p.name.startswith("."))

    assert layout(tmp_path / "ray") == layout(tmp_path / "one")
    # The one-machine path takes the Ray directory as finished: nothing is encoded again.
    counting = CountingEncoder(bundle)
    again = embed_catalog(counting, items, tmp_path / "ray", base_dir=path.parent, progress=False)
    assert counting.images == 0
    assert_same_embeddings(again, one)


# --------------------------------------------------------------------------- kill and resume


class GatedHandler(SimpleHTTPRequestHandler):
    """Serves the photos; ``/late/...`` only once the gate is open (the job is killed before)."""

    gate: threading.Event

    def do_GET(self) -> None:
        if self.path.startswith("/late/"):
            self.gate.wait(timeout=120)
            self.path = self.path.removeprefix("/late")
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the killed job's connections are gone when the gate opens


@pytest.fixture
def gated_photos() -> Iterator[tuple[str, threading.Event]]:
    gate = threading.Event()
    handler = type("Handler", (GatedHandler,), {"gate": gate})
    server = QuietServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(photos()[0].parent))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", gate
    finally:
        gate.set()
        server.shutdown()
        server.server_close()
        thread.join()


def cnclip(*argv: str) -> list[str]:
    return [sys.executable, "-m", "cnclip", *argv]


def shard_times(work: Path, shards: range) -> dict[str, int]:
    files = [work / f"shard-{k:05d}{s}" for k in shards for s in (".npy", ".ids.txt", ".done.json")]
    return {f.name: f.stat().st_mtime_ns for f in files}


def test_a_killed_ray_job_resumes_and_the_index_builds_without_encoding(
    bundle: Bundle,
    bundle_dir: Path,
    gated_photos: tuple[str, threading.Event],
    tmp_path: Path,
) -> None:
    url, gate = gated_photos
    shots = (photos() * 2)[:24]  # 24 items of the photos, some twice
    # Shards of 4: the first two are served at once, the last four only after the kill.
    lines = [
        json.dumps({"id": f"sku-{i}", "image": f"{url}/{'late/' if i >= 8 else ''}{shot.name}"})
        for i, shot in enumerate(shots)
    ]
    catalog = tmp_path / "items.jsonl"
    catalog.write_text("\n".join(lines) + "\n", encoding="utf-8")
    work = tmp_path / "work"
    embed = cnclip(
        "index", "embed", "--bundle", str(bundle_dir), "--catalog", str(catalog), "--out",
        str(work), "--ray", "--actors", "2", "--batch-size", "2", "--shard-size", "4",
        "--allow-private-urls",
    )  # fmt: skip
    log = tmp_path / "killed.log"
    with log.open("wb") as stderr:
        job = subprocess.Popen(
            embed, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while not (work / "shard-00001.done.json").exists():
            assert job.poll() is None, log.read_text("utf-8", "replace")
            assert time.monotonic() < deadline, "the first two shards were not written in 180 s"
            time.sleep(0.05)
        assert not (work / "shard-00002.done.json").exists()
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    kept = shard_times(work, range(2))

    gate.set()
    resumed = subprocess.run(embed, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "24 images embedded" in resumed.stderr and "0 rejects" in resumed.stderr
    assert shard_times(work, range(2)) == kept  # the finished shards were skipped
    items = read_catalog(catalog)
    one = embed_catalog(
        bundle,
        items,
        tmp_path / "one",
        base_dir=tmp_path,
        shard_size=4,
        progress=False,
        fetch=replace(CATALOG_FETCH, allow_private=True),
    )
    counting = CountingEncoder(bundle)
    distributed = embed_catalog(counting, items, work, base_dir=tmp_path, progress=False)
    assert counting.images == 0
    assert_same_embeddings(distributed, one)

    done = shard_times(work, range(6))
    build = subprocess.run(
        cnclip(
            "index",
            "build",
            "--bundle",
            str(bundle_dir),
            "--catalog",
            str(catalog),
            "--work-dir",
            str(work),
            "--out",
            str(tmp_path / "index"),
            "--allow-private-urls",
            "-q",
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    assert shard_times(work, range(6)) == done  # nothing embedded again
    manifest = json.loads((tmp_path / "index" / "v0001" / "manifest.json").read_text("utf-8"))
    assert manifest["count"] == 24


def test_cnclip_index_embed_on_one_machine_and_its_refusals(
    bundle: Bundle,
    bundle_dir: Path,
    catalog: tuple[Path, list[CatalogItem]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, items = catalog
    base = ["index", "embed", "--bundle", str(bundle_dir), "--catalog", str(path)]
    out = tmp_path / "work"
    assert main([*base, "--out", str(out), "--shard-size", "4", "--workers", "2"]) == 0
    summary = capsys.readouterr().err
    assert "13 images embedded" in summary and "3 rejects" in summary
    assert f"--work-dir {out} --out INDEX" in summary
    one = embed_catalog(bundle, items, tmp_path / "one", base_dir=path.parent, progress=False)
    got = embed_catalog(CountingEncoder(bundle), items, out, base_dir=path.parent, progress=False)
    assert_same_embeddings(got, one)

    assert main([*base, "--out", str(tmp_path / "x"), "--actors", "2"]) == 2
    assert "--actors: for --ray" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "x"), "--ray", "--threads", "2"]) == 2
    assert "--threads: for one machine" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
