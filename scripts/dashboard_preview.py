"""Draw docs/dashboard.png: the Grafana dashboard's panels from real data.

Grafana is not packaged for these machines, so this draws the dashboard itself: it serves
the demo (built by ``cnclip demo``, small scale, unless ``--work`` holds one), starts
Debian's Prometheus with the project's scrape configuration pointed at it, sends two
minutes of mixed traffic (new and repeated text queries, image searches, zero-shot
classification, some bad requests), then runs every query of
``deploy/grafana/dashboards/cnclip.json`` over that window and draws each panel with
Pillow in the dashboard's layout.

    .venv/bin/python scripts/dashboard_preview.py [--work demo-work] [--seconds 120]
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "cnclip.json"
FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"
COLOURS = ["#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0"]
UNIT_PX, ROW_PX = 56, 34  # one grid column and one grid row of Grafana's 24-column layout


def traffic(url: str, seconds: float, media: Path) -> None:
    """Mixed load from four threads: text (new and repeated), images, classify, bad input."""
    captions = (ROOT.parent / "shared/data/coco-cn-captions.txt").read_text().splitlines()
    queries = [line.split("\t", 1)[1][:30] for line in captions if "\t" in line]
    pictures = sorted((media / "images").glob("*.jpg"))[:40]
    stop = time.monotonic() + seconds

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() < stop:
                roll = rng.random()
                if roll < 0.55:
                    query = rng.choice(queries[:50] if rng.random() < 0.5 else queries)
                    client.post("/v1/search/text", json={"query": query, "top_k": 10})
                elif roll < 0.8:
                    image = {"base64": base64.b64encode(rng.choice(pictures).read_bytes()).decode()}
                    client.post("/v1/search/image", json={"image": image, "top_k": 10})
                elif roll < 0.95:
                    image = {"base64": base64.b64encode(rng.choice(pictures).read_bytes()).decode()}
                    client.post(
                        "/v1/classify", json={"image": image, "labels": ["杯子", "帽子", "包"]}
                    )
                else:
                    client.post("/v1/search/text", json={"query": ""})
                time.sleep(rng.uniform(0.0, 0.05))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _font(size: int) -> Any:
    return ImageFont.truetype(FONT, size) if Path(FONT).is_file() else ImageFont.load_default()


def _label(series: dict[str, Any], legend: str, table: bool = False) -> str:
    metric = series.get("metric", {})
    if table:
        return "  ".join(f"{k}={v[:16]}" for k, v in sorted(metric.items()))
    text = legend
    for key, value in metric.items():
        text = text.replace("{{" + key + "}}", value)
    return text if "{{" not in text else ",".join(metric.values()) or "value"


def _number(value: float, unit: str) -> str:
    if unit == "percentunit":
        return f"{100 * value:.1f}%"
    if unit == "s":
        return f"{1000 * value:.1f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.3g}"


def draw_panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    panel: dict[str, Any],
    data: list[tuple[str, list[tuple[float, float]]]],
    unit: str,
) -> None:
    x0, y0, x1, y1 = box
    draw.rounded_rectangle(box, radius=4, fill="#181b1f", outline="#2c3235")
    draw.text((x0 + 8, y0 + 6), panel["title"], fill="#d8d9da", font=_font(13))
    series = [(name, points) for name, points in data if points]
    if not series:
        draw.text((x0 + 8, y0 + 30), "No data (GPU profile only)", fill="#8e8e8e", font=_font(12))
        return
    if panel["type"] in ("stat", "table"):
        lines = [f"{name}: {_number(points[-1][1], unit)}" for name, points in series]
        if panel["type"] == "table":
            lines = [name for name, _ in series]  # the label values, as the table's rows
        for i, line in enumerate(lines[:4]):
            size = 22 if panel["type"] == "stat" else 12
            draw.text((x0 + 10, y0 + 28 + i * (size + 6)), line, fill="#73bf69", font=_font(size))
        return
    left, top, right, bottom = x0 + 56, y0 + 26, x1 - 10, y1 - 34
    values = [v for _, points in series for _, v in points]
    times = [t for _, points in series for t, _ in points]
    lo, hi = min(0.0, min(values)), max(values) or 1.0
    t0, t1 = min(times), max(times) or 1.0
    for frac in (0.0, 0.5, 1.0):
        y = bottom - frac * (bottom - top)
        draw.line((left, y, right, y), fill="#2c3235")
        draw.text(
            (x0 + 4, y - 7), _number(lo + frac * (hi - lo), unit), fill="#8e8e8e", font=_font(10)
        )
    for i, (name, points) in enumerate(series[:8]):
        colour = COLOURS[i % len(COLOURS)]
        sx = (right - left) / max(t1 - t0, 1e-9)
        sy = (bottom - top) / max(hi - lo, 1e-12)
        xy = [(left + (t - t0) * sx, bottom - (v - lo) * sy) for t, v in points]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        lx = x0 + 8 + (i % 4) * ((x1 - x0 - 16) // 4)
        ly = y1 - 30 + (i // 4) * 14
        draw.rectangle((lx, ly + 4, lx + 8, ly + 8), fill=colour)
        draw.text((lx + 12, ly), name[:24], fill="#c7d0d9", font=_font(10))


def render(prometheus: str, start: float, end: float, out: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) * ROW_PX + 50
    image = Image.new("RGB", (24 * UNIT_PX + 20, height), "#111217")
    draw = ImageDraw.Draw(image)
    heading = f"{dashboard['title']}  (drawn from Prometheus data by {Path(__file__).name})"
    draw.text((12, 10), heading, fill="#d8d9da", font=_font(16))
    with httpx.Client(base_url=prometheus, timeout=30) as client:
        for panel in panels:
            unit = panel["fieldConfig"]["defaults"].get("unit", "short")
            data = []
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", "30s")
                answer = client.get(
                    "/api/v1/query_range",
                    params={"query": expr, "start": start, "end": end, "step": 5},
                ).json()
                for series in answer.get("data", {}).get("result", []):
                    points = [
                        (float(t), float(v))
                        for t, v in series["values"]
                        if v not in ("NaN", "+Inf", "-Inf")
                    ]
                    legend = target.get("legendFormat", "")
                    data.append((_label(series, legend, panel["type"] == "table"), points))
            g = panel["gridPos"]
            x0, y0 = 10 + g["x"] * UNIT_PX, 40 + g["y"] * ROW_PX
            box = (x0, y0, x0 + g["w"] * UNIT_PX - 6, y0 + g["h"] * ROW_PX - 6)
            draw_panel(draw, box, panel, data, unit)
    image.save(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", default="demo-work", help="a demo build (made if missing)")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    args = parser.parse_args()
    from demo.pipeline import DemoResult, build_demo, demo_settings
    from tests.service.conftest import local_prometheus, running

    work = Path(args.work)
    if (work / "report.json").is_file():
        result = DemoResult(work, work / "bundle", work / "index", work / "data", {})
    else:
        result = build_demo(work, "small", progress=False)
    settings = demo_settings(result, "127.0.0.1", 0)
    cache = settings.cache.model_copy(update={"redis_url": "redis://127.0.0.1:6379/14"})
    settings = settings.model_copy(update={"cache": cache})
    with (
        tempfile.TemporaryDirectory() as tmp,
        running(settings) as url,
        local_prometheus([url.removeprefix("http://")], Path(tmp)) as prometheus,
    ):
        time.sleep(6)
        start = time.time()
        traffic(url, args.seconds, result.media)
        time.sleep(11)
        render(prometheus, start - 5, time.time(), Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
