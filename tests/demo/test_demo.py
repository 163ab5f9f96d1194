"""``cnclip demo`` at its small scale: the drawn catalog, two-stage training, export, index,
the search check, and the search page driven by a real headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from cnclip.cli import main
from demo.catalog import COLOURS, KINDS, draw_item, write_catalog
from demo.pipeline import DemoResult, demo_settings
from tests.service.conftest import running

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    """What ``make demo`` runs, at the small scale and without serving (``--no-serve``)."""
    work = tmp_path_factory.mktemp("demo") / "work"
    assert main(["demo", "--scale", "small", "--no-serve", "--work", str(work)]) == 0
    report = json.loads((work / "report.json").read_text(encoding="utf-8"))
    return DemoResult(work, work / "bundle", work / "index", work / "data", report)


@pytest.fixture(scope="module")
def server(demo: DemoResult) -> Iterator[str]:
    settings = demo_settings(demo, "127.0.0.1", 0)
    with running(
        settings.model_copy(update={"cache": settings.cache.model_copy(update={"enabled": False})})
    ) as url:
        yield url


def test_the_catalog_is_varied_and_titled(tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path, 2, seed=3)
    assert len(catalog.items) == 2 * len(COLOURS) * len(KINDS)
    lines = [json.loads(x) for x in catalog.jsonl.read_text(encoding="utf-8").splitlines()]
    assert {x["title"] for x in lines} == {f"{c}的{k}" for c in COLOURS for k in KINDS}
    assert all((tmp_path / x["image"]).is_file() for x in lines)
    rng = np.random.default_rng(0)
    a, b = (np.asarray(draw_item("红色", "杯子", rng), dtype=np.float32) for _ in range(2))
    assert np.abs(a - b).mean() > 5  # two red cups are two different pictures
    red = np.asarray(draw_item("红色", "杯子", rng))
    reddish = (red[..., 0] > 150) & (red[..., 1] < 90) & (red[..., 2] < 90)
    assert reddish.mean() > 0.05


def test_every_title_finds_its_colour_and_kind_first(demo: DemoResult) -> None:
    search = demo.report["search"]
    assert search["titles"] == 48
    assert search["rank1_share"] >= 0.9, search["misses"]
    assert set(demo.report["seconds"]) >= {
        "training (stage 1 locks the image tower, stage 2 trains both)"
    }
    assert (demo.work / "run" / "checkpoints" / "lit.pt").is_file()  # stage 1 ran
    assert (demo.bundle / "manifest.json").is_file()


def test_the_api_serves_the_demo(server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        page = client.get("/")
        assert page.status_code == 200 and "cnclip" in page.text and '"top_k": 12' in page.text
        hits = client.post("/v1/search/text", json={"query": "蓝色的雨伞", "top_k": 3}).json()
        first = hits["items"][0]["metadata"]
        assert first["title"] == "蓝色的雨伞"
        picture = client.get(first["image_url"])
        assert picture.status_code == 200 and picture.content[:2] == b"\xff\xd8"
        assert client.get("/media/../run.yaml").status_code == 404
        assert "/" not in client.get("/openapi.json").json()["paths"]


def test_a_browser_searches_for_red_cups(server: str, tmp_path: Path, demo: DemoResult) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), (
        "chromium is installed by make install (scripts/system-deps.sh)"
    )
    shots = Path(os.environ.get("CNCLIP_ARTIFACTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(server)
        page.fill("#query", "红色的杯子")
        page.click("#search")
        page.wait_for_selector("#results .card")
        titles = page.eval_on_selector_all(
            "#results .card", "cards => cards.map(c => c.dataset.title)"
        )
        page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(shots / "demo-search.png"), full_page=True)
        assert titles[0] == "红色的杯子"
        assert titles[:3].count("红色的杯子") == 3  # the shop holds three red cups
        # Upload a picture: similar items and zero-shot labels.
        cup = demo.media / "images" / sorted(os.listdir(demo.media / "images"))[0]
        page.set_input_files("#upload", str(cup))
        page.click("#image-search")
        page.wait_for_selector("#labels li")
        labels = page.inner_text("#labels")
        assert page.inner_text("#status").startswith("以图搜图")
        browser.close()
    assert labels.strip()
    with Image.open(shots / "demo-search.png") as shot:
        assert shot.width >= 1000
