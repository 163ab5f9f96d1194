"""The REST service under load: text search (uncached, cached) and image search (batched or not).

Run from the repository root (Redis on 127.0.0.1:6379 for the cached scenarios)::

    .venv/bin/python bench/service.py                       # prepare (or reuse), then all
    .venv/bin/python bench/service.py --prepare-only        # only the bundle and the index
    .venv/bin/python bench/service.py --only text-cached,text-cached-w2
    .venv/bin/python bench/service.py --n 20000 --work /tmp/x --results /tmp/x/results

Setup, kept in ``--work`` (default ``/var/tmp/cnclip-service-bench``) and reused when
complete: ``bundle/``, the ViT-B-16 geometry with seeded random weights (speed does not
depend on the values) exported to int8 ONNX and verified; ``index/``, ``--n``
(1,000,000) synthetic CLIP-like 512-d vectors (index/synthetic.py) with item metadata
(title, one of 20 categories, price) in the default "quality" IVF-PQ index, built with
that bundle. Preparing takes ~15 minutes the first time; torch is imported only
to export the bundle.

Each scenario starts its own server as a separate process (uvicorn with the app factory
``service.app:create_app_from_env``, settings from ``CNCLIP_*`` variables, 2 inference
threads), waits for ``/readyz``, runs the closed-loop load generator (bench/loadgen.py)
as another process on the same machine, reads ``/metrics`` (before and after, so the
average batch size is that of the run), and stops the server. Queries are real COCO-CN
captions (cut to 40 characters); images are the real COCO photos, sent as base64 JSON.

Goals (from the issue): text search uncached >= 80 requests/s with p99 <= 150 ms at 32
clients, >= 1,000 requests/s when cached, no errors; image search with dynamic batching
>= 1.5x the requests/s of the same server with batch size 1 at 16 clients.
Writes ``bench/results/service.md`` and ``bench/results/service.json``.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.inputs import DATA  # noqa: E402
from bench.loadgen import run_once  # noqa: E402
from bench.machine import describe  # noqa: E402
from runtime.identity import ModelRef  # noqa: E402

APP = "service.app:create_app_from_env"
DEFAULT_WORK = Path("/var/tmp/cnclip-service-bench")
DIM = 512
THREADS = 2
QUERY_CHARS = 40
CACHED_QUERIES = 200
READY_TIMEOUT_S = 300.0
CATEGORIES = (
    "服装", "鞋靴", "箱包", "手机", "电脑", "家电", "美妆", "食品", "饮料", "母婴",
    "玩具", "运动", "户外", "家具", "厨具", "图书", "珠宝", "手表", "汽车用品", "宠物",
)  # fmt: skip


# --------------------------------------------------------------------------- preparation


def prepare_bundle(work: Path) -> Path:
    """``work/bundle``: ViT-B-16 geometry, ``torch.manual_seed(0)`` weights, int8, verified."""
    target = work / "bundle"
    if (target / "manifest.json").is_file():
        print(f"bundle: reusing {target}", flush=True)
        return target
    import torch

    from export.bundle import export_bundle
    from model.configs import get_config
    from model.modeling import build_model

    for leftover in work.glob(".bundle-partial-*"):
        shutil.rmtree(leftover, ignore_errors=True)  # an interrupted earlier export
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = build_model(get_config("ViT-B-16")).eval()
    start = time.perf_counter()
    print("bundle: exporting ViT-B-16 (seeded random weights) to int8 ...", flush=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-partial-", dir=work))
    try:
        export_bundle(model, staging / "bundle", precision="int8", verify_data=DATA)
        if target.exists():  # a directory without a manifest: not a bundle
            shutil.rmtree(target)
        os.replace(staging / "bundle", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"bundle: written in {time.perf_counter() - start:.0f} s", flush=True)
    return target


class _Items(Sequence[dict[str, Any]]):
    """Catalog records made on demand (a million dicts need not sit in memory)."""

    def __init__(self, titles: Sequence[str], categories: Any, prices: Any) -> None:
        self.titles = titles
        self.categories = categories
        self.prices = prices

    def __len__(self) -> int:
        return len(self.prices)

    @overload
    def __getitem__(self, row: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, row: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, row: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(len(self)))]
        if not -len(self) <= row < len(self):
            raise IndexError(row)
        row %= len(self)
        category = CATEGORIES[int(self.categories[row])]
        title = f"{category} {self.titles[row % len(self.titles)][:20]}"
        return {"id": f"item-{row}", "title": title, "category": category,
                "price": int(self.prices[row])}  # fmt: skip


def index_is_ready(root: Path, model: ModelRef, n: int) -> bool:
    """``root`` has a current version built with this bundle, holding ``n`` items."""
    from index.versions import IndexManifest, IndexVersionError, resolve
    from runtime.identity import same_bundle

    if not (root / "CURRENT").is_file():
        return False
    try:
        manifest = IndexManifest.read(resolve(root))
    except IndexVersionError:
        return False
    return same_bundle(manifest.model, model) and manifest.count == n


def prepare_index(work: Path, model: ModelRef, n: int) -> Path:
    """``work/index``: ``n`` CLIP-like vectors with metadata, the "quality" profile."""
    root = work / "index"
    if index_is_ready(root, model, n):
        print(f"index: reusing {root}", flush=True)
        return root
    import numpy as np

    from index.build import Corpus, build_version
    from index.synthetic import clip_like, topic_labels

    if root.exists():
        print(f"index: {root} is for another bundle or size, or incomplete: rebuilding", flush=True)
        shutil.rmtree(root)
    start = time.perf_counter()
    print(f"index: generating {n:,} x {DIM} vectors ...", flush=True)
    vectors = clip_like(n, DIM, seed=0)
    categories = topic_labels(n, seed=0) % len(CATEGORIES)  # categories follow topics
    prices = np.random.default_rng(1).integers(1, 10_000, size=n)
    items = _Items(text_queries(), categories, prices)
    ids = [f"item-{i}" for i in range(n)]
    print("index: building (train, add, tune) ...", flush=True)
    build_version(root, Corpus(vectors, ids, items), model=model, profile="quality")
    print(f"index: built in {time.perf_counter() - start:.0f} s", flush=True)
    return root


def prepare(work: Path, n: int) -> dict[str, Any]:
    from index.versions import IndexManifest, resolve
    from runtime.bundle_manifest import bundle_ref

    work.mkdir(parents=True, exist_ok=True)
    bundle = prepare_bundle(work)
    model = bundle_ref(bundle)
    index = prepare_index(work, model, n)
    manifest = IndexManifest.read(resolve(index))
    return {
        "bundle": str(bundle),
        "bundle_id": model.bundle_id,
        "index": str(index),
        "index_version": resolve(index).name,
        "count": manifest.count,
        "factory": manifest.factory,
        "search": dict(manifest.search),
    }


# ------------------------------------------------------------------------------- inputs


def text_queries() -> list[str]:
    """The distinct COCO-CN captions, cut to 40 characters, in a seeded random order."""
    lines = (DATA / "coco-cn-captions.txt").read_text(encoding="utf-8").splitlines()
    captions = [line.split("\t", 1)[-1].strip()[:QUERY_CHARS] for line in lines if line.strip()]
    unique = sorted(set(filter(None, captions)))
    random.Random(0).shuffle(unique)
    return unique


def text_bodies(queries: Sequence[str]) -> list[bytes]:
    return [json.dumps({"query": q, "top_k": 10}, ensure_ascii=False).encode() for q in queries]


def image_bodies() -> list[bytes]:
    photos = sorted((DATA / "coco-photos").glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no photos in {DATA / 'coco-photos'}")
    return [
        json.dumps(
            {"image": {"base64": base64.b64encode(p.read_bytes()).decode()}, "top_k": 10}
        ).encode()
        for p in photos
    ]


# ---------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "text" or "image": the route and the tower whose batches are counted
    bodies: str  # "unique", "cached" or "image"
    concurrency: int
    duration_s: float
    workers: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    warm: bool = False  # send every body once first (fills the cache)
    rate: float | None = None  # requests/s over all clients (open loop); None: closed loop


NO_CACHE = {"CNCLIP_CACHE__ENABLED": "false"}


def scenarios(text_s: float, image_s: float, redis_url: str) -> list[Scenario]:
    cached = {"CNCLIP_CACHE__ENABLED": "true", "CNCLIP_CACHE__REDIS_URL": redis_url}
    batch = {"CNCLIP_IMAGE_BATCH__MAX_WAIT_MS": "10"}
    return [
        # The goal: 32 clients sending 85 requests/s between them, p99 <= 150 ms ...
        Scenario("text-uncached", "text", "unique", 32, text_s, env=NO_CACHE, rate=85.0),
        # ... and the ceiling: 32 clients back to back (latency is then 32 / throughput).
        Scenario("text-uncached-max", "text", "unique", 32, text_s, env=NO_CACHE),
        Scenario("text-cached", "text", "cached", 32, text_s, env=cached, warm=True),
        Scenario("text-cached-w2", "text", "cached", 32, text_s, 2, cached, warm=True),
        Scenario(
            "image-batched", "image", "image", 16, image_s,
            env={**NO_CACHE, **batch, "CNCLIP_IMAGE_BATCH__MAX_BATCH_SIZE": "16"},
        ),
        Scenario(
            "image-b1", "image", "image", 16, image_s,
            env={**NO_CACHE, **batch, "CNCLIP_IMAGE_BATCH__MAX_BATCH_SIZE": "1"},
        ),
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def redis_answers(url: str) -> bool:
    """A Redis server answers PING at ``url``."""
    parsed = urllib.parse.urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or 6379), 2
        ) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _log_tail(log: Path, lines: int = 40) -> str:
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def server(
    app: str, port: int, workers: int, env: Mapping[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A uvicorn process serving the app, ready (``/readyz`` 200) when the block starts."""
    command = [
        sys.executable, "-m", "uvicorn", app, "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--log-level", "warning",
    ]  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CNCLIP_")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**clean, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our Ctrl-C reaches only us; we stop it below
        )
    try:
        start = time.perf_counter()
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {process.returncode} before it was ready; "
                    f"its log ({log}):\n{_log_tail(log)}"
                )
            try:
                if http_get(f"http://127.0.0.1:{port}/readyz", 2.0)[0] == 200:
                    break
            except OSError:
                pass
            if time.perf_counter() - start > READY_TIMEOUT_S:
                raise RuntimeError(
                    f"server not ready after {READY_TIMEOUT_S:.0f} s; its log ({log}):\n"
                    f"{_log_tail(log)}"
                )
            time.sleep(0.5)
        print(f"  ready in {time.perf_counter() - start:.1f} s", flush=True)
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the server and its workers
        process.wait()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def batch_totals(metrics: str, tower: str) -> tuple[float, float] | None:
    """``(sum, count)`` of ``cnclip_batch_size`` for ``tower`` in Prometheus text, or None."""
    totals = {"cnclip_batch_size_sum": 0.0, "cnclip_batch_size_count": 0.0}
    found = False
    for line in metrics.splitlines():
        match = _SAMPLE.match(line)
        if not match or match.group(1) not in totals:
            continue
        if dict(_LABEL.findall(match.group(2) or "")).get("tower") != tower:
            continue
        totals[match.group(1)] += float(match.group(3))
        found = True
    return (totals["cnclip_batch_size_sum"], totals["cnclip_batch_size_count"]) if found else None


def metrics_snapshot(port: int) -> str:
    try:
        status, text = http_get(f"http://127.0.0.1:{port}/metrics")
    except OSError as exc:
        print(f"  /metrics: {exc}", flush=True)
        return ""
    if status != 200:
        print(f"  /metrics answered {status}", flush=True)
        return ""
    return text


def average_batch(before: str, after: str, tower: str) -> float | None:
    """The mean batch size of the batches run between two ``/metrics`` snapshots."""
    end = batch_totals(after, tower)
    if end is None:
        names = sorted({m.group(1) for m in map(_SAMPLE.match, after.splitlines()) if m})
        batchy = [name for name in names if "batch" in name]
        print(f"  no cnclip_batch_size{{tower={tower!r}}} in /metrics (has {batchy})", flush=True)
        return None
    begin = batch_totals(before, tower) or (0.0, 0.0)
    count = end[1] - begin[1]
    return (end[0] - begin[0]) / count if count > 0 else None


def run_loadgen(
    port: int, path: str, bodies_file: Path, scenario: Scenario, warmup_s: float, out: Path
) -> dict[str, Any]:
    """bench/loadgen.py in its own process; its JSON result."""
    command = [
        sys.executable, str(ROOT / "bench" / "loadgen.py"), "--host", "127.0.0.1",
        "--port", str(port), "--path", path, "--bodies", str(bodies_file),
        "--concurrency", str(scenario.concurrency), "--duration", str(scenario.duration_s),
        "--warmup", str(warmup_s), "--json", str(out),
    ]  # fmt: skip
    if scenario.rate is not None:
        command += ["--rate", str(scenario.rate)]
    timeout = scenario.duration_s + warmup_s + 120
    done = subprocess.run(
        command, cwd=ROOT, timeout=timeout, check=False, stdout=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed with {done.returncode}: {shlex.join(command)}")
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return result


def run_scenario(
    app: str,
    scenario: Scenario,
    paths: Mapping[str, str],
    bodies: Mapping[str, list[bytes]],
    base_env: Mapping[str, str],
    work: Path,
    warmup_s: float,
) -> dict[str, Any]:
    print(
        f"{scenario.name}: {scenario.concurrency} clients, {scenario.duration_s:g} s, "
        f"{scenario.workers} worker(s), {dict(scenario.env)}",
        flush=True,
    )
    body_list = bodies[scenario.bodies]
    bodies_file = work / "bodies" / f"{scenario.bodies}.jsonl"
    bodies_file.parent.mkdir(exist_ok=True)
    bodies_file.write_bytes(b"".join(body + b"\n" for body in body_list))
    port = free_port()
    path = paths[scenario.kind]
    env = {**base_env, **scenario.env}
    if scenario.workers > 1:  # workers write their metrics there; /metrics adds them up
        metrics_dir = work / "prometheus" / scenario.name
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    (work / "logs").mkdir(exist_ok=True)
    log = work / "logs" / f"{scenario.name}.log"
    out: dict[str, Any] = {"scenario": scenario.name, "concurrency": scenario.concurrency,
                           "workers": scenario.workers, "env": env, "path": path,
                           "distinct_bodies": len(body_list), "rate": scenario.rate}  # fmt: skip
    with server(app, port, scenario.workers, env, log):
        probe = run_once("127.0.0.1", port, path, body_list[:1], concurrency=1)
        if probe != {"200": 1}:
            raise RuntimeError(f"a first {path} request answered {probe}; log {log}")
        if scenario.warm:
            start = time.perf_counter()
            statuses = run_once("127.0.0.1", port, path, body_list, concurrency=4)
            print(f"  warm pass: {statuses} in {time.perf_counter() - start:.1f} s", flush=True)
            out["warm_pass"] = statuses
        before = metrics_snapshot(port)
        result = run_loadgen(
            port, path, bodies_file, scenario, warmup_s, work / f"{scenario.name}.json"
        )
        after = metrics_snapshot(port)
    out.update(result)
    out["avg_batch"] = average_batch(before, after, scenario.kind)
    sent = result["requests"] + result["warmup"]["requests"]
    out["repeated_bodies"] = max(0, sent - len(body_list))
    latency = result["latency_ms"]
    print(
        f"  {result['rps']:.1f} requests/s, p50 {latency['p50']:.1f} ms, "
        f"p99 {latency['p99']:.1f} ms, errors {result['errors']} {result['status']}, "
        f"avg batch {out['avg_batch']}, X-Cache {result.get('x_cache')}, "
        f"{out['repeated_bodies']} repeated bodies",
        flush=True,
    )
    return out


# ------------------------------------------------------------------------------ results


def judge(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Goal met per scenario (None: no goal or not measured), and the image batching ratio."""
    goals: dict[str, bool | None] = {}
    for name, row in rows.items():
        if "error" in row:
            goals[name] = False
            continue
        clean = row["errors"] == 0
        if name == "text-uncached":
            goals[name] = clean and row["rps"] >= 80 and row["latency_ms"]["p99"] <= 150
        elif name.startswith("text-cached"):
            goals[name] = clean and row["rps"] >= 1000
        else:
            goals[name] = None
    ratio = None
    batched, single = rows.get("image-batched"), rows.get("image-b1")
    if batched and single and "error" not in batched and "error" not in single:
        ratio = batched["rps"] / single["rps"] if single["rps"] > 0 else None
        ok = ratio is not None and ratio >= 1.5
        goals["image-batched"] = ok and batched["errors"] == 0 and single["errors"] == 0
    return {"goals": goals, "image_batching_ratio": ratio}


def _cell(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or value != value else f"{value:,.{digits}f}"


def _offered(row: Mapping[str, Any]) -> str:
    rate = row.get("rate")
    return "" if rate is None else f" at {rate:g}/s"


def table(rows: dict[str, dict[str, Any]], verdict: dict[str, Any]) -> str:
    lines = [
        "| scenario | workers | concurrency | requests/s | p50 ms | p99 ms | errors "
        "| avg batch | goal | met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    goal_text = {
        "text-uncached": ">= 80/s, p99 <= 150 ms, 0 errors",
        "text-uncached-max": "(the ceiling, closed loop)",
        "text-cached": ">= 1,000/s, 0 errors",
        "text-cached-w2": ">= 1,000/s, 0 errors",
        "image-batched": ">= 1.5x image-b1",
        "image-b1": "(baseline)",
    }
    met = {True: "yes", False: "**no**", None: "—"}
    for name, row in rows.items():
        if "error" in row:
            lines.append(f"| {name} | | | failed: {row['error'][:80]} | | | | | | no |")
            continue
        latency = row["latency_ms"]
        lines.append(
            f"| {name} | {row['workers']} | {row['concurrency']}{_offered(row)} "
            f"| {_cell(row['rps'])} "
            f"| {_cell(latency['p50'])} | {_cell(latency['p99'])} | {row['errors']} "
            f"| {_cell(row['avg_batch'], 2)} | {goal_text.get(name, '')} "
            f"| {met[verdict['goals'].get(name)]} |"
        )
    return "\n".join(lines)


def details(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Per scenario: distinct bodies and repeats, X-Cache answers, warm pass, failures."""
    out = []
    for name, row in rows.items():
        if "error" in row:
            out.append(f"- {name}: failed: {row['error']}")
            continue
        parts = [
            f"{row['requests']:,} requests, {row['distinct_bodies']:,} distinct bodies "
            f"({row['repeated_bodies']:,} sends beyond them, warm-up included)",
            f"p95 {_cell(row['latency_ms']['p95'])} ms, max {_cell(row['latency_ms']['max'])} ms",
            f"status {row['status']}",
        ]
        if row.get("x_cache"):
            parts.append(f"X-Cache {row['x_cache']}")
        if "warm_pass" in row:
            parts.append(f"warm pass {row['warm_pass']}")
        if row.get("error_kinds"):
            parts.append(f"connection errors {row['error_kinds']}")
        out.append(f"- {name}: " + "; ".join(parts))
    return [*out, ""] if out else []


def write_results(
    results_dir: Path, setup: dict[str, Any], rows: dict[str, dict[str, Any]], argv: list[str]
) -> None:
    verdict = judge(rows)
    command = shlex.join([".venv/bin/python", "bench/service.py", *argv])
    date = datetime.date.today().isoformat()
    ratio = verdict["image_batching_ratio"]
    notes = [
        f"- command: `{command}`",
        f"- machine: {describe()}; the server and the load generator share it",
        f"- date: {date}",
        f"- bundle: ViT-B-16 geometry, seeded random weights, int8 ONNX "
        f"(bundle {setup['bundle_id'][:12]}…)",
        f"- index: {setup['count']:,} x {DIM} CLIP-like vectors, `{setup['factory']}`, "
        f"{setup['search']}",
        f"- server: uvicorn `{setup['app']}`, CNCLIP_THREADS={THREADS}; "
        "load: bench/loadgen.py in its own process, keep-alive connections sending back "
        'to back, or ("at N/s") on a fixed schedule with latency counted from the '
        "scheduled time, after a warm-up",
        "- queries: distinct COCO-CN captions (<= 40 characters); cached: 200 of them, each "
        "sent once before the run; images: the 14 COCO photos as base64 JSON",
        "- avg batch: mean size of the encoder batches run during the load (the difference "
        "of /metrics before and after it; with 2 workers, summed over both)",
    ]
    if ratio is not None:
        notes.append(f"- image search, batched vs batch size 1: **{ratio:.2f}x** (goal 1.5x)")
    markdown = "\n".join(
        [
            f"# Service under load: text and image search, {setup['count']:,}-item index",
            "",
            *notes,
            "",
            table(rows, verdict),
            "",
            *details(rows),
        ]
    )
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "service.md").write_text(markdown, encoding="utf-8")
    raw = {"command": command, "machine": describe(), "date": date, "setup": setup,
           "verdict": verdict, "scenarios": rows}  # fmt: skip
    (results_dir / "service.json").write_text(
        json.dumps(raw, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    print("\n" + table(rows, verdict), flush=True)
    print(f"\nwrote {results_dir / 'service.md'} and {results_dir / 'service.json'}")


# --------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="artifacts, reused")
    parser.add_argument("--n", type=int, default=1_000_000, help="items in the index")
    parser.add_argument("--prepare-only", action="store_true", help="bundle and index only")
    parser.add_argument("--duration", type=float, help="measured seconds (default 20 / 30)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds")
    parser.add_argument("--only", help="comma-separated scenarios (default: all)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--app", default=APP, help="uvicorn app factory")
    parser.add_argument("--text-path", default="/v1/search/text")
    parser.add_argument("--image-path", default="/v1/search/image")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra server environment, every scenario")  # fmt: skip
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    every = scenarios(args.duration or 20.0, args.duration or 30.0, args.redis_url)
    chosen = every
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(wanted) - {s.name for s in every})
        if unknown:
            parser.error(f"unknown scenario(s) {unknown}; one of {[s.name for s in every]}")
        chosen = [s for s in every if s.name in wanted]
    extra = dict(item.split("=", 1) for item in args.env if "=" in item)

    start = time.perf_counter()
    setup = prepare(args.work, args.n)
    print(f"prepared in {time.perf_counter() - start:.0f} s: {setup}", flush=True)
    if args.prepare_only:
        return 0

    queries = text_queries()
    bodies = {
        "unique": text_bodies(queries),
        "cached": text_bodies(queries[:CACHED_QUERIES]),
        "image": image_bodies(),
    }
    print(f"{len(queries)} distinct queries, {len(bodies['image'])} photos", flush=True)
    if any(s.warm for s in chosen) and not redis_answers(args.redis_url):
        print(f"warning: no Redis answers at {args.redis_url}", flush=True)
    base_env = {"CNCLIP_BUNDLE": setup["bundle"], "CNCLIP_INDEX": setup["index"],
                "CNCLIP_THREADS": str(THREADS), **extra}  # fmt: skip
    paths = {"text": args.text_path, "image": args.image_path}
    setup["app"] = args.app
    rows: dict[str, dict[str, Any]] = {}
    for scenario in chosen:
        try:
            rows[scenario.name] = run_scenario(
                args.app, scenario, paths, bodies, base_env, args.work, args.warmup
            )
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            print(f"  failed: {exc}", flush=True)
            rows[scenario.name] = {"scenario": scenario.name, "error": str(exc)}
    write_results(args.results, setup, rows, argv)
    return 0 if all("error" not in row for row in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
