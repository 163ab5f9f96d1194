"""``cnclip serve``: clear errors before starting, and several workers sharing metrics."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cnclip.cli import main
from index.build import Corpus, build_version
from runtime.bundle import Bundle
from runtime.identity import ModelRef
from tests.service.conftest import cnclip_serve, photos

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_environment() -> Iterator[None]:
    """``cnclip serve`` passes its options to workers as CNCLIP_* variables."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.usefixtures("clean_environment")
def test_mistakes_are_reported_before_serving(
    bundle_dir: Path, bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--bundle", str(tmp_path / "nothing")]) == 2
    assert "not a model bundle" in capsys.readouterr().err
    other = tmp_path / "other"
    vectors = bundle.encode_images(photos()[:2])
    another = ModelRef(model_id="f" * 64, bundle_id="e" * 64)
    build_version(other, Corpus(vectors, ["a", "b"]), model=another, progress=False)
    assert main(["serve", "--bundle", str(bundle_dir), "--index", str(other)]) == 2
    err = capsys.readouterr().err
    assert "rebuild the index with this one" in err and len(err.strip().splitlines()) == 1
    assert main(["serve", "--bundle", str(bundle_dir), "--workers", "0"]) == 2
    assert "workers" in capsys.readouterr().err


def test_two_workers_serve_and_add_up_their_metrics(
    bundle_dir: Path, index_root: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNCLIP_")}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    (tmp_path / "metrics").mkdir()
    args = ["--bundle", str(bundle_dir), "--index", str(index_root), "--workers", "2"]
    with cnclip_serve([*args, "--threads", "1", "--log-level", "warning"], env) as (url, _):
        with httpx.Client(base_url=url) as c:  # new connections spread over the workers
            for i in range(20):
                r = c.post(
                    "/v1/search/text", json={"query": f"猫{i}"}, headers={"Connection": "close"}
                )
                assert r.status_code == 200
        text = httpx.get(url + "/metrics").text
    line = next(
        x
        for x in text.splitlines()
        if x.startswith('cnclip_request_duration_seconds_count{endpoint="/v1/search/text"')
    )
    assert float(line.rsplit(" ", 1)[1]) == 20
    assert len(list((tmp_path / "metrics").glob("*.db"))) >= 2
