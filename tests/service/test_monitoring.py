"""Monitoring: the Grafana dashboard's queries against the service's real metrics, through a
real Prometheus (Debian's package, started here on loopback) scraping two servers with the
project's scrape configuration."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import yaml

from tests.conftest import ROOT
from tests.service.conftest import (
    REDIS_URL,
    free_port,
    local_prometheus,
    make_settings,
    photo_bytes,
    queries,
    running,
)

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "cnclip.json"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
# Series that come from elsewhere than the service: NVIDIA's DCGM exporter (GPU profile)
# and Prometheus itself.
FOREIGN = re.compile(r"^(DCGM_|up$)")
SUFFIXES = ("_bucket", "_count", "_sum")


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target, Grafana's rate interval made concrete."""
    panels = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    return [
        (panel["title"], target["expr"].replace("$__rate_interval", "1m"))
        for panel in panels
        for target in panel["targets"]
    ]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers followed by a selector or window,
    or standing alone as an argument, minus functions and label names."""
    without_labels = re.sub(r"\{[^}]*\}", "{}", expr)
    without_by = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_labels)
    names = set(
        re.findall(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\b(?=\s*(?:\{|\[|\)|$|\s*==))", without_by)
    )
    functions = {"sum", "max", "avg", "rate", "increase", "histogram_quantile", "vector"}
    return {n for n in names if n not in functions}


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_the_dashboard_covers_what_the_issue_asks() -> None:
    titles = " ".join(title.lower() for title, _ in dashboard_queries())
    for topic in ("requests per second", "error ratio", "p99", "p95", "p50", "batch size",
                  "queue depth", "queue wait", "encode time", "search time", "cache hit",
                  "redis", "items in the index", "gpu utilisation", "gpu memory"):  # fmt: skip
        assert topic in titles, topic


def test_the_dashboard_layout_and_configuration_are_sound() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        covered = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        assert panel["datasource"]["uid"] == "prometheus" and panel["targets"]
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["uid"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package (scripts/system-deps.sh)"
    check = subprocess.run(
        [promtool, "check", "config", str(SCRAPE_CONFIG)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_metric_of_the_dashboard_is_exported(bundle_dir: Path, index_root: Path) -> None:
    with running(make_settings(bundle_dir, index_root)) as url:
        exposition = httpx.get(f"{url}/metrics", timeout=10).text
    declared = set(re.findall(r"^# TYPE (\S+) ", exposition, flags=re.M))
    used = {family(n) for _, expr in dashboard_queries() for n in metric_names(expr)}
    assert used, "no metric names found in the dashboard"
    missing = sorted(n for n in used if not FOREIGN.match(n) and n not in declared)
    assert not missing, f"the dashboard queries metrics the service does not export: {missing}"


def _traffic(url: str) -> None:
    image = {"base64": base64.b64encode(photo_bytes(0)).decode()}
    with httpx.Client(base_url=url, timeout=30) as client:
        for query in queries() * 2:  # the second round hits the cache
            assert (
                client.post("/v1/search/text", json={"query": query, "top_k": 3}).status_code == 200
            )
        assert client.post("/v1/search/image", json={"image": image, "top_k": 3}).status_code == 200
        classify = {"image": image, "labels": ["足球", "蛋糕"]}
        assert client.post("/v1/classify", json=classify).status_code == 200
        assert client.post("/v1/search/text", json={"query": ""}).status_code == 400


def test_prometheus_scrapes_two_replicas_and_every_panel_has_data(
    bundle_dir: Path, index_root: Path, tmp_path: Path
) -> None:
    cached = make_settings(bundle_dir, index_root, cache={"redis_url": REDIS_URL})
    # The second replica's Redis is down: its cache errors feed the Redis panel.
    dead = make_settings(
        bundle_dir, index_root, cache={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}
    )
    with (
        running(cached) as first,
        running(dead) as second,
        local_prometheus(
            [first.removeprefix("http://"), second.removeprefix("http://")], tmp_path
        ) as url,
    ):
        # Poll Prometheus until every panel answers (rates need two scrapes, 5 s apart, of
        # counters that moved), sending traffic again between scrapes.
        deadline = time.monotonic() + 90
        sent = -1e9
        with httpx.Client(base_url=url, timeout=10) as client:
            while True:
                if time.monotonic() - sent >= 5:
                    _traffic(first)
                    _traffic(second)
                    sent = time.monotonic()
                replicas, empty = _replicas_up(client), _panels_without_data(client)
                if (replicas == 2 and not empty) or time.monotonic() > deadline:
                    break
                time.sleep(1)
        assert replicas == 2
        assert not empty, f"panels without data: {empty}"


def _replicas_up(client: httpx.Client) -> float:
    up = client.get("/api/v1/query", params={"query": 'sum(up{job="cnclip-api"})'}).json()
    result = up["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def _panels_without_data(client: httpx.Client) -> list[str]:
    empty = []
    for title, expr in dashboard_queries():
        if "DCGM_" in expr:
            continue  # the GPU profile's exporter: no GPU here
        answer = client.get("/api/v1/query", params={"query": expr}).json()
        assert answer["status"] == "success", (title, answer)
        if not answer["data"]["result"]:
            empty.append(title)
    return empty
