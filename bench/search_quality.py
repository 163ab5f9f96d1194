"""Product search quality on the demo's catalog, per mode and per query kind, side by side.

Run from the repository root::

    .venv/bin/python bench/search_quality.py [--work demo-work] [--scale full] [--reuse]

It builds the demo (``cnclip demo --no-serve``: the drawn shop of products of six brands
with model codes and several pictures each, the tiny two-stage model, its bundle and the
index with its lexical index and relevance calibration) unless ``--reuse`` finds one in
``--work``, then runs the demo's judged queries (``catalog/judged.jsonl``: kinds, colour
and kind, brands, model codes, negations, queries for what the shop does not hold)
through ``cnclip eval search`` twice, in the vector, lexical and hybrid modes:

- **as served** (query understanding on, the default relevance threshold): what users
  get, with the negation checks and what the threshold keeps and drops;
- **modes alone** (``--no-understand``): attribute words stay words, so that the table
  shows what lexical retrieval adds to the vectors for codes and brands.

The tables and the issue's goals, met or with their distance, go to
``bench/results/search-quality.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "search-quality.md"


def _goal(name: str, value: float, bound: float, above: bool = True) -> str:
    met = value >= bound if above else value <= bound
    sign = ">=" if above else "<="
    return f"| {name} | {value:.3f} | {sign} {bound:.3f} | {'met' if met else 'NOT met'} |"


def goals(on: dict[str, Any], off: dict[str, Any]) -> list[str]:
    """The issue's goals as table rows (value, bound, met)."""
    m_on, m_off = on["metrics"], off["metrics"]
    rows = ["| goal | measured | bound | |", "| --- | ---: | ---: | --- |"]
    for kind in ("code", "brand"):
        vector = m_off["vector"][kind]["nDCG@10"]
        rows.append(
            _goal(
                f"{kind} queries: hybrid nDCG@10 (modes alone; vector {vector:.3f})",
                m_off["hybrid"][kind]["nDCG@10"],
                vector + 0.3,
            )
        )
    vector = m_off["vector"]["colour+kind"]["nDCG@10"]
    rows.append(
        _goal(
            f"colour + kind queries: hybrid nDCG@10 (modes alone; vector {vector:.3f})",
            m_off["hybrid"]["colour+kind"]["nDCG@10"],
            vector - 0.02,
        )
    )
    negation = m_on["hybrid"]["negation"]
    rows.append(
        _goal(
            "negation: items of the negated value in the top 10",
            negation["negated@10"],
            0.0,
            above=False,
        )
    )
    rows.append(_goal("negation: items of the asked kind in the top 10", negation["asked@10"], 8.0))
    rows.append(
        _goal(
            "nothing-relevant queries answered with no items (share)",
            m_on["hybrid"]["nothing"]["empty"],
            1.0,
        )
    )
    rows.append(
        _goal(
            "judged queries keeping their first relevant item (share)",
            m_on["hybrid"]["all"]["kept"],
            0.95,
        )
    )
    calibration = on["calibration"] or {}
    rows.append(
        _goal(
            "calibration: expected calibration error on held-out items",
            calibration.get("ece") or 1.0,
            0.05,
            above=False,
        )
    )
    vector_ms, hybrid_ms = on["served_p50_ms"]["vector"], on["served_p50_ms"]["hybrid"]
    rows.append(
        _goal(
            "latency, server side (Server-Timing of cnclip serve, cache off): hybrid p50 / "
            f"vector p50 ({hybrid_ms:.2f} / {vector_ms:.2f} ms)",
            hybrid_ms / vector_ms,
            1.5,
            above=False,
        )
    )
    vector_ms, hybrid_ms = on["p50_ms"]["vector"], on["p50_ms"]["hybrid"]
    rows.append(
        f"| the search pipeline alone, in process: hybrid p50 / vector p50 ({hybrid_ms:.2f} "
        f"/ {vector_ms:.2f} ms) | {hybrid_ms / vector_ms:.3f} | | for information |"
    )
    return rows


def served_latency(work: Path, queries: list[str], rounds: int = 5) -> dict[str, float]:
    """p50 of the server's own time (its ``Server-Timing`` header) for the text searches
    of ``queries`` in the vector and hybrid modes, interleaved, through ``cnclip serve``
    on loopback with the cache off (the batcher, the encoders and the search included)."""
    import os
    import socket
    import statistics
    import subprocess
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "CNCLIP_CACHE__ENABLED": "false"}
    command = [sys.executable, "-m", "cnclip", "serve", "--bundle", str(work / "bundle")]
    command += ["--index", str(work / "index"), "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(command, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("cnclip serve did not become ready")
            time.sleep(0.3)
        times: dict[str, list[float]] = {"vector": [], "hybrid": []}
        with httpx.Client(base_url=url, timeout=30) as client:
            for round_ in range(rounds + 1):
                for query in queries:
                    for mode in times:
                        body = {"query": query, "mode": mode, "top_k": 10}
                        answer = client.post("/v1/search/text", json=body)
                        answer.raise_for_status()
                        took = float(answer.headers["server-timing"].split("dur=")[1])
                        if round_:  # the first round warms up
                            times[mode].append(took)
        return {mode: round(statistics.median(v), 3) for mode, v in times.items()}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="demo-work", help="the demo's folder (demo-work)")
    parser.add_argument("--scale", choices=["full", "small"], default="full")
    parser.add_argument("--reuse", action="store_true", help="use the demo already in --work")
    args = parser.parse_args(argv)

    from cnclip.cli import main as cnclip

    work = Path(args.work)
    built = (work / "report.json").is_file() and (work / "catalog" / "judged.jsonl").is_file()
    build = ["demo", "--no-serve", "--scale", args.scale, "--work", str(work)]
    if not (args.reuse and built) and cnclip(build) != 0:
        return 1
    common = ["eval", "search", "--index", str(work / "index"), "--bundle", str(work / "bundle")]
    common += ["--queries", str(work / "catalog" / "judged.jsonl"), "-q"]
    reports = {}
    tables = {}
    for name, extra in (("on", []), ("off", ["--no-understand"])):
        out = work / "eval" / f"search-{name}"
        if cnclip([*common, *extra, "--out", str(out)]) != 0:
            return 1
        reports[name] = json.loads((out / "search.json").read_text(encoding="utf-8"))
        tables[name] = (out / "search.md").read_text(encoding="utf-8")
    on = reports["on"]
    lines = (work / "catalog" / "judged.jsonl").read_text(encoding="utf-8").splitlines()
    judged = [json.loads(line)["query"] for line in lines if line.strip()]
    served = served_latency(work, judged)
    on["served_p50_ms"] = served
    demo = json.loads((work / "report.json").read_text(encoding="utf-8"))
    calibration = on["calibration"] or {}
    command = "bench/search_quality.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Product search on the demo's shop: modes, relevance, negation",
        "",
        f"- command: `.venv/bin/python {command.strip()}`",
        f"- machine: {describe()}",
        f"- date: {datetime.date.today().isoformat()}",
        f"- catalog: the demo at scale {demo.get('scale')}: {on['index']['count']} pictures "
        f"of {demo.get('shop_products', '?')} products a title x 48 titles, six brands, "
        f"one model code a product; {on['queries']} judged queries "
        f"({', '.join(f'{k} {n}' for k, n in on['kinds'].items())})",
        f"- relevance: {calibration.get('method')} calibration ({calibration.get('source')}), "
        f"ECE {calibration.get('ece')} on held-out items; default threshold "
        f"{on['min_relevance']}",
        "",
        "## Goals",
        "",
        *goals(on, reports["off"]),
        "",
        "## As served (query understanding on, default threshold)",
        "",
        tables["on"].rstrip(),
        "",
        "## The modes alone (--no-understand)",
        "",
        tables["off"].rstrip(),
        "",
        "nDCG@10, R@10 and MRR are at the default threshold (results under it are dropped); "
        "`kept`: the share of queries whose first relevant item without a threshold is still "
        "returned; `empty`: the share of nothing-relevant queries answered with no items; "
        "`negated@10` / `asked@10`: items of the excluded / asked values in the top 10; p50: "
        "the reading, the text embedding and the search of one query, in process "
        "(`evaluation/search.py`).",
        "",
    ]
    RESULTS.write_text("\n".join(lines), encoding="utf-8")
    print(RESULTS.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
